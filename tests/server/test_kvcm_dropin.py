"""kvsim serve beside KVCM's own clients, continued (issue 15) and the admin listener
under a wrong-password flood (issue 13), through real servers on loopback.

* A follower reports the leader's endpoint in ``getManagerClusterInfo`` (KVCM's
  ``leader_endpoint``), over HTTP and gRPC.
* 32 clients looping on wrong passwords: a verified admin still gets every answer, and
  the flood is answered late (:data:`kvsim.server.http.FLOOD_REPLY_DELAY_S`), so it
  cannot saturate the admin listener.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from transports import ADMIN_PASSWORD

from kvsim.config import ServerLimits, ServerOptions
from kvsim.server import http as H
from kvsim.server.app import ServerHandle, start_server
from kvsim.server.grpc_client import GrpcClient
from kvsim.server.service import default_config


def _cluster_info(h: ServerHandle) -> dict[str, Any]:
    r = httpx.post(f"http://127.0.0.1:{h.admin_http_port}/api/getManagerClusterInfo",
                   json={}, timeout=10)
    return dict(r.json())


def test_follower_reports_the_leaders_endpoint(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(data_dir=tmp_path, state="sqlite", leader="file",
                              leader_lease_ms=1500, tick_seconds=3600, admin_auth="none",
                              grpc_port=0, admin_grpc_port=0)
    ha = start_server(None, **kw)
    hb = start_server(None, **kw)
    try:
        a = _cluster_info(ha)
        assert a["leader_node_id"] == a["self_node_id"]
        # the leader's own view: its ports
        assert a["leader_endpoint"]["admin_http_port"] == ha.admin_http_port
        # the follower: the leader's endpoint once the leader renewed its lease with it
        # (every ttl/3 = 0.5 s); bounded wait
        deadline = time.monotonic() + 10
        b: dict[str, Any] = {}
        while time.monotonic() < deadline:
            b = _cluster_info(hb)
            if b.get("leader_endpoint", {}).get("admin_http_port"):
                break
            time.sleep(0.1)
        ep = b["leader_endpoint"]
        assert b["leader_node_id"] == a["self_node_id"] != b["self_node_id"]
        assert ep["node_id"] == a["self_node_id"]
        assert (ep["meta_http_port"], ep["admin_http_port"]) == (ha.http_port,
                                                                 ha.admin_http_port)
        assert (ep["meta_rpc_port"], ep["admin_rpc_port"]) == (ha.grpc_port,
                                                               ha.admin_grpc_port)
        assert ep["host"] == "127.0.0.1"
        # the same over gRPC (int32 ports survive the protobuf round trip)
        g = GrpcClient("127.0.0.1", hb.grpc_port, hb.admin_grpc_port, credential=None,
                       timeout=30)
        try:
            gi = g.admin("getManagerClusterInfo", {})
        finally:
            g.close()
        assert gi["leader_node_id"] == a["self_node_id"]
        assert int(gi["leader_endpoint"]["admin_http_port"]) == ha.admin_http_port
        # the leader goes: the follower takes over and reports itself
        ha.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            b = _cluster_info(hb)
            if b["leader_node_id"] == b["self_node_id"]:
                break
            time.sleep(0.1)
        assert b["leader_node_id"] == b["self_node_id"]
        assert b["leader_endpoint"]["admin_http_port"] == hb.admin_http_port
    finally:
        hb.stop()
        ha.stop()


def _auth(cred: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(cred.encode()).decode()}


def test_wrong_password_flood_is_slowed_and_a_verified_admin_is_served(tmp_path: Path
                                                                       ) -> None:
    cfg = replace(default_config(tmp_path),
                  server=ServerOptions(limits=ServerLimits(auth_failures_per_second=5)))
    h = start_server(cfg, data_dir=tmp_path, tick_seconds=3600,
                     admin_password=ADMIN_PASSWORD)
    url = f"http://127.0.0.1:{h.admin_http_port}/api/listStorage"
    good = _auth(f"admin:{ADMIN_PASSWORD}")
    stop = threading.Event()
    answered: list[float] = []  # how long each flood request waited for its answer
    lock = threading.Lock()

    def flood(j: int) -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post(url, json={}, headers=_auth(f"admin:wrong{j}"))
                assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
                with lock:
                    answered.append(time.monotonic() - t0)

    try:
        with httpx.Client(timeout=30) as admin:
            r = admin.post(url, json={}, headers=good)  # verified once, cached after
            assert r.json()["header"]["status"]["code"] == "OK"
            threads = [threading.Thread(target=flood, args=(j,)) for j in range(32)]
            for t in threads:
                t.start()
            time.sleep(1.0)  # the flood spends the budget and is being slowed
            with lock:
                n0 = len(answered)
            t0 = time.monotonic()
            worst = 0.0
            for _ in range(20):  # bounded: 20 admin calls during the flood
                c0 = time.monotonic()
                r = admin.post(url, json={}, headers=good)
                worst = max(worst, time.monotonic() - c0)
                assert r.json()["header"]["status"]["code"] == "OK", r.text
            elapsed = time.monotonic() - t0
            with lock:
                rate = (len(answered) - n0) / elapsed
                late = sorted(answered[n0:])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        h.stop()
    # every verified admin call answered, none stuck behind the flood (a bound that
    # holds on a loaded 2-CPU machine; the p99 itself is benchmarks/bench_server.py's)
    assert worst < 1.0, worst
    # the flood is answered late: 32 clients that wait for their answers get at most
    # 32 / delay answers a second (plus the budget), not thousands
    assert late and late[len(late) // 2] >= 0.9 * H.FLOOD_REPLY_DELAY_S, late[:5]
    assert rate <= 32 / H.FLOOD_REPLY_DELAY_S + 5 + 10, rate

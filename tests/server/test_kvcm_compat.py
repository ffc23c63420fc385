"""kvsim serve as a drop-in for Tair KVCM's own clients (issue 15), over real HTTP and
gRPC servers on loopback: the registerInstance storage_configs shape the engine
connectors parse, error replies with every field, ``--admin-auth none``, the remaining
admin calls, the debug service, leniency where KVCM is lenient, KVCM's metric names and
node identity."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from transports import ADMIN_CREDENTIAL, ADMIN_PASSWORD

from kvsim.config import KVSimConfig
from kvsim.server.app import ServerHandle, start_server
from kvsim.server.grpc_client import GrpcClient

MD = {"model_name": "m", "dtype": "bf16"}


def code(r: dict[str, Any]) -> str:
    return str(r["header"]["status"]["code"])


class Both:
    """One server, called over HTTP (``h``) and gRPC (``g``) with the same dicts."""

    def __init__(self, tmp: Path, config: KVSimConfig | None = None, **kw: Any) -> None:
        kw.setdefault("admin_password", ADMIN_PASSWORD)
        self.handle: ServerHandle = start_server(config, data_dir=tmp, tick_seconds=3600,
                                                 grpc_port=0, admin_grpc_port=0, **kw)
        self.http = httpx.Client(timeout=30)
        self.cred = None if kw.get("admin_auth") == "none" else ADMIN_CREDENTIAL
        self.grpc = GrpcClient("127.0.0.1", self.handle.grpc_port, self.handle.admin_grpc_port,
                               credential=self.cred, timeout=300)

    def post(self, port: int, method: str, body: dict[str, Any], auth: bool = True
             ) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if auth and self.cred is not None:
            kw["auth"] = tuple(self.cred.split(":", 1))
        r = self.http.post(f"http://127.0.0.1:{port}/api/{method}", json=body, **kw)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post(self.handle.http_port, method, body)

    def admin(self, method: str, body: dict[str, Any], auth: bool = True) -> dict[str, Any]:
        return self.post(self.handle.admin_http_port, method, body, auth)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()
        self.handle.stop()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Both]:
    b = Both(tmp_path)
    yield b
    b.close()


def _register(call: Any, iid: str = "i0", group: str = "default", **kw: Any) -> dict[str, Any]:
    return dict(call("registerInstance", {"instance_group": group, "instance_id": iid,
                                          "block_size": 4, "model_deployment": MD,
                                          "location_spec_infos": [{"name": "tp0",
                                                                   "size": 64}]} | kw))


def _hf3fs_like_connector(storage_configs: str) -> list[dict[str, Any]]:
    """What KVCM's vLLM/SGLang connectors read of ``storage_configs`` (by its fields:
    ``type``, ``is_available``, ``storage_spec.mountpoint`` / ``root_dir``)."""
    out = []
    for st in json.loads(storage_configs):
        kind = "hf3fs" if st["type"] == "vcns_hf3fs" else st["type"]
        if kind == "hf3fs" and st["is_available"]:
            out.append({"mountpoint": st["storage_spec"]["mountpoint"],
                        "root_dir": st["storage_spec"]["root_dir"]})
    return out


# ------------------------------------------------------------------ storage_configs
def test_storage_configs_in_kvcm_shape(srv: Both) -> None:
    storages = [
        {"global_unique_name": "h1", "threefs": {"mountpoint": "/3fs/stage", "root_dir": "kv"}},
        {"global_unique_name": "h2", "threefs": {"mountpoint": "/3fs/b", "root_dir": "r2"}},
        {"global_unique_name": "mc", "mooncake": {"master_service_entry": "10.0.0.1:50051"}},
    ]
    for st in storages:
        assert code(srv.admin("addStorage", {"storage": st})) == "OK"
    assert code(srv.admin("disableStorage", {"storage_unique_name": "h2"})) == "OK"
    assert code(srv.admin("createInstanceGroup", {"instance_group": {
        "name": "g3", "storage_candidates": ["h1", "h2", "mc", "nfs_01"],
        "quota": {"capacity": 10**9}, "version": 1}})) == "OK"
    for call in (srv.meta, srv.grpc.meta):
        r = _register(call, group="g3")
        assert code(r) == "OK"
        st = json.loads(r["storage_configs"])
        assert [s["global_unique_name"] for s in st] == ["h1", "h2", "mc", "nfs_01"]
        assert [s["type"] for s in st] == ["hf3fs", "hf3fs", "mooncake", "file"]
        assert [s["is_available"] for s in st] == [True, False, True, True]
        assert st[2]["storage_spec"]["master_server_entry"] == "10.0.0.1:50051"
        assert st[3]["storage_spec"]["root_path"].endswith("nfs_01")
        # the connectors' parsing: only the available 3FS storage, with its paths
        assert _hf3fs_like_connector(r["storage_configs"]) == [
            {"mountpoint": "/3fs/stage", "root_dir": "kv"}]


# ------------------------------------------------------------------ error replies
def test_http_error_replies_carry_every_field(srv: Both) -> None:
    r = srv.meta("getCacheLocation", {"instance_id": "nope", "block_keys": [1]})
    assert code(r) == "INSTANCE_NOT_EXIST" and r["locations"] == []
    r = srv.meta("startWriteCache", {"instance_id": "nope", "block_keys": [1]})
    assert r["write_session_id"] == "" and r["locations"] == []
    r = _register(srv.meta, group="no_such_group")
    assert code(r) != "OK" and r["storage_configs"] == ""
    r = srv.meta("getCacheMeta", {"instance_id": "nope", "block_keys": [1]})
    assert r["metas"] == [] and r["locations"] == []
    # int64 fields at their default print as strings, as protobuf's JSON mapping does
    r = srv.admin("getLeaderElectorConfig", {}, auth=False)
    assert code(r) == "INVALID_ARGUMENT" and r["campaign_delay_time_ms"] == "0"
    r = srv.meta("noSuchCall", {})
    assert code(r) == "UNSUPPORTED" and set(r) == {"header"}


# ------------------------------------------------------------------ admin auth
def test_admin_auth_none_accepts_calls_without_credential(tmp_path: Path) -> None:
    b = Both(tmp_path, admin_auth="none")
    try:
        assert b.cred is None
        assert code(b.admin("checkHealth", {}, auth=False)) == "OK"
        assert code(b.admin("listStorage", {})) == "OK"
        assert code(b.grpc.admin("checkHealth", {})) == "OK"
        assert code(b.post(b.handle.debug_http_port or 0, "clearFaults", {})) == "OK"
    finally:
        b.close()


def test_admin_auth_default_still_refuses(srv: Both) -> None:
    assert code(srv.admin("checkHealth", {}, auth=False)) == "INVALID_ARGUMENT"
    assert code(srv.post(srv.handle.debug_http_port or 0, "clearFaults", {}, auth=False)
                ) == "INVALID_ARGUMENT"
    assert code(srv.admin("checkHealth", {})) == "OK"


def test_cli_admin_auth_none_refused_off_loopback(tmp_path: Path) -> None:
    from kvsim.server.cli import _loopback, serve_cmd

    r = CliRunner().invoke(serve_cmd, ["--admin-auth", "none", "--host", "0.0.0.0",
                                       "--data-dir", str(tmp_path), "--no-grpc"])
    assert r.exit_code != 0 and "--allow-unauthenticated-admin" in r.output
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3")


# ------------------------------------------------------------------ missing calls
def test_leader_elector_config_and_logger(srv: Both) -> None:
    for admin in (srv.admin, srv.grpc.admin):
        r = admin("getLeaderElectorConfig", {})
        assert code(r) == "OK" and int(r["campaign_delay_time_ms"]) >= 0
        assert code(admin("updateLeaderElectorConfig",
                          {"campaign_delay_time_ms": 4321})) == "OK"
        assert int(admin("getLeaderElectorConfig", {})["campaign_delay_time_ms"]) == 4321
        assert code(admin("updateLeaderElectorConfig",
                          {"campaign_delay_time_ms": -1})) == "INVALID_ARGUMENT"
    old = logging.getLogger("kvsim").level
    try:
        assert code(srv.admin("updateLogger", {"module_name": "kvsim.server",
                                               "log_level": "debug"})) == "OK"
        assert logging.getLogger("kvsim.server").level == logging.DEBUG
        assert code(srv.grpc.admin("updateLogger", {"log_level": "LOUD"})) == "INVALID_ARGUMENT"
        # a name no logger has falls back to kvsim's root logger: none is created
        assert code(srv.admin("updateLogger", {"module_name": "kvsim.no_such_module_x",
                                               "log_level": "ERROR"})) == "OK"
        assert "kvsim.no_such_module_x" not in logging.root.manager.loggerDict
        assert logging.getLogger("kvsim").level == logging.ERROR
    finally:
        logging.getLogger("kvsim.server").setLevel(logging.NOTSET)
        logging.getLogger("kvsim").setLevel(old)


def test_admin_get_cache_meta_and_remove_cache(srv: Both) -> None:
    assert code(_register(srv.meta)) == "OK"
    w = srv.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]})
    assert code(srv.meta("finishWriteCache", {"instance_id": "i0",
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": 3}})) == "OK"
    for admin in (srv.admin, srv.grpc.admin):
        r = admin("getCacheMeta", {"instance_id": "i0", "block_keys": [1, 2, 9]})
        assert code(r) == "OK"
        assert [json.loads(m)["status"] for m in r["metas"]] == [
            "CLS_SERVING", "CLS_SERVING", "CLS_NOT_FOUND"]
    assert code(srv.grpc.admin("removeCache", {"instance_id": "i0", "block_keys": [2]})) == "OK"
    r = srv.admin("getCacheMeta", {"instance_id": "i0", "block_keys": [1, 2]})
    assert [json.loads(m)["status"] for m in r["metas"]] == ["CLS_SERVING", "CLS_NOT_FOUND"]


def _write(call: Any, keys: list[int]) -> dict[str, Any]:
    w = dict(call("startWriteCache", {"instance_id": "i0", "block_keys": keys}))
    if code(w) != "OK":
        return w
    return dict(call("finishWriteCache", {"instance_id": "i0",
                                          "write_session_id": w["write_session_id"],
                                          "success_blocks": {"offset": len(w["locations"])}}))


def test_debug_service_injects_faults_over_http_and_grpc(srv: Both) -> None:
    assert code(_register(srv.meta)) == "OK"
    dport = srv.handle.debug_http_port or 0

    def debug_http(m: str, b: dict[str, Any]) -> dict[str, Any]:
        return srv.post(dport, m, b)

    for debug in (debug_http, lambda m, b: srv.grpc.request("debug", m, b)):
        assert code(debug("injectFault", {"api_name": "StartWriteCache",
                                          "fault_type": "INTERNAL_ERROR",
                                          "fault_trigger_strategy": "ALWAYS"})) == "OK"
        r = srv.meta("startWriteCache", {"instance_id": "i0", "block_keys": [5]})
        assert code(r) == "INTERNAL_ERROR" and "injected" in r["header"]["status"]["message"]
        assert code(srv.grpc.meta("startWriteCache", {"instance_id": "i0",
                                                      "block_keys": [5]})) == "INTERNAL_ERROR"
        assert code(debug("removeFault", {"api_name": "StartWriteCache"})) == "OK"
        assert code(_write(srv.meta, [5])) == "OK"
        # ONCE: the third call from now fails, the others pass
        assert code(debug("injectFault", {"api_name": "GetCacheLocation",
                                          "fault_trigger_strategy": "ONCE",
                                          "trigger_at_call": 3})) == "OK"
        got = [code(srv.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [5],
                                                  "query_type": "QT_PREFIX_MATCH"}))
               for _ in range(4)]
        assert got == ["OK", "OK", "INTERNAL_ERROR", "OK"]
        assert code(debug("injectFault", {"api_name": "GetCacheLocation"})) == "OK"
        assert code(debug("clearFaults", {})) == "OK"
        assert code(srv.meta("getCacheLocation", {"instance_id": "i0",
                                                  "block_keys": [5]})) == "OK"
        assert code(debug("injectFault", {"api_name": ""})) == "INVALID_ARGUMENT"


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        if p + 3000 > 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", p + 3000))
            return p
        except OSError:
            continue
    pytest.skip("no free port pair")


def test_debug_http_port_is_meta_port_plus_3000(tmp_path: Path) -> None:
    p = _free_port_pair()
    h = start_server(None, data_dir=tmp_path, http_port=p, admin_http_port=0,
                     tick_seconds=3600, admin_auth="none")
    try:
        assert h.debug_http_port == p + 3000
        r = httpx.post(f"http://127.0.0.1:{p + 3000}/api/clearFaults", json={})
        assert r.json()["header"]["status"]["code"] == "OK"
    finally:
        h.stop()


def test_admin_calls_on_the_meta_grpc_port_and_one_shared_port(srv: Both, tmp_path: Path
                                                               ) -> None:
    one = GrpcClient("127.0.0.1", srv.handle.grpc_port, srv.handle.grpc_port,
                     credential=ADMIN_CREDENTIAL, timeout=60)
    try:
        assert code(one.admin("checkHealth", {})) == "OK"
    finally:
        one.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    h = start_server(None, data_dir=tmp_path / "x", grpc_port=port, admin_grpc_port=port,
                     tick_seconds=3600, admin_auth="none")
    try:
        assert h.grpc_port == h.admin_grpc_port == port
        with GrpcClient("127.0.0.1", port, port, timeout=60) as c:
            assert code(c.admin("listStorage", {})) == "OK"
            assert code(c.meta("getInstanceInfo", {"instance_id": "x"})) == "INSTANCE_NOT_EXIST"
            assert code(c.request("debug", "clearFaults", {})) == "OK"
    finally:
        h.stop()


# ------------------------------------------------------------------ leniency
def _group(**reclaim: Any) -> dict[str, Any]:
    return {"name": "g", "storage_candidates": ["nfs_01", "not_added_yet"],
            "quota": {"capacity": 10**9}, "version": 1,
            "cache_config": {"reclaim_strategy": {"reclaim_policy": 1,
                                                  "trigger_strategy": reclaim},
                             "meta_indexer_config": {"max_key_count": 4}}}


def test_used_percentage_above_one_and_unadded_candidates(srv: Both) -> None:
    assert code(srv.admin("createInstanceGroup",
                          {"instance_group": _group(used_percentage=3.2)})) == "OK"
    g = srv.grpc.admin("getInstanceGroup", {"name": "g"})["instance_group"]
    assert g["cache_config"]["reclaim_strategy"]["trigger_strategy"]["used_percentage"] == (
        pytest.approx(3.2))
    assert g["storage_candidates"] == ["nfs_01", "not_added_yet"]
    r = _register(srv.meta, group="g")
    assert [s["global_unique_name"] for s in json.loads(r["storage_configs"])] == ["nfs_01"]
    assert code(_write(srv.meta, [1])) == "OK"  # the added candidate takes the write


def test_max_key_count_refuses_writes_and_the_reclaimer_makes_room(srv: Both) -> None:
    assert code(srv.admin("createInstanceGroup",
                          {"instance_group": _group(used_percentage=3.2)})) == "OK"
    assert code(_register(srv.meta, group="g")) == "OK"
    for k in range(4):
        assert code(_write(srv.meta, [k])) == "OK"
    r = srv.meta("startWriteCache", {"instance_id": "i0", "block_keys": [4]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "max_key_count" in (
        r["header"]["status"]["message"])
    svc = srv.handle.service
    svc.tick()  # 3.2 x 4 keys: the reclaimer does not trigger
    assert code(srv.meta("startWriteCache", {"instance_id": "i0", "block_keys": [4]})
                ) == "REACH_MAX_ENTITY_CAPACITY"
    g = _group(used_percentage=0.5) | {"version": 2}
    assert code(srv.admin("updateInstanceGroup", {"instance_group": g,
                                                  "current_version": 1})) == "OK"
    svc.tick()  # down to 4 x 0.5 = 2 keys
    assert code(_write(srv.meta, [4])) == "OK"
    hits = srv.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [4],
                                         "query_type": "QT_BATCH_GET"})["locations"]
    assert hits[0]["type"] == "ST_NFS"


# ------------------------------------------------------------------ metrics, identity
def test_metrics_carry_kvcm_names(srv: Both) -> None:
    srv.admin("listStorage", {})
    srv.admin("listStorage", {})
    for admin in (srv.admin, srv.grpc.admin):
        ms = admin("getMetrics", {})["metrics"]
        by = {(m["metric_name"], t["tag_value"]): m["metric_value"]
              for m in ms for t in m["metric_tags"] if t["tag_key"] == "api_name"}
        assert int(by[("service.query_counter", "ListStorage")]["int_value"]) >= 2
        assert float(by[("service.query_rt_us", "ListStorage")]["float_value"]) > 1


def test_node_identity_leader_and_follower_agree(tmp_path: Path) -> None:
    ha = start_server(None, data_dir=tmp_path, state="sqlite", leader="file",
                      leader_lease_ms=2000, tick_seconds=3600, admin_auth="none")
    hb = start_server(None, data_dir=tmp_path, state="sqlite", leader="file",
                      leader_lease_ms=2000, tick_seconds=3600, admin_auth="none")
    try:
        def info(h: ServerHandle) -> dict[str, Any]:
            return dict(httpx.post(f"http://127.0.0.1:{h.admin_http_port}/api/"
                                   "getManagerClusterInfo", json={}).json())

        a, b = info(ha), info(hb)
        assert a["self_node_id"] != b["self_node_id"]
        assert a["leader_node_id"] == b["leader_node_id"] == a["self_node_id"]
        now_ms = time.time() * 1000
        assert now_ms < int(a["self_leader_expiration_time"]) <= now_ms + 2000 + 1000
        assert int(b["self_leader_expiration_time"]) == 0
    finally:
        hb.stop()
        ha.stop()


# ------------------------------------------------------------------ event log format
def _flow(tmp: Path, fmt: str) -> tuple[list[dict[str, Any]], Any]:
    from kvsim.trace.readers import read_trace

    h = start_server(None, data_dir=tmp, tick_seconds=3600, admin_auth="none",
                     event_format=fmt)
    try:
        url = f"http://127.0.0.1:{h.http_port}/api/"
        httpx.post(url + "registerInstance", json={
            "instance_group": "default", "instance_id": "i0", "block_size": 4,
            "location_spec_infos": [{"name": "tp0", "size": 64}], "model_deployment": MD})
        for keys in ([1, 2], [1, 2, 3], [1, 9]):
            httpx.post(url + "getCacheLocation", json={"instance_id": "i0", "block_keys": keys,
                                                       "query_type": "QT_PREFIX_MATCH"})
            w = httpx.post(url + "startWriteCache", json={"instance_id": "i0",
                                                          "block_keys": keys}).json()
            httpx.post(url + "finishWriteCache", json={
                "instance_id": "i0", "write_session_id": w["write_session_id"],
                "success_blocks": {"offset": len(w["locations"])}})
    finally:
        h.stop()
    path = tmp / "events.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines, read_trace(path)


def test_serve_writes_kvcm_publisher_log_that_replays_the_same(tmp_path: Path) -> None:
    ours, t_ours = _flow(tmp_path / "a", "kvsim")
    theirs, t_theirs = _flow(tmp_path / "b", "kvcm")
    assert [e["type"] for e in theirs] == [e["type"] for e in ours]
    get = next(e for e in theirs if e["type"] == "GetCacheLocation")
    assert get["component"] == "cache_manager" and get["query_type"] == "prefix_match"
    assert get["keys"] == [1, 2] and get["block_mask"] == 0 and len(get["id"]) == 32
    start = next(e for e in theirs if e["type"] == "StartWriteCache")
    assert start["keys"] == [1, 2] and start["write_session_id"]
    fin = [e for e in theirs if e["type"] == "FinishWriteCache"]
    assert [e["success_block"] for e in fin] == [2, 1, 1]
    # the same rows replay from either log: reads, then writes of the whole request
    assert t_theirs.kind.tolist() == t_ours.kind.tolist()
    assert t_theirs.keys.tolist() == t_ours.keys.tolist()

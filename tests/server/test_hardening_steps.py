"""Issue 13/18: a big write never holds the service lock for its whole length.

A ``startWriteCache`` (and its ``finishWriteCache``, a ``removeCache`` or ``trimCache``)
of more than ``step_keys`` keys runs in steps; between two steps the service releases
its lock when a call waits, so a 1-key read is answered in the middle of the big call.
Checked structurally through the real servers (a hook run at each pause sends a real
read and sees the big call half done), never by a wall-clock threshold. And a write in
steps gives the same answers, state, store records and restart as the whole one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from kvsim.config import KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.server.app import start_server
from kvsim.server.service import Service, default_config
from kvsim.server.store import open_store

PW = "pw-steps"
REG = {"instance_group": "default", "block_size": 16,
       "location_spec_infos": [{"name": "tp0", "size": 1024}],
       "model_deployment": {"model_name": "m", "dtype": "fp16"}}
N = 40_000  # keys of the big calls: a body over http.OFFLOAD_BYTES (answered off the loop)
STEP = 4096


def _ok(r: dict[str, Any]) -> dict[str, Any]:
    assert r["header"]["status"]["code"] == "OK", r["header"]
    return r


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_reads_are_answered_between_the_steps_of_a_big_call(tmp_path: Path,
                                                            transport: str) -> None:
    from kvsim.server.grpc_client import GrpcClient

    h = start_server(default_config(tmp_path), data_dir=tmp_path, admin_password=PW,
                     tick_seconds=3600, grpc_port=0 if transport == "grpc" else None)
    svc = h.service
    http = httpx.Client(timeout=60)
    url = f"http://127.0.0.1:{h.http_port}/api/"
    grpc_big = grpc_small = None
    if transport == "grpc":
        assert h.grpc_port is not None
        grpc_big = GrpcClient("127.0.0.1", h.grpc_port, None, timeout=60)
        grpc_small = GrpcClient("127.0.0.1", h.grpc_port, None, timeout=60)

    def meta(method: str, body: dict[str, Any], *, small: bool = False) -> dict[str, Any]:
        if grpc_big is not None and grpc_small is not None:
            return (grpc_small if small else grpc_big).meta(method, body)
        return http.post(url + method, json=body).json()  # type: ignore[no-any-return]

    small_http = httpx.Client(timeout=60)
    try:
        for iid in ("reader", "big"):
            _ok(meta("registerInstance", REG | {"instance_id": iid}))
        w = _ok(meta("startWriteCache", {"instance_id": "reader", "block_keys": [7]}))
        _ok(meta("finishWriteCache", {"instance_id": "reader", "success_blocks": {"offset": 1},
                                      "write_session_id": w["write_session_id"]}))
        svc.mgr.step_keys = STEP
        keys = list(range(10**9, 10**9 + N))
        phase = [""]
        seen: dict[str, list[tuple[int, int]]] = {}

        def read_now() -> None:
            """At a pause of the big call (its thread, the lock released): real reads."""
            if len(seen.setdefault(phase[0], [])) >= 3:
                return
            body = {"instance_id": "reader", "block_keys": [7]}
            big = {"instance_id": "big", "block_keys": [keys[0]]}
            if grpc_small is not None:
                r, rb = grpc_small.meta("getCacheLocation", body), grpc_small.meta(
                    "getCacheLocation", big)
            else:
                r = small_http.post(url + "getCacheLocation", json=body).json()
                rb = small_http.post(url + "getCacheLocation", json=big).json()
            seen[phase[0]].append((len(_ok(r)["locations"]), len(_ok(rb)["locations"])))

        svc.on_pause = read_now
        phase[0] = "start"
        w = _ok(meta("startWriteCache", {"instance_id": "big", "block_keys": keys}))
        assert len(w["locations"]) == N
        phase[0] = "finish"
        _ok(meta("finishWriteCache", {"instance_id": "big", "success_blocks": {"offset": N},
                                      "write_session_id": w["write_session_id"]}))
        phase[0] = "remove"
        _ok(meta("removeCache", {"instance_id": "big", "block_keys": keys[N // 2:]}))
        phase[0] = "trim"
        _ok(meta("trimCache", {"instance_id": "big", "strategy": "TS_REMOVE_ALL_CACHE"}))
        svc.on_pause = None
        # every big call paused, and a read was answered at each pause it was asked at
        assert set(seen) == {"start", "finish", "remove", "trim"}, seen
        assert all(r == 1 for v in seen.values() for r, _ in v)
        # the reads saw the big calls half done: the finish commits tail first (the head
        # key last), the removal takes the tail (the head stays), the trim the rest
        assert {b for _, b in seen["finish"]} == {0}
        assert {b for _, b in seen["remove"]} == {1}
        assert svc.lock_pauses >= 4 * (N // STEP) // 2 and svc.lock_yields >= 4
        assert _ok(meta("getCacheLocation", {"instance_id": "big",
                                             "block_keys": [keys[0]]}))["locations"] == []
    finally:
        svc.on_pause = None
        http.close()
        small_http.close()
        for g in (grpc_big, grpc_small):
            if g is not None:
                g.close()
        h.stop()


QUOTA_KEYS = 20_000


def _service(tmp: Path, step: int, store: bool = True) -> Service:
    cfg = KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp / "nfs_01")}],
        "instance_groups": [{"name": "default", "quota": {"bytes": QUOTA_KEYS * 1024},
                             "used_percentage": 0.9, "storage_candidates": ["nfs_01"]}]})
    s = Service(cfg, data_dir=tmp, clock=ManualClock(10**12),
                admin_password=PW, store=open_store("journal", tmp) if store else None)
    s.mgr.step_keys = step
    return s


def _view(s: Service, iids: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    """What clients and the store see."""
    out: dict[str, Any] = {}
    for iid in iids:
        d = s.mgr.export_blocks(iid)
        out[iid] = {c: getattr(d, c).tolist() for c in ("key", "state", "t_write",
                                                         "t_access", "access_count")}
    out["usage"] = [(u.used, u.serving_blocks, u.pending_blocks) for u in s.mgr.usage()]
    out["sessions"] = sorted((x.instance_id, x.keys.tolist()) for x in s.mgr.sessions())
    return out


def _flow(s: Service, rng: np.random.Generator, quota_keys: int) -> list[Any]:
    """Big writes refused, finished in part, expired; returns every answer (ids aside)."""
    clock = s.clock
    assert isinstance(clock, ManualClock)
    out: list[Any] = []
    for iid in ("a", "b"):
        _ok(s.call("meta", "registerInstance", REG | {"instance_id": iid}))

    def call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        clock.advance(1000)
        r = s.call("meta", method, body)
        st = r["header"]["status"]
        rest = {k: v for k, v in r.items() if k not in ("header", "write_session_id")}
        out.append((method, st["code"], st["message"],
                    orjson.dumps(rest).replace(str(s.data_dir).encode(), b"<data>")))
        return r

    keys = rng.integers(0, 30_000, size=12_000).tolist()
    w1 = call("startWriteCache", {"instance_id": "a", "block_keys": keys})
    n1 = len(w1["locations"])
    mask = (rng.random(n1) < 0.7).tolist()
    call("finishWriteCache", {"instance_id": "a", "write_session_id": w1["write_session_id"],
                              "success_blocks": {"bool_masks": {"values": mask}}})
    # refused: more new blocks than the quota holds
    call("startWriteCache", {"instance_id": "b", "block_keys": list(range(10**6, 10**6
                                                                         + quota_keys + 1))})
    # one that expires, one left open (survives the restart)
    w2 = call("startWriteCache", {"instance_id": "b", "block_keys": list(range(5000, 15_000)),
                                  "write_timeout_seconds": 1})
    clock.advance(2 * 10**9)
    s.tick()
    call("finishWriteCache", {"instance_id": "b", "write_session_id": w2["write_session_id"],
                              "success_blocks": {"offset": 1}})
    w3 = call("startWriteCache", {"instance_id": "b",
                                  "block_keys": [*range(20_000, 29_000), *keys[:500]]})
    call("removeCache", {"instance_id": "a", "block_keys": keys[::3]})
    call("getCacheLocation", {"instance_id": "a", "block_keys": keys[:2000],
                              "query_type": "QT_BATCH_GET"})
    out.append(("open", w3["write_session_id"]))
    return out


def test_a_write_in_steps_answers_and_persists_as_the_whole_one(tmp_path: Path) -> None:
    """Refused, finished in part, expired, left open across a restart: the same answers,
    state and stored state with 1,000-key steps as in one step."""
    res = []
    for step, d in ((1 << 30, tmp_path / "whole"), (1000, tmp_path / "steps")):
        s = _service(d, step)
        flow = _flow(s, np.random.default_rng(5), QUOTA_KEYS)
        token = flow.pop()[1]
        view = _view(s)
        s.close()
        s = _service(d, step)  # a restart from the store
        after = _view(s)
        r = s.call("meta", "finishWriteCache", {"instance_id": "b", "write_session_id": token,
                                                "success_blocks": {"offset": 9000}})
        res.append((flow, view, after, r["header"]["status"]["code"], _view(s)))
        assert s.lock_pauses > 0 if step == 1000 else s.lock_pauses == 0
        s.close()
    whole, steps = res
    assert [(m, c, r) for m, c, _, r in whole[0]] == [(m, c, r) for m, c, _, r in steps[0]]
    codes = [(m, c) for m, c, _, _ in whole[0]]
    assert codes.count(("startWriteCache", "REACH_MAX_ENTITY_CAPACITY")) == 1
    assert ("finishWriteCache", "INVALID_ARGUMENT") in codes  # the expired session
    assert whole[1:] == steps[1:]
    assert whole[1]["sessions"] and whole[2]["sessions"] == whole[1]["sessions"]
    assert whole[3] == "OK"

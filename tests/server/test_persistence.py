"""Durable state: restarts keep everything acknowledged (SQLite and Redis), a SIGKILL
during a write load loses no finished write and leaks no quota, and two servers on one
Redis fail over within the lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port

from kvsim.core.clock import ManualClock
from kvsim.server.service import Service
from kvsim.server.store import open_store

PW = "pw-persist"
CRED = f"admin:{PW}"
SPEC = [{"name": "tp0", "size": 1024}]
MODEL = {"model_name": "m", "dtype": "bf16"}


def _ok(r: dict[str, Any]) -> dict[str, Any]:
    assert r["header"]["status"]["code"] == "OK", r["header"]
    return r


def _register(call, iid: str) -> None:
    _ok(call("meta", "registerInstance", {"instance_group": "default", "instance_id": iid,
                                          "block_size": 16, "location_spec_infos": SPEC,
                                          "model_deployment": MODEL}))


def _found(call, iid: str, keys: list[int]) -> np.ndarray:
    r = _ok(call("meta", "getCacheLocation", {"instance_id": iid, "block_keys": keys,
                                              "query_type": "QT_BATCH_GET"}))
    return np.array([loc["type"] != "ST_UNSPECIFIED" for loc in r["locations"]])


@pytest.fixture(params=["journal", "sqlite", "redis"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:///{tmp_path / 'journal'}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("redis_url")


def test_restart_restores_everything(state_url: str, tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000 * 10**9)

    def service() -> Service:
        return Service(None, data_dir=tmp_path, clock=clock, admin_password=PW,
                       store=open_store(state_url, tmp_path), event_log=False)

    s = service()

    def call(api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return s.call(api, method, body, credential=CRED if api == "admin" else None)

    _register(call, "a")
    _register(call, "b")
    _ok(call("admin", "addAccount", {"user_name": "bob", "password": "x", "role": "ROLE_USER"}))
    rng = np.random.default_rng(5)
    for i in range(40):
        clock.advance(10**6)
        iid = "ab"[i % 2]
        keys = (rng.integers(0, 50, size=6).cumsum() + 1000 * (i % 5)).tolist()
        w = _ok(call("meta", "startWriteCache", {"instance_id": iid, "block_keys": keys}))
        n_new = len(w["locations"])
        _ok(call("meta", "finishWriteCache", {"instance_id": iid,
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": n_new}}))
        call("meta", "getCacheLocation", {"instance_id": iid, "block_keys": keys[:3]})
    _ok(call("meta", "removeCache", {"instance_id": "a", "block_keys": keys[:2]}))
    pending = _ok(call("meta", "startWriteCache", {"instance_id": "b",
                                                   "block_keys": [777, 778],
                                                   "write_timeout_seconds": 60}))
    snap = s.snapshot()
    cached = {i: s.mgr.cached_keys(i).tolist() for i in "ab"}
    usage = s.mgr.usage()
    s.close()

    clock.advance(10**9)
    s = service()
    assert s.snapshot() == snap
    assert {i: s.mgr.cached_keys(i).tolist() for i in "ab"} == cached
    assert [(u.used, u.serving_blocks, u.pending_blocks) for u in s.mgr.usage()] == \
        [(u.used, u.serving_blocks, u.pending_blocks) for u in usage]
    # the pending session resumes under its id; the restored account works
    assert s.call("admin", "listAccount", {}, credential="bob:x")["header"]["status"][
        "code"] != "OK"  # bob is not an admin, but exists:
    assert "bob" in [a["user_name"] for a in _ok(call("admin", "listAccount", {}))["accounts"]]
    _ok(call("meta", "finishWriteCache", {"instance_id": "b",
                                          "write_session_id": pending["write_session_id"],
                                          "success_blocks": {"offset": 2}}))
    assert _found(call, "b", [777, 778]).all()
    s.close()
    s = service()  # and that finish is durable too
    assert _found(call, "b", [777, 778]).all()
    assert s.mgr.pending_sessions() == 0
    s.close()


def _serve(data: Path, port: int, admin_port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, KVSIM_ADMIN_PASSWORD=PW)
    return subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--data-dir", str(data), "--http-port",
         str(port), "--admin-http-port", str(admin_port), "--no-grpc", "--no-access-log",
         *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class _Http:
    def __init__(self, port: int, admin_port: int) -> None:
        self.c = httpx.Client(timeout=30)
        self.port, self.admin_port = port, admin_port

    def __call__(self, api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        port = self.port if api == "meta" else self.admin_port
        auth = ("admin", PW) if api == "admin" else None
        r = self.c.post(f"http://127.0.0.1:{port}/api/{method}", json=body, auth=auth)
        r.raise_for_status()
        return r.json()

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                return self("admin", "checkHealth", {})
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not start in time")

    def wait_leader(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """Wait until the server leads: after a ``kill -9`` the dead process's file lease
        holds until its TTL runs out, and the restarted server answers
        ``SERVER_NOT_LEADER`` until then."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.wait_ready(proc).get("is_leader"):
                return
            time.sleep(0.1)
        raise AssertionError("the restarted server did not take the lease in time")


@pytest.fixture(params=["journal", "journal-fsync", "sqlite", "redis"])
def state_args(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, ...]:
    """``kvsim serve`` arguments naming each store (every one must keep the guarantee)."""
    if request.param == "journal":
        return ("--state", "journal")
    if request.param == "journal-fsync":
        return ("--state", f"journal:///{tmp_path / 'jf'}?fsync=always")
    if request.param == "sqlite":
        return ("--state", "sqlite")
    return ("--state", request.getfixturevalue("redis_url"), "--leader", "none")


def test_sigkill_during_write_load_loses_nothing(tmp_path: Path,
                                                 state_args: tuple[str, ...]) -> None:
    data = tmp_path / "data"
    p1, p2 = free_port(), free_port()
    proc = _serve(data, p1, p2, *state_args)
    call = _Http(p1, p2)
    try:
        call.wait_ready(proc)
        _register(call, "i0")
        acked: list[list[int]] = []
        pending: list[str] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set() and i < 100_000:
                keys = [i * 100 + j for j in range(8)]
                try:
                    w = call("meta", "startWriteCache", {"instance_id": "i0",
                                                         "block_keys": keys,
                                                         "write_timeout_seconds": 2})
                    if i % 5 == 4:  # left unfinished: must expire after the restart
                        pending.append(w["write_session_id"])
                    else:
                        r = call("meta", "finishWriteCache", {
                            "instance_id": "i0", "write_session_id": w["write_session_id"],
                            "success_blocks": {"offset": len(w["locations"])}})
                        if r["header"]["status"]["code"] == "OK":
                            acked.append(keys)
                except (httpx.HTTPError, KeyError):
                    return  # the server is gone
                i += 1

        th = threading.Thread(target=load)
        th.start()
        end = time.monotonic() + 30
        while len(acked) < 150 and time.monotonic() < end:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        th.join(30)
        assert len(acked) >= 150 and pending
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    p1, p2 = free_port(), free_port()
    proc = _serve(data, p1, p2, *state_args)
    call = _Http(p1, p2)
    try:
        call.wait_leader(proc)
        for keys in acked:  # every acknowledged finish survived
            assert _found(call, "i0", keys).all(), keys
        # unfinished sessions resolve: they time out (2 s) and their quota comes back
        end = time.monotonic() + 30
        while time.monotonic() < end:
            m = {(x["metric_name"]): x["metric_value"] for x in
                 _ok(call("admin", "getMetrics", {}))["metrics"]
                 if not x.get("metric_tags") or any(t["tag_value"] == "default"
                                                    for t in x["metric_tags"])}
            if m.get("kvsim_write_sessions", {}).get("int_value", 1) == 0:
                break
            time.sleep(0.2)
        used = m["kvsim_group_used"]
        serving = m["kvsim_group_serving_blocks"]
        pend = m["kvsim_group_pending_blocks"]

        def val(v: dict[str, Any]) -> float:
            return v.get("int_value", v.get("float_value"))

        assert int(val(pend)) == 0
        assert int(val(used)) == int(val(serving)) * 1024  # no quota leak
        assert int(val(serving)) >= 8 * len(acked)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_servers_on_redis_fail_over(redis_url: str, tmp_path: Path) -> None:
    ports = [(free_port(), free_port()) for _ in range(2)]
    args = ("--state", redis_url, "--leader", "redis")
    a = _serve(tmp_path / "a", *ports[0], *args)
    ca = _Http(*ports[0])
    try:
        # the first server takes the lease (its listener may answer a moment before it
        # does on a loaded machine: wait for it, bounded)
        ca.wait_leader(a, timeout=30)
        b = _serve(tmp_path / "b", *ports[1], *args)
        cb = _Http(*ports[1])
        try:
            assert cb.wait_ready(b)["is_leader"] is False
            r = cb("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": [1]})
            assert r["header"]["status"]["code"] == "SERVER_NOT_LEADER"
            _register(ca, "i0")
            w = _ok(ca("meta", "startWriteCache", {"instance_id": "i0", "block_keys": [1, 2]}))
            _ok(ca("meta", "finishWriteCache", {"instance_id": "i0",
                                                "write_session_id": w["write_session_id"],
                                                "success_blocks": {"offset": 2}}))
            os.kill(a.pid, signal.SIGKILL)
            a.wait(10)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 15:
                if cb("admin", "checkHealth", {})["is_leader"]:
                    break
                time.sleep(0.1)
            took = time.monotonic() - t0
            assert cb("admin", "checkHealth", {})["is_leader"] is True
            assert took < 3.0 + 1.0 + 1.0  # lease (3 s) + one renewal period + slack
            assert _found(cb, "i0", [1, 2]).all()  # the new leader has the old one's state
        finally:
            b.send_signal(signal.SIGTERM)
            try:
                b.wait(20)
            except subprocess.TimeoutExpired:
                b.kill()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(10)


def test_read_recency_survives_restart(state_url: str, tmp_path: Path) -> None:
    """Reads refresh recency; the tick persists it (write-behind), so after a restart the
    blocks keep their access counts and last access, and LRU order is what it was."""
    clock = ManualClock(1_700_000_000 * 10**9)

    def service() -> Service:
        return Service(None, data_dir=tmp_path, clock=clock, admin_password=PW,
                       store=open_store(state_url, tmp_path), event_log=False)

    def meta(svc: Service, keys: list[int]) -> list[dict[str, Any]]:
        import json
        r = _ok(svc.call("meta", "getCacheMeta", {"instance_id": "i", "block_keys": keys,
                                                   "detail_level": 1}))
        return [json.loads(m) for m in r["metas"]]

    svc = service()
    svc.store.clear()  # type: ignore[union-attr]
    svc.close()
    svc = service()
    _register(svc.call, "i")
    w = _ok(svc.call("meta", "startWriteCache", {"instance_id": "i",
                                                 "block_keys": [1, 2, 3, 4]}))
    _ok(svc.call("meta", "finishWriteCache", {"instance_id": "i",
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": 4}}))
    for step in range(3):
        clock.advance(10**9)
        _ok(svc.call("meta", "getCacheLocation", {"instance_id": "i", "block_keys": [1, 2]}))
        if step == 1:
            svc.tick()  # a flush in the middle: later reads must still land
    clock.advance(10**9)
    _ok(svc.call("meta", "getCacheLocation", {"instance_id": "i", "block_keys": [3],
                                              "query_type": "QT_BATCH_GET"}))
    before = meta(svc, [1, 2, 3, 4])
    assert [m["access_count"] for m in before] == [4, 4, 2, 1]  # the write counts one
    svc.tick()
    svc.close()  # also flushes; a second flush of the same rows changes nothing
    svc = service()
    after = meta(svc, [1, 2, 3, 4])
    assert after == before
    svc.close()


def test_one_call_evicting_two_instances_is_saved(state_url: str, tmp_path: Path) -> None:
    """A write whose eviction takes blocks of two instances (a group-wide ranking) and a
    removal are saved per instance: after a restart each instance holds exactly what it
    held before (the store's deletes are grouped by instance in one batch)."""
    from kvsim.config import KVSimConfig

    clock = ManualClock(1_700_000_000 * 10**9)
    cfg = KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp_path / "nfs")}],
        "instance_groups": [{"name": "default", "storage_candidates": ["nfs_01"],
                             "quota": {"blocks": 12}, "used_percentage": 1.0,
                             "eviction": {"policy": "lru", "mode": "group_precise"}}]})

    def service() -> Service:
        return Service(cfg, data_dir=tmp_path, clock=clock, admin_password=PW,
                       store=open_store(state_url, tmp_path), event_log=False)

    s = service()

    def call(api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return s.call(api, method, body, credential=CRED if api == "admin" else None)

    def write(iid: str, keys: list[int]) -> None:
        clock.advance(10**6)
        w = _ok(call("meta", "startWriteCache", {"instance_id": iid, "block_keys": keys}))
        _ok(call("meta", "finishWriteCache", {"instance_id": iid,
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": len(w["locations"])}}))

    _register(call, "a")
    _register(call, "b")
    write("a", [1, 2, 3, 4])  # oldest
    write("b", [11, 12, 13, 14])
    write("a", [5, 6, 7, 8])
    before = {i: s.mgr.cached_keys(i).tolist() for i in "ab"}
    write("b", [21, 22, 23, 24, 25, 26, 27, 28, 29, 30])  # evicts a's 1-4, then b's 11-14
    after = {i: sorted(s.mgr.cached_keys(i).tolist()) for i in "ab"}
    assert not set(before["a"]) <= set(after["a"]) and not set(before["b"]) <= set(after["b"])
    _ok(call("meta", "removeCache", {"instance_id": "a", "block_keys": [5]}))
    after["a"].remove(5)
    s.close()
    s = service()
    assert {i: sorted(s.mgr.cached_keys(i).tolist()) for i in "ab"} == after
    assert [u.serving_blocks for u in s.mgr.usage()] == [sum(map(len, after.values()))]
    s.close()

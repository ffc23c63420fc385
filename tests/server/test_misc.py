"""Config `server:` section, `kvsim serve` end to end, the event reader, auth helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kvsim.config import ConfigError, KVSimConfig, ServerOptions
from kvsim.core.clock import ManualClock
from kvsim.server.auth import Accounts, decode_basic
from kvsim.server.clock import MonotonicClock
from kvsim.server.service import Service
from kvsim.server.store import SqliteStore
from kvsim.trace.model import TraceError
from kvsim.trace.readers import read_kvcm_events

ROOT = Path(__file__).resolve().parents[2]


def test_server_section() -> None:
    cfg = KVSimConfig.from_dict({"server": {"http_port": 8080, "tick_seconds": 1}})
    assert cfg.server.http_port == 8080 and cfg.server.tick_seconds == 1.0
    assert cfg.server.admin_http_port == 6492
    assert "server" in cfg.to_dict() and "server" not in KVSimConfig().to_dict()
    assert KVSimConfig.from_dict(cfg.to_dict()).server == cfg.server
    assert KVSimConfig().server == ServerOptions()
    with pytest.raises(ConfigError, match=r"server\.http_port"):
        KVSimConfig.from_dict({"server": {"http_port": 70000}})
    with pytest.raises(ConfigError, match=r"server\.bogus"):
        KVSimConfig.from_dict({"server": {"bogus": 1}})


def test_clock_and_auth_helpers() -> None:
    c = MonotonicClock()
    a = c.now_ns()
    assert c.now_ns() >= a and abs(a - time.time_ns()) < 10**9
    assert decode_basic(None) is None and decode_basic("Bearer x") is None
    assert decode_basic("Basic !!!") is None
    acc = Accounts()
    acc.add("u", "p:with:colons", "ROLE_USER")
    assert acc.check("u:p:with:colons") == "ROLE_USER"
    assert acc.check("u:p:with:colons") == "ROLE_USER"  # cached
    assert acc.check("u:p") is None
    assert all(a.digest != b"p:with:colons" for a in acc.list())


def test_registry_changes_reach_the_store_without_passwords(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    s = Service(data_dir=tmp_path, store=store, clock=ManualClock(0), event_log=False)
    s.call("meta", "registerInstance", {"instance_group": "default", "instance_id": "i0",
                                        "block_size": 4, "model_deployment": {
                                            "model_name": "m", "dtype": "d"},
                                        "location_spec_infos": [{"name": "a", "size": 1}]})
    s.call("admin", "addAccount", {"user_name": "u", "password": "secret-pw"},
           credential="admin:kvsim-admin")
    s.close()
    records = SqliteStore(tmp_path / "state.db").load_records()
    text = json.dumps(records)
    assert '"i0"' in text and '"u"' in text  # the instance and the account are stored
    assert "secret-pw" not in text  # ... the password only as a hash


def test_read_kvcm_events_errors(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_text('{"type": "CacheReclaimSubmit", "source": "g", "trigger_time_us": 1}\n')
    with pytest.raises(TraceError, match="no GetCacheLocation"):
        read_kvcm_events(p)
    p.write_text('{"type": "GetCacheLocation", "source": "i", "block_keys": [1]}\n')
    with pytest.raises(TraceError, match="trigger_time_us"):
        read_kvcm_events(p)
    p.write_text('{"type": "GetCacheLocation", "source": "i", "trigger_time_us": 1, '
                 '"block_keys": [1, 2], "block_mask": [true]}\n')
    with pytest.raises(TraceError, match="block_mask"):
        read_kvcm_events(p)
    p.write_text('{"type": "GetCacheLocation", "source": "i", "trigger_time_us": 2, '
                 '"block_keys": [1, 2], "block_mask": [true, false], '
                 '"query_type": "QT_BATCH_GET"}\n'
                 '{"type": "FinishWriteCache", "source": "j", "trigger_time_us": 1, '
                 '"block_keys": [3]}\n'
                 '{"type": "FinishWriteCache", "source": "j", "trigger_time_us": 3, '
                 '"block_keys": []}\n')
    with pytest.warns(UserWarning, match="out of timestamp order"):
        t = read_kvcm_events(p)
    assert t.n_requests == 2 and t.instances == ("i", "j")
    assert t.kind.tolist() == [2, 1] and t.query_type.tolist() == [0, 1]
    assert t.mask is not None and t.mask.tolist() == [False, True, False]
    with pytest.warns(UserWarning):
        assert read_kvcm_events(p, instance="j").n_requests == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kvsim_serve_end_to_end(tmp_path: Path) -> None:
    port, aport = _free_port(), _free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT), "KVSIM_ADMIN_PASSWORD": "pw"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--no-grpc", "--http-port", str(port),
         "--admin-http-port", str(aport), "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/api/registerInstance", json={
                    "instance_group": "default", "instance_id": "i0", "block_size": 16,
                    "location_spec_infos": [{"name": "tp0", "size": 1024}],
                    "model_deployment": {"model_name": "m", "dtype": "bf16"}}, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "kvsim serve did not start"
                time.sleep(0.2)
        assert r.json()["header"]["status"]["code"] == "OK"
        st = json.loads(r.json()["storage_configs"])
        assert st[0]["type"] == "file" and st[0]["is_available"] is True
        assert st[0]["storage_spec"]["root_path"] == str(tmp_path / "nfs_01")
        r = httpx.post(f"http://127.0.0.1:{aport}/api/listStorage", json={},
                       auth=("admin", "pw"))
        assert r.json()["storage"][0]["global_unique_name"] == "nfs_01"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    text = err.decode()
    assert "kvsim serving on 127.0.0.1" in text
    assert "meta/registerInstance 200 OK" in text  # the access log
    assert (tmp_path / "events.jsonl").exists()


def test_concurrent_calls_are_serialized(tmp_path: Path) -> None:
    import threading

    s = Service(data_dir=tmp_path, event_log=True)
    s.call("meta", "registerInstance", {"instance_group": "default", "instance_id": "i0",
                                        "block_size": 4, "model_deployment": {
                                            "model_name": "m", "dtype": "d"},
                                        "location_spec_infos": [{"name": "a", "size": 1}]})
    s.start_background(0.001)
    errors: list[str] = []

    def worker(t: int) -> None:
        for i in range(100):
            keys = [t * 1000 + i, t * 1000 + i + 1]
            w = s.call("meta", "startWriteCache", {"instance_id": "i0", "block_keys": keys})
            f = s.call("meta", "finishWriteCache", {"instance_id": "i0",
                                                    "write_session_id": w["write_session_id"],
                                                    "success_blocks": {"offset": len(
                                                        w["locations"])}})
            g = s.call("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": keys})
            for r in (w, f, g):
                if r["header"]["status"]["code"] != "OK":
                    errors.append(str(r["header"]))
            if len(g["locations"]) != 2:
                errors.append(f"read {len(g['locations'])} of 2")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    s.close()
    assert errors == []
    u = s.mgr.usage()[0]
    assert u.serving_blocks == 8 * 101 and u.pending_blocks == 0
    assert sum(n for (api, m, c), n in s.calls.items() if m == "getCacheLocation") == 800
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 800


def test_start_up_loads_the_table_growth_path(tmp_path: Path) -> None:
    """The server's warm-up loads the block table's index rebuild (a fresh process, no
    write yet): before, it was compiled inside the first write that outgrew the table
    (a 2.1 s stall of every call on a fresh install)."""
    code = (
        "from kvsim.core.table import _rebuild_index\n"
        "assert not _rebuild_index.signatures\n"
        "from kvsim.server.app import start_server\n"
        f"h = start_server(None, data_dir={str(tmp_path)!r})\n"
        "try:\n"
        "    assert h.service.mgr.row_capacity >= 1 << 14\n"
        "    print(len(_rebuild_index.signatures))\n"
        "finally:\n"
        "    h.stop()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=os.environ | {"KVSIM_ADMIN_PASSWORD": "x"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 1

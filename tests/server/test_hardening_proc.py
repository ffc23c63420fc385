"""Issue 13, whole processes: SIGTERM drains and exits 0, acknowledged writes' events
survive ``kill -9``, the event log rotates into parts that replay reads, the admin
password comes from a file, a stopped leader is replaced and demotes when it resumes,
and ``kvsim replay --jobs N`` leaves neither workers nor temp files behind."""

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
import orjson
import pytest
from conftest import free_port

from kvsim.trace.logfiles import event_log_files
from kvsim.trace.readers import read_kvcm_events

PW = "pw-proc"
MODEL = {"model_name": "m", "dtype": "bf16"}


def _serve(data: Path, port: int, admin_port: int, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = dict(os.environ, KVSIM_ADMIN_PASSWORD=PW) if env is None else env
    return subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--data-dir", str(data), "--http-port",
         str(port), "--admin-http-port", str(admin_port), "--no-grpc", "--no-access-log",
         *extra], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class _Http:
    def __init__(self, port: int, admin_port: int, pw: str = PW) -> None:
        self.c = httpx.Client(timeout=30)
        self.port, self.admin_port, self.pw = port, admin_port, pw

    def __call__(self, api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        port = self.port if api == "meta" else self.admin_port
        auth = ("admin", self.pw) if api == "admin" else None
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


def _code(r: dict[str, Any]) -> str:
    return r["header"]["status"]["code"]


def _register(call: _Http, iid: str) -> None:
    r = call("meta", "registerInstance", {"instance_group": "default", "instance_id": iid,
                                          "block_size": 16,
                                          "location_spec_infos": [{"name": "t", "size": 64}],
                                          "model_deployment": MODEL})
    assert _code(r) == "OK", r


def _load(call: _Http, stop: threading.Event, acked: list[str], reads: list[int],
          base: int) -> None:
    """Read, write and finish until stopped or the server is gone; note what was
    acknowledged (finished session ids, read count)."""
    i = 0
    while not stop.is_set():
        keys = [base + i * 4 + j for j in range(4)]
        try:
            r = call("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": keys})
            if _code(r) == "OK":
                reads.append(1)
            w = call("meta", "startWriteCache", {"instance_id": "i0", "block_keys": keys})
            f = call("meta", "finishWriteCache", {
                "instance_id": "i0", "write_session_id": w["write_session_id"],
                "success_blocks": {"offset": len(w["locations"])}})
            if _code(f) == "OK":
                acked.append(w["write_session_id"])
        except (httpx.HTTPError, KeyError, ValueError):
            return
        i += 1


def _events(data: Path) -> list[dict[str, Any]]:
    out = []
    for part in event_log_files(data):
        with open(part, "rb") as f:
            out += [orjson.loads(line) for line in f if line.strip()]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stop_keeps_every_acknowledged_event(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM: the calls in flight finish, every event is flushed, exit code 0.
    kill -9: every acknowledged finish has its event (flushed before the reply)."""
    data = tmp_path / "data"
    p1, p2 = free_port(), free_port()
    proc = _serve(data, p1, p2, "--state", "none")
    call = _Http(p1, p2)
    stop = threading.Event()
    acked: list[str] = []
    reads: list[int] = []
    try:
        call.wait_ready(proc)
        _register(call, "i0")
        threads = [threading.Thread(target=_load,
                                    args=(_Http(p1, p2), stop, acked, reads, k << 32))
                   for k in range(4)]
        for t in threads:
            t.start()
        end = time.monotonic() + 60
        while len(acked) < 300 and time.monotonic() < end:
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        rc = proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(acked) >= 300
    ev = _events(data)
    finished = {e["write_session_id"] for e in ev if e["type"] == "FinishWriteCache"}
    assert not set(acked) - finished  # every acknowledged finish is in the log
    if sig == signal.SIGTERM:
        assert rc == 0, proc.stderr.read().decode()[-2000:]
        n_reads = sum(e["type"] == "GetCacheLocation" for e in ev)
        assert n_reads >= len(reads)  # nothing buffered was lost
    else:
        assert rc == -signal.SIGKILL


def test_event_log_rotates_and_replays_whole(tmp_path: Path) -> None:
    from dataclasses import replace

    from kvsim.config import ServerOptions
    from kvsim.server.app import start_server
    from kvsim.server.service import default_config

    cfg = replace(default_config(tmp_path), server=ServerOptions(event_log_max_bytes=4096))
    h = start_server(cfg, data_dir=tmp_path, admin_password=PW, tick_seconds=3600)
    c = httpx.Client(timeout=30)
    url = f"http://127.0.0.1:{h.http_port}/api"
    try:
        assert _code(c.post(f"{url}/registerInstance", json={
            "instance_group": "default", "instance_id": "i0", "block_size": 16,
            "location_spec_infos": [{"name": "t", "size": 64}],
            "model_deployment": MODEL}).json()) == "OK"
        for i in range(200):
            keys = [i * 8 + j for j in range(8)]
            c.post(f"{url}/getCacheLocation", json={"instance_id": "i0", "block_keys": keys})
            w = c.post(f"{url}/startWriteCache", json={"instance_id": "i0",
                                                       "block_keys": keys}).json()
            c.post(f"{url}/finishWriteCache", json={
                "instance_id": "i0", "write_session_id": w["write_session_id"],
                "success_blocks": {"offset": 8}})
    finally:
        c.close()
        h.stop()
    parts = event_log_files(tmp_path)
    assert len(parts) > 5 and parts[-1].name == "events.jsonl"
    assert parts[0].name == "events-000001.jsonl"
    assert all(p.stat().st_size < 4096 + 2048 for p in parts)
    t = read_kvcm_events(tmp_path)  # the directory: every part, in order
    assert t.n_requests == 400  # 200 reads + 200 writes
    assert t.ts_ns.tolist() == sorted(t.ts_ns.tolist())
    out = subprocess.run([sys.executable, "-m", "kvsim", "replay", str(tmp_path), "--format",
                          "kvcm-events", "--json", "--no-out", "--capacity-blocks", "100000"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"requests": 400' in out.stdout.replace(" ", "").replace('"requests":', '"requests": ')


def test_admin_password_from_a_file(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text("from-file\n")
    env = {k: v for k, v in os.environ.items() if k != "KVSIM_ADMIN_PASSWORD"}
    p1, p2 = free_port(), free_port()
    proc = _serve(tmp_path / "d", p1, p2, "--state", "none", "--admin-password-file",
                  str(pwfile), env=env)
    try:
        call = _Http(p1, p2, pw="from-file")
        call.wait_ready(proc)
        assert _code(call("admin", "listStorage", {})) == "OK"
        assert _code(_Http(p1, p2, pw=PW)("admin", "listStorage", {})) == "INVALID_ARGUMENT"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    # the flag still works, with a warning about the process list
    p1, p2 = free_port(), free_port()
    proc = _serve(tmp_path / "d2", p1, p2, "--state", "none", "--admin-password", "flag-pw",
                  env=env)
    try:
        _Http(p1, p2, pw="flag-pw").wait_ready(proc)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "process list" in proc.stderr.read().decode()


@pytest.mark.parametrize("state", ["sqlite", "journal"])
def test_stopped_leader_is_replaced_and_demotes_on_resume(tmp_path: Path, state: str) -> None:
    """File lease with expiry: SIGSTOP the leader, a follower takes over within the
    lease; SIGCONT the old leader and it answers as a follower before any write; a
    later server finds the new leader's acknowledged write (both stores are shared by
    the two processes through the data dir and fenced by the lease epoch)."""
    data = tmp_path / "data"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("server: {leader_lease_ms: 1000}\n")
    pa, pa2, pb, pb2 = free_port(), free_port(), free_port(), free_port()
    a = _serve(data, pa, pa2, "--config", str(cfg), "--state", state, "--leader", "file")
    ca = _Http(pa, pa2)
    procs = [a]
    try:
        assert ca.wait_ready(a)["is_leader"] is True
        _register(ca, "i0")
        b = _serve(data, pb, pb2, "--config", str(cfg), "--state", state, "--leader",
                   "file")
        procs.append(b)
        cb = _Http(pb, pb2)
        assert cb.wait_ready(b)["is_leader"] is False
        os.kill(a.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        while not cb("admin", "checkHealth", {})["is_leader"]:
            assert time.monotonic() - t0 < 10, "no takeover"
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert took < 1.0 + 0.5 + 1.0  # lease + one renewal period + slack
        w = cb("meta", "startWriteCache", {"instance_id": "i0", "block_keys": [1, 2]})
        assert _code(w) == "OK"
        os.kill(a.pid, signal.SIGCONT)
        # the resumed old leader knows at once that its lease is over
        r = ca("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": [1]})
        assert _code(r) == "SERVER_NOT_LEADER", r
        time.sleep(1.5)
        assert ca("admin", "checkHealth", {})["is_leader"] is False
        assert cb("admin", "checkHealth", {})["is_leader"] is True
        f = cb("meta", "finishWriteCache", {"instance_id": "i0",
                                            "write_session_id": w["write_session_id"],
                                            "success_blocks": {"offset": 2}})
        assert _code(f) == "OK"
        for p in procs:
            p.kill()
            p.wait(10)
        pc, pc2 = free_port(), free_port()
        c = _serve(data, pc, pc2, "--config", str(cfg), "--state", state, "--leader", "file")
        procs.append(c)
        cc = _Http(pc, pc2)
        cc.wait_ready(c)
        t0 = time.monotonic()
        while not cc("admin", "checkHealth", {})["is_leader"]:  # the dead lease expires
            assert time.monotonic() - t0 < 10, "no leader after the restart"
            time.sleep(0.05)
        r = cc("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2],
                                            "query_type": "QT_BATCH_GET"})
        assert _code(r) == "OK" and all(x["type"] != "ST_UNSPECIFIED"
                                        for x in r["locations"]), r
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(10)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return st != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_replay_workers_die_with_the_parent(tmp_path: Path, mooncake_path: Path,
                                            sig: signal.Signals) -> None:
    caps = ",".join(str(1000 + 500 * i) for i in range(40))
    proc = subprocess.Popen([sys.executable, "-m", "kvsim", "replay", str(mooncake_path),
                             "--capacity-blocks", caps, "--jobs", "2", "--no-out", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        kids: list[int] = []
        while len(kids) < 2 and time.monotonic() < end and proc.poll() is None:
            kids = _children(proc.pid)
            time.sleep(0.1)
        assert len(kids) >= 2, "the sweep did not start its workers"
        time.sleep(1.0)
        os.kill(proc.pid, sig)
        proc.wait(30)
        end = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < end:
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for k in _children(proc.pid):
            os.kill(k, signal.SIGKILL)


def test_replay_removes_temp_files_of_killed_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f".summary.json.{dead.pid}.abc123.tmp"
    stale.write_text("{}")
    live = out / f".summary.json.{os.getpid()}.def456.tmp"  # a run still going: kept
    live.write_text("{}")
    r = subprocess.run([sys.executable, "-m", "kvsim", "replay", "--capacity-blocks", "1000",
                        "--out", str(out), "--timeseries-format", "csv"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not stale.exists() and live.exists()
    assert (out / "summary.json").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p != live]

"""Issue 13: ``kill -9`` in the middle of a ``finishWriteCache`` made in steps.

A finish of more than ``step_keys`` keys saves its blocks slice by slice; a call in one
of its pauses that changes the state writes the slices so far first (so its own
removal lands after them). The server process is killed with SIGKILL while such a
finish is paused (not acknowledged) right after an acknowledged removal of one of its
blocks. After a restart the store holds exactly: every acknowledged change, the
finish's saved blocks, the session re-opened for the rest only; a retried finish (the
start's mask) then gives what the whole call gives, and without a retry the session
expires leaving the saved blocks and no quota behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port

from kvsim.server.store import open_store

PW = "pw-crash"
STEP = 1000
REG = {"instance_group": "default", "block_size": 16,
       "location_spec_infos": [{"name": "t", "size": 64}],
       "model_deployment": {"model_name": "m", "dtype": "bf16"}}

# a server whose long calls run in steps of STEP keys; at the first pause of a finish
# whose blocks are being saved (a carry holds some), it marks a file and waits there
# (the service lock let go) for the test to call and then kill it
_SERVER = textwrap.dedent(f"""
    import sys, time
    from pathlib import Path
    from kvsim.server.app import start_server
    data, port, aport = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    h = start_server(None, data_dir=data, http_port=port, admin_http_port=aport,
                     admin_password={PW!r}, tick_seconds=3600, state="journal")
    svc = h.service
    svc.mgr.step_keys = {STEP}
    mark = data / "paused-in-save"

    def hook():
        if not mark.exists() and any(c.puts for c in svc._carries.values()):
            mark.write_text("1")
            while True:
                time.sleep(0.05)

    svc.on_pause = hook
    while True:
        time.sleep(1)
""")


def _ok(r: dict[str, Any]) -> dict[str, Any]:
    assert r["header"]["status"]["code"] == "OK", r["header"]
    return r


class _Server:
    def __init__(self, data: Path, *, hooked: bool) -> None:
        self.port, self.aport = free_port(), free_port()
        env = dict(os.environ, KVSIM_ADMIN_PASSWORD=PW)
        if hooked:
            script = data.parent / "crash_server.py"
            script.write_text(_SERVER)
            cmd = [sys.executable, str(script), str(data), str(self.port), str(self.aport)]
        else:
            cmd = [sys.executable, "-m", "kvsim", "serve", "--data-dir", str(data),
                   "--http-port", str(self.port), "--admin-http-port", str(self.aport),
                   "--no-grpc", "--no-access-log"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.c = httpx.Client(timeout=60)
        end = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                self.admin("checkHealth", {})
                break
            except httpx.HTTPError:
                assert time.monotonic() < end, "server did not start"
                time.sleep(0.1)

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.c.post(f"http://127.0.0.1:{self.port}/api/{method}", json=body)
        return r.json()  # type: ignore[no-any-return]

    def admin(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.c.post(f"http://127.0.0.1:{self.aport}/api/{method}", json=body,
                        auth=("admin", PW))
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def metric(self, name: str) -> int:
        ms = _ok(self.admin("getMetrics", {}))["metrics"]
        return sum(int(m["metric_value"].get("int_value", 0)) for m in ms
                   if m["metric_name"] == name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.c.close()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def _stored(data: Path) -> tuple[dict[str, set[int]], list[Any]]:
    st = open_store("journal", data)
    try:
        blocks: dict[str, set[int]] = {}
        for r in st.load_blocks():
            blocks.setdefault(r.instance_id, set()).update(r.keys.tolist())
        return blocks, st.load_sessions()
    finally:
        st.close()


@pytest.mark.parametrize("after", ["retry", "expire"])
def test_kill_9_inside_a_finish_in_steps_leaves_the_exact_state(tmp_path: Path,
                                                                 after: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(13)
    new = [2_000_000 + i for i in range(6 * STEP + 500)]
    old = [1_000_000 + i for i in range(40)]  # held before the big write
    request = list(new)
    for k in old:  # held keys spread through the request
        request.insert(int(rng.integers(0, len(request))), k)
    ok = [bool(x) for x in rng.random(len(new)) > 0.1]
    first_ok = [k for k, o in zip(new, ok, strict=True) if o]
    removed = first_ok[1]  # committed, saved in the first slice, then removed
    srv = _Server(data, hooked=True)
    try:
        for iid in ("big", "other"):
            _ok(srv.meta("registerInstance", REG | {"instance_id": iid}))
        w0 = _ok(srv.meta("startWriteCache", {"instance_id": "big", "block_keys": old}))
        _ok(srv.meta("finishWriteCache", {"instance_id": "big", "success_blocks": {
            "offset": len(old)}, "write_session_id": w0["write_session_id"]}))
        per_block = srv.metric("kvsim_group_used") // len(old)
        assert per_block > 0 and srv.metric("kvsim_group_used") == per_block * len(old)
        timeout = 5 if after == "expire" else 600
        w = _ok(srv.meta("startWriteCache", {"instance_id": "big", "block_keys": request,
                                             "write_timeout_seconds": timeout}))
        assert len(w["locations"]) == len(new)
        fin = {"instance_id": "big", "write_session_id": w["write_session_id"],
               "success_blocks": {"bool_masks": {"values": ok}}}
        lost: list[BaseException] = []

        def finish() -> None:
            try:
                srv.c.post(f"http://127.0.0.1:{srv.port}/api/finishWriteCache", json=fin,
                           timeout=120)
            except httpx.HTTPError as e:  # the server is killed under it
                lost.append(e)

        t = threading.Thread(target=finish)
        t.start()
        mark = data / "paused-in-save"
        end = time.monotonic() + 60
        while not mark.exists():
            assert time.monotonic() < end and srv.proc.poll() is None
            time.sleep(0.02)
        # acknowledged in the finish's pause: a removal of one of its blocks, a write of
        # another instance
        with httpx.Client(timeout=30) as c2:
            url = f"http://127.0.0.1:{srv.port}/api/"
            _ok(c2.post(url + "removeCache", json={"instance_id": "big",
                                                   "block_keys": [removed]}).json())
            w2 = _ok(c2.post(url + "startWriteCache", json={"instance_id": "other",
                                                            "block_keys": [5, 6]}).json())
            _ok(c2.post(url + "finishWriteCache", json={
                "instance_id": "other", "write_session_id": w2["write_session_id"],
                "success_blocks": {"offset": 2}}).json())
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        t.join(timeout=60)
        assert lost, "the finish was acknowledged before the kill"
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)

    # the store right after the crash: the finish's first slice (with its failures
    # dropped and the removal applied), the session re-opened for the rest only
    blocks, sessions = _stored(data)
    assert blocks["other"] == {5, 6}
    saved = blocks["big"] - set(old)
    assert saved and removed not in saved and saved < set(first_ok)
    assert set(old) <= blocks["big"]
    (ses,) = sessions
    done = int(ses.extra["done"])
    assert 0 < done < len(new) and saved == set(first_ok) & set(new[:done]) - {removed}
    assert ses.keys.tolist() == new[done:]

    srv = _Server(data, hooked=False)
    try:
        assert srv.metric("kvsim_write_sessions") == 1
        assert srv.metric("kvsim_group_pending_blocks") == len(new) - done
        if after == "retry":
            _ok(srv.meta("finishWriteCache", fin))  # the start's mask, as first sent
            want = set(old) | set(first_ok) - {removed}
        else:
            end = time.monotonic() + 30
            while srv.metric("kvsim_write_sessions"):
                assert time.monotonic() < end, "the session did not expire"
                time.sleep(0.2)
            gone = srv.meta("finishWriteCache", fin)["header"]["status"]
            assert gone["code"] == "INVALID_ARGUMENT" and "expired" in gone["message"], gone
            want = set(old) | saved
        assert srv.metric("kvsim_write_sessions") == 0
        assert srv.metric("kvsim_group_pending_blocks") == 0
        assert srv.metric("kvsim_group_serving_blocks") == len(want) + 2
        used = srv.metric("kvsim_group_used")
        assert used == per_block * (len(want) + 2)
        got = _ok(srv.meta("getCacheLocation", {"instance_id": "big", "block_keys": request,
                                                "query_type": "QT_BATCH_GET"}))["locations"]
        held = {k for k, loc in zip(request, got, strict=True) if loc.get("location_specs")}
        assert held == want
    finally:
        srv.stop()
    blocks, sessions = _stored(data)
    assert blocks["big"] == want and not sessions
    # the quota counts exactly the blocks held (none leaked by the crash): a fresh
    # restart restores the same usage from the blocks alone
    srv = _Server(data, hooked=False)
    try:
        assert srv.metric("kvsim_group_used") == used
        assert srv.metric("kvsim_group_serving_blocks") == len(want) + 2
    finally:
        srv.stop()

"""Two worker processes share one Optuna study in a real PostgreSQL server.

The fixture starts its own server (``initdb`` + ``pg_ctl``) on a free loopback port in
a temp directory, as user ``postgres`` when the tests run as root (the server refuses
root). ``scripts/install_services.sh`` installs the binaries when they are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import service_missing

from kvsim.config import KVSimConfig
from kvsim.optimizer.tune import TuneSpec, run_study
from kvsim.trace.generator import GenSpec, generate_trace


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        service_missing("PostgreSQL server binaries (initdb, pg_ctl) not found")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (runtime dependency)")
    prefix: list[str] = []
    d = Path(tempfile.mkdtemp(prefix="kvsim-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs a 'postgres' user to run the server as")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = d / "data"
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(d / "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        log = (d / "log").read_text() if (d / "log").exists() else ""
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"postgres did not start: {e.stderr.decode()[-500:]} {log[-500:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_two_workers_share_one_study(postgres_url: str, tmp_path: Path) -> None:
    import psycopg

    t = generate_trace(GenSpec(seed=5, requests=300, instances=2))
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "a"}, {"name": "b"}],
        "instances": [{"instance_id": "inst0", "group": "a"},
                      {"instance_id": "inst1", "group": "b"}]})
    n = 10
    spec = TuneSpec(budget=800, trials=n, seed=0, policies=("lru", "fifo"),
                    storage=postgres_url, workers=2, study_name="shared")
    o = run_study(spec, t, cfg, tmp_path / "study")
    trials = o.study.trials
    assert len(trials) == n
    assert sorted(x.number for x in trials) == list(range(n))
    assert all(x.state.name in ("COMPLETE", "PRUNED") for x in trials)
    assert sum(x.user_attrs.get("warm_start") == "exact_split" for x in trials) == 1
    # the rows themselves: one per trial, numbers unique, both workers contributed
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT number FROM trials t JOIN studies s "
                            "ON t.study_id = s.study_id WHERE s.study_name = 'shared'"
                            ).fetchall()
    assert sorted(r[0] for r in rows) == list(range(n))
    workers = {x.user_attrs.get("worker") for x in trials}
    assert workers == {0, 1}
    # export straight from the storage URL
    from kvsim.optimizer.export import export_study

    r = export_study(postgres_url, tmp_path / "x", study_name="shared")
    assert r["trial"] == o.best.number
    assert KVSimConfig.load(tmp_path / "x" / "config.yaml").groups[0].quota_blocks > 0


def test_two_processes_share_one_replay_sweep(postgres_url: str) -> None:
    """``kvsim replay --study-storage postgresql://...``: two processes claim the sweep's
    runs (each once, the claim row-locked) and both print the plain sweep's integers."""
    import json

    from test_shared_sweep import check_study, comparable, plain_sweep, shared

    ref = plain_sweep()
    pairs = shared(postgres_url, "replay-sweep", 2)
    for p, _ in pairs:
        assert p.returncode == 0, p.stderr
        assert comparable(json.loads(p.stdout)) == ref
    workers = check_study(postgres_url, "replay-sweep", 5)
    assert {int(w.rsplit(":", 1)[1]) for w in workers} <= {pid for _, pid in pairs}


def test_a_dead_process_run_is_taken_over(postgres_url: str) -> None:
    """The shared sweep's heartbeat and re-enqueue on PostgreSQL (its clock decides)."""
    from test_shared_sweep import dead_run_taken_over

    dead_run_taken_over(postgres_url, "replay-sweep-dead")

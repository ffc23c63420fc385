"""One ``kvsim replay`` sweep shared by two processes through an Optuna study (SQLite):
every run exactly once, and each process prints the plain sweep's integers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kvsim.cli import main

CAPS = "1000,5000,20000,50000"


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without wall-clock fields."""
    doc = dict(doc)
    doc.pop("compile_s", None)
    doc["results"] = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in doc["results"]]
    return doc


def plain_sweep(*extra: str) -> dict[str, Any]:
    r = CliRunner().invoke(main, ["replay", "--capacity-blocks", CAPS, "--json", *extra],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return comparable(json.loads(r.stdout))


def shared(url: str, name: str, n: int, *extra: str
           ) -> list[tuple[subprocess.CompletedProcess[str], int]]:
    """``n`` processes of the same command, started together (with their pids)."""
    cmd = [sys.executable, "-m", "kvsim", "replay", "--capacity-blocks", CAPS, "--json",
           "--study-storage", url, "--study-name", name, *extra]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ)) for _ in range(n)]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=600)
        out.append((subprocess.CompletedProcess(p.args, p.returncode, so, se), p.pid))
    return out


def check_study(url: str, name: str, runs: int) -> set[str]:
    """Every run of the study complete exactly once; returns the workers that ran them."""
    import optuna

    from kvsim.optimizer.shared_sweep import RUN_ATTR, SWEEP_ATTR

    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == runs  # nothing enqueued twice, no stray trial
    assert sorted(t.user_attrs[RUN_ATTR] for t in trials) == list(range(runs))
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert study.user_attrs[SWEEP_ATTR]["runs"] == runs
    return {t.user_attrs["kvsim_worker"] for t in trials}


@pytest.mark.parametrize("flow", ["combined", "client"])
def test_two_processes_share_one_sqlite_sweep(tmp_path: Path, flow: str) -> None:
    """4 capacities and the ideal are 5 runs: the two processes claim them (each once),
    and both print the whole sweep, equal to one process sweeping alone."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    extra = ("--flow", flow)
    ref = plain_sweep(*extra)
    pairs = shared(url, "s", 2, *extra)
    procs = [p for p, _ in pairs]
    for p in procs:
        assert p.returncode == 0, p.stderr
        assert comparable(json.loads(p.stdout)) == ref
    ran = [int(p.stderr.split(" ran ")[1].split(" of ")[0]) for p in procs]
    assert sum(ran) == 5  # every run once, between them
    workers = check_study(url, "s", 5)
    assert {int(w.rsplit(":", 1)[1]) for w in workers} <= {pid for _, pid in pairs}
    # a third process joining the finished sweep only gathers it
    late = shared(url, "s", 1, *extra)[0][0]
    assert late.returncode == 0, late.stderr
    assert " ran 0 of 5 runs here" in late.stderr
    assert comparable(json.loads(late.stdout)) == ref


def test_another_sweep_in_the_same_study_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    r = CliRunner().invoke(main, ["replay", "--capacity-blocks", "1000", "--json",
                                  "--study-storage", url, "--study-name", "s"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["replay", "--capacity-blocks", "2000", "--json",
                                  "--study-storage", url, "--study-name", "s"])
    assert r.exit_code != 0
    assert "holds another sweep" in r.output
    r = CliRunner().invoke(main, ["replay", "--capacity-blocks", "2000", "--json",
                                  "--study-storage", str(tmp_path / "j.log")])
    assert r.exit_code != 0 and "needs an RDB URL" in r.output


_KILLED_WORKER = """
import os, signal, sys
from kvsim.data import sample_trace_path
from kvsim.optimizer.shared_sweep import run_shared_sweep
from kvsim.sim.sweep import single_cache_configs
from kvsim.trace.readers import read_trace

t = read_trace(sample_trace_path())
configs = single_cache_configs([1000, 5000], instances=t.instances,
                               instance_block_size=t.block_size)
run_shared_sweep(t, configs, storage=sys.argv[1], study_name=sys.argv[2], heartbeat_s=1,
                 grace_s=2, on_run=lambda i, label: os.kill(os.getpid(), signal.SIGKILL))
"""


def _sample_sweep() -> tuple[Any, list[Any]]:
    from kvsim.data import sample_trace_path
    from kvsim.sim.sweep import single_cache_configs
    from kvsim.trace.readers import read_trace

    t = read_trace(sample_trace_path())
    return t, single_cache_configs([1000, 5000], instances=t.instances,
                                   instance_block_size=t.block_size)


def _killed_mid_run(url: str, name: str = "s") -> None:
    """A process that claims a run, records its heartbeat and dies (``kill -9``)."""
    p = subprocess.run([sys.executable, "-c", _KILLED_WORKER, url, name],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr


def dead_run_taken_over(url: str, name: str) -> None:
    """``kill -9`` mid-run leaves the trial RUNNING with a heartbeat that stops: once it
    is older than the grace period, the next process fails it, enqueues the run again
    and runs it; the sweep's integers equal a plain replay's."""
    import optuna

    from kvsim.optimizer.shared_sweep import RUN_ATTR, run_shared_sweep
    from kvsim.sim.replay import replay

    _killed_mid_run(url, name)
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["RUNNING", "WAITING", "WAITING"]
    t, configs = _sample_sweep()
    out = run_shared_sweep(t, configs, storage=url, study_name=name, heartbeat_s=1,
                           grace_s=2, poll_s=0.2, wait_s=120)
    assert sorted(out.ran) == [0, 1, 2]  # its two, then the dead process's run
    for cfg, r in zip(configs, out.results, strict=True):
        assert (r.hit_blocks == replay(t, cfg).hit_blocks).all()
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    states = sorted((t.user_attrs[RUN_ATTR], t.state.name) for t in trials)
    dead = [run for run, state in states if state == "FAIL"]
    assert len(dead) == 1 and states.count((dead[0], "COMPLETE")) == 1
    assert len(trials) == 4


def test_a_run_whose_process_died_is_run_again_by_another(tmp_path: Path) -> None:
    dead_run_taken_over(f"sqlite:///{tmp_path / 'sweep.db'}", "s")


def test_a_run_abandoned_too_often_fails_the_sweep(tmp_path: Path) -> None:
    from kvsim.optimizer.shared_sweep import run_shared_sweep

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _killed_mid_run(url)
    t, configs = _sample_sweep()
    with pytest.raises(RuntimeError, match=r"abandoned 1 times"):
        run_shared_sweep(t, configs, storage=url, study_name="s", heartbeat_s=1,
                         grace_s=2, poll_s=0.2, wait_s=120, max_retries=0)


def test_ctrl_c_gives_the_run_back(tmp_path: Path) -> None:
    import optuna

    from kvsim.optimizer.shared_sweep import run_shared_sweep

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    t, configs = _sample_sweep()

    def interrupt(i: int, label: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_shared_sweep(t, configs, storage=url, study_name="s", on_run=interrupt)
    trials = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["FAIL", "WAITING", "WAITING", "WAITING"]
    out = run_shared_sweep(t, configs, storage=url, study_name="s", max_retries=0,
                           wait_s=60)
    assert sorted(out.ran) == [0, 1, 2]  # given back, not abandoned: no retry spent


def test_heartbeat_settings_are_checked(tmp_path: Path) -> None:
    from kvsim.optimizer.shared_sweep import run_shared_sweep

    t, configs = _sample_sweep()
    with pytest.raises(ValueError, match="heartbeat_s"):
        run_shared_sweep(t, configs, storage=f"sqlite:///{tmp_path / 'x.db'}",
                         study_name="s", heartbeat_s=5, grace_s=5)

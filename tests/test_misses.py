"""Issue 19: misses by reason in replay and simulate summaries (``kvsim/sim/misses.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kvsim.config import KVSimConfig
from kvsim.optimizer.bounds import belady
from kvsim.sim import report
from kvsim.sim.misses import breakdown, ideal_hit_blocks, replay_misses
from kvsim.sim.replay import ideal, replay
from kvsim.sim.timed import simulate
from kvsim.sim.timed_report import document, misses
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace


@pytest.fixture(scope="module")
def multi() -> Trace:
    return generate_trace(GenSpec(seed=5, requests=1500, instances=3, block_size=64))


def test_ideal_pass_equals_the_unbounded_replay(multi: Trace) -> None:
    """The one-pass equals an unbounded replay, per request, for prefix and batch
    matching (keys namespaced by instance, as the block table keys them)."""
    assert (ideal_hit_blocks(multi) == replay(
        multi, KVSimConfig.single_cache(capacity_blocks=0)).hit_blocks).all()
    batch = replay(multi, KVSimConfig.single_cache(capacity_blocks=0, match="batch"))
    assert (ideal_hit_blocks(multi, match="batch") == batch.hit_blocks).all()
    assert int(ideal_hit_blocks(multi).sum()) == ideal(multi)["hit_blocks"]
    # one key space for the whole trace hits at least as much
    assert ideal_hit_blocks(multi, by_instance=False).sum() >= ideal_hit_blocks(multi).sum()


def test_ideal_pass_reads_and_writes() -> None:
    """A read-only row writes nothing; a write-only row reads nothing; ties keep file
    order; the same key twice in one request is not a hit of itself."""
    t = Trace.from_lists(ts_ns=[5, 1, 5, 9], keys=[[1, 2], [7, 7], [1, 2], [1, 2, 7]],
                         block_size=16)
    t = replace(t, kind=np.array([1, 0, 0, 2], dtype=np.int8))
    # row 0 reads only (writes nothing), row 2 is first written at 5 by itself; row 3
    # writes only (reads nothing); row 1's second 7 is not a hit of its first
    assert ideal_hit_blocks(t).tolist() == [0, 0, 0, 0]
    t2 = replace(Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 2], [1, 2]],
                                  block_size=16), kind=np.array([1, 2, 0], dtype=np.int8))
    assert ideal_hit_blocks(t2).tolist() == [0, 0, 2]


def test_breakdown_is_a_partition() -> None:
    b = breakdown(read_blocks=100, hit_blocks=30, ideal_hits=80, unusable=5,
                  session_failed=100)
    assert b == {"total": 70, "compulsory": 20, "capacity": 0, "unusable": 5,
                 "session_failed": 45}
    assert sum(b[k] for k in ("compulsory", "capacity", "unusable", "session_failed")) == 70


def test_per_group_misses_and_belady_headroom(multi: Trace) -> None:
    """Two groups: each one's compulsory misses are its own unbounded misses, the
    totals add up, and the headroom is the optimum's hits on the group's requests at
    its capacity minus the run's."""
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "a", "quota": {"blocks": 300}},
                            {"name": "b", "quota": {"blocks": 900}}],
        "instances": [{"instance_id": multi.instances[0], "group": "a"}],
        "replay": {"default_group": "b"},
    })
    r = replay(multi, cfg)
    calls: list[tuple[int, int]] = []

    def optimum(trace: Trace, capacity: int) -> int:
        calls.append((trace.n_requests, capacity))
        return int(belady(trace, [capacity], jobs=1)[0]["hit_blocks"])

    (m,) = replay_misses([r], optimum=optimum)
    a, b = m["per_group"]["a"], m["per_group"]["b"]
    assert m["misses"]["total"] == int(r.read_blocks.sum() - r.hit_blocks.sum())
    for k in ("total", "compulsory", "capacity"):
        assert a["misses"][k] + b["misses"][k] == m["misses"][k]
    in_a = multi.instance == 0
    unb = replay(multi.select(np.flatnonzero(in_a)), KVSimConfig.single_cache(
        capacity_blocks=0)).hit_blocks.sum()
    assert a["misses"]["compulsory"] == int(r.read_blocks[in_a].sum() - unb)
    assert a["misses"]["capacity"] > 0 and b["misses"]["capacity"] > 0
    assert sorted(c for _, c in calls) == [300, 900]
    assert a["belady"]["capacity"] == 300
    assert a["belady"]["hit_blocks"] == belady(multi.select(np.flatnonzero(in_a)),
                                               [300])[0]["hit_blocks"]
    assert a["belady"]["headroom_blocks"] == (a["belady"]["hit_blocks"]
                                              - int(r.hit_blocks[in_a].sum()))
    assert a["belady"]["headroom_blocks"] >= 0 and b["belady"]["headroom_blocks"] >= 0
    rec = report.build_document(report.trace_record(multi), [r], None,
                                misses=[m])["results"][0]
    assert rec["belady"]["headroom_blocks"] == (a["belady"]["headroom_blocks"]
                                                + b["belady"]["headroom_blocks"])
    assert {row["group"]: row["misses"] for row in rec["per_group"]} == {
        "a": a["misses"], "b": b["misses"]}


def test_simulate_summary_has_misses(multi: Trace) -> None:
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "g", "quota": {"blocks": 400}}],
        "replay": {"default_group": "g"},
        "timing": {"prefill_tokens_per_s": 20000},
    })
    r = simulate(multi, cfg)
    m = misses(r)
    assert m["total"] == int(r.read_blocks.sum() - r.hit_blocks.sum())
    assert m["compulsory"] == int(r.read_blocks.sum()
                                  - ideal_hit_blocks(multi, by_instance=False).sum())
    assert sum(x["total"] for x in m["per_instance"].values()) == m["total"]
    assert document(r)["summary"]["misses"] == json.loads(json.dumps(m))


def test_cli_replay_bound_belady(tmp_path: Path, multi: Trace) -> None:
    """``kvsim replay --bound belady --json``: misses and the headroom per result."""
    from kvsim.trace.writers import write_trace

    path = tmp_path / "t.jsonl"
    write_trace(multi, path, "kvcm")
    out = subprocess.run(
        [sys.executable, "-m", "kvsim", "replay", str(path), "--capacity-blocks", "500",
         "--bound", "belady", "--json"],
        capture_output=True, text=True, timeout=600, check=True, cwd=tmp_path)
    res = json.loads(out.stdout)["results"][0]
    assert res["misses"]["compulsory"] + res["misses"]["capacity"] == res["misses"]["total"]
    assert res["belady"]["hit_blocks"] == belady(multi, [500])[0]["hit_blocks"]
    assert res["belady"]["headroom_blocks"] == res["belady"]["hit_blocks"] - res["hit_blocks"]
    table = subprocess.run(
        [sys.executable, "-m", "kvsim", "replay", str(path), "--capacity-blocks", "500",
         "--no-out"], capture_output=True, text=True, timeout=600, check=True, cwd=tmp_path)
    assert "misses by reason" in table.stdout and "compulsory" in table.stdout

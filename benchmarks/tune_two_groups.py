"""Tune the two-group workload of ``tests/test_optimizer_tune.py`` and write its report.

A ``hot`` group (chat on two system prompts, long quick sessions) and a ``cold`` group
(unique documents) share a budget of 3,000 blocks. Prints the exact split against the
even split and the study's timing; writes ``reports/tune-two-groups/`` (or ``--reports``).

    PYTHONPATH=. python benchmarks/tune_two_groups.py --trials 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--budget", type=int, default=3000)
    ap.add_argument("--reports", type=Path, default=Path("reports"))
    a = ap.parse_args()
    from test_optimizer_tune import merge_traces

    from kvsim.config import KVSimConfig
    from kvsim.optimizer.report_study import write_report
    from kvsim.optimizer.tune import TuneSpec, run_study
    from kvsim.trace.generator import GenSpec, generate_trace

    hot = generate_trace(GenSpec(seed=3, requests=500, mix=(1.0, 0.0, 0.0),
                                 system_prompts=2, chat_turns=10.0, chat_think_s=5.0))
    cold = generate_trace(GenSpec(seed=4, requests=500, mix=(0.0, 0.0, 1.0), doc_turns=1.0,
                                  system_prompts=200, zipf_a=0.1, doc_tokens=(500, 2000)))
    t = merge_traces({"hot0": hot, "cold0": cold})
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "hot"}, {"name": "cold"}],
        "instances": [{"instance_id": "hot0", "group": "hot", "block_size": 16},
                      {"instance_id": "cold0", "group": "cold", "block_size": 16}]})
    spec = TuneSpec(budget=a.budget, trials=a.trials, seed=0,
                    policies=("lru", "slru", "sieve", "fifo"),
                    modes=("group_precise", "group_rough"))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        o = run_study(spec, t, cfg, Path(d) / "tune-two-groups")
        el = time.perf_counter() - t0
        out = write_report(Path(d) / "tune-two-groups", a.reports)
        trials = o.study.trials
    n_pruned = sum(x.state.name == "PRUNED" for x in trials)
    print(f"trace: {t.n_requests} requests, {t.n_keys} keys; budget {a.budget} blocks")
    print(f"exact split {dict(zip(o.split.groups, o.split.quotas, strict=True))}: "
          f"{o.split.token_hit_rate:.4f}; even split: {o.split.even_token_hit_rate:.4f}")
    print(f"study: {len(trials)} trials ({n_pruned} pruned) in {el:.1f}s; best trial "
          f"{o.best.number}: {o.best.value:.4f} {o.best.params}")
    print(f"report: {out}")


if __name__ == "__main__":
    main()

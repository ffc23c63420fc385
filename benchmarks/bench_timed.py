"""Throughput of the time-aware simulator with two tiers, against the plain replay.

Generates the benchmark trace (``GenSpec(seed=42, target_keys=--keys, instances=1,
block_size=16)``, the trace of ``bench_replay.py``) and measures on this machine,
in one run:

* the plain ``replay`` (one LRU cache of the GPU tier's capacity): the baseline;
* ``simulate`` with two tiers (a GPU tier per instance at ``--gpu-frac`` of the
  unique blocks and a shared pool at ``--pool-frac``), write-through and selective
  write-through, prefill at 10k tokens/s and 64 KiB blocks over 100/10 GB/s links,
  with the compiled event loop (``engine=auto``) and the Python event loop;

block accesses per second (event loop only, best of ``--repeat``) and the ratio to
the replay. Prints a table and writes ``reports/bench_timed.json`` atomically.
Target (issue 6): >= 2 million block accesses per second with two tiers.

Usage:
    python benchmarks/bench_timed.py [--keys 20000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2_000_000


def _tiers_config(gpu: int, pool: int, write_policy: str) -> Any:
    from kvsim.config import KVSimConfig

    return KVSimConfig.from_dict({
        "timing": {"prefill_tokens_per_s": 10_000, "block_bytes": 65_536},
        "tiers": {
            "write_policy": write_policy,
            "selective_min_reuse": 1,
            "levels": [
                {"name": "gpu", "scope": "local", "capacity_blocks": gpu,
                 "read_bytes_per_s": 100e9, "write_bytes_per_s": 100e9},
                {"name": "pool", "scope": "pool", "capacity_blocks": pool,
                 "read_bytes_per_s": 10e9, "write_bytes_per_s": 10e9, "latency_us": 20},
            ],
        },
    }, source="<bench>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20_000_000)
    ap.add_argument("--gpu-frac", type=float, default=0.01)
    ap.add_argument("--pool-frac", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    ap.add_argument("--quick", action="store_true", help="2M keys, for a smoke run")
    ap.add_argument("--no-python", action="store_true", help="skip the Python event loop")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_timed.json")
    args = ap.parse_args()
    n_keys = 2_000_000 if args.quick else args.keys

    from kvsim.config import KVSimConfig
    from kvsim.sim.replay import replay
    from kvsim.sim.timed import simulate
    from kvsim.trace.generator import GenSpec, generate_trace

    t0 = time.perf_counter()
    trace = generate_trace(GenSpec(seed=42, target_keys=n_keys, instances=1, block_size=16))
    gen_s = time.perf_counter() - t0
    unique = int(np.unique(trace.keys).shape[0])
    gpu = max(1000, int(unique * args.gpu_frac))
    pool = max(1000, int(unique * args.pool_frac))
    print(f"trace: {trace.n_requests:,} requests, {trace.n_keys:,} block accesses, "
          f"{unique:,} unique blocks (generated in {gen_s:.1f}s); gpu {gpu:,} blocks, "
          f"pool {pool:,} blocks")
    head = trace.head(200)
    replay(head, KVSimConfig.single_cache(capacity_blocks=1000))  # load the kernels
    for wp in ("through", "selective"):
        simulate(head, _tiers_config(1000, 1000, wp))
        simulate(head, _tiers_config(1000, 1000, wp), engine="python")

    def best(fn: Any) -> tuple[float, Any]:
        out = None
        secs = float("inf")
        for _ in range(args.repeat):
            r = fn()
            secs = min(secs, r.elapsed_s)
            out = r
        return secs, out

    base_s, base = best(lambda: replay(trace, KVSimConfig.single_cache(capacity_blocks=gpu)))
    runs: list[dict[str, Any]] = [{
        "name": "replay (baseline, one LRU cache of the GPU capacity)", "engine": "replay",
        "seconds": base_s, "accesses_per_s": trace.n_keys / base_s, "ratio_to_replay": 1.0,
        "block_hit_rate": base.summary()["block_hit_rate"],
    }]
    plans = [("through", "auto"), ("selective", "auto")]
    if not args.no_python:
        plans.append(("through", "python"))
    for wp, engine in plans:
        cfg = _tiers_config(gpu, pool, wp)
        secs, r = best(lambda cfg=cfg, engine=engine: simulate(trace, cfg, engine=engine))
        s = r.summary()
        runs.append({
            "name": f"simulate, gpu+pool, write-{wp}", "engine": engine,
            "seconds": secs, "accesses_per_s": trace.n_keys / secs,
            "ratio_to_replay": base_s / secs,
            "block_hit_rate": s["block_hit_rate"],
            "tier_hit_rates": {x["tier"]: x["hit_rate"] for x in s["tiers"]},
            "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
            "ttft_nocache_p50_s": s["ttft_nocache_s"]["p50"],
            "prefill_gpu_s_saved": s["prefill_gpu_s_saved"],
        })
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'run':<54} {'engine':>8} {'s':>7} {'M acc/s':>8} {'x replay':>9} {'hit rate':>8}")
    for r in runs:
        print(f"{r['name']:<54} {r['engine']:>8} {r['seconds']:>7.2f} "
              f"{r['accesses_per_s'] / 1e6:>8.2f} {r['ratio_to_replay']:>9.2f} "
              f"{r['block_hit_rate']:>8.4f}")
    main_run = runs[1]
    ok = main_run["accesses_per_s"] >= TARGET
    print(f"target >= {TARGET / 1e6:.0f} M/s with two tiers (write-through, compiled loop): "
          f"{'met' if ok else 'NOT met'} ({main_run['accesses_per_s'] / 1e6:.2f} M/s); "
          f"peak RSS {rss:.0f} MB")
    report = {
        "trace": {"requests": trace.n_requests, "block_accesses": trace.n_keys,
                  "unique_blocks": unique, "generator_seed": 42},
        "capacities_blocks": {"gpu": gpu, "pool": pool},
        "runs": runs,
        "peak_rss_mb": rss,
        "target_accesses_per_s": TARGET,
        "target_met": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

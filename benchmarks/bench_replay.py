"""Replay throughput, memory and start-up, against libCacheSim in the same run.

Generates a trace of at least ``--keys`` block accesses (default 20M) with kvsim's
generator, then measures on this machine:

* kvsim ``lru`` replay (contract semantics: prefix match, tail-first commit) at
  capacities of ``--capacity-frac`` of the unique blocks (default 1% and 10%):
  block accesses per second (kernel loop, and end to end), peak RSS, and core bytes
  per cached block;
* libCacheSim's LRU (C, via ``process_trace``) on the flattened block stream at the
  same capacity: accesses per second, and the ratio kvsim / libCacheSim;
* ``kvsim replay`` start-up on the shipped sample: cold (empty numba cache) and
  warm (second run) wall time.

Prints a table and writes ``reports/bench_replay.json``. Targets (issue 2): ratio
>= 2.0, warm start < 2 s, <= 64 bytes per cached block.

Usage:
    python benchmarks/bench_replay.py [--keys 20000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_oracle_general(keys: np.ndarray, path: Path) -> None:
    """The flattened stream as libCacheSim's oracleGeneral binary trace."""
    rec = np.zeros(keys.shape[0], dtype=np.dtype([
        ("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")]))
    rec["t"] = np.arange(keys.shape[0], dtype=np.uint64) // 1000
    rec["id"] = keys.view(np.uint64)
    rec["size"] = 1
    rec["next"] = -1
    assert rec.dtype.itemsize == struct.calcsize("<IQIq")
    rec.tofile(path)


def bench_libcachesim(keys: np.ndarray, capacity: int) -> dict[str, float]:
    import libcachesim as lcs

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "flat.oracleGeneral"
        write_oracle_general(keys, p)
        reader = lcs.TraceReader(str(p), lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = lcs.LRU(cache_size=capacity)
        t0 = time.perf_counter()
        miss_ratio, _ = cache.process_trace(reader)
        dt = time.perf_counter() - t0
    n = keys.shape[0]
    return {"seconds": dt, "accesses_per_s": n / dt,
            "hit_blocks": round((1 - miss_ratio) * n)}


def start_times() -> dict[str, float]:
    """Wall time of ``kvsim replay --no-out`` on the sample: cold then warm."""
    out = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for name in ("cold", "warm"):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "kvsim", "replay", "--no-out",
                            "--capacity-blocks", "20000"], check=True, env=env,
                           stdout=subprocess.DEVNULL, cwd=ROOT)
            out[name] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20_000_000)
    ap.add_argument("--capacity-frac", default="0.01,0.1",
                    help="capacities as fractions of the unique blocks (comma list)")
    ap.add_argument("--quick", action="store_true", help="2M keys, for a smoke run")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_replay.json")
    args = ap.parse_args()
    n_keys = 2_000_000 if args.quick else args.keys

    from kvsim.config import KVSimConfig
    from kvsim.core.table import bytes_per_row
    from kvsim.sim.replay import build_manager, replay
    from kvsim.trace.generator import GenSpec, generate_trace

    t0 = time.perf_counter()
    trace = generate_trace(GenSpec(seed=42, target_keys=n_keys, instances=1, block_size=16))
    gen_s = time.perf_counter() - t0
    unique = int(np.unique(trace.keys).shape[0])
    print(f"trace: {trace.n_requests:,} requests, {trace.n_keys:,} block accesses, "
          f"{unique:,} unique blocks (generated in {gen_s:.1f}s)")
    replay(trace.head(1000), KVSimConfig.single_cache(capacity_blocks=1000))  # load kernels
    runs = []
    for frac in [float(x) for x in args.capacity_frac.split(",")]:
        capacity = max(1000, int(unique * frac))
        cfg = KVSimConfig.single_cache(capacity_blocks=capacity, policy="lru")
        # best of --repeat runs on both sides (the first run in a process pays page faults)
        kv_best = e2e = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = replay(trace, cfg)
            e2e = min(e2e, time.perf_counter() - t0)
            kv_best = min(kv_best, res.elapsed_s)
        kv_rate = trace.n_keys / kv_best
        lcs = min((bench_libcachesim(trace.keys, capacity) for _ in range(args.repeat)),
                  key=lambda x: x["seconds"])
        # the same cache model on both sides (flattened stream, head-first LRU): equal hits
        flat = replay(trace, KVSimConfig.single_cache(
            capacity_blocks=capacity, policy="lru_head_first", match="batch"))
        mgr, _, _ = build_manager(trace, cfg, rows=capacity + int(trace.key_counts().max()) + 16)
        runs.append({
            "capacity_frac": frac, "capacity_blocks": capacity,
            "kvsim_accesses_per_s": kv_rate,
            "kvsim_end_to_end_accesses_per_s": trace.n_keys / e2e,
            "kvsim_token_hit_rate": res.summary()["token_hit_rate"],
            "kvsim_flat_accesses_per_s": trace.n_keys / flat.elapsed_s,
            "kvsim_flat_hits": int(flat.hit_blocks.sum()),
            "libcachesim_accesses_per_s": lcs["accesses_per_s"],
            "libcachesim_hits": lcs["hit_blocks"],
            "ratio": kv_rate / lcs["accesses_per_s"],
            "bytes_per_cached_block": bytes_per_row(mgr.table),
        })
    rss = _rss_mb()
    starts = {} if args.no_startup else start_times()

    head = (f"{'capacity':>12} {'hit rate':>8} {'kvsim M/s':>9} {'libCacheSim M/s':>15} "
            f"{'ratio':>6} {'flat hits kvsim / libCacheSim':>31} {'B/block':>7}")
    print(head)
    for r in runs:
        print(f"{r['capacity_blocks']:>12,} {r['kvsim_token_hit_rate']:>8.4f} "
              f"{r['kvsim_accesses_per_s'] / 1e6:>9.2f} "
              f"{r['libcachesim_accesses_per_s'] / 1e6:>15.2f} {r['ratio']:>6.2f} "
              f"{r['kvsim_flat_hits']:>14,} / {r['libcachesim_hits']:<14,} "
              f"{r['bytes_per_cached_block']:>7.1f}")
    print(f"peak RSS: {rss:.0f} MB (trace, tables and libCacheSim's input included)")
    if starts:
        print(f"start-up of `kvsim replay` on the sample: cold {starts['cold']:.2f} s, "
              f"warm {starts['warm']:.2f} s (target < 2 s)")
    report = {
        "trace": {"requests": trace.n_requests, "block_accesses": trace.n_keys,
                  "unique_blocks": unique, "generator_seed": 42},
        "runs": runs,
        "peak_rss_mb": rss,
        "startup_s": starts,
        "targets": {"ratio": 2.0, "bytes_per_cached_block": 64, "warm_start_s": 2.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

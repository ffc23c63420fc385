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

* a Bailian-schema trace (``--file-keys`` block reads, default 13.5M) written as
  JSONL and as parquet: ``kvsim replay`` end to end at 3 capacities (and at 1), wall,
  CPU and peak RSS, the JSONL read in blocks (the default) and whole (``--chunk-mb 0``,
  the baseline); the JSONL parse alone with orjson and with polars.

Prints a table and writes ``reports/bench_replay.json``. Targets (issue 17): ratio
>= 3.0, cold start < 15 s, warm start < 2 s, <= 32 bytes per cached block, JSONL at 3
capacities <= 1.5 s and 300 MB, parquet <= 1 s (3 capacities) / 0.5 s (1).

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
from typing import Any

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


_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t0 = time.perf_counter()\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(time.perf_counter() - t0, r.ru_utime + r.ru_stime, r.ru_maxrss / 1024)\n"
)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB, the largest process) of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], check=True, env=env,
                         cwd=ROOT, capture_output=True, text=True).stdout.split()
    return {"wall_s": float(out[0]), "cpu_s": float(out[1]), "peak_rss_mb": float(out[2])}


def start_times() -> dict[str, float]:
    """``kvsim replay --no-out`` on the shipped sample with an empty kernel cache (cold:
    compiles the ``lru`` kernels) then again (warm: loads them)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, KVSIM_CACHE_DIR=cache_dir, NUMBA_CACHE_DIR=cache_dir)
        env.pop("KVSIM_KERNELS", None)  # the per-policy kernels a user gets
        for name in ("cold", "warm"):
            m = measure([sys.executable, "-m", "kvsim", "replay", "--no-out",
                         "--capacity-blocks", "20000"], env)
            out[name] = m["wall_s"]
            out[f"{name}_cpu"] = m["cpu_s"]
    return out


def bench_files(trace: object, caps: list[int], work: Path) -> dict[str, object]:
    """End to end ``kvsim replay`` of the trace as Bailian JSONL and as parquet (wall,
    peak RSS), and the JSONL parse alone: orjson line by line vs polars' NDJSON reader."""
    import orjson
    import polars as pl

    from kvsim.trace.writers import write_trace

    jl, pqf = work / "trace.jsonl", work / "trace.parquet"
    write_trace(trace, jl, fmt="bailian")  # type: ignore[arg-type]
    write_trace(trace, pqf, fmt="parquet")  # type: ignore[arg-type]
    caps_s = ",".join(str(c) for c in caps)
    res: dict[str, object] = {"jsonl_mb": jl.stat().st_size / 2**20, "capacities": caps}
    kv = [sys.executable, "-m", "kvsim", "replay", "--no-out"]
    # read in 4 MiB blocks (the default past 64 MiB) and, the baseline, whole
    res["jsonl_3caps"] = measure([*kv, str(jl), "--capacity-blocks", caps_s])
    res["jsonl_3caps_whole"] = measure([*kv, str(jl), "--capacity-blocks", caps_s,
                                        "--chunk-mb", "0"])
    res["jsonl_1cap"] = measure([*kv, str(jl), "--capacity-blocks", str(caps[0])])
    res["jsonl_1cap_whole"] = measure([*kv, str(jl), "--capacity-blocks", str(caps[0]),
                                       "--chunk-mb", "0"])
    res["parquet_3caps"] = measure([*kv, str(pqf), "--capacity-blocks", caps_s])
    res["parquet_1cap"] = measure([*kv, str(pqf), "--capacity-blocks", str(caps[0])])
    t0 = time.perf_counter()
    with jl.open("rb") as f:
        n = sum(1 for line in f if orjson.loads(line))
    t_orjson = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = pl.read_ndjson(jl)
    t_polars = time.perf_counter() - t0
    assert df.height == n
    # kvsim's reader (long hash_ids lists parsed by kvsim.trace.fastids) vs the same
    # reader with every line parsed by orjson alone, CPU seconds
    from kvsim.trace.readers import DEFAULT_BLOCK_SIZE, _iter_objects, _parse_bailian, read_trace

    def fast() -> Any:
        return read_trace(jl, "bailian")

    def plain() -> Any:
        return _parse_bailian(jl, _iter_objects(jl), bs=DEFAULT_BLOCK_SIZE["bailian"],
                              tail="drop", chain="auto", strict=False, instance=None)

    t_fast = t_plain = float("inf")
    for _ in range(3):  # alternated, best of 3 each (the order and the heap matter)
        for fn in (fast, plain):
            t0 = time.process_time()
            out = fn()
            took = time.process_time() - t0
            if fn is fast:
                t_fast, keys = min(t_fast, took), out.keys
            else:
                t_plain = min(t_plain, took)
                assert np.array_equal(keys, out.keys)
            del out
    res["parse_s"] = {"orjson_lines": t_orjson, "polars_ndjson": t_polars,
                      "reader_cpu": t_fast, "reader_orjson_only_cpu": t_plain}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20_000_000)
    ap.add_argument("--capacity-frac", default="0.01,0.1",
                    help="capacities as fractions of the unique blocks (comma list)")
    ap.add_argument("--quick", action="store_true", help="2M keys, for a smoke run")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--file-keys", type=int, default=13_500_000,
                    help="block reads of the Bailian-schema file trace (0: skip)")
    ap.add_argument("--only-startup", action="store_true",
                    help="measure only the cold/warm start-up; update that field of --out "
                         "and keep the others")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_replay.json")
    args = ap.parse_args()
    if args.only_startup:
        load = os.getloadavg()[0]
        starts = start_times()
        starts["load_before"] = load
        print(f"start-up of `kvsim replay` on the sample (load {load:.1f} on "
              f"{os.cpu_count()} cores): cold (empty kernel cache) {starts['cold']:.2f} s wall "
              f"/ {starts['cold_cpu']:.1f} s CPU (target < 15 s), warm {starts['warm']:.2f} s "
              f"/ {starts['warm_cpu']:.1f} s CPU (target < 2 s)")
        old = json.loads(args.out.read_text()) if args.out.is_file() else {}
        old["startup_s"] = starts
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(old, indent=2))
        os.replace(tmp, args.out)
        return
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
    files: dict[str, object] = {}
    file_keys = min(args.file_keys, 1_500_000) if args.quick else args.file_keys
    if file_keys:
        ft = generate_trace(GenSpec(seed=7, target_keys=file_keys, instances=1, block_size=16))
        fu = int(np.unique(ft.keys).shape[0])
        with tempfile.TemporaryDirectory() as d:
            files = bench_files(ft, [max(1000, int(fu * f)) for f in (0.01, 0.05, 0.1)],
                                Path(d))
        files["block_reads"] = ft.n_keys
        files["requests"] = ft.n_requests
        del ft

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
        print(f"start-up of `kvsim replay` on the sample: cold (empty kernel cache) "
              f"{starts['cold']:.2f} s wall / {starts['cold_cpu']:.1f} s CPU (target < 15 s), "
              f"warm {starts['warm']:.2f} s (target < 2 s)")
    if files:
        print(f"file trace: {files['block_reads']:,} block reads, {files['requests']:,} "
              f"requests, JSONL {files['jsonl_mb']:.0f} MB, capacities {files['capacities']}")
        for k, label, target in (("jsonl_3caps", "JSONL, 3 capacities", "<= 1.5 s, 300 MB"),
                                 ("jsonl_3caps_whole", "JSONL, 3 capacities, whole read",
                                  "baseline"),
                                 ("jsonl_1cap", "JSONL, 1 capacity", ""),
                                 ("jsonl_1cap_whole", "JSONL, 1 capacity, whole read",
                                  "baseline"),
                                 ("parquet_3caps", "parquet, 3 capacities", "<= 1 s"),
                                 ("parquet_1cap", "parquet, 1 capacity", "<= 0.5 s")):
            m = files[k]
            print(f"  `kvsim replay` {label}: {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU, "
                  f"peak RSS {m['peak_rss_mb']:.0f} MB (target {target})")
        ps = files["parse_s"]
        print(f"  JSONL parse alone: orjson line by line {ps['orjson_lines']:.2f} s, "
              f"polars read_ndjson {ps['polars_ndjson']:.2f} s; kvsim's reader "
              f"{ps['reader_cpu']:.2f} CPU-s vs {ps['reader_orjson_only_cpu']:.2f} with "
              f"orjson alone ({ps['reader_orjson_only_cpu'] / ps['reader_cpu']:.2f}x)")
    report = {
        "trace": {"requests": trace.n_requests, "block_accesses": trace.n_keys,
                  "unique_blocks": unique, "generator_seed": 42},
        "runs": runs,
        "peak_rss_mb": rss,
        "startup_s": starts,
        "file_trace": files,
        "targets": {"ratio": 3.0, "bytes_per_cached_block": 32, "warm_start_s": 2.0,
                    "cold_start_s": 15.0, "jsonl_3caps_s": 1.5, "jsonl_3caps_rss_mb": 300,
                    "parquet_3caps_s": 1.0, "parquet_1cap_s": 0.5},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

"""One-pass exact LRU curve against one replay per capacity.

Generates a trace of at least ``--keys`` block accesses (default 20M) with kvsim's
generator (seed 42, one instance, block size 16), then measures on this machine:

* the one-pass curve: :func:`~kvsim.optimizer.curve.curve_facts` plus the projection
  at ``--points`` log-spaced capacities (default 40, from 1 block to the unique
  blocks): wall time and block accesses per second;
* ``replay`` (policy ``lru``, the contract) at ``--replays`` of those capacities
  (default 4, evenly spread over the list), timed and scaled to all ``--points``
  capacities (the output says so), and checked against the curve to the block;
* the speed-up: (scaled) replay time / one-pass time. Target (issue 3): >= 10x;
* sampled curves (SHARDS-style key sampling, chain roots always kept) at rates 0.1
  and 0.01 (``--rates``): time, keys tracked, and the mean / max absolute error of
  the block and token hit rates against the exact curve at the same capacities.

JIT compilation is excluded (both are warmed up on a small trace first). Prints a
table and writes ``reports/bench_curve.json`` atomically.

Usage:
    python benchmarks/bench_curve.py [--keys 20000000] [--points 40] [--replays 4]

Example (small, no file written):
    python benchmarks/bench_curve.py --keys 200000 --no-write
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 10.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark and write ``reports/bench_curve.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=20_000_000, help="block accesses (>=)")
    ap.add_argument("--points", type=int, default=40, help="capacities on the curve")
    ap.add_argument("--replays", type=int, default=4, help="replays actually timed")
    ap.add_argument("--rates", default="0.1,0.01", help="sample rates (comma list)")
    ap.add_argument("--no-write", action="store_true", help="do not write the JSON report")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from kvsim.config import KVSimConfig, atomic_write_text
    from kvsim.optimizer.curve import auto_capacities, curve_facts
    from kvsim.sim.replay import replay
    from kvsim.trace.generator import GenSpec, generate_trace

    con = Console()
    t0 = time.perf_counter()
    trace = generate_trace(GenSpec(seed=42, target_keys=args.keys, instances=1, block_size=16))
    gen_s = time.perf_counter() - t0
    con.print(f"trace: {trace.n_requests:,} requests, {trace.n_keys:,} block accesses "
              f"(generated in {gen_s:.1f}s)")

    small = trace.head(200)  # warm up (compile or load) every kernel on both sides
    curve_facts(small).curve([1, 10])
    replay(small, KVSimConfig.single_cache(capacity_blocks=10))

    t0 = time.perf_counter()
    facts = curve_facts(trace)
    facts_s = time.perf_counter() - t0
    caps = auto_capacities(facts.unique_blocks, args.points)
    t1 = time.perf_counter()
    curve = facts.curve(caps)
    project_s = time.perf_counter() - t1
    one_pass_s = facts_s + project_s

    picks = sorted({int(i) for i in np.rint(np.linspace(0, len(caps) - 1, args.replays))})
    runs = []
    for i in picks:
        cap = caps[i]
        t0 = time.perf_counter()
        r = replay(trace, KVSimConfig.single_cache(capacity_blocks=cap))
        el = time.perf_counter() - t0
        s = r.summary()
        exact = (s["hit_blocks"] == curve["hit_blocks"][i]
                 and s["hit_tokens"] == curve["hit_tokens"][i])
        runs.append({"capacity_blocks": cap, "replay_s": el, "hit_blocks": s["hit_blocks"],
                     "curve_hit_blocks": int(curve["hit_blocks"][i]), "exact": bool(exact)})
        del r
    per_replay = sum(x["replay_s"] for x in runs) / len(runs)
    replays_s = per_replay * len(caps)
    speedup = replays_s / one_pass_s

    table = Table(title=f"exact LRU curve, {len(caps)} capacities, "
                        f"{trace.n_keys:,} block accesses", title_justify="left")
    for col in ("", "seconds", "block accesses/s"):
        table.add_column(col, justify="right")
    table.add_row("one pass: facts", f"{facts_s:.2f}", f"{trace.n_keys / facts_s:,.0f}")
    table.add_row(f"one pass: project {len(caps)} caps", f"{project_s:.3f}", "")
    table.add_row("one pass: total", f"{one_pass_s:.2f}", f"{trace.n_keys / one_pass_s:,.0f}")
    table.add_row(f"replay x {len(runs)} (timed)", f"{sum(x['replay_s'] for x in runs):.2f}",
                  f"{trace.n_keys / per_replay:,.0f}")
    table.add_row(f"replay x {len(caps)} (= {len(runs)} timed x {len(caps) / len(runs):g})",
                  f"{replays_s:.2f}", "")
    con.print(table)
    ok = all(x["exact"] for x in runs)
    con.print(f"speed-up {speedup:.1f}x (target >= {TARGET_SPEEDUP:g}x): "
              f"{'[green]met' if speedup >= TARGET_SPEEDUP else '[red]NOT met'}[/]; "
              f"curve == replay at the {len(runs)} timed capacities: "
              f"{'[green]yes' if ok else '[red]NO'}[/]")

    rates = [float(x) for x in args.rates.split(",") if x]
    sampled = []
    ex_b = curve["block_hit_rate"].to_numpy()
    ex_t = curve["token_hit_rate"].to_numpy()
    for rate in rates:
        t0 = time.perf_counter()
        sf = curve_facts(trace, sample_rate=rate)
        sc = sf.curve(caps)
        el = time.perf_counter() - t0
        eb = np.abs(sc["block_hit_rate"].to_numpy() - ex_b)
        et = np.abs(sc["token_hit_rate"].to_numpy() - ex_t)
        sampled.append({"rate": rate, "seconds": el, "speedup_vs_exact": one_pass_s / el,
                        "unique_blocks_estimate": sf.unique_blocks,
                        "mae_block_hit_rate": float(eb.mean()), "max_block_error": float(eb.max()),
                        "mae_token_hit_rate": float(et.mean()), "max_token_error": float(et.max())})
    if sampled:
        st = Table(title=f"sampled curves vs exact ({len(caps)} capacities; errors are "
                         "absolute, in hit-rate units)", title_justify="left")
        for col in ("rate", "seconds", "vs exact", "MAE block", "max block", "MAE token",
                    "max token"):
            st.add_column(col, justify="right")
        for x in sampled:
            st.add_row(f"{x['rate']:g}", f"{x['seconds']:.2f}", f"{x['speedup_vs_exact']:.1f}x",
                       f"{x['mae_block_hit_rate']:.4f}", f"{x['max_block_error']:.4f}",
                       f"{x['mae_token_hit_rate']:.4f}", f"{x['max_token_error']:.4f}")
        con.print(st)

    doc = {
        "trace": {"requests": trace.n_requests, "block_accesses": trace.n_keys,
                  "unique_blocks": facts.unique_blocks, "generator_seed": 42,
                  "block_size": trace.block_size, "segments": int(facts.seg_threshold.size)},
        "capacities": caps,
        "one_pass": {"facts_s": facts_s, "project_s": project_s, "total_s": one_pass_s,
                     "block_accesses_per_s": trace.n_keys / one_pass_s},
        "replays": {
            "timed": runs,
            "timed_count": len(runs),
            "scaled_to": len(caps),
            "note": f"{len(runs)} replays timed; their mean x {len(caps)} estimates "
                    f"{len(caps)} replays",
            "mean_replay_s": per_replay,
            "estimated_total_s": replays_s,
        },
        "speedup": speedup,
        "exact_at_timed_capacities": ok,
        "sampled": sampled,
        "peak_rss_mb": _rss_mb(),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or
                    platform.machine()},
        "targets": {"speedup": TARGET_SPEEDUP},
    }
    if not args.no_write:
        out = ROOT / "reports" / "bench_curve.json"
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
        con.print(f"wrote {out}")


if __name__ == "__main__":
    main()

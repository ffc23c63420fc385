"""Mooncake's local-versus-global cache experiment on the Mooncake conversation trace.

Several prefill instances, each with a local cache, against the same total capacity
as one shared pool (Mooncake FAST'25: a global KVCache pool beats per-instance
caches). Both run through :func:`kvsim.sim.timed.simulate` with prefix-aware routing
(the instance with the most cached prefix, ties to the least loaded; with the pool
every instance sees the same cache, so routing only balances load). Also runs the
local setup with load-aware routing (a prefix bonus) as a second point of view.

Setup: the trace is read in place (``../shared/traces/mooncake_conversation.jsonl``,
block size 512, tail dropped, per the replay contract), prefill at 20,000 tokens/s
per instance, LRU everywhere, total capacities of 5,859 (3M tokens), 20,000 and
97,656 (50M tokens) blocks, 4 and 8 instances (a local cache = total / instances).

Writes ``reports/mooncake_local_vs_global.{json,md,png}`` atomically (together).

Usage:
    python benchmarks/mooncake_local_vs_global.py [--trace PATH] [--out-dir reports]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation.jsonl"
CAPACITIES = (5_859, 20_000, 97_656)
INSTANCES = (4, 8)
TPS = 20_000.0


def _config(levels: list[dict[str, Any]], routing: str, n: int) -> Any:
    from kvsim.config import KVSimConfig

    return KVSimConfig.from_dict({
        "timing": {"prefill_tokens_per_s": TPS},
        "tiers": {"levels": levels},
        "routing": {"policy": routing, "instances": n, "prefix_bonus": 1.0},
    }, source="<mooncake>")


def run(trace_path: Path) -> dict[str, Any]:
    from kvsim.config import KVSimConfig
    from kvsim.sim.replay import replay
    from kvsim.sim.timed import simulate
    from kvsim.trace.readers import read_trace

    trace = read_trace(trace_path, "mooncake")
    rows = []
    for cap in CAPACITIES:
        single = replay(trace, KVSimConfig.single_cache(capacity_blocks=cap)).summary()
        for n in INSTANCES:
            local = [{"name": "local", "scope": "local", "capacity_blocks": cap // n}]
            pool = [{"name": "pool", "scope": "pool", "capacity_blocks": cap}]
            res = {}
            for name, levels, routing in (("local_prefix", local, "prefix"),
                                          ("local_load", local, "load"),
                                          ("global_prefix", pool, "prefix")):
                s = simulate(trace, _config(levels, routing, n)).summary()
                res[name] = {
                    "block_hit_rate": s["block_hit_rate"], "token_hit_rate": s["token_hit_rate"],
                    "hit_blocks": s["hit_blocks"], "ttft_s": s["ttft_s"],
                    "ttft_nocache_s": s["ttft_nocache_s"],
                    "prefill_gpu_s_saved": s["prefill_gpu_s_saved"],
                    "cv_requests": s["load_balance"]["cv_requests"],
                    "cv_busy": s["load_balance"]["cv_busy"],
                }
            g, loc = res["global_prefix"], res["local_prefix"]
            rows.append({
                "capacity_blocks": cap, "capacity_tokens": cap * trace.block_size,
                "instances": n, "local_capacity_blocks": cap // n,
                "replay_single_cache_hit_blocks": single["hit_blocks"],
                "replay_single_cache_block_hit_rate": single["block_hit_rate"],
                **res,
                "ratio_global_to_local_prefix": (g["block_hit_rate"] / loc["block_hit_rate"]
                                                 if loc["block_hit_rate"] else None),
                "ratio_global_to_local_load": (
                    g["block_hit_rate"] / res["local_load"]["block_hit_rate"]
                    if res["local_load"]["block_hit_rate"] else None),
            })
            print(f"cap {cap:>6} x{n}: local(prefix) {loc['block_hit_rate']:.4f}  "
                  f"local(load) {res['local_load']['block_hit_rate']:.4f}  "
                  f"global {g['block_hit_rate']:.4f}  ratio "
                  f"{rows[-1]['ratio_global_to_local_prefix']:.2f}  "
                  f"(replay, one cache: {single['block_hit_rate']:.4f})")
    return {
        "trace": {"path": str(trace_path), "requests": trace.n_requests,
                  "read_blocks": trace.n_keys, "block_size": trace.block_size},
        "setup": {"prefill_tokens_per_s_per_instance": TPS, "policy": "lru",
                  "capacities_blocks": list(CAPACITIES), "instances": list(INSTANCES),
                  "local": "one cache of total/instances blocks per instance, prefix routing",
                  "global": "one shared pool of the total, prefix routing (ties: least loaded)"},
        "rows": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    s = doc["setup"]
    lines = [
        "# Mooncake local vs global cache (kvsim simulate)",
        "",
        f"Trace: `{Path(doc['trace']['path']).name}` ({doc['trace']['requests']:,} requests, "
        f"{doc['trace']['read_blocks']:,} full-block reads, block size "
        f"{doc['trace']['block_size']}). Prefill {s['prefill_tokens_per_s_per_instance']:,.0f} "
        "tokens/s per instance, LRU. *Local*: each instance has its own cache of total / "
        "instances blocks, requests go to the instance with the most cached prefix (ties: "
        "least loaded). *Global*: the same total as one shared pool. Generated by "
        "`benchmarks/mooncake_local_vs_global.py`.",
        "",
        "| total blocks | instances | local blocks each | local hit rate (prefix) | "
        "local hit rate (load) | global hit rate | global / local (prefix) | "
        "global / local (load) | TTFT p50 local (prefix) / global (s) "
        "| CV busy local (prefix) / global |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lp, ll, g = r["local_prefix"], r["local_load"], r["global_prefix"]
        lines.append(
            f"| {r['capacity_blocks']:,} | {r['instances']} | {r['local_capacity_blocks']:,} | "
            f"{lp['block_hit_rate']:.4f} | {ll['block_hit_rate']:.4f} | "
            f"{g['block_hit_rate']:.4f} | {r['ratio_global_to_local_prefix']:.3f} | "
            f"{r['ratio_global_to_local_load']:.3f} | "
            f"{lp['ttft_s']['p50']:.3f} / {g['ttft_s']['p50']:.3f} | "
            f"{lp['cv_busy']:.2f} / {g['cv_busy']:.2f} |")
    lines += [
        "",
        "Hit rates are block hit rates (hit blocks / full-block reads, per the replay "
        "contract). For reference the JSON carries the plain replay's single-cache figure "
        "of the same capacity (`replay_single_cache_block_hit_rate`); the pool differs from "
        "it slightly because in virtual time a request's blocks are written (and become "
        "visible, and recent) only when its prefill ends.",
        "",
        "Reading: the shared pool's hit rate is higher than or equal to the local caches' "
        "in every row, but with prefix-aware routing only by 0-1%: routing each request to "
        "the instance holding its prefix partitions the prefixes over the instances, so the "
        "local caches together behave almost like one cache of their total size. The pool's "
        "advantage is that its hit rate does not depend on routing: with load-aware routing "
        "the local caches lose 8-14% of the pool's hits (column *local (load)*); with the "
        "pool every instance sees the same cache, so prefix routing there already is pure "
        "load balancing (shortest queue) and its figure stands for load-aware routing too. "
        "A scheduler can thus weigh load freely. On this trace prefix routing stays "
        "balanced anyway (the CV of busy time is at most 0.02 everywhere), and TTFT p50 is "
        "lower with the pool in every row.",
        "",
    ]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(INSTANCES), figsize=(6 * len(INSTANCES), 4), sharey=True)
    for ax, n in zip(axes, INSTANCES, strict=True):
        rows = [r for r in doc["rows"] if r["instances"] == n]
        x = range(len(rows))
        w = 0.27
        for off, key, label in ((-w, "local_prefix", "local, prefix routing"),
                                (0.0, "local_load", "local, load-aware routing"),
                                (w, "global_prefix", "global pool")):
            ax.bar([i + off for i in x], [r[key]["block_hit_rate"] for r in rows], w,
                   label=label)
        ax.set_xticks(list(x), [f"{r['capacity_blocks']:,}" for r in rows])
        ax.set_xlabel("total capacity (blocks of 512 tokens)")
        ax.set_title(f"{n} instances")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("block hit rate")
    axes[0].legend()
    fig.suptitle("Mooncake conversation trace: per-instance caches vs one shared pool")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "reports")
    ap.add_argument("--from-json", action="store_true",
                    help="rewrite the Markdown and the chart from the existing JSON (no runs)")
    args = ap.parse_args()
    from kvsim.sim.report import staged_outputs

    if args.from_json:
        doc = json.loads((args.out_dir / "mooncake_local_vs_global.json").read_text())
    else:
        doc = run(args.trace)
    base = "mooncake_local_vs_global"
    names = [f"{base}.json", f"{base}.md", f"{base}.png"]
    with staged_outputs(args.out_dir, names) as tmp:
        tmp[names[0]].write_text(json.dumps(doc, indent=2))
        tmp[names[1]].write_text(markdown(doc))
        plot(doc, tmp[names[2]])
    print("wrote", ", ".join(str(args.out_dir / n) for n in names))


if __name__ == "__main__":
    main()

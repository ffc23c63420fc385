"""Reports of :func:`~kvsim.sim.timed.simulate` runs: rich tables, charts and files.

Everything derives from :class:`~kvsim.sim.timed.TimedResult`. The output set
(``summary.json``, ``timeseries.csv`` and three charts: ``ttft.png``, ``tiers.png``,
``load.png``) is written atomically with :func:`~kvsim.sim.report.staged_outputs`:
nothing appears under the final names unless every file was produced.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> from kvsim.sim.timed import simulate
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 10**9], keys=[[1, 2], [1, 2]], block_size=16)
    >>> r = simulate(t, KVSimConfig.from_dict({"timing": {"prefill_tokens_per_s": 32}}))
    >>> [c.header for c in tier_table(r).columns][:3]
    ['tier', 'hit blocks', 'hit rate']
    >>> document(r)["summary"]["ttft_s"]["p50"]
    0.0
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from kvsim.sim.report import staged_outputs
from kvsim.sim.timed import TimedResult
from kvsim.trace.model import KIND_WRITE

SUMMARY_NAME = "summary.json"
TIMESERIES_NAME = "timeseries.csv"
PLOTS = ("ttft.png", "tiers.png", "load.png")


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def summary_table(r: TimedResult, *, title: str | None = None) -> Table:
    """Hit rates, TTFT with and without the cache, and GPU time saved."""
    s = r.summary()
    t = Table(title=title, title_justify="left")
    for col in ("label", "requests", "block hit", "token hit", "TTFT p50", "TTFT p90",
                "TTFT p99", "no-cache p50", "no-cache p99", "prefill GPU-s",
                "GPU-s saved", "CV busy"):
        t.add_column(col, justify="left" if col == "label" else "right")
    tt, nc = s["ttft_s"], s["ttft_nocache_s"]
    t.add_row(
        s["label"], f"{s['requests']:,}", f"{s['block_hit_rate']:.4f}",
        f"{s['token_hit_rate']:.4f}", f"{tt['p50']:.3f}s", f"{tt['p90']:.3f}s",
        f"{tt['p99']:.3f}s", f"{nc['p50']:.3f}s", f"{nc['p99']:.3f}s",
        f"{s['prefill_gpu_s']:,.1f}", f"{s['prefill_gpu_s_saved']:,.1f}",
        f"{s['load_balance']['cv_busy']:.3f}",
    )
    return t


def tier_table(r: TimedResult) -> Table:
    """Per tier: hits, hit rate, traffic (MiB) and store time."""
    t = Table(title="tiers (read order)", title_justify="left")
    for col in ("tier", "hit blocks", "hit rate", "read MiB", "written blocks", "written MiB",
                "write time"):
        t.add_column(col, justify="left" if col == "tier" else "right")
    for x in r.tier_summary():
        t.add_row(x["tier"], f"{x['hit_blocks']:,}", f"{x['hit_rate']:.4f}",
                  _mb(x["bytes_read"]), f"{x['written_blocks']:,}", _mb(x["bytes_written"]),
                  f"{x['write_s']:.2f}s")
    return t


def instance_table(r: TimedResult) -> Table:
    """Per instance: requests, busy time, hit rate."""
    t = Table(title="instances (load balance)", title_justify="left")
    for col in ("instance", "requests", "busy", "block hit"):
        t.add_column(col, justify="left" if col == "instance" else "right")
    reads = np.bincount(r.instance, weights=r.read_blocks, minlength=len(r.instance_names))
    hits = np.bincount(r.instance, weights=r.hit_blocks, minlength=len(r.instance_names))
    lb = r.load_balance()
    for k, name in enumerate(r.instance_names):
        rate = hits[k] / reads[k] if reads[k] else 0.0
        t.add_row(name, f"{lb['requests'][name]:,}", f"{lb['busy_s'][name]:,.1f}s",
                  f"{rate:.4f}")
    return t


def misses(r: TimedResult) -> dict[str, Any]:
    """Missed blocks by reason (:mod:`kvsim.sim.misses`), in total and per instance.

    ``compulsory``: what an unbounded cache shared by every instance misses too (first
    accesses in the trace, and what follows one in a prefix read); ``capacity``: the
    rest: evicted, held by another instance's local tier, or written too late or not
    at all (``counters`` counts the failed writes and expired sessions; the simulator
    does not attribute a miss to them, so ``session_failed`` and ``unusable`` are 0).
    """
    from kvsim.sim.misses import breakdown, ideal_hit_blocks, per_group

    ideal = ideal_hit_blocks(r.trace, by_instance=False)
    reads = np.where(r.trace.kind != KIND_WRITE, r.read_blocks, 0)
    out: dict[str, Any] = breakdown(read_blocks=int(reads.sum()),
                                    hit_blocks=int(r.hit_blocks.sum()),
                                    ideal_hits=int(ideal.sum()))
    out["per_instance"] = per_group(reads, r.hit_blocks, ideal, r.instance.astype(np.int64),
                                    r.instance_names)
    return out


def misses_table(r: TimedResult) -> Table:
    """Why blocks missed, in total and per instance (:func:`misses`)."""
    m = misses(r)
    t = Table(title="misses by reason (blocks)", title_justify="left",
              caption="compulsory: an unbounded shared cache misses them too; capacity: "
                      "the rest (evicted, on another instance's local tier, or not yet "
                      "written)", caption_justify="left")
    for col in ("instance", "missed", "compulsory", "capacity"):
        t.add_column(col, justify="left" if col == "instance" else "right")
    rows = [("total", m), *m["per_instance"].items()]
    for name, x in rows:
        t.add_row(name, f"{x['total']:,}", f"{x['compulsory']:,}", f"{x['capacity']:,}")
    return t


def document(r: TimedResult, trace_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary: trace, config and the result's summary (with ``misses``)."""
    summary = r.summary()
    summary["misses"] = misses(r)
    return {"trace": trace_info or {"requests": r.trace.n_requests,
                                    "block_accesses": r.trace.n_keys},
            "config": r.config.to_dict(), "summary": summary}


def _plot_ttft(r: TimedResult, ts: Any, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    a, b = fig.subplots(1, 2)
    for arr, label in ((r.ttft_ns, "with cache"), (r.ttft_nocache_ns, "no cache (estimate)")):
        x = np.sort(arr) / 1e9
        a.plot(x, np.arange(1, x.shape[0] + 1) / max(1, x.shape[0]), label=label)
    a.set_xscale("symlog", linthresh=1e-3)
    a.set_xlabel("time to first token (s)")
    a.set_ylabel("fraction of requests")
    a.set_title("TTFT distribution")
    a.grid(alpha=0.3)
    a.legend()
    t = (ts["end_ns"].to_numpy() - int(r.trace.ts_ns[0])) / 1e9
    for q, style in (("50", "-"), ("99", "--")):
        b.plot(t, ts[f"ttft_p{q}_s"].to_numpy(), style, color="C0", label=f"p{q} with cache")
        b.plot(t, ts[f"ttft_nocache_p{q}_s"].to_numpy(), style, color="C1",
               label=f"p{q} no cache")
    b.set_xlabel("arrival time (s)")
    b.set_ylabel("TTFT (s)")
    b.set_title("TTFT over time (per window)")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_tiers(r: TimedResult, ts: Any, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    a, b = fig.subplots(1, 2)
    t = (ts["end_ns"].to_numpy() - int(r.trace.ts_ns[0])) / 1e9
    a.stackplot(t, *[ts[f"hit_rate[{n}]"].to_numpy() for n in r.tier_names],
                labels=list(r.tier_names), alpha=0.8)
    a.set_ylim(0, 1)
    a.set_xlabel("arrival time (s)")
    a.set_ylabel("block hit rate (stacked by tier)")
    a.set_title("hits per tier over time")
    a.grid(alpha=0.3)
    a.legend(loc="upper left")
    scale = 2**20 if r.block_bytes else 1
    unit = "MiB" if r.block_bytes else "blocks"
    for k, n in enumerate(r.tier_names):
        if r.block_bytes:
            rd, wr = ts[f"bytes_read[{n}]"].to_numpy(), ts[f"bytes_written[{n}]"].to_numpy()
        else:
            rd, wr = ts[f"hits[{n}]"].to_numpy(), ts[f"written[{n}]"].to_numpy()
        b.plot(t, rd / scale, "-", color=f"C{k}", label=f"{n} read")
        b.plot(t, wr / scale, "--", color=f"C{k}", label=f"{n} written")
    b.set_xlabel("arrival time (s)")
    b.set_ylabel(f"traffic per window ({unit})")
    b.set_title("traffic per tier over time")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_load(r: TimedResult, path: Path) -> None:
    from matplotlib.figure import Figure

    lb = r.load_balance()
    names = list(r.instance_names)
    fig = Figure(figsize=(max(6, 0.5 * len(names) + 4), 4))
    a, b = fig.subplots(1, 2)
    a.bar(names, [lb["requests"][n] for n in names])
    a.set_title(f"requests per instance (CV {lb['cv_requests']:.2f})")
    b.bar(names, [lb["busy_s"][n] for n in names], color="C1")
    b.set_title(f"busy seconds per instance (CV {lb['cv_busy']:.2f})")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_timed_outputs(out_dir: str | os.PathLike[str], r: TimedResult, *,
                        trace_info: dict[str, Any] | None = None,
                        window_ns: int | None = None, plot: bool = True) -> list[Path]:
    """Write ``summary.json``, ``timeseries.csv`` and the charts into ``out_dir`` atomically.

    Returns:
        The paths written.
    """
    ts = r.timeseries(window_ns)
    names = [SUMMARY_NAME, TIMESERIES_NAME, *(PLOTS if plot else ())]
    with staged_outputs(out_dir, names) as tmp:
        tmp[SUMMARY_NAME].write_text(json.dumps(document(r, trace_info), indent=2) + "\n")
        ts.write_csv(tmp[TIMESERIES_NAME])
        if plot:
            _plot_ttft(r, ts, tmp["ttft.png"])
            _plot_tiers(r, ts, tmp["tiers.png"])
            _plot_load(r, tmp["load.png"])
    return [Path(out_dir) / n for n in names]

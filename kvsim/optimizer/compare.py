"""Policy comparison: every eviction policy at every capacity, against the offline bounds.

:func:`compare` replays one trace under a grid of (policy, capacity) single-cache
configs in parallel (:func:`~kvsim.sim.sweep.run_sweep`), and adds at every capacity
the prefix-cache Belady optimum (:func:`~kvsim.optimizer.bounds.belady`) and the ideal
(unbounded cache). The result is one long table: ``policy, capacity, hit_blocks,
hit_tokens, block_hit_rate, token_hit_rate`` (rows ``"belady"`` and ``"ideal"`` after
the policies). :func:`compare_table` renders it as a rich table (policy rows, capacity
columns), :func:`plot_compare` charts token hit rate against capacity, and
:func:`write_compare` writes ``compare.parquet`` and ``compare.png`` atomically.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [3], [1, 2], [3]],
    ...                      block_size=16)
    >>> df = compare(t, ["lru", "fifo"], [1, 2], jobs=1)
    >>> df.select("policy", "capacity", "hit_blocks").rows()[-4:]
    [('belady', 1, 1), ('belady', 2, 2), ('ideal', 1, 3), ('ideal', 2, 3)]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from kvsim.trace.model import Trace

__all__ = [
    "BOUND_ROWS",
    "COLUMNS",
    "compare",
    "compare_table",
    "parse_policy_params",
    "plot_compare",
    "write_compare",
]

COLUMNS = ("policy", "capacity", "hit_blocks", "hit_tokens", "block_hit_rate",
           "token_hit_rate")
BOUND_ROWS = ("belady", "ideal")
PARQUET_NAME = "compare.parquet"
PLOT_NAME = "compare.png"

ProgressFn = Callable[[int, int], None]


def parse_policy_params(items: Sequence[str], policies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse ``POLICY.NAME=VALUE`` strings into typed parameters per policy.

    Raises:
        ValueError: a malformed item, a policy not compared, or a bad parameter.

    Example:
        >>> parse_policy_params(["random_lru.sample_rate=0.5"], ["lru", "random_lru"])
        {'random_lru': {'sample_rate': 0.5}}
    """
    from kvsim.sim.sweep import parse_params

    grouped: dict[str, list[str]] = {}
    for item in items:
        head, sep, _value = item.partition("=")
        policy, dot, name = head.strip().partition(".")
        if not sep or not dot or not policy or not name:
            raise ValueError(f"policy parameter {item!r}: expected POLICY.NAME=VALUE")
        if policy not in policies:
            raise ValueError(f"policy parameter {item!r}: policy {policy!r} is not compared "
                             f"(--policies {','.join(policies)})")
        grouped.setdefault(policy, []).append(item.partition(".")[2])
    return {p: parse_params(p, its) for p, its in grouped.items()}


def _check(policies: Sequence[str], capacities: Sequence[int]) -> tuple[list[str], list[int]]:
    from kvsim.core.policies import POLICIES

    pols = list(policies)
    if not pols:
        raise ValueError("no policy to compare")
    for p in pols:
        if p not in POLICIES:
            raise ValueError(f"unknown policy {p!r}; known: {', '.join(sorted(POLICIES))}")
    if len(set(pols)) != len(pols):
        raise ValueError(f"a policy is listed twice: {','.join(pols)}")
    caps = sorted({int(c) for c in capacities})
    if not caps:
        raise ValueError("no capacity to compare")
    if caps[0] <= 0:
        raise ValueError(f"capacities must be positive block counts, got {caps[0]}")
    return pols, caps


def compare(
    trace: Trace,
    policies: Sequence[str],
    capacities: Sequence[int],
    *,
    params: dict[str, dict[str, Any]] | None = None,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    **options: Any,
) -> pl.DataFrame:
    """Hit rates of every policy at every capacity, plus the Belady and ideal bounds.

    Args:
        trace: the trace.
        policies: registered policy names (see :data:`kvsim.core.policies.POLICIES`).
        capacities: capacities in blocks (positive; sorted and deduplicated).
        params: policy parameters per policy name.
        jobs: worker processes for the replay grid and the Belady runs (default: as
            :func:`~kvsim.sim.sweep.run_sweep` chooses).
        progress: ``progress(done, total)`` in requests over the replay grid.
        **options: other :meth:`~kvsim.config.KVSimConfig.single_cache` keywords
            (``tail``, ``match``, ...); ``None`` values take the defaults.

    Returns:
        The long table (:data:`COLUMNS`): the policies in the given order, then
        ``"belady"`` and ``"ideal"``, each at every capacity in ascending order.

    Raises:
        ValueError: an unknown policy, a bad parameter or a non-positive capacity.
    """
    from kvsim.optimizer.bounds import belady
    from kvsim.sim.sweep import run_sweep, single_cache_configs

    pols, caps = _check(policies, capacities)
    params = params or {}
    configs = []
    labels: list[str | None] = []
    for p in pols:
        configs += single_cache_configs(caps, policy=p, params=params.get(p, {}), **options)
        labels += [f"{p}@{c}" for c in caps]
    sweep = run_sweep(trace, configs, labels=labels, jobs=jobs, progress=progress)
    rows: list[dict[str, Any]] = []
    results = iter(sweep.results)
    for p in pols:
        for c in caps:
            s = next(results).summary()
            rows.append({"policy": p, "capacity": c} | {k: s[k] for k in COLUMNS[2:]})
    for b in belady(trace, caps, jobs=jobs):
        rows.append({"policy": "belady"} | {k: b[k] for k in COLUMNS[1:]})
    ideal = sweep.ideal
    assert ideal is not None
    for c in caps:
        rows.append({"policy": "ideal", "capacity": c} | {k: ideal[k] for k in COLUMNS[2:]})
    return pl.DataFrame(rows, schema={
        "policy": pl.Utf8, "capacity": pl.Int64, "hit_blocks": pl.Int64,
        "hit_tokens": pl.Int64, "block_hit_rate": pl.Float64, "token_hit_rate": pl.Float64,
    })


def compare_table(df: pl.DataFrame, *, title: str | None = None,
                  metric: str = "token_hit_rate") -> Table:
    """A rich table: one row per policy (bounds last), one column per capacity.

    Example:
        >>> df = pl.DataFrame({"policy": ["lru", "ideal"], "capacity": [8, 8],
        ...                    "token_hit_rate": [0.25, 0.5]})
        >>> compare_table(df).row_count
        2
    """
    caps = sorted(set(df["capacity"].to_list()))
    table = Table(title=title, title_justify="left")
    table.add_column(f"policy ({metric.replace('_', ' ')})")
    for c in caps:
        table.add_column(f"{c:,}", justify="right")
    policies = list(dict.fromkeys(df["policy"].to_list()))
    value = {(p, c): v for p, c, v in df.select("policy", "capacity", metric).iter_rows()}
    last_policy = [p for p in policies if p not in BOUND_ROWS][-1:]
    for p in policies:
        style = "dim" if p in BOUND_ROWS else None
        cells = [f"{value[(p, c)]:.4f}" if (p, c) in value else "-" for c in caps]
        table.add_row(p, *cells, style=style, end_section=[p] == last_policy)
    return table


def plot_compare(df: pl.DataFrame, path: str | os.PathLike[str], *,
                 title: str | None = None) -> None:
    """Token hit rate against capacity (log x): one line per policy, bounds dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    policies = list(dict.fromkeys(df["policy"].to_list()))
    i = 0
    for p in policies:
        d = df.filter(pl.col("policy") == p).sort("capacity")
        x, y = d["capacity"].to_numpy(), d["token_hit_rate"].to_numpy()
        if p in BOUND_ROWS:
            color = "black" if p == "belady" else "0.5"
            ax.plot(x, y, color=color, ls="--", lw=1.5, label=p)
        else:
            ax.plot(x, y, color=f"C{i % 10}", lw=1.8, marker="o", ms=3, label=p)
            i += 1
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("token hit rate")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "token hit rate vs capacity", loc="left", fontsize=10)
    if policies:
        ax.legend(fontsize=8)
    fig.savefig(path, format="png")


def write_compare(out_dir: str | os.PathLike[str], df: pl.DataFrame, *,
                  title: str | None = None, plot: bool = True) -> list[Path]:
    """Write ``compare.parquet`` (and ``compare.png``) into ``out_dir`` atomically.

    Every file goes to a temp file in ``out_dir`` first and is renamed into place only
    once all were written; on failure the temp files are removed.

    Returns:
        The paths written.
    """
    from kvsim.sim.report import staged_outputs

    out = Path(out_dir)
    names = [PARQUET_NAME, *([PLOT_NAME] if plot else [])]
    with staged_outputs(out, names) as tmp:
        df.write_parquet(tmp[PARQUET_NAME])
        if plot:
            plot_compare(df, tmp[PLOT_NAME], title=title)
    return [out / name for name in names]

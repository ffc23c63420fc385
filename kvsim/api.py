"""A notebook-friendly Python API: replay traces and get DataFrames back.

:func:`replay` takes a trace (or a path) and one capacity, a list of capacities (a
sweep, run in parallel worker processes) or configs, and returns a
:class:`ReplayRun` whose tables are polars DataFrames (``.to_pandas()`` converts):
``summary`` (one row per run), ``per_instance``, ``per_group`` and ``timeseries``.
The numbers are those of ``kvsim replay --json`` (the same record builder).

Example:
    >>> import kvsim.api as kv
    >>> run = kv.replay(kv.sample_trace_path(), capacity_blocks=[2000, 8000])
    >>> run.summary.select("label", "capacity_blocks", "hit_blocks").rows()
    [('lru@2000', 2000, 102060), ('lru@8000', 8000, 142670)]
    >>> run.ideal["hit_blocks"], run.per_instance.height
    (161386, 4)
    >>> t = kv.load_trace(kv.sample_trace_path(), limit=100)
    >>> kv.replay(t).summary["hit_blocks"].item()
    3350
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from kvsim.config import KVSimConfig
from kvsim.data import sample_trace_path
from kvsim.sim import report
from kvsim.sim.replay import ReplayResult
from kvsim.sim.sweep import parse_params, run_sweep, single_cache_configs, tokens_to_blocks
from kvsim.trace.model import Trace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ReplayRun", "load_trace", "replay", "sample_trace_path"]

PathLike = str | os.PathLike[str]
_TABLES = ("summary", "per_instance", "per_group", "timeseries")


def load_trace(
    path: PathLike,
    fmt: str = "auto",
    *,
    block_size: int | None = None,
    tail: str = "drop",
    chain: str = "auto",
    strict: bool = False,
    instance: str | None = None,
    limit: int | None = None,
) -> Trace:
    """Read a trace file (any supported format), optionally its first ``limit`` requests.

    Args:
        path: ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file.
        fmt: ``auto``, ``mooncake``, ``bailian``, ``kvcm`` or ``parquet``.
        block_size: tokens per key (default: the format's / the parquet file's).
        tail: ``drop`` (full blocks only, the contract) or ``keep``.
        chain: ``auto``, ``on`` or ``off`` (chain per-block ids into prefix keys).
        strict: raise on out-of-order timestamps instead of sorting with a warning.
        instance: see :func:`kvsim.trace.read_trace`.
        limit: keep only the first ``limit`` requests.

    Returns:
        The :class:`~kvsim.trace.model.Trace`.

    Raises:
        TraceError: the message names the file, line and field.

    Example:
        >>> t = load_trace(sample_trace_path(), limit=10)
        >>> t.n_requests, t.block_size, t.instances
        (10, 16, ('inst0', 'inst1'))
    """
    from kvsim.trace.readers import read_trace

    t = read_trace(path, fmt, block_size=block_size, tail=tail,  # type: ignore[arg-type]
                   chain=chain, strict=strict, instance=instance)  # type: ignore[arg-type]
    if limit is not None and limit < t.n_requests:
        t = t.head(limit)
    return t


@dataclass
class ReplayRun:
    """The results of :func:`replay`, as DataFrames.

    Attributes:
        trace: the replayed trace.
        results: one :class:`~kvsim.sim.replay.ReplayResult` per run (per-request
            arrays; ``.frame()`` gives one row per request).
        ideal: the unbounded-cache figures (``hit_blocks``, ``hit_tokens``,
            ``block_hit_rate``, ``token_hit_rate``).
        source: where the trace came from.
        window_s: the time-series window in seconds (``None``: the span / 200).
    """

    trace: Trace
    results: list[ReplayResult]
    ideal: dict[str, Any] | None
    source: str = "<memory>"
    window_s: float | None = None
    _cache: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------ tables
    def document(self) -> dict[str, Any]:
        """The ``kvsim replay --json`` document (``trace``, ``ideal``, ``results``)."""
        info = report.trace_record(self.trace, path=self.source)
        return report.build_document(info, self.results, self.ideal)

    @property
    def summary(self) -> pl.DataFrame:
        """One row per run: label, capacity, policy, totals, rates, evictions, peaks."""
        if "summary" not in self._cache:
            rows = []
            for r in self.results:
                rec = report.result_record(r)
                for k in ("per_instance", "per_group", "groups"):
                    rec.pop(k)
                rec["params"] = json.dumps(rec["params"], sort_keys=True)
                rows.append(rec)
            self._cache["summary"] = pl.DataFrame(rows, infer_schema_length=None)
        return self._cache["summary"]

    @property
    def per_instance(self) -> pl.DataFrame:
        """Totals and rates per (run ``label``, ``instance``)."""
        if "per_instance" not in self._cache:
            self._cache["per_instance"] = self._stack(report.per_instance_frame)
        return self._cache["per_instance"]

    @property
    def per_group(self) -> pl.DataFrame:
        """Totals and rates per (run ``label``, ``group``)."""
        if "per_group" not in self._cache:
            self._cache["per_group"] = self._stack(lambda r: r.by("group"))
        return self._cache["per_group"]

    @property
    def timeseries(self) -> pl.DataFrame:
        """Per-window and cumulative rates and cache usage, one block of rows per run.

        Columns: ``label``, ``window``, ``t_s`` (window end, seconds from the first
        request), counts, ``token_hit_rate``, ``cum_token_hit_rate``, ...,
        ``cached_blocks[<instance>]``, ``cached_blocks``, ``group_used``.
        """
        if "timeseries" not in self._cache:
            self._cache["timeseries"] = self.timeseries_at(self.window_s)
        return self._cache["timeseries"]

    def timeseries_at(self, window_s: float | None = None, *, points: int = 200
                      ) -> pl.DataFrame:
        """The time series with a window of ``window_s`` seconds (default: span/points)."""
        window_ns = None if window_s is None else max(1, round(window_s * 1e9))
        return report.timeseries_frame(self.results, window_ns=window_ns, points=points)

    def to_pandas(self, table: str = "summary") -> pd.DataFrame:
        """One of ``summary``, ``per_instance``, ``per_group``, ``timeseries`` as pandas."""
        if table not in _TABLES:
            raise ValueError(f"table must be one of {', '.join(_TABLES)}, got {table!r}")
        df: pl.DataFrame = getattr(self, table)
        return df.to_pandas()

    # ------------------------------------------------------------ files
    def save(self, out_dir: PathLike, *, timeseries_format: str = "parquet",
             plot: bool = True) -> list[Path]:
        """Write ``summary.json``, the time series and ``hitrate.png`` (atomically)."""
        unit = ("bytes" if any(g.unit == "bytes" for r in self.results for g in r.config.groups)
                else "blocks")
        return report.write_outputs(out_dir, self.document(), self.timeseries,
                                    ts_format=timeseries_format, ideal=self.ideal, plot=plot,
                                    unit=unit)

    def plot(self, path: PathLike) -> None:
        """Write the hit-rate / usage chart as a PNG to ``path``."""
        report.plot_hitrate(self.timeseries, path, ideal=self.ideal)

    def _stack(self, fn: Callable[[ReplayResult], pl.DataFrame]) -> pl.DataFrame:
        frames = [fn(r).select(pl.lit(r.label, dtype=pl.Utf8).alias("label"), pl.all())
                  for r in self.results]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    def __repr__(self) -> str:
        labels = ", ".join(r.label for r in self.results)
        return (f"ReplayRun({self.source!r}, {self.trace.n_requests:,} requests, "
                f"runs: {labels})")


def replay(
    trace: Trace | PathLike,
    capacity_blocks: int | Sequence[int] | None = None,
    *,
    capacity_tokens: int | Sequence[int] | None = None,
    policy: str = "lru",
    params: dict[str, Any] | Sequence[str] | None = None,
    config: KVSimConfig | PathLike | dict[str, Any] | Sequence[KVSimConfig] | None = None,
    mode: str | None = None,
    batch_size: int | None = None,
    used_percentage: float | None = None,
    match: str | None = None,
    labels: Sequence[str] | None = None,
    jobs: int | None = None,
    window_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    flow: str = "combined",
    **trace_opts: Any,
) -> ReplayRun:
    """Replay a trace through one cache, a capacity sweep, or configs.

    Args:
        trace: a :class:`~kvsim.trace.model.Trace` or a trace path (read with
            :func:`load_trace` and ``trace_opts``).
        capacity_blocks: capacity in blocks, or a list (a sweep); ``None`` and no
            ``capacity_tokens``/``config``: unbounded (the ideal). 0 = unbounded.
        capacity_tokens: capacity in tokens instead (``floor(tokens / block_size)``
            blocks, with the trace's block size), or a list.
        policy: eviction policy name (see ``kvsim.core.policies.POLICIES``).
        params: policy parameters, a mapping or ``["NAME=VALUE", ...]``.
        config: a :class:`~kvsim.config.KVSimConfig`, a config file, a mapping, or a
            list of configs (one run each); excludes the cache keywords.
        mode: eviction mode (default ``group_precise``).
        batch_size: blocks evicted per instance per round in the rough modes.
        used_percentage: evict when usage passes capacity x this fraction.
        match: ``prefix`` (default) or ``batch``.
        labels: a label per run (default ``policy@capacity``, or the config file stem).
        jobs: worker processes for several runs (default ``min(runs, CPUs)``;
            1 = in-process).
        window_s: time-series window in seconds (default: the trace span / 200).
        progress: ``progress(done_requests, total_requests)`` over all runs.
        flow: ``combined`` (the replay contract's request; refuses a config with a
            storage rule) or ``client`` (the server's calls, every storage rule; in
            this process), as ``kvsim replay --flow``.
        **trace_opts: :func:`load_trace` keywords (``fmt``, ``block_size``, ``tail``,
            ``chain``, ``strict``, ``instance``, ``limit``) when ``trace`` is a path.

    Returns:
        A :class:`ReplayRun`.

    Raises:
        TraceError, ConfigError, ValueError: the message names the file, line or field.

    Example:
        >>> run = replay(sample_trace_path(), capacity_tokens=[32_000, 128_000])
        >>> [(c, round(r, 4)) for c, r in
        ...  run.summary.select("capacity_blocks", "block_hit_rate").rows()]
        [(2000, 0.447), (8000, 0.6248)]
        >>> run.to_pandas("per_instance")[["label", "instance", "hit_blocks"]].shape
        (4, 3)
    """
    cache_kw = {"capacity_blocks": capacity_blocks, "capacity_tokens": capacity_tokens,
                "params": params, "mode": mode, "batch_size": batch_size,
                "used_percentage": used_percentage, "match": match}
    if config is not None:
        given = sorted(k for k, v in cache_kw.items() if v is not None)
        if given or policy != "lru":
            raise ValueError(f"{', '.join(given) or 'policy'} cannot be combined with config")
    if capacity_blocks is not None and capacity_tokens is not None:
        raise ValueError("give capacity_blocks or capacity_tokens, not both")

    configs, config_labels = _configs_from(config)
    if isinstance(trace, Trace):
        if trace_opts:
            raise ValueError(f"trace options {sorted(trace_opts)} need a trace path")
        t, source = trace, trace.source
    else:
        if configs and "tail" not in trace_opts:
            trace_opts["tail"] = configs[0].replay.tail
        t, source = load_trace(trace, **trace_opts), str(trace)

    if not configs:
        param_values = (parse_params(policy, list(params))
                        if params is not None and not isinstance(params, dict)
                        else dict(params or {}))
        if capacity_tokens is not None:
            caps = [tokens_to_blocks(int(c), t.block_size) for c in _as_list(capacity_tokens)]
        else:
            caps = _as_list(capacity_blocks) if capacity_blocks is not None else [0]
        configs = single_cache_configs(
            caps, policy=policy, params=param_values, mode=mode, batch_size=batch_size,
            used_percentage=used_percentage, match=match,
            tail=trace_opts.get("tail", "drop"),
        )
        config_labels = [None] * len(configs)
    run_labels: list[str | None] = list(labels) if labels is not None else config_labels
    sweep = run_sweep(t, configs, labels=run_labels, jobs=jobs, progress=progress, flow=flow)
    return ReplayRun(trace=t, results=sweep.results, ideal=sweep.ideal, source=source,
                     window_s=window_s)


def _as_list(v: int | Sequence[int]) -> list[int]:
    if isinstance(v, numbers.Integral):
        return [int(v)]
    return [int(x) for x in v]  # type: ignore[union-attr]


def _configs_from(config: Any) -> tuple[list[KVSimConfig], list[str | None]]:
    if config is None:
        return [], []
    items = list(config) if isinstance(config, list | tuple) else [config]
    configs: list[KVSimConfig] = []
    labels: list[str | None] = []
    for c in items:
        if isinstance(c, KVSimConfig):
            configs.append(c)
            labels.append(None)
        elif isinstance(c, dict):
            configs.append(KVSimConfig.from_dict(c))
            labels.append(None)
        else:
            configs.append(KVSimConfig.load(c))
            labels.append(Path(c).stem)
    return configs, labels

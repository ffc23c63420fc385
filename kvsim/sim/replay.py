"""Trace replay through the core in virtual time.

:func:`replay` registers the config's groups and the trace's instances in a
:class:`~kvsim.core.manager.CacheManager` on a :class:`ManualClock` and feeds the
whole trace to the core's batch kernel in chunks (so a progress callback can
report). The per-request outcome arrays are the metrics: every rate, table and
time series in :class:`ReplayResult` derives from them, per the replay contract.

Example:
    >>> from kvsim.trace.model import Trace
    >>> from kvsim.config import KVSimConfig
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 2, 3], [4]], block_size=16)
    >>> r = replay(t, KVSimConfig.single_cache(capacity_blocks=3))
    >>> r.summary()["hit_blocks"], r.summary()["block_hit_rate"]
    (2, 0.3333333333333333)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from kvsim.config import ConfigError, KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.core.manager import QUERY_BATCH, QUERY_PREFIX, CacheManager
from kvsim.core.spec import InstanceSpec
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace, TraceError

ProgressFn = Callable[[int, int], None]
StepFn = Callable[[int, int, int, int], None]

CHUNK_KEYS = 1 << 20
UNBOUNDED_ROWS = 1 << 20  # first block rows of an unbounded cache (doubles as it fills)


@dataclass(frozen=True)
class ReplayResult:
    """Per-request outcomes of one replay, and everything derived from them.

    Attributes:
        label: a name for tables and plots (e.g. ``"lru@5859"``).
        trace: the replayed trace.
        config: the configuration it ran with.
        group_of_instance: group name per trace instance (index = trace instance).
        hit_blocks: int64[n] available blocks per request (internal + external).
        internal_hits: int64[n] masked blocks (held by the engine) per request.
        internal_reads: int64[n] masked blocks per request.
        cached_blocks: int64[n] the request's instance's SERVING blocks after it.
        group_used: int64[n] the request's group usage (its unit) after it.
        evicted: int64[n] blocks evicted by the request.
        elapsed_s: wall time of the kernel loop (kernel compile excluded).
        capacity_units: eviction target per group name (0 = unbounded).
        evicted_by_trigger: blocks evicted per reclaim trigger (the manager's counters:
            the reclaimer's and the write-time storage triggers; the combined kernel's
            evictions at each write are in ``evicted``).
    """

    label: str
    trace: Trace
    config: KVSimConfig
    group_of_instance: tuple[str, ...]
    hit_blocks: np.ndarray
    internal_hits: np.ndarray
    internal_reads: np.ndarray
    cached_blocks: np.ndarray
    group_used: np.ndarray
    evicted: np.ndarray
    elapsed_s: float
    capacity_units: dict[str, int] = field(default_factory=dict)
    evicted_by_trigger: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------ basic columns
    @property
    def reads(self) -> np.ndarray:
        """bool[n]: rows that are reads (combined requests or read-only events)."""
        return self.trace.kind != KIND_WRITE

    @property
    def read_blocks(self) -> np.ndarray:
        """int64[n] keys read per request (0 for write-only rows)."""
        return np.where(self.reads, self.trace.key_counts(), 0)

    @property
    def input_tokens(self) -> np.ndarray:
        """int64[n] the hit-rate denominator per request (0 for write-only rows)."""
        return np.where(self.reads, self.trace.input_len, 0)

    @property
    def hit_tokens(self) -> np.ndarray:
        """int64[n] ``min(hit_blocks * block_size, input_len)`` per the contract."""
        return np.minimum(self.hit_blocks * self.trace.block_size, self.input_tokens)

    @property
    def internal_hit_tokens(self) -> np.ndarray:
        """int64[n] tokens of internal (masked) hits."""
        return np.minimum(self.internal_hits * self.trace.block_size, self.input_tokens)

    # ------------------------------------------------------------ summaries
    @property
    def request_token_hit_rate(self) -> np.ndarray:
        """float64[n] each read's own ``hit_tokens / input_tokens`` (NaN: no input)."""
        inp = self.input_tokens
        out = np.full(inp.shape[0], np.nan)
        ok = inp > 0
        out[ok] = self.hit_tokens[ok] / inp[ok]
        return out

    def summary(self) -> dict[str, Any]:
        """Totals and rates over the whole trace.

        The contract's rates are ratios of sums (``token_hit_rate`` = sum of hit tokens
        / sum of input tokens). ``mean_request_token_hit_rate`` is the other common
        definition, the mean over read requests of each request's own ratio (what the
        Mooncake paper's "cache ratio" reports); it weighs short requests as much as
        long ones, so the two differ.
        """
        return _rates(
            read_blocks=int(self.read_blocks.sum()),
            hit_blocks=int(self.hit_blocks.sum()),
            input_tokens=int(self.input_tokens.sum()),
            hit_tokens=int(self.hit_tokens.sum()),
            internal_reads=int(self.internal_reads.sum()),
            internal_hits=int(self.internal_hits.sum()),
            internal_hit_tokens=int(self.internal_hit_tokens.sum()),
        ) | {
            "label": self.label,
            "requests": self.trace.n_requests,
            "mean_request_token_hit_rate": _nanmean(self.request_token_hit_rate),
            "evicted_blocks": int(self.evicted.sum()),
            "peak_used": self.peak_used(),
            "peak_used_unit": self.used_unit(),
            "elapsed_s": self.elapsed_s,
        }

    def used_unit(self) -> str:
        """Unit of ``group_used`` and ``peak_used``: ``blocks``, ``bytes`` or ``mixed``."""
        units = {g.unit for g in self.config.groups}
        return units.pop() if len(units) == 1 else "mixed"

    def peak_used(self) -> int:
        """Exact peak of the cache's total usage after a request (each group in its unit).

        Every group's usage changes only at its own requests, so the total after request
        ``q`` is the sum over groups of each group's usage after its latest request.
        """
        t = self.trace
        n = t.n_requests
        if n == 0:
            return 0
        names = sorted(set(self.group_of_instance))
        if len(names) == 1:
            return int(self.group_used.max())
        code = np.asarray([names.index(g) for g in self.group_of_instance], dtype=np.int64)
        req_group = code[t.instance]
        total = np.zeros(n, dtype=np.int64)
        idx = np.arange(n)
        for g in range(len(names)):
            own = np.where(req_group == g, idx, -1)
            last = np.maximum.accumulate(own)  # the group's latest request so far (-1: none)
            total += np.where(last >= 0, self.group_used[np.maximum(last, 0)], 0)
        return int(total.max())

    def frame(self) -> pl.DataFrame:
        """One row per request with every outcome column."""
        t = self.trace
        return pl.DataFrame({
            "ts_ns": t.ts_ns,
            "instance": pl.Series(np.asarray(t.instances, dtype=object)[t.instance],
                                  dtype=pl.Utf8),
            "group": pl.Series(np.asarray(self.group_of_instance, dtype=object)[t.instance],
                               dtype=pl.Utf8),
            "read_blocks": self.read_blocks,
            "hit_blocks": self.hit_blocks,
            "input_tokens": self.input_tokens,
            "hit_tokens": self.hit_tokens,
            "request_token_hit_rate": self.request_token_hit_rate,
            "internal_reads": self.internal_reads,
            "internal_hits": self.internal_hits,
            "internal_hit_tokens": self.internal_hit_tokens,
            "cached_blocks": self.cached_blocks,
            "group_used": self.group_used,
            "evicted": self.evicted,
        })

    def by(self, column: str) -> pl.DataFrame:
        """Totals and rates per ``"instance"`` or ``"group"``.

        Per instance, ``peak_cached_blocks`` is the instance's exact peak of cached
        (SERVING) blocks (its count grows only at its own requests). Per group,
        ``peak_used`` is the group's exact peak usage in its quota's unit (blocks, or
        bytes for a byte quota), the figure to hold against its capacity.
        """
        peak = (pl.col("cached_blocks").max().alias("peak_cached_blocks") if column == "instance"
                else pl.col("group_used").max().alias("peak_used"))
        agg = (
            self.frame()
            .group_by(column, maintain_order=True)
            .agg(
                pl.len().alias("requests"),
                pl.col("read_blocks").sum(),
                pl.col("hit_blocks").sum(),
                pl.col("input_tokens").sum(),
                pl.col("hit_tokens").sum(),
                pl.col("internal_reads").sum(),
                pl.col("internal_hits").sum(),
                pl.col("internal_hit_tokens").sum(),
                pl.col("evicted").sum().alias("evicted_blocks"),
                peak,
                pl.col("request_token_hit_rate").fill_nan(None).mean()
                .alias("mean_request_token_hit_rate"),
            )
        )
        return _add_rate_columns(agg)

    def timeseries(self, window_ns: int | None = None, *, points: int = 200) -> pl.DataFrame:
        """Per-window and cumulative rates, and cached blocks per instance at window end.

        Args:
            window_ns: window length; by default the trace span split into ``points``.
            points: number of windows when ``window_ns`` is not given.
        """
        t = self.trace
        if t.n_requests == 0:
            return pl.DataFrame()
        t0 = int(t.ts_ns[0])
        span = max(1, int(t.ts_ns[-1]) - t0)
        if window_ns is None:
            window_ns = max(1, -(-span // points))
        f = self.frame().with_columns(
            ((pl.col("ts_ns") - t0) // window_ns).alias("window")
        )
        w = (
            f.group_by("window", maintain_order=True)
            .agg(
                pl.len().alias("requests"),
                pl.col("read_blocks").sum(),
                pl.col("hit_blocks").sum(),
                pl.col("input_tokens").sum(),
                pl.col("hit_tokens").sum(),
                pl.col("evicted").sum().alias("evicted_blocks"),
            )
            .sort("window")
        )
        w = w.with_columns(
            (pl.col("window") * window_ns + t0 + window_ns).alias("end_ns"),
            _safe_div("hit_tokens", "input_tokens").alias("token_hit_rate"),
            _safe_div("hit_blocks", "read_blocks").alias("block_hit_rate"),
            (pl.col("hit_tokens").cum_sum() / pl.col("input_tokens").cum_sum().clip(1))
            .alias("cum_token_hit_rate"),
            (pl.col("hit_blocks").cum_sum() / pl.col("read_blocks").cum_sum().clip(1))
            .alias("cum_block_hit_rate"),
        )
        # cached blocks per instance at the end of each window (last observation carried)
        per_inst = (
            f.group_by(["window", "instance"], maintain_order=True)
            .agg(pl.col("cached_blocks").last())
            .pivot(on="instance", index="window", values="cached_blocks")
            .sort("window")
        )
        inst_cols = [c for c in per_inst.columns if c != "window"]
        per_inst = per_inst.with_columns(pl.col(c).forward_fill().fill_null(0) for c in inst_cols)
        per_inst = per_inst.rename({c: f"cached_blocks[{c}]" for c in inst_cols})
        out = w.join(per_inst, on="window", how="left")
        return out.with_columns(
            pl.sum_horizontal([f"cached_blocks[{c}]" for c in inst_cols]).alias("cached_blocks")
        )


def _nanmean(a: np.ndarray) -> float:
    """Mean of the non-NaN values (0.0 when there is none)."""
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else 0.0


def _safe_div(a: str, b: str) -> pl.Expr:
    return pl.when(pl.col(b) > 0).then(pl.col(a) / pl.col(b)).otherwise(None)


def _add_rate_columns(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        _safe_div("hit_tokens", "input_tokens").alias("token_hit_rate"),
        _safe_div("hit_blocks", "read_blocks").alias("block_hit_rate"),
        _safe_div("internal_hit_tokens", "input_tokens").alias("internal_token_hit_rate"),
        ((pl.col("hit_tokens") - pl.col("internal_hit_tokens"))
         / pl.col("input_tokens").clip(1)).alias("external_token_hit_rate"),
    )


def _rates(
    *, read_blocks: int, hit_blocks: int, input_tokens: int, hit_tokens: int,
    internal_reads: int, internal_hits: int, internal_hit_tokens: int,
) -> dict[str, Any]:
    def div(a: int, b: int) -> float:
        return a / b if b else 0.0

    ext_reads = read_blocks - internal_reads
    ext_hits = hit_blocks - internal_hits
    return {
        "read_blocks": read_blocks,
        "hit_blocks": hit_blocks,
        "input_tokens": input_tokens,
        "hit_tokens": hit_tokens,
        "block_hit_rate": div(hit_blocks, read_blocks),
        "token_hit_rate": div(hit_tokens, input_tokens),
        "internal_reads": internal_reads,
        "internal_hits": internal_hits,
        "external_reads": ext_reads,
        "external_hits": ext_hits,
        "internal_token_hit_rate": div(internal_hit_tokens, input_tokens),
        "external_token_hit_rate": div(hit_tokens - internal_hit_tokens, input_tokens),
        "external_block_hit_rate": div(ext_hits, ext_reads),
    }


def ideal(trace: Trace) -> dict[str, Any]:
    """Rates with an unbounded cache (only first-time keys miss), per the contract."""
    cfg = KVSimConfig.single_cache(capacity_blocks=0)
    r = replay(trace, cfg, label="ideal")
    s = r.summary()
    return {k: s[k] for k in ("hit_blocks", "hit_tokens", "block_hit_rate", "token_hit_rate",
                              "mean_request_token_hit_rate")}


def build_manager(trace: Trace, config: KVSimConfig, *, rows: int, event_level: int = 0
                  ) -> tuple[CacheManager, np.ndarray, tuple[str, ...]]:
    """A manager with the config's registry and every trace instance registered, on a
    manual clock at the trace's first time and the config's reclaim cadence.

    Returns the manager, the core instance index per trace instance, and the group
    name per trace instance.
    """
    if not config.groups:
        raise ConfigError(f"{config.source}: instance_groups: at least one group is needed")
    mgr = CacheManager(ManualClock(int(trace.ts_ns[0]) if trace.n_requests else 0), rows=rows,
                       event_level=event_level,
                       reclaim_interval_ms=config.reclaim.interval_ms)
    for st in config.storages:
        mgr.add_storage(st)
    for g in config.groups:
        mgr.create_group(g)
    listed = {s.instance_id: s for s in config.instances}
    for s in config.instances:
        mgr.register_instance(s)
    core_idx = np.zeros(len(trace.instances), dtype=np.int32)
    groups = []
    bs = config.replay.block_size or trace.block_size
    for j, name in enumerate(trace.instances):
        spec = listed.get(name)
        if spec is None:
            spec = InstanceSpec(name, config.replay.default_group, block_size=bs)
            mgr.register_instance(spec)
        core_idx[j] = mgr.instance_index(name)
        groups.append(spec.group)
    return mgr, core_idx, tuple(groups)


FLOWS = ("combined", "client")


def table_rows(config: KVSimConfig, max_len: int, n_keys: int | None = None) -> int:
    """First block-table rows of a replay: the groups' capacities plus two of the longest
    request (every group bounded in blocks), at most the trace's keys (``n_keys``, when
    known); an unbounded cache starts at :data:`UNBOUNDED_ROWS` and grows as it fills."""
    caps = [g.quota_units() for g in config.groups]
    bounded = all(c > 0 for c in caps) and all(g.unit == "blocks" for g in config.groups)
    rows = sum(caps) + 2 * max_len if bounded else (
        UNBOUNDED_ROWS if n_keys is None else n_keys)
    if n_keys is not None:
        rows = min(rows, n_keys)
    if all(c == 0 for c in caps):  # nothing is ever evicted: grow the table as it fills
        rows = min(rows, UNBOUNDED_ROWS)
    return max(rows, 16) + 16


def check_flow(config: KVSimConfig, flow: str) -> None:
    """Refuse a config whose storage rules ``flow`` would ignore: the ``combined`` flow
    (the replay contract's request) has no storages.

    Raises:
        ConfigError: naming the fields (:meth:`~kvsim.config.KVSimConfig.storage_rules`)
            and pointing at the client flow.
    """
    ignored = config.storage_rules() if flow == "combined" else []
    if ignored:
        raise ConfigError(
            f"{config.source}: {', '.join(ignored)}: the combined flow (the replay "
            "contract's request, which has no storages) would ignore "
            f"{'this storage rule' if len(ignored) == 1 else 'these storage rules'}; "
            "replay with --flow client (flow='client': the server's calls, every "
            "storage rule)")


class Replayer:
    """The replay loop: one manager fed a whole trace, or a trace's chunks in time order
    (:func:`replay`, :func:`kvsim.sim.chunked.replay_chunks`).

    Each :meth:`feed` runs its requests in pieces (cut at every :data:`CHUNK_KEYS` keys,
    at the caller's cuts and at the config's scheduled health changes) through the
    ``combined`` flow (the contract's batch kernel) or the ``client`` flow; the running
    totals cover everything fed so far.

    Args:
        first: the trace (or first chunk): its first time starts the clock and the health
            schedule, its instances are registered.
        config: groups, instances, replay options and the reclaim cadence.
        rows: the block table's first rows (:func:`table_rows`).
        flow: ``combined`` or ``client`` (see :func:`replay`).

    Raises:
        ConfigError: the ``combined`` flow and a config with a storage rule
            (:meth:`~kvsim.config.KVSimConfig.storage_rules`): it would be ignored.

    Attributes:
        mgr: the manager.
        group_of: the group name per instance of ``first``.
        fed: traces fed so far.
        read_blocks, input_tokens, hit_tokens: running totals (reads only).
        elapsed_s: time in the loop (kernel compile excluded).
    """

    def __init__(self, first: Trace, config: KVSimConfig, *, rows: int,
                 flow: str = "combined") -> None:
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        check_flow(config, flow)
        self.config = config
        self.flow = flow
        self.mgr, idx, self.group_of = build_manager(first, config, rows=rows)
        self._core = {name: int(idx[j]) for j, name in enumerate(first.instances)}
        self._listed = {s.instance_id for s in config.instances}
        self._batch = config.replay.match == "batch"
        self._health = _health_schedule(first, config)
        self._h = 0
        self._last_ts: int | None = None
        self.fed = 0
        self.read_blocks = self.input_tokens = self.hit_tokens = 0
        self.elapsed_s = 0.0

    def _core_index(self, tr: Trace) -> np.ndarray:
        """The core instance index per request of ``tr`` (registering new instances in
        the default group, as :func:`build_manager` does)."""
        mgr = self.mgr
        for name in tr.instances:
            if name in self._core:
                continue
            if name in self._listed:
                self._core[name] = mgr.instance_index(name)
            else:
                bs = self.config.replay.block_size or tr.block_size
                self._core[name] = mgr.register_instance(
                    InstanceSpec(name, self.config.replay.default_group, block_size=bs))
        code = np.asarray([self._core[name] for name in tr.instances], dtype=np.int32)
        return code[tr.instance]

    def feed(self, tr: Trace, *, cuts: np.ndarray | None = None,
             on_piece: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Replay ``tr`` after everything fed before.

        Args:
            tr: requests in time order, none before the last one fed.
            cuts: more piece ends (request indices of ``tr``).
            on_piece: called with each piece's end once it ran (the running totals
                include it).

        Returns:
            The six outcome arrays of ``tr``'s requests (hit blocks, internal hits,
            internal reads, cached blocks, group used, evicted).

        Raises:
            TraceError: ``tr`` starts before the last request fed.
        """
        n = tr.n_requests
        outs = [np.zeros(n, dtype=np.int64) for _ in range(6)]
        if n == 0:
            return outs
        if self._last_ts is not None and int(tr.ts_ns[0]) < self._last_ts:
            raise TraceError(f"{tr.source}: chunk {self.fed + 1} starts at {int(tr.ts_ns[0])} "
                             f"ns, before the previous chunk's last request ({self._last_ts} ns)")
        self._last_ts = int(tr.ts_ns[-1])
        mgr, batch, health = self.mgr, self._batch, self._health
        req_inst = self._core_index(tr)
        if self.flow == "combined":
            # load (or, on a first run, compile) the kernel before the clock starts: an
            # empty range runs nothing, so ``elapsed_s`` is the replay alone
            mgr.run_combined(req_inst, tr.ts_ns, tr.offsets, tr.keys, tr.mask, tr.kind, 0, 0,
                             outs, batch=batch)
        # piece ends: chunks of keys (an even progress bar), the caller's, health changes
        parts = [np.searchsorted(tr.offsets, np.arange(0, tr.n_keys + CHUNK_KEYS, CHUNK_KEYS)),
                 [n]]
        if cuts is not None:
            parts.append(cuts)
        if health:
            parts.append(np.searchsorted(tr.ts_ns, [at for at, _, _ in health], side="left"))
        ends = np.unique(np.clip(np.concatenate([np.asarray(c, dtype=np.int64) for c in parts]),
                                 0, n))
        ends = ends[ends > 0]
        reads = tr.kind != KIND_WRITE
        inp = np.where(reads, tr.input_len, 0)
        self.read_blocks += int(tr.key_counts()[reads].sum())
        names = tr.instances
        t0 = time.perf_counter()
        q = 0
        for end in ends.tolist():
            while self._h < len(health) and health[self._h][0] <= int(tr.ts_ns[q]):
                at, storage, ok = health[self._h]
                if mgr.reclaim_interval_ms:
                    mgr.advance_to(at)
                mgr.set_storage_health(storage, ok, "scheduled outage (reclaim.storage_health)")
                self._h += 1
            if self.flow == "combined":
                mgr.run_combined(req_inst, tr.ts_ns, tr.offsets, tr.keys, tr.mask, tr.kind,
                                 q, end, outs, batch=batch)
            else:
                _client_range(mgr, tr, names, q, end, outs, batch)
            self.input_tokens += int(inp[q:end].sum())
            self.hit_tokens += int(np.minimum(outs[0][q:end] * tr.block_size,
                                              inp[q:end]).sum())
            q = end
            if on_piece is not None:
                on_piece(q)
        self.elapsed_s += time.perf_counter() - t0
        self.fed += 1
        return outs


def default_label(config: KVSimConfig, flow: str = "combined") -> str:
    """A run's label when none is given: ``policy@capacity`` of its first group
    (``inf`` when unbounded), and the flow when it is not the combined one.

    Example:
        >>> default_label(KVSimConfig.single_cache(capacity_blocks=8), "client")
        'lru@8 (client flow)'
    """
    g0 = config.groups[0]
    cap = g0.capacity_units()
    label = f"{g0.eviction.policy}@{cap if cap else 'inf'}"
    return label if flow == "combined" else f"{label} ({flow} flow)"


def replay(
    trace: Trace,
    config: KVSimConfig,
    *,
    label: str | None = None,
    progress: ProgressFn | None = None,
    flow: str = "combined",
    steps: int = 1,
    on_step: StepFn | None = None,
) -> ReplayResult:
    """Replay ``trace`` through the core configured by ``config``.

    Args:
        trace: requests in timestamp order.
        config: groups, instances, replay options and the reclaim cadence.
        label: a name for the result (default: policy@capacity of the first group).
        progress: called as ``progress(done_requests, total_requests)``.
        flow: ``combined`` (the replay contract's combined request, the batch kernel)
            or ``client`` (per request the calls a client of ``kvsim serve`` makes:
            :meth:`~kvsim.core.manager.CacheManager.client_request`; what the live
            server does, request by request, with every storage rule; ``combined``
            refuses a config with one: :meth:`~kvsim.config.KVSimConfig.storage_rules`).
        steps: pieces of about equal requests; after each, ``on_step(s, done_requests,
            hit_tokens, input_tokens)`` is called with running totals (it may raise to
            stop, e.g. ``optuna.TrialPruned``).
        on_step: the callback.

    Returns:
        The per-request outcomes as a :class:`ReplayResult`.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2, 3], [4], [1, 2]])
        >>> cfg = KVSimConfig.single_cache(capacity_blocks=3)
        >>> seen = []
        >>> r = replay(t, cfg, flow="client", steps=2,
        ...            on_step=lambda s, d, h, i: seen.append((s, d, h)))
        >>> r.hit_blocks.tolist() == replay(t, cfg).hit_blocks.tolist(), seen
        (True, [(0, 2, 1024), (1, 4, 2048)])
    """
    n = trace.n_requests
    max_len = int(trace.key_counts().max()) if n else 0
    run = Replayer(trace, config, rows=table_rows(config, max_len, trace.n_keys), flow=flow)
    step_ends = np.unique(np.linspace(0, n, max(1, steps) + 1).round().astype(np.int64))[1:]
    steps_at = {int(e): i for i, e in enumerate(step_ends)}

    def piece_done(q: int) -> None:
        if progress is not None:
            progress(q, n)
        s = steps_at.get(q)
        if s is not None and on_step is not None:
            on_step(s, q, run.hit_tokens, run.input_tokens)

    outs = run.feed(trace, cuts=step_ends, on_piece=piece_done)
    if label is None:
        label = default_label(config, flow)
    return ReplayResult(
        label=label,
        trace=trace,
        config=config,
        group_of_instance=run.group_of,
        hit_blocks=outs[0],
        internal_hits=outs[1],
        internal_reads=outs[2],
        cached_blocks=outs[3],
        group_used=outs[4],
        evicted=outs[5],
        elapsed_s=run.elapsed_s,
        capacity_units={g.name: g.capacity_units() for g in config.groups},
        evicted_by_trigger=dict(run.mgr.evicted_by_trigger),
    )


def _health_schedule(trace: Trace, config: KVSimConfig) -> list[tuple[int, str, bool]]:
    """``(trace time ns, storage, healthy)`` of the config's scheduled health changes."""
    t0 = int(trace.ts_ns[0]) if trace.n_requests else 0
    return [(t0 + h.at_ms * 1_000_000, h.storage, h.healthy)
            for h in config.reclaim.storage_health]


def _client_range(mgr: CacheManager, trace: Trace, names: tuple[str, ...], start: int,
                  end: int, outs: list[np.ndarray], batch: bool) -> None:
    """Requests ``[start, end)`` through the client flow, each at its trace time."""
    query = QUERY_BATCH if batch else QUERY_PREFIX
    for q in range(start, end):
        mgr.advance_to(int(trace.ts_ns[q]))
        kind = int(trace.kind[q])
        a, b = int(trace.offsets[q]), int(trace.offsets[q + 1])
        mask = None if trace.mask is None else trace.mask[a:b]
        r = mgr.client_request(names[int(trace.instance[q])], trace.keys[a:b], mask=mask,
                               read=kind != KIND_WRITE, write=kind != KIND_READ, query=query)
        outs[0][q] = r.hit_blocks
        outs[1][q] = r.internal_hits
        outs[2][q] = r.internal_reads
        outs[3][q] = r.cached_blocks
        outs[4][q] = r.group_used
        outs[5][q] = r.evicted

"""Time-aware simulation: a discrete-event model of a serving cluster on the core.

:func:`simulate` drives the same core as :func:`~kvsim.sim.replay.replay`, in
virtual time. Each request goes through:

1. **arrival** at its trace time; **routing** picks an instance (the trace's own,
   round robin, most cached prefix, or least estimated time to first token);
2. **read**: the longest prefix of its keys held by the instance's tiers, in read
   order (local tiers, then the shared pool), on the cache as it is at arrival;
3. **prefill** of the missed tokens, after loading the hit blocks (per tier:
   latency + bytes / read bandwidth), at ``prefill_tokens_per_s``, in FIFO order
   per instance (requests queue);
4. **write** of its blocks when prefill ends, so concurrent requests never see each
   other's blocks early: ``at_end`` writes every key then evicts to capacity exactly
   as the replay contract does (no storages: a config with a storage rule is refused);
   ``two_phase`` on the config's own groups is the core's client flow, as the server
   runs it: the read refreshes its hits and misses blocks on unusable storages,
   ``start_write`` reserves WRITING blocks at the read and ``finish_write`` commits them
   at prefill end, with write timeouts, every storage rule, the core's reclaimer on
   ``reclaim.interval_ms`` of the virtual clock and the ``reclaim.storage_health``
   schedule (with zero times it equals ``replay --flow client``); with ``tiers:`` each
   tier's manager runs the reclaimer every ``reclaim_interval_ms``;
5. **decode** at ``decode_ms_per_token`` per output token; with
   ``session_outputs`` the previous turn's output blocks (the next turn's keys that
   cover prompt + output) are written at decode end.

Events at the same time run in request order (arrival before prefill end before
decode end of one request), so with zero latencies, infinite throughput and one
tier the hits equal the plain replay's exactly.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 0, 10**9], keys=[[1, 2], [1, 2, 3], [1, 2, 3]],
    ...                      block_size=16)
    >>> cfg = KVSimConfig.from_dict({"timing": {"prefill_tokens_per_s": 32}})
    >>> r = simulate(t, cfg)
    >>> r.hit_blocks.tolist()   # request 1 arrives while request 0 is in prefill
    [0, 0, 2]
    >>> [x / 1e9 for x in r.ttft_ns.tolist()]   # 1 s prefill; then queueing
    [1.0, 2.5, 2.0]
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from kvsim.config import ConfigError, KVSimConfig, TierSpec
from kvsim.core.clock import ManualClock
from kvsim.core.errors import NotFound, QuotaExceeded
from kvsim.core.events import EV_EVICTED
from kvsim.core.manager import QUERY_BATCH, QUERY_PREFIX, CacheManager, TickReport
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec
from kvsim.sim import _timed_kernels as TK
from kvsim.trace.model import KIND_REQUEST, Trace

ProgressFn = Callable[[int, int], None]

ARRIVE, PREFILL_END, DECODE_END = 0, 1, 2
_NS = 1_000_000_000
_CHUNK_KEYS = 1 << 20
ENGINES = ("auto", "python", "compiled")


@dataclass
class _Tier:
    """One tier: its own manager, the core instance of every simulated instance."""

    name: str
    scope: str
    mgr: CacheManager
    idx: list[int]  # core instance index per simulated instance
    names: list[str]  # core instance name per simulated instance
    delete_now: list[bool]
    latency_ns: float = 0.0
    read_bps: float = 0.0
    write_bps: float = 0.0
    demote: bool = False
    core_to_sim: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TimedResult:
    """Per-request outcomes of one simulation, and everything derived from them.

    Times are virtual nanoseconds. Arrays have one entry per request; ``tier_hits``
    and ``written`` one column per tier (read order).

    Attributes:
        label: a name for tables and plots.
        trace: the simulated trace.
        config: the configuration it ran with.
        tier_names: the tiers, in read order.
        instance_names: the simulated instances.
        instance: int32 instance each request was routed to.
        hit_blocks: int64 prefix blocks held by the tiers at arrival.
        tier_hits: int64[n, tiers] of those, served by each tier.
        written: int64[n, tiers] new blocks written into each tier for the request.
        queue_ns: wait for the instance before loading and prefill.
        load_ns: loading the hit blocks.
        prefill_ns: prefill of the missed tokens.
        ttft_ns: time to first token (queue + load + prefill).
        ttft_nocache_ns: the same with no cache (every token prefilled, its own queue).
        busy_ns: per instance, time spent loading and prefilling.
        write_ns: per tier, time spent storing blocks (bandwidth; not on the TTFT path).
        counters: write failures, expired sessions, demotions, output blocks...
        elapsed_s: wall time of the event loop.
    """

    label: str
    trace: Trace
    config: KVSimConfig
    tier_names: tuple[str, ...]
    instance_names: tuple[str, ...]
    instance: np.ndarray
    hit_blocks: np.ndarray
    tier_hits: np.ndarray
    written: np.ndarray
    queue_ns: np.ndarray
    load_ns: np.ndarray
    prefill_ns: np.ndarray
    ttft_ns: np.ndarray
    ttft_nocache_ns: np.ndarray
    busy_ns: np.ndarray
    write_ns: np.ndarray
    counters: dict[str, int]
    elapsed_s: float

    # ------------------------------------------------------------ columns
    @property
    def read_blocks(self) -> np.ndarray:
        """int64[n] keys read per request."""
        return self.trace.key_counts()

    @property
    def hit_tokens(self) -> np.ndarray:
        """int64[n] ``min(hit_blocks * block_size, input_len)`` per the contract."""
        return np.minimum(self.hit_blocks * self.trace.block_size, self.trace.input_len)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block (``timing.block_bytes``)."""
        return self.config.timing.block_bytes

    # ------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        """Totals over the whole trace: rates, TTFT, GPU time, tiers and load balance."""
        t = self.trace
        reads = int(self.read_blocks.sum())
        hits = int(self.hit_blocks.sum())
        tokens = int(t.input_len.sum())
        hit_tokens = int(self.hit_tokens.sum())
        tps = self.config.timing.prefill_tokens_per_s
        out: dict[str, Any] = {
            "label": self.label,
            "requests": t.n_requests,
            "instances": len(self.instance_names),
            "read_blocks": reads,
            "hit_blocks": hits,
            "input_tokens": tokens,
            "hit_tokens": hit_tokens,
            "block_hit_rate": hits / reads if reads else 0.0,
            "token_hit_rate": hit_tokens / tokens if tokens else 0.0,
            "ttft_s": _percentiles(self.ttft_ns),
            "ttft_nocache_s": _percentiles(self.ttft_nocache_ns),
            "prefill_gpu_s": float(self.prefill_ns.sum()) / _NS,
            "prefill_gpu_s_nocache": tokens / tps if tps else 0.0,
            "prefill_gpu_s_saved": hit_tokens / tps if tps else 0.0,
            "load_s": float(self.load_ns.sum()) / _NS,
            "tiers": self.tier_summary(),
            "load_balance": self.load_balance(),
            "counters": dict(self.counters),
            "elapsed_s": self.elapsed_s,
        }
        return out

    def tier_summary(self) -> list[dict[str, Any]]:
        """Per tier: hits, hit rate (of all read blocks), bytes read and written, times."""
        reads = int(self.read_blocks.sum())
        bb = self.block_bytes
        out = []
        for k, name in enumerate(self.tier_names):
            h = int(self.tier_hits[:, k].sum())
            w = int(self.written[:, k].sum())
            out.append({
                "tier": name,
                "hit_blocks": h,
                "hit_rate": h / reads if reads else 0.0,
                "bytes_read": h * bb,
                "written_blocks": w,
                "bytes_written": w * bb,
                "write_s": float(self.write_ns[k]) / _NS,
            })
        return out

    def load_balance(self) -> dict[str, Any]:
        """Requests and busy time per instance, with their coefficients of variation."""
        s = len(self.instance_names)
        reqs = np.bincount(self.instance, minlength=s).astype(np.float64)
        busy = self.busy_ns.astype(np.float64) / _NS
        return {
            "requests": {n: int(v) for n, v in zip(self.instance_names, reqs, strict=True)},
            "busy_s": {n: float(v) for n, v in zip(self.instance_names, busy, strict=True)},
            "cv_requests": _cv(reqs),
            "cv_busy": _cv(busy),
        }

    def frame(self) -> pl.DataFrame:
        """One row per request."""
        t = self.trace
        cols: dict[str, Any] = {
            "ts_ns": t.ts_ns,
            "instance": pl.Series(np.asarray(self.instance_names, dtype=object)[self.instance],
                                  dtype=pl.Utf8),
            "read_blocks": self.read_blocks,
            "hit_blocks": self.hit_blocks,
            "input_tokens": t.input_len,
            "hit_tokens": self.hit_tokens,
            "queue_ns": self.queue_ns,
            "load_ns": self.load_ns,
            "prefill_ns": self.prefill_ns,
            "ttft_ns": self.ttft_ns,
            "ttft_nocache_ns": self.ttft_nocache_ns,
        }
        for k, name in enumerate(self.tier_names):
            cols[f"hits[{name}]"] = self.tier_hits[:, k]
            cols[f"written[{name}]"] = self.written[:, k]
        return pl.DataFrame(cols)

    def timeseries(self, window_ns: int | None = None, *, points: int = 100) -> pl.DataFrame:
        """Per arrival window: hit rates (total and per tier), traffic and TTFT quantiles."""
        t = self.trace
        if t.n_requests == 0:
            return pl.DataFrame()
        t0 = int(t.ts_ns[0])
        span = max(1, int(t.ts_ns[-1]) - t0)
        if window_ns is None:
            window_ns = max(1, -(-span // points))
        f = self.frame().with_columns(((pl.col("ts_ns") - t0) // window_ns).alias("window"))
        bb = self.block_bytes
        aggs: list[pl.Expr] = [
            pl.len().alias("requests"),
            pl.col("read_blocks").sum(),
            pl.col("hit_blocks").sum(),
            pl.col("input_tokens").sum(),
            pl.col("hit_tokens").sum(),
        ]
        for q in (0.5, 0.9, 0.99):
            aggs.append((pl.col("ttft_ns").quantile(q, "nearest") / 1e9)
                        .alias(f"ttft_p{round(q * 100)}_s"))
            aggs.append((pl.col("ttft_nocache_ns").quantile(q, "nearest") / 1e9)
                        .alias(f"ttft_nocache_p{round(q * 100)}_s"))
        for name in self.tier_names:
            aggs.append(pl.col(f"hits[{name}]").sum())
            aggs.append(pl.col(f"written[{name}]").sum())
            aggs.append((pl.col(f"hits[{name}]").sum() * bb).alias(f"bytes_read[{name}]"))
            aggs.append((pl.col(f"written[{name}]").sum() * bb).alias(f"bytes_written[{name}]"))
        w = f.group_by("window").agg(aggs).sort("window")
        rates = [(pl.col("hit_blocks") / pl.col("read_blocks").clip(1)).alias("block_hit_rate"),
                 (pl.col("hit_tokens") / pl.col("input_tokens").clip(1)).alias("token_hit_rate"),
                 ((pl.col("window") * window_ns + t0 + window_ns).alias("end_ns"))]
        rates += [(pl.col(f"hits[{n}]") / pl.col("read_blocks").clip(1)).alias(f"hit_rate[{n}]")
                  for n in self.tier_names]
        return w.with_columns(rates)


def _percentiles(ns: np.ndarray) -> dict[str, float]:
    if ns.shape[0] == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    p = np.percentile(ns, [50, 90, 99], method="nearest") / _NS
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]),
            "mean": float(ns.mean()) / _NS}


def _cv(x: np.ndarray) -> float:
    m = float(x.mean()) if x.shape[0] else 0.0
    return float(x.std()) / m if m > 0 else 0.0


# ---------------------------------------------------------------------- building
def _instance_names(trace: Trace, config: KVSimConfig) -> list[str]:
    if config.routing.policy == "trace":
        return list(trace.instances)
    return [f"i{k}" for k in range(config.routing.instances)]


def _rows_for(trace: Trace, cap: int) -> int:
    max_len = int(trace.key_counts().max()) if trace.n_requests else 0
    rows = min(trace.n_keys, cap + 2 * max_len) if cap > 0 else trace.n_keys
    return max(rows, 16) + 16


def _base_tier(trace: Trace, config: KVSimConfig, names: list[str], bs: int, *,
               interval_ms: int = 0) -> _Tier:
    """The config's own groups and instances as one tier (no ``tiers:`` section), on a
    manual clock at the trace's first time with the reclaim cadence ``interval_ms``."""
    if not config.groups:  # no cache configured: one unbounded group
        config = KVSimConfig.single_cache()
    caps = [g.quota_units() for g in config.groups]
    bounded = all(c > 0 for c in caps) and all(g.unit == "blocks" for g in config.groups)
    mgr = CacheManager(ManualClock(int(trace.ts_ns[0]) if trace.n_requests else 0),
                       rows=_rows_for(trace, sum(caps) if bounded else 0), event_level=0,
                       reclaim_interval_ms=interval_ms)
    for st in config.storages:
        mgr.add_storage(st)
    for g in config.groups:
        mgr.create_group(g)
    listed = {s.instance_id: s for s in config.instances}
    for s in config.instances:
        mgr.register_instance(s)
    idx, dnow = [], []
    for name in names:
        spec = listed.get(name)
        if spec is None:
            spec = InstanceSpec(name, config.replay.default_group, block_size=bs)
            mgr.register_instance(spec)
        idx.append(mgr.instance_index(name))
        dnow.append(mgr.group(spec.group).delay_before_delete_ms == 0)
    return _Tier("cache", "local", mgr, idx, list(names), dnow)


def _spec_tier(trace: Trace, spec: TierSpec, names: list[str], bs: int) -> _Tier:
    """A local tier (a group per instance) or the pool (one group, one instance)."""
    cap = spec.capacity_blocks
    ev = EvictionSpec(policy=spec.policy)
    if spec.scope == "pool":
        mgr = CacheManager(ManualClock(), rows=_rows_for(trace, cap), event_level=0)
        mgr.create_group(GroupSpec("pool", quota_blocks=cap, eviction=ev))
        i = mgr.register_instance(InstanceSpec("pool", "pool", block_size=bs))
        idx, inames = [i] * len(names), ["pool"] * len(names)
    else:
        mgr = CacheManager(ManualClock(), rows=_rows_for(trace, cap * len(names)),
                           event_level=0)
        idx = []
        for name in names:
            mgr.create_group(GroupSpec(name, quota_blocks=cap, eviction=ev))
            idx.append(mgr.register_instance(InstanceSpec(name, name, block_size=bs)))
        inames = list(names)
    return _Tier(spec.name, spec.scope, mgr, idx, inames, [True] * len(names),
                 latency_ns=spec.latency_us * 1e3, read_bps=spec.read_bytes_per_s,
                 write_bps=spec.write_bytes_per_s)


def _next_in_session(trace: Trace) -> np.ndarray:
    """Per request, the next request of its session (-1: none or no sessions)."""
    n = trace.n_requests
    nxt = np.full(n, -1, dtype=np.int64)
    if trace.session is None or n == 0:
        return nxt
    order = np.lexsort((np.arange(n), trace.ts_ns, trace.session))
    same = trace.session[order[1:]] == trace.session[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


# ---------------------------------------------------------------------- the simulator
class _Sim:
    """The event loop's state (one simulation)."""

    def __init__(self, trace: Trace, config: KVSimConfig) -> None:
        if trace.mask is not None:
            raise ConfigError("simulate: traces with block masks are not supported")
        if trace.n_requests and bool((trace.kind != KIND_REQUEST).any()):
            raise ConfigError("simulate: only combined requests are supported (the trace has "
                              "read-only or write-only rows)")
        self.trace = trace
        self.config = config
        tm = config.timing
        if not config.tiers.levels and tm.write == "at_end":
            # at_end writes run the contract's write (no storages): refuse what would be
            # ignored; two_phase runs the core's client flow, every storage rule
            ignored = config.storage_rules()
            if ignored:
                raise ConfigError(
                    f"{config.source}: {', '.join(ignored)}: simulate (timing.write "
                    f"{tm.write}) would ignore {'it' if len(ignored) == 1 else 'them'}; "
                    "`kvsim replay --flow client` honours every storage rule")
        self.names = _instance_names(trace, config)
        bs = config.replay.block_size or trace.block_size
        self.bs = trace.block_size
        levels = config.tiers.levels
        # two_phase on the config's own groups: the core's client flow (the read, then
        # start_write; finish_write at prefill end), the core's reclaimer on its cadence
        # (advance_to at every event) and the storage health schedule, as
        # `replay --flow client` and the server run them
        self.client = tm.write == "two_phase" and not levels
        cadence = float(config.reclaim.interval_ms or tm.reclaim_interval_ms)
        if levels:
            self.tiers = [_spec_tier(trace, s, self.names, bs) for s in levels]
        else:
            self.tiers = [_base_tier(trace, config, self.names, bs,
                                     interval_ms=round(cadence) if self.client else 0)]
        t0 = int(trace.ts_ns[0]) if trace.n_requests else 0
        self.health = ([(t0 + h.at_ms * 1_000_000, h.storage, h.healthy)
                        for h in config.reclaim.storage_health] if self.client else [])
        self._h = 0
        self.query = QUERY_BATCH if config.replay.match == "batch" else QUERY_PREFIX
        self.policy = config.tiers.write_policy if len(self.tiers) > 1 else "through"
        if self.policy == "back":
            for tier in self.tiers[:-1]:
                tier.demote = True
                tier.mgr.events = type(tier.mgr.events)(capacity=4096, level=2)
        for tier in self.tiers:
            tier.core_to_sim = {c: s for s, c in enumerate(tier.idx)}
        self.n_tiers = len(self.tiers)
        n = trace.n_requests
        S = len(self.names)
        T = self.n_tiers
        self.tps = tm.prefill_tokens_per_s
        self.bb = tm.block_bytes
        self.two_phase = tm.write == "two_phase"
        self.timeout_s = tm.write_timeout_s
        delays = any(g.delay_before_delete_ms > 0 for g in config.groups) and not levels
        # the one cadence is the top-level reclaim.interval_ms; timing.reclaim_interval_ms
        # (older configs) applies when it is not set
        interval = cadence
        if interval == 0 and delays:
            interval = 1000.0  # DELETING blocks are freed by the reclaimer only
        self.tick_ns = round(interval * 1e6)
        self.evict_each_write = cadence == 0
        if self.client:  # the core runs the reclaimer (finish_write at 0, advance_to)
            self.tick_ns = 0
            self.evict_each_write = False
        self.decode_ns_per_tok = tm.decode_ms_per_token * 1e6
        self.nxt = _next_in_session(trace) if tm.session_outputs else None
        # outputs
        self.inst = np.zeros(n, dtype=np.int32)
        self.hit = np.zeros(n, dtype=np.int64)
        self.tier_hits = np.zeros((n, T), dtype=np.int64)
        self.written = np.zeros((n, T), dtype=np.int64)
        self.queue = np.zeros(n, dtype=np.int64)
        self.load = np.zeros(n, dtype=np.int64)
        self.prefill = np.zeros(n, dtype=np.int64)
        self.ttft = np.zeros(n, dtype=np.int64)
        self.ttft_nc = np.zeros(n, dtype=np.int64)
        self.busy = [0] * S
        self.free = [0] * S
        self.free_nc = [0] * S
        self.write_ns = [0.0] * T
        self.counters = {"write_failed_blocks": 0, "expired_sessions": 0, "demoted_blocks": 0,
                         "output_blocks": 0, "events_dropped": 0}
        self.sessions: dict[int, list[tuple[int, int]]] = {}
        self._sizes: dict[int, int] = {}
        self._cur_written = np.zeros(len(self.tiers), dtype=np.int64)
        max_len = int(trace.key_counts().max()) if n else 0
        self.tmp_rows = np.zeros(max(1, 4 * max_len), dtype=np.int32)
        self.tmp_new = np.zeros(max(1, 4 * max_len), dtype=bool)
        self.counts = np.zeros(4, dtype=np.int64)
        self._no_rows = np.zeros(0, dtype=np.int32)
        self.rr = 0
        self.rng = np.random.default_rng(config.routing.seed)

    # -------------------------------------------------------------- reads
    def read(self, s: int, keys: np.ndarray) -> int:
        """Union-prefix hits of instance ``s``; per-tier counts in ``self.counts``."""
        ts = self.tiers
        t0 = ts[0]
        t1 = ts[1] if self.n_tiers > 1 else t0
        t2 = ts[2] if self.n_tiers > 2 else t0
        return int(TK.read_tiers(t0.mgr.table.t, t0.idx[s], t1.mgr.table.t, t1.idx[s],
                                 t2.mgr.table.t, t2.idx[s], self.n_tiers, keys, self.counts,
                                 self._no_rows))

    def load_ns(self, counts: np.ndarray) -> float:
        total = 0.0
        for k in range(self.n_tiers):
            h = int(counts[k])
            if h:
                tier = self.tiers[k]
                total += tier.latency_ns
                if tier.read_bps > 0:
                    total += h * self.bb * 1e9 / tier.read_bps
        return total

    def prefill_ns(self, tokens: float) -> float:
        return tokens * 1e9 / self.tps if self.tps > 0 else 0.0

    def route(self, q: int, keys: np.ndarray, now: int) -> tuple[int, int, np.ndarray]:
        pol = self.config.routing.policy
        if pol == "trace":
            s = int(self.trace.instance[q])
        elif pol == "round_robin":
            s = self.rr
            self.rr = (self.rr + 1) % len(self.names)
        elif pol == "least_loaded":  # cache-blind: shortest queue, then least busy
            s = min(range(len(self.names)),
                    key=lambda c: (max(0, self.free[c] - now), self.busy[c], c))
        elif pol == "random":
            s = int(self.rng.integers(len(self.names)))
        else:
            best = None
            il = int(self.trace.input_len[q])
            bonus = self.config.routing.prefix_bonus
            for c in range(len(self.names)):
                h = self.read(c, keys)
                cnt = self.counts.copy()
                wait = max(0, self.free[c] - now)
                if pol == "prefix":
                    score: tuple[float, ...] = (-h, wait, self.busy[c], c)
                else:
                    ht = min(h * self.bs, il)
                    est = wait + self.load_ns(cnt) + self.prefill_ns(max(0.0, il - bonus * ht))
                    score = (est, -h, self.busy[c], c)
                if best is None or score < best[0]:
                    best = (score, c, h, cnt)
            assert best is not None
            return best[1], best[2], best[3]
        h = self.read(s, keys)
        return s, h, self.counts

    # -------------------------------------------------------------- writes
    def _write(self, k: int, s: int, keys: np.ndarray, now: int) -> int:
        tier = self.tiers[k]
        n = keys.shape[0]
        if n == 0:
            return 0
        tab = tier.mgr.table
        tab.ensure_rows(n)
        if n > self.tmp_rows.shape[0]:
            self.tmp_rows = np.zeros(2 * n, dtype=np.int32)
            self.tmp_new = np.zeros(2 * n, dtype=bool)
        if tier.demote:
            tier.mgr.events.reserve(4 * n + 1024)
        n_new = int(TK.write_tier(tab.t, tier.mgr.events.arrays, tier.idx[s], keys, now,
                                  self.tmp_rows, self.tmp_new, tier.delete_now[s],
                                  self.evict_each_write))
        if n_new and tier.write_bps > 0:
            self.write_ns[k] += n_new * self.bb * 1e9 / tier.write_bps
        if tier.demote:
            self._demote(k, now)
        return n_new

    def _demote(self, k: int, now: int) -> None:
        """Write-back: the blocks tier ``k`` just evicted go to tier ``k + 1``."""
        tier = self.tiers[k]
        ev = tier.mgr.events
        a = ev.arrays
        cnt = int(a.meta[0])
        self.counters["events_dropped"] += int(a.meta[2])
        sel = a.kind[:cnt] == EV_EVICTED
        keys = a.key[:cnt][sel].copy()
        insts = a.inst[:cnt][sel].copy()
        ev.clear()
        if keys.shape[0] == 0:
            return
        for ci in np.unique(insts):
            s = tier.core_to_sim.get(int(ci))
            if s is None:
                continue
            ks = np.ascontiguousarray(keys[insts == ci])
            n_new = self._write(k + 1, s, ks, now)
            self.counters["demoted_blocks"] += int(ks.shape[0])
            self._cur_written[k + 1] += n_new

    def write_request(self, q: int, s: int, keys: np.ndarray, now: int) -> None:
        """Write ``keys`` for request ``q`` per the tiers' write policy."""
        row = self.written[q]
        self._cur_written = row
        if self.policy == "through":
            for k in range(self.n_tiers):
                row[k] += self._write(k, s, keys, now)
        elif self.policy == "back":
            row[0] += self._write(0, s, keys, now)
        else:  # selective
            last = self.n_tiers - 1 if self.tiers[-1].scope == "pool" else self.n_tiers
            for k in range(last):
                row[k] += self._write(k, s, keys, now)
                if k == 0:
                    rows = self.tmp_rows[:keys.shape[0]].copy()
            if last < self.n_tiers:
                t0 = self.tiers[0].mgr.table.t
                ok = rows >= 0
                acc = np.zeros(keys.shape[0], dtype=np.int64)
                acc[ok] = t0.acc[rows[ok]]
                pick = np.ascontiguousarray(keys[acc > self.config.tiers.selective_min_reuse])
                row[last] += self._write(last, s, pick, now)

    # -------------------------------------------------------------- the client flow
    def advance(self, now: int) -> None:
        """The client flow's clock: the scheduled health changes due by ``now``, then
        the core's reclaimer at its due times up to ``now``
        (:meth:`~kvsim.core.manager.CacheManager.advance_to`)."""
        mgr = self.tiers[0].mgr
        while self._h < len(self.health) and self.health[self._h][0] <= now:
            at, storage, ok = self.health[self._h]
            if mgr.reclaim_interval_ms:
                self._ticked(mgr.advance_to(at))
            mgr.set_storage_health(storage, ok, "scheduled outage (reclaim.storage_health)")
            self._h += 1
        self._ticked(mgr.advance_to(now))

    def _ticked(self, reports: list[TickReport]) -> None:
        self.counters["expired_sessions"] += sum(len(r.expired) for r in reports)

    def client_read(self, s: int, keys: np.ndarray) -> int:
        """The client flow's read (``getCacheLocation``): hits refreshed, blocks on an
        unusable storage missed."""
        tier = self.tiers[0]
        return int(tier.mgr.client_read(tier.names[s], keys, query=self.query).hit_blocks)

    # -------------------------------------------------------------- two-phase writes
    def start_sessions(self, q: int, s: int, keys: np.ndarray) -> None:
        out = []
        last = self.n_tiers
        if self.policy == "selective" and self.tiers[-1].scope == "pool":
            last -= 1
        for k in range(last):
            tier = self.tiers[k]
            try:
                ws = tier.mgr.start_write(tier.names[s], keys, timeout_s=self.timeout_s)
            except QuotaExceeded:
                self.counters["write_failed_blocks"] += int(keys.shape[0])
                continue
            out.append((k, ws.session_id, int(ws.new_keys.shape[0])))
        self.sessions[q] = [(k, sid) for k, sid, _ in out]
        self._sizes.update({sid: m for _, sid, m in out})

    def finish_sessions(self, q: int, s: int, keys: np.ndarray, now: int) -> None:
        row = self.written[q]
        for k, sid in self.sessions.pop(q, []):
            tier = self.tiers[k]
            m = self._sizes.pop(sid)
            try:
                res = tier.mgr.finish_write(sid, np.ones(m, dtype=bool))
            except NotFound:
                self.counters["write_failed_blocks"] += m
                continue
            row[k] += res.committed
            self.counters["write_failed_blocks"] += res.failed
            if self.client:  # finish_write refreshed the held keys (and ticked at 0)
                if res.tick is not None:
                    self._ticked([res.tick])
                continue
            tier.mgr.match(tier.names[s], keys)  # refresh the hit prefix
            if self.evict_each_write:
                tier.mgr.reclaim()
        if self.policy == "selective" and self.tiers[-1].scope == "pool":
            t0 = self.tiers[0]
            res0 = t0.mgr.match(t0.names[s], keys, query="batch", touch=False)
            rows = res0.rows
            ok = rows >= 0
            acc = np.zeros(keys.shape[0], dtype=np.int64)
            acc[ok] = t0.mgr.table.t.acc[rows[ok]]
            pick = np.ascontiguousarray(keys[acc > self.config.tiers.selective_min_reuse])
            self._cur_written = row
            row[-1] += self._write(self.n_tiers - 1, s, pick, now)

    def reclaim_tick(self, now: int) -> None:
        for tier in self.tiers:
            tier.mgr.clock.set(max(now, tier.mgr.clock.now_ns()))  # type: ignore[attr-defined]
            self.counters["expired_sessions"] += tier.mgr.expire_sessions()
            tier.mgr.reclaim()
            tier.mgr.reap()

    # -------------------------------------------------------------- the loop
    @property
    def fast_ok(self) -> bool:
        """Whether the compiled loop (:func:`~kvsim.sim._timed_kernels.timed_loop`) applies."""
        return (not self.two_phase and self.policy in ("through", "selective")
                and self.config.routing.policy in ("trace", "round_robin")
                and self.nxt is None and self.tick_ns == 0)

    def run_fast(self, progress: ProgressFn | None = None) -> None:
        """The whole event loop in one compiled kernel (resumed to grow tables, report)."""
        tr = self.trace
        n = tr.n_requests
        S = len(self.names)
        T = self.n_tiers
        if self.config.routing.policy == "trace":
            route = tr.instance.astype(np.int32)
        else:
            route = (np.arange(n) % S).astype(np.int32)
        tidx = np.zeros((3, S), dtype=np.int32)
        dnow = np.ones((3, S), dtype=bool)
        lat = np.zeros(3)
        rbps = np.zeros(3)
        wbps = np.zeros(3)
        for k, tier in enumerate(self.tiers):
            tidx[k] = tier.idx
            dnow[k] = tier.delete_now
            lat[k], rbps[k], wbps[k] = tier.latency_ns, tier.read_bps, tier.write_bps
        n_write = T - 1 if (self.policy == "selective" and self.tiers[-1].scope == "pool") else T
        hk = np.zeros(n + 1, dtype=np.int64)
        hq = np.zeros(n + 1, dtype=np.int64)
        state = np.zeros(2, dtype=np.int64)
        free = np.zeros(S, dtype=np.int64)
        free_nc = np.zeros(S, dtype=np.int64)
        busy = np.zeros(S, dtype=np.int64)
        write_ns = np.zeros(3)
        max_len = int(tr.key_counts().max()) if n else 0
        rows = np.zeros(max_len + 1, dtype=np.int32)
        isnew = np.zeros(max_len + 1, dtype=bool)
        pick = np.zeros(max_len + 1, dtype=np.int64)
        krows = np.zeros(tr.n_keys, dtype=np.int32)
        kn = np.zeros(n, dtype=np.int64)
        ts = tr.ts_ns
        il = tr.input_len
        bounds = np.searchsorted(tr.offsets, np.arange(0, tr.n_keys + _CHUNK_KEYS, _CHUNK_KEYS))
        bounds = np.unique(np.clip(np.append(bounds, n), 0, n))
        for limit in bounds[1:]:
            while True:
                tabs = [t.mgr.table.t for t in self.tiers]
                evs = [t.mgr.events.arrays for t in self.tiers]
                tabs += [tabs[0]] * (3 - T)
                evs += [evs[0]] * (3 - T)
                rc = TK.timed_loop(
                    tabs[0], evs[0], tabs[1], evs[1], tabs[2], evs[2], T, tidx, dnow, route,
                    ts, tr.offsets, tr.keys, il, self.bs, float(self.tps), lat, rbps, wbps,
                    self.bb, self.evict_each_write, n_write,
                    self.config.tiers.selective_min_reuse, hk, hq, state, int(limit),
                    self.hit, self.tier_hits, self.written, self.queue, self.load,
                    self.prefill, self.ttft, self.ttft_nc, free, free_nc, busy, write_ns,
                    self.counts, rows, isnew, pick, krows, kn,
                )
                if rc == 0:
                    break
                for t in self.tiers:
                    t.mgr.table.ensure_rows(max_len)
            if progress is not None:
                progress(int(state[0]), n)
        self.inst[:] = route
        self.busy = busy.tolist()
        self.write_ns = write_ns[:T].tolist()

    def run(self, progress: ProgressFn | None = None) -> None:
        tr = self.trace
        n = tr.n_requests
        ts = tr.ts_ns.tolist()
        off = tr.offsets.tolist()
        il = tr.input_len.tolist()
        ol = tr.output_len.tolist()
        allkeys = tr.keys
        heap: list[tuple[int, int, int]] = []
        push, pop = heapq.heappush, heapq.heappop
        clocks = [t.mgr.clock for t in self.tiers]
        tick = (ts[0] + self.tick_ns) if (self.tick_ns and n) else -1
        route_s: list[int] = [0] * n
        p = 0
        every = max(1, n // 100)
        bs = self.bs
        two_phase = self.two_phase
        while p < n or heap:
            if p < n and (not heap or (ts[p], p, ARRIVE) < heap[0]):
                now, q, kind = ts[p], p, ARRIVE
                p += 1
                if progress is not None and p % every == 0:
                    progress(p, n)
            else:
                now, q, kind = pop(heap)
            while 0 <= tick <= now:
                self.reclaim_tick(tick)
                tick += self.tick_ns
            if self.client:
                self.advance(now)
            elif two_phase:
                for c in clocks:
                    c.set(now)  # type: ignore[attr-defined]
            a, b = off[q], off[q + 1]
            keys = allkeys[a:b]
            if kind == ARRIVE:
                s, h, counts = self.route(q, keys, now)
                if self.client:  # the read on the chosen instance, as a client makes it
                    h = self.client_read(s, keys)
                    counts[:] = 0
                    counts[0] = h
                route_s[q] = s
                self.hit[q] = h
                self.tier_hits[q, : self.n_tiers] = counts[: self.n_tiers]
                miss = il[q] - min(h * bs, il[q])
                load = int(self.load_ns(counts) + 0.5)
                pre = int(self.prefill_ns(miss) + 0.5)
                start = max(now, self.free[s])
                end = start + load + pre
                self.free[s] = end
                self.busy[s] += load + pre
                self.queue[q] = start - now
                self.load[q] = load
                self.prefill[q] = pre
                self.ttft[q] = end - now
                nc = max(now, self.free_nc[s]) + int(self.prefill_ns(il[q]) + 0.5)
                self.free_nc[s] = nc
                self.ttft_nc[q] = nc - now
                if two_phase:
                    self.start_sessions(q, s, keys)
                push(heap, (end, q, PREFILL_END))
            elif kind == PREFILL_END:
                s = route_s[q]
                if two_phase:
                    self.finish_sessions(q, s, keys, now)
                else:
                    self.write_request(q, s, keys, now)
                if self.nxt is not None and self.nxt[q] >= 0:
                    push(heap, (now + round(ol[q] * self.decode_ns_per_tok), q,
                                DECODE_END))
            else:
                self.session_outputs(q, route_s[q], keys, now)
        self.inst[:] = route_s
        if progress is not None:
            progress(n, n)

    def session_outputs(self, q: int, s: int, keys: np.ndarray, now: int) -> None:
        """Decode end: write the keys of the next turn covering this turn's prompt + output."""
        assert self.nxt is not None
        nq = int(self.nxt[q])
        tr = self.trace
        a = int(tr.offsets[nq])
        cnt_next = int(tr.offsets[nq + 1]) - a
        n_out = min(cnt_next, (int(tr.input_len[q]) + int(tr.output_len[q])) // self.bs)
        m = keys.shape[0]
        if n_out <= m or not np.array_equal(tr.keys[a:a + m], keys):
            return
        self.counters["output_blocks"] += n_out - m
        self.write_request(q, s, tr.keys[a:a + n_out], now)


def simulate(
    trace: Trace,
    config: KVSimConfig,
    *,
    label: str | None = None,
    progress: ProgressFn | None = None,
    engine: str = "auto",
) -> TimedResult:
    """Run ``trace`` through the time-aware model configured by ``config``.

    Args:
        trace: combined requests in timestamp order.
        config: groups (or ``tiers``), ``timing`` and ``routing``.
        label: a name for the result.
        progress: called as ``progress(done_arrivals, total_requests)``.
        engine: ``auto`` runs the compiled event loop when the config allows it
            (``at_end`` writes, write-through or selective, ``trace`` or ``round_robin``
            routing, no session outputs, no reclaimer ticks) and the Python loop
            otherwise; ``python`` always the Python loop; ``compiled`` the compiled
            loop or a :class:`ConfigError`. Both give the same results.

    Returns:
        The per-request outcomes as a :class:`TimedResult`.

    Raises:
        ConfigError: an unsupported trace (block masks, read- or write-only rows) or config
            (a storage rule it would ignore: every one of
            :meth:`~kvsim.config.KVSimConfig.storage_rules` with ``timing.write``
            ``at_end``, ``reclaim.storage_health`` with ``two_phase``).
    """
    if engine not in ENGINES:
        raise ConfigError(f"simulate: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    sim = _Sim(trace, config)
    fast = sim.fast_ok and engine != "python"
    if engine == "compiled" and not fast:
        raise ConfigError("simulate: the compiled loop needs timing.write at_end, "
                          "tiers.write_policy through or selective, routing trace or "
                          "round_robin, no session_outputs and no reclaimer ticks")
    t0 = time.perf_counter()
    if fast:
        sim.run_fast(progress)
    else:
        sim.run(progress)
    elapsed = time.perf_counter() - t0
    if label is None:
        label = "+".join(f"{t.name}" for t in sim.tiers) + f"/{config.routing.policy}"
    return TimedResult(
        label=label,
        trace=trace,
        config=config,
        tier_names=tuple(t.name for t in sim.tiers),
        instance_names=tuple(sim.names),
        instance=sim.inst,
        hit_blocks=sim.hit,
        tier_hits=sim.tier_hits,
        written=sim.written,
        queue_ns=sim.queue,
        load_ns=sim.load,
        prefill_ns=sim.prefill,
        ttft_ns=sim.ttft,
        ttft_nocache_ns=sim.ttft_nc,
        busy_ns=np.asarray(sim.busy, dtype=np.int64),
        write_ns=np.asarray(sim.write_ns, dtype=np.float64),
        counters=dict(sim.counters),
        elapsed_s=elapsed,
    )



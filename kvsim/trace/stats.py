"""Trace statistics: sizes, ideal (unbounded-cache) hit rates, reuse and popularity.

All per-access work happens in one numba pass (:func:`_scan`) that keeps a hash map
from each ``(instance, key)`` to a dense block id, so it is linear in the number of
keys (20M keys: a couple of seconds) and its memory is bounded by the distinct blocks
of the largest instance plus one int64 per reuse.

Definitions (see ``../shared/docs/replay-contract.md``):

* *ideal hit*: with an unbounded cache, a block of a request hits iff its
  ``(instance, key)`` was written by an earlier request, and ``hit_blocks`` is the
  longest such prefix. Combined requests both read and write; ``KIND_READ`` rows only
  read and ``KIND_WRITE`` rows only write (and are left out of the hit rates). Every
  read is counted as a prefix match and block masks are ignored.
* ``hit_tokens = min(hit_blocks * block_size, input_len)``; token and block rates are
  ratios of sums over the read requests.
* *reuse distance* of an access: the number of block accesses since the previous
  access of the same ``(instance, key)`` (1 = the access just before), in trace order.
* *popularity*: the share of all accesses that go to the most accessed 1% / 10% of
  distinct blocks (at least one block each).

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 2, 3], [1, 4]],
    ...                      block_size=16)
    >>> s = trace_stats(t)
    >>> s.unique_blocks, s.ideal_hit_blocks, round(s.ideal_block_hit_rate, 4)
    (4, 3, 0.4286)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit, types
from numba.typed import Dict

from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

__all__ = ["TraceStats", "ideal_hit_blocks", "trace_diff", "trace_stats"]


@dataclass(frozen=True)
class TraceStats:
    """Summary of a trace (see the module docstring for the definitions)."""

    requests: int
    instances: int
    block_size: int
    keys: int
    unique_blocks: int
    input_tokens: int
    output_tokens: int
    read_requests: int
    read_keys: int
    read_input_tokens: int
    ideal_hit_blocks: int
    ideal_hit_tokens: int
    ideal_block_hit_rate: float
    ideal_token_hit_rate: float
    duration_s: float
    requests_per_s: float
    mean_keys_per_request: float
    reuse_fraction: float
    reuse_p50: float
    reuse_p90: float
    reuse_p99: float
    top1pct_share: float
    top10pct_share: float
    max_access_count: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable)."""
        return asdict(self)


_NEVER = np.iinfo(np.int64).max


@njit(cache=True)
def _grow(a: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover - numba
    if n <= a.shape[0]:
        return a
    b = np.empty(max(n, 2 * a.shape[0]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _scan(
    offsets: np.ndarray,
    keys: np.ndarray,
    rows: np.ndarray,
    group_ends: np.ndarray,
    reads: np.ndarray,
    writes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:  # pragma: no cover - numba
    """One pass over the accesses of ``rows`` (grouped by instance, time order inside).

    Returns (hit_blocks per row, access count per block id, reuse gaps, n_gaps).
    """
    n_rows = offsets.shape[0] - 1
    hit = np.zeros(n_rows, dtype=np.int64)
    counts = np.zeros(1024, dtype=np.int64)
    first_write = np.empty(1024, dtype=np.int64)
    last = np.empty(1024, dtype=np.int64)
    gaps = np.empty(max(keys.shape[0], 1), dtype=np.int64)
    n_gaps = 0
    n_ids = 0
    start = 0
    for g in range(group_ends.shape[0]):
        ids = Dict.empty(key_type=types.int64, value_type=types.int64)
        for t in range(start, group_ends[g]):
            r = rows[t]
            prefix = reads[r]
            n_hit = 0
            for a in range(offsets[r], offsets[r + 1]):
                k = keys[a]
                b = ids.setdefault(k, n_ids)
                if b == n_ids:  # first access of this block
                    n_ids += 1
                    counts = _grow(counts, n_ids)
                    first_write = _grow(first_write, n_ids)
                    last = _grow(last, n_ids)
                    counts[b] = 0
                    first_write[b] = _NEVER
                else:
                    gaps[n_gaps] = a - last[b]
                    n_gaps += 1
                if prefix:
                    if first_write[b] < r:
                        n_hit += 1
                    else:
                        prefix = False
                counts[b] += 1
                last[b] = a
                if writes[r] and first_write[b] == _NEVER:
                    first_write[b] = r
            hit[r] = n_hit
        start = group_ends[g]
    return hit, counts[:n_ids], gaps, n_gaps


def _by_instance(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by instance (time order kept) and the end of each group."""
    if len(trace.instances) <= 1:
        return np.arange(trace.n_requests, dtype=np.int64), np.array(
            [trace.n_requests], dtype=np.int64
        )
    rows = np.argsort(trace.instance, kind="stable").astype(np.int64)
    ends = np.cumsum(np.bincount(trace.instance, minlength=len(trace.instances)))
    return rows, ends.astype(np.int64)


def _run_scan(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, ends = _by_instance(trace)
    reads = trace.kind != KIND_WRITE
    writes = trace.kind != KIND_READ
    hit, counts, gaps, n_gaps = _scan(
        np.ascontiguousarray(trace.offsets, dtype=np.int64),
        np.ascontiguousarray(trace.keys, dtype=np.int64),
        rows,
        ends,
        reads,
        writes,
    )
    return hit, counts, gaps[:n_gaps]


def ideal_hit_blocks(trace: Trace) -> np.ndarray:
    """int64[n]: per request, the ideal (unbounded cache) ``hit_blocks``.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 3]], block_size=16)
        >>> ideal_hit_blocks(t).tolist()
        [0, 1]
    """
    return _run_scan(trace)[0]


def _top_share(counts: np.ndarray, frac: float, total: int) -> float:
    if counts.shape[0] == 0 or total == 0:
        return 0.0
    k = max(1, math.ceil(counts.shape[0] * frac))
    top = np.partition(counts, counts.shape[0] - k)[counts.shape[0] - k :]
    return float(top.sum()) / total


def trace_stats(trace: Trace) -> TraceStats:
    """Compute :class:`TraceStats` for ``trace`` (assumed sorted by time).

    Args:
        trace: any trace.

    Returns:
        The statistics.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 10**9], keys=[[1, 2], [1, 3]],
        ...                      input_len=[40, 40], block_size=16)
        >>> s = trace_stats(t)
        >>> s.ideal_hit_tokens, s.ideal_token_hit_rate, s.requests_per_s
        (16, 0.2, 2.0)
    """
    n = trace.n_requests
    hit, counts, gaps = _run_scan(trace)
    reads = trace.kind != KIND_WRITE
    read_keys = int(trace.key_counts()[reads].sum())
    read_tokens = int(trace.input_len[reads].sum())
    hit_blocks = int(hit.sum())
    hit_tokens = int(np.minimum(hit * trace.block_size, trace.input_len)[reads].sum())
    span = (int(trace.ts_ns[-1]) - int(trace.ts_ns[0])) / 1e9 if n else 0.0
    if gaps.shape[0]:
        p50, p90, p99 = (float(v) for v in np.percentile(gaps, [50, 90, 99], method="inverted_cdf"))
    else:
        p50 = p90 = p99 = 0.0
    total = trace.n_keys
    return TraceStats(
        requests=n,
        instances=len(trace.instances),
        block_size=trace.block_size,
        keys=total,
        unique_blocks=int(counts.shape[0]),
        input_tokens=int(trace.input_len.sum()),
        output_tokens=int(trace.output_len.sum()),
        read_requests=int(reads.sum()),
        read_keys=read_keys,
        read_input_tokens=read_tokens,
        ideal_hit_blocks=hit_blocks,
        ideal_hit_tokens=hit_tokens,
        ideal_block_hit_rate=hit_blocks / read_keys if read_keys else 0.0,
        ideal_token_hit_rate=hit_tokens / read_tokens if read_tokens else 0.0,
        duration_s=span,
        requests_per_s=n / span if span > 0 else 0.0,
        mean_keys_per_request=total / n if n else 0.0,
        reuse_fraction=gaps.shape[0] / total if total else 0.0,
        reuse_p50=p50,
        reuse_p90=p90,
        reuse_p99=p99,
        top1pct_share=_top_share(counts, 0.01, total),
        top10pct_share=_top_share(counts, 0.10, total),
        max_access_count=int(counts.max()) if counts.shape[0] else 0,
    )


def trace_diff(
    a: Trace,
    b: Trace,
    *,
    columns: tuple[str, ...] | None = None,
) -> list[str]:
    """The columns in which two traces differ (empty list = equal).

    Args:
        a: one trace.
        b: the other.
        columns: the columns to compare; default all except ``source`` and ``meta``.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> a = Trace.from_lists(ts_ns=[0], keys=[[1]])
        >>> trace_diff(a, Trace.from_lists(ts_ns=[5], keys=[[1]]))
        ['ts_ns']
    """
    if columns is None:
        columns = (
            "ts_ns", "instance", "instances", "offsets", "keys", "input_len", "output_len",
            "block_size", "kind", "query_type", "sw_size", "mask", "session", "turn",
            "type_code", "type_names",
        )  # fmt: skip
    out = []
    for name in columns:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            same = (
                x is not None
                and y is not None
                and x.shape == y.shape
                and bool(np.array_equal(x, y))
            )
        else:
            same = x == y
        if not same:
            out.append(name)
    return out

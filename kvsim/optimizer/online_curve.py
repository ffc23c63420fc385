"""Online LRU capacity curves: :mod:`kvsim.optimizer.curve`'s one-pass facts, fed in batches.

:class:`OnlineCurve` keeps one recency stack (the state of
:func:`~kvsim.optimizer.curve._facts_step`) between batches of rows and projects each
batch onto a capacity grid at once: the hit blocks an LRU cache of each capacity would
have served, summed per caller-given bucket (e.g. per minute). Fed the rows of a trace in
order, in any batching, the sums equal :meth:`CurveFacts.curve` of the whole trace (the
same kernel; only the stack outlives a call).

Rows read and/or commit: a combined request does both; the server's read
(``getCacheLocation``) *peeks* (its distances are measured, nothing is touched: the write
that follows it refreshes its keys, see ``curve_facts(read_rows="peek")``) and its
``finishWriteCache`` commits.

Key sampling (``sample_rate < 1``) is the sampled-curve design of
:mod:`kvsim.optimizer.curve`: keys at depth below ``full_depth`` and heavy keys are
kept at rate 1, the others by a hash of key and seed, each standing for ``1 / rate``
keys. Online, heavy keys are found from running counts (of up to 2,000 read rows per
batch; lossy counting): a key whose count reaches ``heavy_share`` of the reads counted
so far is promoted and stays heavy; a key's class is fixed when the stack first sees it,
except that a promoted key counts once from then on. Figures of a sample are ratio
estimates: sampled weighted hits over sampled weighted reads, times the exact reads.

Pure: no I/O, no clock; times are the caller's.

Example:
    >>> c = OnlineCurve([1, 2, 3])
    >>> b = c.feed([0, 0], [[1, 2], [1, 2]], read=[True, True], commit=[True, True])
    >>> b.hit_blocks(0).tolist()       # per capacity, summed over bucket 0
    [1.0, 2.0, 2.0]
    >>> c.feed([0], [[1, 2, 3]], read=[True], commit=[False]).hit_blocks(0).tolist()
    [1.0, 2.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsim.optimizer.curve import (
    UNBOUNDED,
    CurveError,
    _facts_step,
    _new_state,
    _project_kernel,
    sample_csr,
)

__all__ = ["BatchFigures", "OnlineCurve", "warm_up"]

_HEAVY_ROWS = 2000  # rows of a batch counted to find heavy keys (running counts)
_MAX_HEAVY_FACTOR = 4  # at most this / heavy_share heavy keys are kept
_MERGE_EVERY = 1  # batches of key counts merged into the running counts at once


@dataclass(frozen=True)
class BatchFigures:
    """What one batch adds, per bucket (rows ``b``) and capacity (columns ``k``).

    Attributes:
        buckets: int64[B] the bucket ids present in the batch (ascending).
        s_hits: float64[B, K] sampled weighted hit blocks (exact hit blocks at rate 1).
        s_reads: float64[B] sampled weighted read blocks (the ratio's denominator).
        reads: int64[B] read blocks (exact).
        s_first: float64[B] sampled weighted unmasked read blocks never committed before
            (first accesses: misses at any capacity).
        internal: float64[B] masked blocks (hits at any capacity; included in s_hits).
    """

    buckets: np.ndarray
    s_hits: np.ndarray
    s_reads: np.ndarray
    reads: np.ndarray
    s_first: np.ndarray
    internal: np.ndarray

    def hit_blocks(self, b: int) -> np.ndarray:
        """Estimated hit blocks per capacity of bucket row ``b`` (exact at rate 1)."""
        if self.s_reads[b] <= 0:
            return np.zeros(self.s_hits.shape[1])
        return self.s_hits[b] / self.s_reads[b] * self.reads[b]


class OnlineCurve:
    """One LRU recency stack, fed rows in batches, projected onto fixed capacities.

    Args:
        capacities: capacities in blocks (0 = unbounded), ascending or not.
        sample_rate: 1 for exact figures; in ``(0, 1)`` a spatial key sample.
        seed: picks the sampled keys.
        full_depth: keys at a depth below this are kept at rate 1 in a sample.
        heavy_share: keys carrying at least this share of a batch's reads are kept at
            rate 1 from then on (0 = off).
        read_rate: the share of peeking reads (reads that commit nothing) fed to the
            stack; the others only count in the exact read totals (default: 1 for exact
            figures, else ``min(1, 30 x sample_rate)``: the heavy keys, kept at rate 1,
            would otherwise cost as much as an exact pass on reads).
    """

    def __init__(self, capacities: Sequence[int] | np.ndarray, *, sample_rate: float = 1.0,
                 seed: int = 0, full_depth: int = 1, heavy_share: float = 1e-4,
                 read_rate: float | None = None) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise CurveError(f"sample rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.full_depth = int(full_depth)
        self.heavy_share = float(heavy_share)
        self.weighted = self.sample_rate < 1.0
        self.read_rate = float(read_rate) if read_rate is not None else (
            min(1.0, 30.0 * self.sample_rate))
        if not 0.0 < self.read_rate <= 1.0:
            raise CurveError(f"read rate must be in (0, 1], got {self.read_rate}")
        self._rng = np.random.default_rng(seed)
        self._state: Any = None
        self._heavy: set[int] = set()
        self._heavy_arr = np.zeros(0, dtype=np.int64)
        self._counted = 0  # block reads counted for heavy keys
        self._cand_keys = np.zeros(0, dtype=np.int64)
        self._cand_counts = np.zeros(0, dtype=np.int64)
        self._unmerged: list[tuple[np.ndarray, np.ndarray]] = []
        self.set_capacities(capacities)

    def set_capacities(self, capacities: Sequence[int] | np.ndarray) -> None:
        """Project later batches onto these capacities (the stack is kept)."""
        caps = np.asarray(capacities, dtype=np.int64).reshape(-1)
        if caps.size and caps.min() < 0:
            raise CurveError(f"capacities must be >= 0 blocks, got {caps.min()}")
        self.capacities = caps
        c = np.where(caps == 0, UNBOUNDED, caps)
        self._order = np.argsort(c, kind="stable")
        self._sorted = np.ascontiguousarray(c[self._order])
        self._inv = np.empty_like(self._order)
        self._inv[self._order] = np.arange(self._order.shape[0])

    @property
    def tracked_keys(self) -> int:
        """Distinct ``(instance, key)`` pairs on the stack (its memory is about 40 B each)."""
        return 0 if self._state is None else int(self._state[8][1])

    def _find_heavy(self, offsets: np.ndarray, keys: np.ndarray, read: np.ndarray
                    ) -> np.ndarray | None:
        """Count the keys of (a sample of) the batch's read rows into running counts
        (lossy counting: candidates far below the share are pruned) and promote keys
        whose count reaches ``heavy_share`` of all counted reads, once at least
        ``3 / heavy_share`` reads were counted (before that, a share is no estimate)."""
        rows = np.flatnonzero(read)
        if rows.shape[0] == 0 or keys.shape[0] == 0:
            return None
        if rows.shape[0] > _HEAVY_ROWS:
            rng = np.random.default_rng(self.seed + self._counted)
            rows = np.sort(rng.choice(rows, size=_HEAVY_ROWS, replace=False))
        lens = offsets[rows + 1] - offsets[rows]
        idx = np.repeat(offsets[rows] - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) \
            + np.arange(int(lens.sum()))
        u, c = np.unique(keys[idx], return_counts=True)
        self._counted += int(lens.sum())
        self._unmerged.append((u, c))
        if len(self._unmerged) < _MERGE_EVERY and self._cand_keys.shape[0]:
            return None  # merged (sorted) every few batches: the sort is the cost
        if self._cand_keys.shape[0] or len(self._unmerged) > 1:
            u = np.concatenate([self._cand_keys, *(x[0] for x in self._unmerged)])
            c = np.concatenate([self._cand_counts, *(x[1] for x in self._unmerged)])
            order = np.argsort(u, kind="stable")
            u, c = u[order], c[order]
            first = np.concatenate(([True], u[1:] != u[:-1]))
            starts = np.flatnonzero(first)
            c = np.add.reduceat(c, starts)
            u = u[starts]
        limit = int(_MAX_HEAVY_FACTOR / self.heavy_share)
        if u.shape[0] > 4 * limit:  # prune: keep the largest counts
            keep = np.argpartition(-c, 4 * limit)[:4 * limit]
            u, c = u[np.sort(keep)], c[np.sort(keep)]
        self._cand_keys, self._cand_counts = u, c
        self._unmerged = []
        if self._counted * self.heavy_share < 3 or len(self._heavy) >= limit:
            return None
        new = np.setdiff1d(u[c >= self.heavy_share * self._counted], self._heavy_arr)
        if new.shape[0]:
            self._heavy.update(new.tolist())
            self._heavy_arr = np.sort(np.fromiter(self._heavy, dtype=np.int64,
                                                  count=len(self._heavy)))
        return new

    def _warm(self, promoted: np.ndarray, inst: np.ndarray, offsets: np.ndarray,
              keys: np.ndarray) -> np.ndarray:
        """Put newly promoted heavy keys on top of the stack (one commit-only row per
        instance that reads them in this batch), before the batch; returns the keys
        placed (the others wait for a batch that has them). A promoted key was mostly
        outside the sample until now: entering cold, its next read would be a miss it
        is not; hot by definition, it is placed as just used."""
        none = np.zeros(0, dtype=np.int64)
        if self._state is None:
            return none
        row_of = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
        hit = np.isin(keys, promoted)
        if not hit.any():
            return none
        pos = np.flatnonzero(hit)
        _, first = np.unique(keys[pos], return_index=True)  # each key's first reader
        pos = pos[first]
        pairs = np.stack([np.asarray(inst, dtype=np.int64)[row_of[pos]], keys[pos]], axis=1)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        insts, starts = np.unique(pairs[:, 0], return_index=True)
        off = np.concatenate((starts, [pairs.shape[0]])).astype(np.int64)
        m = insts.shape[0]
        self._state = _facts_step(
            self._state, insts.astype(np.int64), off, np.ascontiguousarray(pairs[:, 1]),
            np.zeros(0, dtype=np.bool_), False, np.zeros(m, dtype=np.bool_),
            np.ones(m, dtype=np.bool_), np.zeros(pairs.shape[0], dtype=np.int8),
            self.weighted, 1.0 / self.sample_rate, True)[0]
        return np.unique(pairs[:, 1])

    def feed_csr(self, bucket: np.ndarray, inst: np.ndarray, offsets: np.ndarray,
                 keys: np.ndarray, mask: np.ndarray | None, read: np.ndarray,
                 commit: np.ndarray) -> BatchFigures:
        """Feed rows in CSR form (``offsets`` int64[n + 1], ``keys`` int64) in order.

        Args:
            bucket: int64[n] where each row's figures are summed (e.g. its minute).
            inst: int64[n] instance code of each row (keys are per instance).
            offsets: CSR offsets.
            keys: block keys.
            mask: bool per key (masked: an internal hit, skipped by the prefix) or None.
            read: bool[n] the row reads (its hits are measured).
            commit: bool[n] the row touches its keys afterwards.

        Returns:
            The batch's figures per bucket.
        """
        read = np.asarray(read, dtype=np.bool_)
        commit = np.asarray(commit, dtype=np.bool_)
        bucket = np.asarray(bucket, dtype=np.int64)
        used, group = np.unique(bucket, return_inverse=True)
        nb = used.shape[0]
        group = np.ascontiguousarray(group.reshape(-1), dtype=np.int64)
        reads = np.bincount(group, weights=np.where(read, np.diff(offsets), 0),
                            minlength=nb).astype(np.int64)
        if self.read_rate < 1.0:
            # a peeking read changes nothing on the stack: a random subset of them
            # estimates the same ratios (every commit is still applied)
            peek = read & ~commit
            drop = peek & (self._rng.random(read.shape[0]) >= self.read_rate)
            if drop.any():
                rows = np.flatnonzero(~drop)
                lens = offsets[rows + 1] - offsets[rows]
                idx = np.repeat(offsets[rows] - np.concatenate(([0], np.cumsum(lens)[:-1])),
                                lens) + np.arange(int(lens.sum()))
                keys = keys[idx]
                mask = mask[idx] if mask is not None else None
                offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
                read, commit, inst, group = read[rows], commit[rows], \
                    np.asarray(inst)[rows], group[rows]
        n = offsets.shape[0] - 1
        read_blocks = np.where(read, np.diff(offsets), 0)
        s_offsets, s_keys, s_mask, cls = offsets, keys, mask, np.zeros(0, dtype=np.int8)
        if self.weighted:
            if self.heavy_share > 0:
                promoted = self._find_heavy(offsets, keys, read)
                if promoted is not None and promoted.shape[0]:
                    self._warm(promoted, inst, offsets, keys)
            s_offsets, s_keys, s_mask, cls = sample_csr(
                offsets, keys, mask, self.sample_rate, self.seed, self.full_depth,
                self._heavy_arr)
        if self._state is None:
            ml = int(np.diff(s_offsets).max()) if n else 1
            self._state = _new_state(max(1, ml), self.weighted)
        has_mask = s_mask is not None
        mask_arr = s_mask if s_mask is not None else np.zeros(0, dtype=np.bool_)
        inv_rate = 1.0 / self.sample_rate
        (self._state, seg_off, thr, sln, stp, scl, internal, internal1, first0,
         first1) = _facts_step(self._state, np.ascontiguousarray(inst, dtype=np.int64),
                               s_offsets, s_keys, mask_arr, has_mask, read,
                               commit, cls, self.weighted, inv_rate, True)
        w1 = inv_rate if self.weighted else 0.0
        if not self.weighted:
            scl = np.zeros(thr.shape[0], np.int8)
            internal1 = np.zeros(n, np.int64)
        hb, _ = _project_kernel(seg_off, thr, sln, stp, scl, internal, internal1, w1, read,
                                np.full(n, UNBOUNDED, np.int64), 1, group, nb, self._sorted)
        if self.weighted:
            w = np.where(cls == 1, inv_rate, 1.0)
            cw = np.concatenate(([0.0], np.cumsum(w)))
            s_reads = np.where(read, cw[s_offsets[1:]] - cw[s_offsets[:-1]], 0.0)
        else:
            s_reads = read_blocks.astype(np.float64)
        s_first = first0 + first1 * w1
        return BatchFigures(
            buckets=used, s_hits=hb[:, self._inv],
            s_reads=np.bincount(group, weights=s_reads, minlength=nb),
            reads=reads,
            s_first=np.bincount(group, weights=s_first, minlength=nb),
            internal=np.bincount(group, weights=internal + internal1 * w1, minlength=nb))

    def feed(self, bucket: Sequence[int], rows: Sequence[Sequence[int]], *,
             read: Sequence[bool], commit: Sequence[bool],
             inst: Sequence[int] | None = None) -> BatchFigures:
        """:meth:`feed_csr` of rows given as lists of keys (tests, small batches)."""
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
        keys = np.array([k for r in rows for k in r], dtype=np.int64)
        return self.feed_csr(np.asarray(bucket, dtype=np.int64),
                             np.zeros(len(rows), np.int64) if inst is None
                             else np.asarray(inst, dtype=np.int64),
                             offsets, keys, None, np.asarray(read, dtype=np.bool_),
                             np.asarray(commit, dtype=np.bool_))


def warm_up(sample_rate: float = 1.0) -> None:
    """Load (or compile) the kernels an :class:`OnlineCurve` at ``sample_rate`` runs,
    so a server's first tick does not pay for it.

    Example:
        >>> warm_up(0.5)
    """
    c = OnlineCurve([1, 0], sample_rate=sample_rate, read_rate=1.0)
    rows = [[1, 2], [1, 2], [3]]
    c.feed([0, 0, 0], rows, read=[True, False, True], commit=[False, True, True])

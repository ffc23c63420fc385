"""Offline bounds on the hit rate of a prefix cache: the ideal and a Belady optimum.

:func:`ideal` (re-exported from :mod:`kvsim.sim.replay`) is the unbounded cache: only
first-time keys miss. :func:`belady` is the offline (clairvoyant) optimum at a given
capacity, adapted to prefix caches. Requests are processed in order with the replay
contract's semantics:

1. **Read**: ``hit_blocks`` = the longest prefix of the request's keys that is cached
   before the request (rows of kind write-only read nothing).
2. **Write**: every key of the request is inserted or kept (read-only rows insert
   nothing).
3. **Evict**: while more than ``C`` blocks are cached, evict the cached *leaf* whose
   next use is farthest in the future. A block's next use is the index of the next
   request containing it (at any position), never-used-again is infinity. A leaf is a
   cached block that is no cached block's prefix parent; the parent of key ``j`` of a
   request is key ``j - 1`` of the request where the key was first seen. Ties: the
   deeper block (by its position when first seen) first, then the larger key, then
   the larger instance index. Keys are namespaced by instance.

Next-use indices are computed once per trace, vectorised (:func:`prepare`); each
capacity is then one pass of a numba kernel over the trace with a lazy-deletion
max-heap of leaves keyed by ``next_use * n_blocks + tie_rank`` (one int64). Several
capacities run in worker processes (forked, the prepared arrays inherited
copy-on-write) when the work is large.

Token hits follow the contract: ``hit_tokens = min(hit_blocks * block_size,
input_len)``; rates are ratios of sums.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [3], [1, 2], [3]],
    ...                      block_size=16)
    >>> [r["hit_blocks"] for r in belady(t, [1, 2, 3])]
    [1, 2, 3]
    >>> ideal(t)["hit_blocks"]
    3
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from kvsim.sim.replay import ideal
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

__all__ = ["BeladyPrep", "belady", "belady_hits", "ideal", "prepare"]

# Below this many block accesses in all (keys x capacities) one process is faster
# than starting a pool.
SMALL_WORK_KEYS = 5_000_000

_PREP: BeladyPrep | None = None  # the prepared trace, inherited by forked workers


@dataclass(frozen=True)
class BeladyPrep:
    """A trace prepared for :func:`belady` (computed once, reused for every capacity).

    Attributes:
        offsets: int64[n + 1] CSR offsets (the trace's).
        ids: int64[total] dense block id of every key occurrence ((instance, key)
            pairs numbered ``0 .. n_blocks - 1``).
        next_use: int64[total] for every occurrence, the index of the next request
            (after this one) that contains the same block, or ``n`` (never).
        parent: int64[n_blocks] prefix parent's block id (first seen), or -1.
        rank: int64[n_blocks] tie-break rank: larger = evicted first among blocks
            with the same next use (deeper, then larger key, then larger instance).
        reads: bool[n] rows whose hits are counted (not write-only).
        writes: bool[n] rows whose keys are inserted (not read-only).
        read_blocks: keys read in all (the block-rate denominator).
        input_tokens: int64[n] the token-rate denominator per row (0 for write rows).
        block_size: tokens per block.
        n_blocks: number of distinct (instance, key) blocks.
    """

    offsets: np.ndarray
    ids: np.ndarray
    next_use: np.ndarray
    parent: np.ndarray
    rank: np.ndarray
    reads: np.ndarray
    writes: np.ndarray
    read_blocks: int
    input_tokens: np.ndarray
    block_size: int
    n_blocks: int


def prepare(trace: Trace) -> BeladyPrep:
    """Dense block ids, next-use indices, prefix parents and tie ranks of ``trace``.

    Everything is vectorised with numpy (sorts and scans, no Python loop per key).

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[7, 8], [9], [7]])
        >>> p = prepare(t)
        >>> p.ids.tolist(), p.next_use.tolist(), p.parent.tolist()
        ([0, 1, 2, 0], [2, 3, 3, 3], [-1, 0, -1])
    """
    n = trace.n_requests
    total = trace.n_keys
    offsets = np.ascontiguousarray(trace.offsets, dtype=np.int64)
    keys = np.ascontiguousarray(trace.keys, dtype=np.int64)
    counts = np.diff(offsets)
    req = np.repeat(np.arange(n, dtype=np.int64), counts)
    inst = trace.instance.astype(np.int64)[req]
    pos = np.arange(total, dtype=np.int64)

    # dense ids of (instance, key), numbered in (key, instance) order
    order = np.lexsort((inst, keys))
    sk, si = keys[order], inst[order]
    new = np.ones(total, dtype=bool)
    if total:
        new[1:] = (sk[1:] != sk[:-1]) | (si[1:] != si[:-1])
    gid = np.cumsum(new) - 1
    n_blocks = int(gid[-1]) + 1 if total else 0
    ids = np.empty(total, dtype=np.int64)
    ids[order] = gid
    uniq_key = sk[new]
    uniq_inst = si[new]

    # next use: occurrences sorted by (id, position); groups of one (id, request)
    order2 = np.lexsort((pos, ids))
    sid, sreq = ids[order2], req[order2]
    gstart = np.ones(total, dtype=bool)
    if total:
        gstart[1:] = (sid[1:] != sid[:-1]) | (sreq[1:] != sreq[:-1])
    g = np.cumsum(gstart) - 1
    g_id, g_req = sid[gstart], sreq[gstart]
    g_next = np.full(g_id.shape[0], n, dtype=np.int64)
    if g_id.shape[0] > 1:
        same = g_id[1:] == g_id[:-1]
        g_next[:-1] = np.where(same, g_req[1:], n)
    next_use = np.empty(total, dtype=np.int64)
    next_use[order2] = g_next[g]

    # first occurrence of each block: its prefix parent and depth
    first = np.full(n_blocks, total, dtype=np.int64)
    np.minimum.at(first, ids, pos)
    start_of = offsets[:-1][req]
    occ_parent = np.full(total, -1, dtype=np.int64)
    if total:
        inner = pos > start_of
        occ_parent[inner] = ids[pos[inner] - 1]
    parent = occ_parent[first] if n_blocks else np.zeros(0, dtype=np.int64)
    depth = (first - start_of[first]) if n_blocks else np.zeros(0, dtype=np.int64)

    # tie rank: ascending (depth, key, instance); the largest is evicted first
    rorder = np.lexsort((uniq_inst, uniq_key, depth))
    rank = np.empty(n_blocks, dtype=np.int64)
    rank[rorder] = np.arange(n_blocks, dtype=np.int64)

    reads = trace.kind != KIND_WRITE
    writes = trace.kind != KIND_READ
    return BeladyPrep(
        offsets=offsets,
        ids=ids,
        next_use=next_use,
        parent=np.ascontiguousarray(parent),
        rank=rank,
        reads=np.ascontiguousarray(reads),
        writes=np.ascontiguousarray(writes),
        read_blocks=int(counts[reads].sum()),
        input_tokens=np.where(reads, trace.input_len, 0).astype(np.int64),
        block_size=int(trace.block_size),
        n_blocks=n_blocks,
    )


# ---------------------------------------------------------------------- kernel
@numba.njit(cache=True)
def _heap_push(hp: np.ndarray, hid: np.ndarray, size: int, p: int, d: int) -> int:
    i = size
    while i > 0:
        up = (i - 1) >> 1
        if hp[up] >= p:
            break
        hp[i] = hp[up]
        hid[i] = hid[up]
        i = up
    hp[i] = p
    hid[i] = d
    return size + 1


@numba.njit(cache=True)
def _sift_down(hp: np.ndarray, hid: np.ndarray, size: int, i: int) -> None:
    p = hp[i]
    d = hid[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and hp[c + 1] > hp[c]:
            c += 1
        if hp[c] <= p:
            break
        hp[i] = hp[c]
        hid[i] = hid[c]
        i = c
    hp[i] = p
    hid[i] = d


@numba.njit(cache=True)
def _compact(hp: np.ndarray, hid: np.ndarray, size: int, cached: np.ndarray,
             nchild: np.ndarray, prio: np.ndarray, mark: np.ndarray) -> int:
    """Keep the valid entries (one per block) and rebuild the heap; the new size."""
    m = 0
    for j in range(size):
        d = hid[j]
        if cached[d] and nchild[d] == 0 and prio[d] == hp[j] and not mark[d]:
            mark[d] = True
            hp[m] = hp[j]
            hid[m] = d
            m += 1
    for j in range(m):
        mark[hid[j]] = False
    for j in range(m // 2 - 1, -1, -1):
        _sift_down(hp, hid, m, j)
    return m


@numba.njit(cache=True)
def _belady_kernel(offsets: np.ndarray, ids: np.ndarray, next_use: np.ndarray,
                   parent: np.ndarray, rank: np.ndarray, reads: np.ndarray,
                   writes: np.ndarray, capacity: int, n_blocks: int,
                   heap_cap: int) -> np.ndarray:
    """Hit blocks per request under the prefix Belady rule at ``capacity`` blocks."""
    n = offsets.shape[0] - 1
    hits = np.zeros(n, dtype=np.int64)
    cached = np.zeros(n_blocks, dtype=np.bool_)
    nchild = np.zeros(n_blocks, dtype=np.int64)
    prio = np.full(n_blocks, -1, dtype=np.int64)
    mark = np.zeros(n_blocks, dtype=np.bool_)
    hcap = max(heap_cap, 16)
    hp = np.empty(hcap, dtype=np.int64)
    hid = np.empty(hcap, dtype=np.int64)
    size = 0
    count = 0
    nb = np.int64(n_blocks)
    for i in range(n):
        s = offsets[i]
        e = offsets[i + 1]
        if reads[i]:
            h = 0
            for p in range(s, e):
                if cached[ids[p]]:
                    h += 1
                else:
                    break
            hits[i] = h
        if writes[i]:
            for p in range(s, e):
                d = ids[p]
                if not cached[d]:
                    cached[d] = True
                    count += 1
                    par = parent[d]
                    if par >= 0:
                        nchild[par] += 1
        # new next use of every cached block of the request; (re)queue the leaves
        for p in range(s, e):
            d = ids[p]
            if cached[d]:
                prio[d] = next_use[p] * nb + rank[d]
        for p in range(s, e):
            d = ids[p]
            if cached[d] and nchild[d] == 0:
                if size == hcap:
                    size = _compact(hp, hid, size, cached, nchild, prio, mark)
                    if size * 2 > hcap:
                        hcap *= 2
                        hp2 = np.empty(hcap, dtype=np.int64)
                        hid2 = np.empty(hcap, dtype=np.int64)
                        hp2[:size] = hp[:size]
                        hid2[:size] = hid[:size]
                        hp = hp2
                        hid = hid2
                size = _heap_push(hp, hid, size, prio[d], d)
        while count > capacity:
            top_p = hp[0]
            d = hid[0]
            size -= 1
            if size > 0:
                hp[0] = hp[size]
                hid[0] = hid[size]
                _sift_down(hp, hid, size, 0)
            if not cached[d] or nchild[d] != 0 or prio[d] != top_p:
                continue  # stale entry
            cached[d] = False
            count -= 1
            par = parent[d]
            if par >= 0:
                nchild[par] -= 1
                if nchild[par] == 0 and cached[par]:
                    if size == hcap:
                        size = _compact(hp, hid, size, cached, nchild, prio, mark)
                    # a compaction leaves at most one entry per cached leaf, and the
                    # cache holds more than enough room: size < hcap here
                    size = _heap_push(hp, hid, size, prio[par], par)
    return hits


# ---------------------------------------------------------------------- entry
def belady_hits(prep: BeladyPrep, capacity: int) -> np.ndarray:
    """Hit blocks per request of the prepared trace at ``capacity`` blocks.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]])
        >>> belady_hits(prepare(t), 2).tolist()
        [0, 0, 2]
    """
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
    cap = min(int(capacity), prep.n_blocks)
    max_len = int(np.diff(prep.offsets).max()) if prep.offsets.shape[0] > 1 else 0
    heap_cap = min(2 * prep.ids.shape[0] + 16, 4 * (cap + max_len) + 4096)
    return _belady_kernel(prep.offsets, prep.ids, prep.next_use, prep.parent, prep.rank,
                          prep.reads, prep.writes, cap, prep.n_blocks, heap_cap)


def _figures(prep: BeladyPrep, capacity: int, hits: np.ndarray) -> dict[str, Any]:
    hit_blocks = int(hits.sum())
    hit_tokens = int(np.minimum(hits * prep.block_size, prep.input_tokens).sum())
    in_tokens = int(prep.input_tokens.sum())
    return {
        "capacity": int(capacity),
        "hit_blocks": hit_blocks,
        "hit_tokens": hit_tokens,
        "block_hit_rate": hit_blocks / prep.read_blocks if prep.read_blocks else 0.0,
        "token_hit_rate": hit_tokens / in_tokens if in_tokens else 0.0,
    }


def _task(capacity: int) -> np.ndarray:
    assert _PREP is not None, "worker has no prepared trace"
    return belady_hits(_PREP, capacity)


def belady(trace: Trace | BeladyPrep, capacities: Sequence[int], *,
           jobs: int | None = None) -> list[dict[str, Any]]:
    """The prefix-cache Belady optimum of ``trace`` at each capacity (in blocks).

    Args:
        trace: the trace, or a :class:`BeladyPrep` of it (from :func:`prepare`).
        capacities: cache capacities in blocks (non-negative).
        jobs: worker processes; default 1 for small work, else
            ``min(len(capacities), os.cpu_count())``.

    Returns:
        One dict per capacity, in input order: ``capacity``, ``hit_blocks``,
        ``hit_tokens``, ``block_hit_rate``, ``token_hit_rate``.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]],
        ...                      input_len=[40, 20, 40], block_size=16)
        >>> r = belady(t, [2])[0]
        >>> r["hit_blocks"], r["hit_tokens"], r["block_hit_rate"]
        (2, 32, 0.4)
    """
    global _PREP
    prep = trace if isinstance(trace, BeladyPrep) else prepare(trace)
    caps = [int(c) for c in capacities]
    for c in caps:
        if c < 0:
            raise ValueError(f"capacity must be >= 0 blocks, got {c}")
    if jobs is None:
        work = prep.ids.shape[0] * len(caps)
        jobs = 1 if work < SMALL_WORK_KEYS else min(len(caps), os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(caps)))
    if jobs == 1 or "fork" not in mp.get_all_start_methods():
        hits = [belady_hits(prep, c) for c in caps]
    else:
        _warm()
        _PREP = prep  # inherited copy-on-write by the forked workers
        try:
            with cf.ProcessPoolExecutor(max_workers=jobs,
                                        mp_context=mp.get_context("fork")) as ex:
                hits = list(ex.map(_task, caps))
        finally:
            _PREP = None
    return [_figures(prep, c, h) for c, h in zip(caps, hits, strict=True)]


def _warm() -> None:
    """Load the kernel (compile or read numba's cache) once, before forking workers."""
    one = np.zeros(2, dtype=np.int64)
    one[1] = 1
    _belady_kernel(one, np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64),
                   np.full(1, -1, dtype=np.int64), np.zeros(1, dtype=np.int64),
                   np.ones(1, dtype=np.bool_), np.ones(1, dtype=np.bool_), 0, 1, 16)

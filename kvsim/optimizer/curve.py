"""One-pass exact LRU capacity curves (policy ``lru``, prefix match, ``group_precise``).

Under the replay contract an LRU cache of ``C`` blocks always holds the top ``C``
entries of one recency stack over ``(instance, key)`` pairs: every request touches
all its keys tail first (so its first key ends up the most recent), then the cache
is trimmed to the ``C`` most recently touched keys. A key therefore is cached
before a request at capacity ``C`` iff its *stack distance* (1 + the number of
distinct keys touched since its last touch) is at most ``C``; a never-seen key is
never cached. The request's hit blocks at capacity ``C`` is the length of the
longest prefix whose distances are all ``<= C``: with ``m_j`` the prefix maximum of
the distances, ``hit_blocks(C) = #{j : m_j <= C}``.

:func:`curve_facts` computes the ``m_j`` of every request in one pass (a numba
kernel: a hash map of ``(instance, key)`` to dense ids, a Fenwick tree over
last-access positions, positions compacted when they run out) and stores them
run-length encoded as :class:`CurveFacts`. A segment is an arithmetic run of
prefix maxima ``t, t + s, ..., t + s * (length - 1)`` with step ``s`` 0 (equal
distances) or 1 (consecutive distances, the common case: blocks committed together
tail first have consecutive distances). Any capacity, or many at once, is then a
cheap projection of the facts: totals, per request, per instance, per window.

Sampled curves (``sample_rate < 1``, in the style of SHARDS, Waldspurger et al.,
FAST'15): the trace keeps every request but only the keys whose hash falls below
``rate * 2**64`` (a fixed hash of the key and a seed, so a key is in or out for the
whole trace). Because keys are prefix-chained and committed tail first, a block is
never less recent than any descendant, in the full trace and in the sampled one
alike: the sampled stream is itself a prefix-consistent stream, stack distances in
it are about ``rate`` times the true ones, and a capacity ``C`` projects at ``rate *
C`` (in the kernel, each sampled key counts ``1 / rate`` keys). Keys that carry a large
share of the reads - chain roots (``full_depth``) and heavy keys found in a sample of
the requests (``heavy_share``) - are kept at rate 1 and count once: a shared system
prompt would otherwise decide the estimate by being in or out. Rates are ratio
estimates (weighted sampled hits over weighted sampled reads, per group), hit
counts are those rates times the exact denominators. Sampling whole chains by their
root key instead keeps or drops whole prefix trees; on the Mooncake trace (one root
shared by every request) that is all or nothing. A sample's hit tokens are its hit
blocks times the block size (with ``tail=keep`` a partial last block counts whole).

Scope (everything else raises :class:`CurveError`):

* rows of kind ``KIND_REQUEST`` (read then write) and ``KIND_WRITE`` (write only,
  no read) are exact; ``KIND_READ`` rows are refused: a read refreshes only the
  blocks that hit, which depends on the capacity, so no single recency stack exists;
* block masks are exact as ``replay`` counts them: a masked block is an internal
  hit wherever it sits, is skipped by the prefix match and is written like any other.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2, 3], [4], [1, 2]],
    ...                      block_size=16)
    >>> f = curve_facts(t)
    >>> f.curve([1, 2, 3, 0])["hit_blocks"].to_list()   # 0 = unbounded
    [1, 3, 4, 4]
    >>> f.hit_blocks(2).tolist()
    [0, 2, 0, 1]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from kvsim.core._jit import prefetch
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "CurveError",
    "CurveFacts",
    "auto_capacities",
    "bytes_to_blocks",
    "curve_facts",
    "exact_curve",
    "heavy_keys",
    "sample_csr",
    "sample_mask",
]

FACTS_VERSION = 2
UNBOUNDED = np.iinfo(np.int64).max
_MIN_POSITIONS = 1 << 16


class CurveError(ValueError):
    """The one-pass curve cannot represent this trace or request exactly."""


# ----------------------------------------------------------------------------- kernels
@numba.njit(cache=True)
def _mix(key: Any, inst: Any) -> np.uint64:
    x = np.uint64(key) ^ (np.uint64(inst) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _fen_add(fen: np.ndarray, i: int, v: int) -> None:
    n = fen.shape[0] - 1
    while i <= n:
        fen[i] += v
        i += i & (-i)


@numba.njit(cache=True)
def _fen_sum(fen: np.ndarray, i: int) -> int:
    s = 0
    while i > 0:
        s += fen[i]
        i &= i - 1
    return s


@numba.njit(cache=True)
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int(np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56)))


@numba.njit(cache=True)
def _set_pos(words: np.ndarray, fenb: np.ndarray, p: int, on: bool) -> None:
    """Mark (``on``) or unmark position ``p``: its bit and its 64-position block count."""
    b = p >> 6
    bit = np.uint64(1) << np.uint64(p & 63)
    if on:
        words[b] |= bit
        _fen_add(fenb, b + 1, 1)
    else:
        words[b] &= ~bit
        _fen_add(fenb, b + 1, -1)


@numba.njit(cache=True)
def _pend(fen: np.ndarray, pb: int, pv: int, b: int, dv: int) -> tuple[int, int]:
    """Add ``dv`` to block ``b``'s pending count; a change of block flushes the pending
    ``(pb, pv)`` into the Fenwick tree. A commit touches runs of consecutive positions
    (new ones at the top, old ones where the chain was last committed): one tree update
    per 64-position block instead of one per key."""
    if b != pb:
        if pv != 0:
            _fen_add(fen, pb + 1, pv)
        return b, dv
    return pb, pv + dv


@numba.njit(cache=True)
def _count_le(words: np.ndarray, fenb: np.ndarray, p: int) -> int:
    """Marked positions ``<= p``: whole blocks from the (small) Fenwick tree, then bits."""
    b = p >> 6
    m = (np.uint64(2) << np.uint64(p & 63)) - np.uint64(1)
    return _fen_sum(fenb, b) + _popcount(words[b] & m)


@numba.njit(cache=True)
def _positions(npos: int) -> tuple[np.ndarray, np.ndarray]:
    nb = (npos >> 6) + 1
    return np.zeros(nb, dtype=np.uint64), np.zeros(nb + 1, dtype=np.int32)


@numba.njit(cache=True)
def _new_state(max_len: int, weighted: bool) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
        np.ndarray, np.ndarray]:
    """An empty recency stack: the state :func:`_facts_step` carries between batches.

    ``(tab, last, idcls, words, fenb, words1, fenb1, who, sc)``: the ``(instance, key)``
    -> id hash map, each id's last-access position (0 = never), each id's class, the
    marked positions of class-0 and class-1 ids (bitmaps and per-64 Fenwick trees), the
    id at each position, and the scalars ``sc = [hcap, n_ids, npos, nxt, live, live1,
    compactions]``.
    """
    hcap = 1 << 12
    npos = _MIN_POSITIONS
    while npos < 4 * max_len:
        npos *= 2
    words, fenb = _positions(npos)
    words1, fenb1 = _positions(npos if weighted else 64)  # class-1 positions
    sc = np.zeros(8, dtype=np.int64)
    sc[0] = hcap
    sc[2] = npos
    sc[3] = 1
    return (np.zeros(2 * hcap, dtype=np.int64), np.zeros(1 << 11, dtype=np.int64),
            np.zeros(1 << 11, dtype=np.int8), words, fenb, words1, fenb1,
            np.zeros(npos + 1, dtype=np.int64), sc)


@numba.njit(cache=True)
def _resolve_id(tab: np.ndarray, hcap: int, h: int, k: Any, inst: Any, n_ids: int,
                last: np.ndarray, idcls: np.ndarray, weighted: bool, cj: int,
                ) -> tuple[int, bool, int, np.ndarray, np.ndarray]:
    """The dense id of key ``k`` of instance ``inst``, probing from slot ``h`` of the
    open-addressing table ``tab``; a new key gets the next id (``last`` and ``idcls``
    grown when full, its class ``cj`` noted when ``weighted``).

    Returns:
        ``(id, found, n_ids, last, idcls)``: ``found`` is False for a new key.
    """
    while True:
        meta = tab[2 * h + 1]
        if meta == 0 or (tab[2 * h] == k and (meta >> 32) == inst):
            break
        h = (h + 1) & (hcap - 1)
    if meta != 0:
        return (meta & 0xFFFFFFFF) - 1, True, n_ids, last, idcls
    d = n_ids
    tab[2 * h] = k
    tab[2 * h + 1] = (inst << 32) | (d + 1)
    n_ids += 1
    if n_ids > last.shape[0]:
        nl = np.zeros(2 * last.shape[0], dtype=np.int64)
        nl[: last.shape[0]] = last
        last = nl
        nc = np.zeros(2 * idcls.shape[0], dtype=np.int8)
        nc[: idcls.shape[0]] = idcls
        idcls = nc
    if weighted:
        idcls[d] = cj
    return d, False, n_ids, last, idcls


@numba.njit(cache=True)
def _facts_step(
    state: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                 np.ndarray, np.ndarray, np.ndarray],
    req_inst: np.ndarray, offsets: np.ndarray, keys: np.ndarray, mask: np.ndarray,
    has_mask: bool, is_read: np.ndarray, commit: np.ndarray, cls: np.ndarray, weighted: bool,
    inv_rate: float, promote: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                 np.ndarray, np.ndarray, np.ndarray],
           np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray, np.ndarray, np.ndarray]:
    """Prefix-maximum stack distances of a batch of requests, run-length encoded, on
    the recency stack ``state`` (from :func:`_new_state` or the previous batch).

    A whole trace is one batch; the server's capacity advisor feeds its calls in
    batches and keeps the state between them. A row reads (``is_read``: its
    distances are measured on the stack as it was before the row) and/or commits
    (``commit``: all its keys are touched tail first, so its first key ends most recent).

    ``weighted`` (a key sample): ``cls[j]`` is 0 for a key kept at rate 1, 1 for one
    kept at the sample rate; a class-1 key stands for ``inv_rate`` keys, so a
    distance is ``1 + (class-0 keys since) + ceil(inv_rate * class-1 keys since)``.
    Segments never mix classes. An id's class is fixed when it is first seen, unless
    ``promote`` (online sampling, where heavy keys are found as they come): a class-1 id
    whose key arrives as class 0 becomes class 0 for good.

    Returns the new state, seg_offsets, seg_threshold, seg_length, seg_step, seg_class,
    internal (class-0 masked blocks), internal of class 1, and the unmasked read keys
    never committed before (first accesses: compulsory misses) of class 0 and class 1.
    """
    tab, last, idcls, words, fenb, words1, fenb1, who, sc = state
    hcap = sc[0]
    n_ids = sc[1]
    npos = sc[2]
    nxt = sc[3]
    live = sc[4]
    live1 = sc[5]
    compactions = sc[6]
    n = offsets.shape[0] - 1
    max_len = 1
    for q in range(n):
        max_len = max(max_len, offsets[q + 1] - offsets[q])
    # hash map (instance, key) -> dense id, open addressing, grown at load 1/2
    # slot h: tab[2h] = key, tab[2h + 1] = instance << 32 | (id + 1), 0 = empty (one
    # cache line per probe)
    # positions 1..npos, marked where some id was last accessed: a bitmap, and a
    # Fenwick tree of marked counts per 64-position block (64x smaller: stays cached)
    seg_off = np.zeros(n + 1, dtype=np.int64)
    cap_s = max(1024, keys.shape[0] // 8)
    thr = np.empty(cap_s, dtype=np.int64)
    sln = np.empty(cap_s, dtype=np.int32)
    stp = np.empty(cap_s, dtype=np.int8)
    scl = np.empty(cap_s, dtype=np.int8)
    ns = 0
    internal = np.zeros(n, dtype=np.int64)
    internal1 = np.zeros(n, dtype=np.int64)
    first0 = np.zeros(n, dtype=np.int64)
    first1 = np.zeros(n, dtype=np.int64)
    ids = np.empty(max_len, dtype=np.int64)
    hs = np.empty(max_len, dtype=np.int64)
    for q in range(n):
        a = offsets[q]
        b = offsets[q + 1]
        m = b - a
        inst = np.int64(req_inst[q])
        # ---- room for m new positions: compact live positions to 1..live
        if nxt + m > npos:
            compactions += 1
            newp = npos
            while newp < 2 * (live + live1 + max_len):
                newp *= 2
            nwords, nfen = _positions(newp)
            nwords1, nfen1 = _positions(newp if weighted else 64)
            nwho = np.zeros(newp + 1, dtype=np.int64)
            c = 0
            for pos in range(1, nxt):
                d = who[pos]
                if last[d] == pos:
                    c += 1
                    last[d] = c
                    nwho[c] = d
                    if weighted and idcls[d] == 1:
                        nwords1[c >> 6] |= np.uint64(1) << np.uint64(c & 63)
                    else:
                        nwords[c >> 6] |= np.uint64(1) << np.uint64(c & 63)
            _fenwick_build(nwords, nfen)
            words = nwords
            fenb = nfen
            if weighted:
                _fenwick_build(nwords1, nfen1)
                words1 = nwords1
                fenb1 = nfen1
            who = nwho
            npos = newp
            nxt = c + 1
        # ---- ids (and the read's distances, on the stack as it was before the request)
        rd = is_read[q]
        cur = 0
        t0 = 0
        ln = 0
        st = 0
        stopped = False
        nint = 0
        nint1 = 0
        nf0 = 0
        nf1 = 0
        sc_ = 0
        qb = -1  # the block whose Fenwick prefix sum qs (qs1: class 1) is cached
        qs = 0
        qs1 = 0
        if 2 * (n_ids + m) > hcap:  # grow and rehash (never inside a request: see hs)
            ncap = 2 * hcap
            while 2 * (n_ids + m) > ncap:
                ncap *= 2
            nt = np.zeros(2 * ncap, dtype=np.int64)
            for s in range(hcap):
                m2 = tab[2 * s + 1]
                if m2 != 0:
                    h2 = np.int64(_mix(tab[2 * s], m2 >> 32) & np.uint64(ncap - 1))
                    while nt[2 * h2 + 1] != 0:
                        h2 = (h2 + 1) & (ncap - 1)
                    nt[2 * h2] = tab[2 * s]
                    nt[2 * h2 + 1] = m2
            tab = nt
            hcap = ncap
        for j in range(a, b):  # hash slots first, prefetched: the probes' misses overlap
            h = np.int64(_mix(keys[j], inst) & np.uint64(hcap - 1))
            hs[j - a] = h
            prefetch(tab, 2 * h)
        # ids first (without promotion, which must interleave with the distances), with
        # each id's last position prefetched: the distance loop then finds it cached
        pre = not promote
        if pre:
            for j in range(a, b):
                d, _, n_ids, last, idcls = _resolve_id(
                    tab, hcap, hs[j - a], keys[j], inst, n_ids, last, idcls, weighted,
                    cls[j] if weighted else 0)
                ids[j - a] = d
                prefetch(last, d)
        for j in range(a, b):
            if pre:
                d = ids[j - a]
            else:
                d, found, n_ids, last, idcls = _resolve_id(
                    tab, hcap, hs[j - a], keys[j], inst, n_ids, last, idcls, weighted,
                    cls[j] if weighted else 0)
                if found and promote and idcls[d] == 1 and cls[j] == 0:
                    # a sampled key promoted to class 0 (heavy): counts once from now on
                    idcls[d] = 0
                    pp = last[d]
                    if pp > 0:
                        _set_pos(words1, fenb1, pp, False)
                        live1 -= 1
                        _set_pos(words, fenb, pp, True)
                        live += 1
                        qb = -1  # the cached block sum is stale
                ids[j - a] = d
            if not rd:
                continue
            kc = idcls[d] if weighted else 0
            if has_mask and mask[j]:
                if kc == 1:
                    nint1 += 1
                else:
                    nint += 1
                continue
            p = last[d]
            if p == 0:
                if kc == 1:
                    nf1 += 1
                else:
                    nf0 += 1
            if stopped:
                continue
            if p == 0:
                stopped = True
                continue
            pb = p >> 6
            if pb != qb:  # the Fenwick sum of the blocks below p's (cached per block)
                qb = pb
                qs = _fen_sum(fenb, pb)
                if weighted:
                    qs1 = _fen_sum(fenb1, pb)
            pm = (np.uint64(2) << np.uint64(p & 63)) - np.uint64(1)
            dist = live - (qs + _popcount(words[pb] & pm)) + 1
            if weighted:
                dist += int(np.ceil((live1 - (qs1 + _popcount(words1[pb] & pm))) * inv_rate))
            if dist > cur:
                cur = dist
            if ln > 0 and kc != sc_:  # a class change closes the segment
                thr, sln, stp, scl, ns = _push_segment(thr, sln, stp, scl, ns, t0, ln, st, sc_)
                ln = 0
            sc_ = kc
            if ln == 0:
                t0 = cur
                ln = 1
                st = 0
            elif ln == 1 and (cur == t0 or cur == t0 + 1):
                st = cur - t0
                ln = 2
            elif ln >= 2 and cur == t0 + st * ln:
                ln += 1
            else:
                thr, sln, stp, scl, ns = _push_segment(thr, sln, stp, scl, ns, t0, ln, st, sc_)
                t0 = cur
                ln = 1
                st = 0
        if ln > 0:
            thr, sln, stp, scl, ns = _push_segment(thr, sln, stp, scl, ns, t0, ln, st, sc_)
        internal[q] = nint
        internal1[q] = nint1
        first0[q] = nf0
        first1[q] = nf1
        seg_off[q + 1] = ns
        if not commit[q]:
            continue
        # ---- commit: touch every key tail first (the first key ends most recent); the
        # bitmaps change at once, the block counts through _pend (flushed at the end)
        cb0 = -1
        cv0 = 0
        sb0 = -1
        sv0 = 0
        cb1 = -1
        cv1 = 0
        sb1 = -1
        sv1 = 0
        for jj in range(m - 1, -1, -1):
            d = ids[jj]
            p = last[d]
            nb = nxt >> 6
            nbit = np.uint64(1) << np.uint64(nxt & 63)
            if weighted and idcls[d] == 1:
                if p > 0:
                    words1[p >> 6] &= ~(np.uint64(1) << np.uint64(p & 63))
                    cb1, cv1 = _pend(fenb1, cb1, cv1, p >> 6, -1)
                else:
                    live1 += 1
                words1[nb] |= nbit
                sb1, sv1 = _pend(fenb1, sb1, sv1, nb, 1)
            else:
                if p > 0:
                    words[p >> 6] &= ~(np.uint64(1) << np.uint64(p & 63))
                    cb0, cv0 = _pend(fenb, cb0, cv0, p >> 6, -1)
                else:
                    live += 1
                words[nb] |= nbit
                sb0, sv0 = _pend(fenb, sb0, sv0, nb, 1)
            who[nxt] = d
            last[d] = nxt
            nxt += 1
        if cv0 != 0:
            _fen_add(fenb, cb0 + 1, cv0)
        if sv0 != 0:
            _fen_add(fenb, sb0 + 1, sv0)
        if cv1 != 0:
            _fen_add(fenb1, cb1 + 1, cv1)
        if sv1 != 0:
            _fen_add(fenb1, sb1 + 1, sv1)
    sc[0] = hcap
    sc[1] = n_ids
    sc[2] = npos
    sc[3] = nxt
    sc[4] = live
    sc[5] = live1
    sc[6] = compactions
    return ((tab, last, idcls, words, fenb, words1, fenb1, who, sc), seg_off,
            thr[:ns].copy(), sln[:ns].copy(), stp[:ns].copy(), scl[:ns].copy(),
            internal, internal1, first0, first1)


def _facts_kernel(
    req_inst: np.ndarray, offsets: np.ndarray, keys: np.ndarray, mask: np.ndarray,
    has_mask: bool, is_read: np.ndarray, cls: np.ndarray, weighted: bool, inv_rate: float,
    commit: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray, np.ndarray, int, int]:
    """:func:`_facts_step` of one batch on an empty stack (a whole trace).

    ``commit`` defaults to every row. Returns seg_offsets, seg_threshold, seg_length,
    seg_step, seg_class, internal, internal1, the class of each id, the number of
    distinct ``(instance, key)`` pairs and the number of position compactions.
    """
    n = offsets.shape[0] - 1
    max_len = int(np.diff(offsets).max()) if n else 1
    state = _new_state(max(1, max_len), weighted)
    if commit is None:
        commit = np.ones(n, dtype=np.bool_)
    state, seg_off, thr, sln, stp, scl, internal, internal1, _, _ = _facts_step(
        state, req_inst, offsets, keys, mask, has_mask, is_read, commit, cls, weighted,
        inv_rate)
    sc = state[8]
    n_ids = int(sc[1])
    return (seg_off, thr, sln, stp, scl, internal, internal1, state[2][:n_ids].copy(), n_ids,
            int(sc[6]))


@numba.njit(cache=True)
def _fenwick_build(words: np.ndarray, fen: np.ndarray) -> None:
    """Fenwick tree of per-word popcounts (``fen`` zeroed, one longer than ``words``)."""
    nb = words.shape[0]
    for i in range(nb):
        fen[i + 1] = _popcount(words[i])
    for i in range(1, nb + 1):
        j = i + (i & (-i))
        if j <= nb:
            fen[j] += fen[i]


@numba.njit(cache=True)
def _push_segment(thr: np.ndarray, sln: np.ndarray, stp: np.ndarray, scl: np.ndarray, ns: int,
                  t0: int, ln: int, st: int, sc: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Append segment ``(t0, ln, st, sc)`` at ``ns`` (growing the arrays when full)."""
    if ns == thr.shape[0]:
        thr, sln, stp, scl = _grow_segments(thr, sln, stp, scl, ns)
    thr[ns] = t0
    sln[ns] = ln
    stp[ns] = st
    scl[ns] = sc
    return thr, sln, stp, scl, ns + 1


@numba.njit(cache=True)
def _grow_segments(thr: np.ndarray, sln: np.ndarray, stp: np.ndarray, scl: np.ndarray,
                   ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate((thr, np.empty(ns, dtype=np.int64))),
            np.concatenate((sln, np.empty(ns, dtype=np.int32))),
            np.concatenate((stp, np.empty(ns, dtype=np.int8))),
            np.concatenate((scl, np.empty(ns, dtype=np.int8))))


@numba.njit(cache=True)
def _project_kernel(
    seg_off: np.ndarray, thr: np.ndarray, sln: np.ndarray, stp: np.ndarray,
    scl: np.ndarray, internal: np.ndarray, internal1: np.ndarray, w1: float,
    is_read: np.ndarray, input_len: np.ndarray, block_size: int,
    group: np.ndarray, n_groups: int, caps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Hit blocks and hit tokens summed per group, for ascending capacities ``caps``.

    Class-1 segments (and ``internal1``) count ``w1`` blocks each (exact facts have
    none); a request's hit tokens are capped at its ``input_len``.
    """
    n = seg_off.shape[0] - 1
    K = caps.shape[0]
    hb = np.zeros((n_groups, K), dtype=np.float64)
    ht = np.zeros((n_groups, K), dtype=np.float64)
    for q in range(n):
        if not is_read[q]:
            continue
        g = group[q]
        s = seg_off[q]
        e = seg_off[q + 1]
        acc0 = internal[q]
        acc1 = internal1[q]
        il = input_len[q]
        for k in range(K):
            c = caps[k]
            while s < e and thr[s] + np.int64(stp[s]) * (np.int64(sln[s]) - 1) <= c:
                if scl[s] == 1:
                    acc1 += sln[s]
                else:
                    acc0 += sln[s]
                s += 1
            h0 = acc0
            h1 = acc1
            if s < e and stp[s] == 1 and thr[s] <= c:
                if scl[s] == 1:
                    h1 += c - thr[s] + 1
                else:
                    h0 += c - thr[s] + 1
            h = h0 + h1 * w1
            hb[g, k] += h
            tok = h * block_size
            ht[g, k] += tok if tok < il else il
    return hb, ht


@numba.njit(cache=True)
def _per_request_kernel(
    seg_off: np.ndarray, thr: np.ndarray, sln: np.ndarray, stp: np.ndarray,
    internal: np.ndarray, is_read: np.ndarray, cap: int,
) -> np.ndarray:
    n = seg_off.shape[0] - 1
    out = np.zeros(n, dtype=np.int64)
    for q in range(n):
        if not is_read[q]:
            continue
        h = internal[q]
        for s in range(seg_off[q], seg_off[q + 1]):
            end = thr[s] + np.int64(stp[s]) * (np.int64(sln[s]) - 1)
            if end <= cap:
                h += sln[s]
            else:
                if stp[s] == 1 and thr[s] <= cap:
                    h += cap - thr[s] + 1
                break
        out[q] = h
    return out


# ----------------------------------------------------------------------------- facts
def _capacity_array(capacities: Sequence[int] | np.ndarray) -> np.ndarray:
    caps = np.asarray(capacities, dtype=np.int64).reshape(-1)
    if caps.size and caps.min() < 0:
        raise CurveError(f"capacities must be >= 0 blocks (0 = unbounded), got {caps.min()}")
    return np.where(caps == 0, UNBOUNDED, caps)


@dataclass(frozen=True, eq=False)
class CurveFacts:
    """The capacity-independent facts of an LRU replay, from which any capacity projects.

    Attributes:
        seg_offsets: int64[n + 1] CSR offsets of each request's segments.
        seg_threshold: int64[S] first prefix-maximum stack distance of each segment.
        seg_length: int32[S] blocks in the segment.
        seg_step: int8[S] 0 (all distances equal) or 1 (consecutive distances).
        internal: int64[n] masked blocks of read rows (internal hits at any capacity).
        read_blocks: int64[n] blocks read per request (0 for write-only rows).
        input_len: int64[n] prompt tokens per request, as in the trace.
        is_read: bool[n] rows that read (all but ``KIND_WRITE``).
        instance: int32[n] index into ``instances``.
        instances: instance ids.
        ts_ns: int64[n] request times.
        block_size: tokens per block.
        unique_blocks: distinct ``(instance, key)`` pairs of the trace.
        source: where the trace came from.
        sample_rate: 1.0 for exact facts; below 1 the facts are of a key sample (see
            the module docstring) and ``unique_blocks`` is an estimate.
        seg_class: int8[S] of a sample: 1 where a segment's keys stand for
            ``1 / sample_rate`` keys each (None when exact).
        internal1: int64[n] of a sample: masked class-1 blocks (None when exact).
        s_reads: float64[n] of a sample: weighted sampled blocks read per request.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> f = curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[7, 8], [7, 8]]))
        >>> f.seg_threshold.tolist(), f.seg_length.tolist(), f.seg_step.tolist()
        ([1], [2], [1])
    """

    seg_offsets: np.ndarray
    seg_threshold: np.ndarray
    seg_length: np.ndarray
    seg_step: np.ndarray
    internal: np.ndarray
    read_blocks: np.ndarray
    input_len: np.ndarray
    is_read: np.ndarray
    instance: np.ndarray
    instances: tuple[str, ...]
    ts_ns: np.ndarray
    block_size: int
    unique_blocks: int
    source: str = "<memory>"
    sample_rate: float = 1.0
    seg_class: np.ndarray | None = None
    internal1: np.ndarray | None = None
    s_reads: np.ndarray | None = None

    @property
    def sampled(self) -> bool:
        """Whether these are facts of a key sample (estimates, not exact figures)."""
        return self.sample_rate < 1.0

    @property
    def n_requests(self) -> int:
        """Number of requests."""
        return int(self.seg_offsets.shape[0] - 1)

    @property
    def input_tokens(self) -> np.ndarray:
        """int64[n] the hit-rate denominator (0 for write-only rows)."""
        return np.where(self.is_read, self.input_len, 0)

    # ------------------------------------------------------------------ projections
    def hit_blocks(self, capacity: int) -> np.ndarray:
        """int64[n] hit blocks per request at ``capacity`` blocks (0 = unbounded).

        Example:
            >>> from kvsim.trace.model import Trace
            >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]])
            >>> curve_facts(t).hit_blocks(2).tolist()
            [0, 0, 1]
        """
        if self.sampled:
            raise CurveError("per-request hit blocks need exact facts; these are sampled "
                             f"at rate {self.sample_rate:g} (use curve / by_instance / "
                             "by_window)")
        cap = int(_capacity_array([capacity])[0])
        return _per_request_kernel(self.seg_offsets, self.seg_threshold, self.seg_length,
                                   self.seg_step, self.internal, self.is_read, cap)

    def hit_tokens(self, capacity: int) -> np.ndarray:
        """int64[n] ``min(hit_blocks * block_size, input_len)`` per request."""
        return np.minimum(self.hit_blocks(capacity) * self.block_size, self.input_tokens)

    def _grouped(self, capacities: Sequence[int] | np.ndarray, group: np.ndarray,
                 n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        caps = _capacity_array(capacities)
        order = np.argsort(caps, kind="stable")
        group = np.ascontiguousarray(group, dtype=np.int64)
        hb, ht = self._project(caps[order], group, n_groups)
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0])
        return np.asarray(capacities, dtype=np.int64).reshape(-1), hb[:, inv], ht[:, inv]

    def _project(self, caps: np.ndarray, group: np.ndarray,
                 n_groups: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_requests
        if not self.sampled:
            hb, ht = _project_kernel(
                self.seg_offsets, self.seg_threshold, self.seg_length, self.seg_step,
                np.zeros(self.seg_threshold.shape[0], np.int8), self.internal,
                np.zeros(n, np.int64), 0.0, self.is_read, self.input_len,
                int(self.block_size), group, int(n_groups), caps,
            )
            return hb.astype(np.int64), ht.astype(np.int64)
        # a key sample: ratio estimates per group, times the exact denominators
        assert self.seg_class is not None and self.internal1 is not None
        assert self.s_reads is not None
        w1 = 1.0 / self.sample_rate
        s_hb, _ = _project_kernel(
            self.seg_offsets, self.seg_threshold, self.seg_length, self.seg_step,
            self.seg_class, self.internal, self.internal1, w1, self.is_read,
            np.full(n, UNBOUNDED, np.int64), int(self.block_size), group, int(n_groups), caps,
        )
        s_den = np.bincount(group, weights=self.s_reads, minlength=n_groups)[:, None]
        den = np.bincount(group, weights=self.read_blocks, minlength=n_groups)[:, None]
        rate = np.divide(s_hb, s_den, out=np.zeros_like(s_hb), where=s_den > 0)
        hb = np.rint(rate * den).astype(np.int64)
        tokens = np.bincount(group, weights=self.input_tokens, minlength=n_groups)[:, None]
        return hb, np.minimum(hb * int(self.block_size), tokens.astype(np.int64))

    def curve(self, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """Totals and rates at every capacity (blocks; 0 = unbounded), in the given order.

        Columns: capacity, hit_blocks, hit_tokens, read_blocks, input_tokens,
        block_hit_rate, token_hit_rate.

        Example:
            >>> from kvsim.trace.model import Trace
            >>> t = Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 2]], block_size=4)
            >>> curve_facts(t).curve([1, 2])["hit_tokens"].to_list()
            [4, 8]
        """
        caps, hb, ht = self._grouped(capacities, np.zeros(self.n_requests, np.int64), 1)
        return _frame({"capacity": caps}, hb[0], ht[0], int(self.read_blocks.sum()),
                      int(self.input_tokens.sum()))

    def by_instance(self, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """Per instance and capacity: totals and rates (one shared cache of all instances)."""
        import polars as pl

        n_i = len(self.instances)
        caps, hb, ht = self._grouped(capacities, self.instance, n_i)
        rb = np.bincount(self.instance, weights=self.read_blocks, minlength=n_i)
        it = np.bincount(self.instance, weights=self.input_tokens, minlength=n_i)
        parts = [
            _frame({"instance": [name] * caps.shape[0], "capacity": caps}, hb[i], ht[i],
                   int(rb[i]), int(it[i]))
            for i, name in enumerate(self.instances)
        ]
        return pl.concat(parts)

    def by_window(self, capacities: Sequence[int] | np.ndarray, window_ns: int | None = None,
                  *, points: int = 200) -> pl.DataFrame:
        """Per time window (default: the trace span split into ``points``) and capacity.

        Columns: window, end_ns, capacity, hit_blocks, hit_tokens, read_blocks,
        input_tokens, block_hit_rate, token_hit_rate (windows without requests omitted).
        """
        import polars as pl

        n = self.n_requests
        if n == 0:
            return pl.DataFrame()
        t0 = int(self.ts_ns[0])
        span = max(1, int(self.ts_ns[-1]) - t0)
        if window_ns is None:
            window_ns = max(1, -(-span // points))
        w = (self.ts_ns - t0) // window_ns
        used, group = np.unique(w, return_inverse=True)
        caps, hb, ht = self._grouped(capacities, group, used.shape[0])
        rb = np.bincount(group, weights=self.read_blocks, minlength=used.shape[0])
        it = np.bincount(group, weights=self.input_tokens, minlength=used.shape[0])
        return pl.concat([
            _frame({"window": [int(x)] * caps.shape[0],
                    "end_ns": [int(x) * window_ns + t0 + window_ns] * caps.shape[0],
                    "capacity": caps}, hb[g], ht[g], int(rb[g]), int(it[g]))
            for g, x in enumerate(used)
        ])

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the facts as one ``.npz`` file, atomically (temp file, then rename).

        Example:
            >>> import tempfile, pathlib
            >>> from kvsim.trace.model import Trace
            >>> f = curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[1], [1]]))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     p = f.save(pathlib.Path(d) / "facts.npz")
            ...     CurveFacts.load(p).curve([1])["hit_blocks"].to_list()
            [1]
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"version": FACTS_VERSION, "block_size": int(self.block_size),
                "unique_blocks": int(self.unique_blocks), "source": self.source,
                "instances": list(self.instances), "sample_rate": float(self.sample_rate)}
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        if self.sampled:
            arrays.update({name: getattr(self, name) for name in _SAMPLE_ARRAYS})
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            if hasattr(os, "fchmod"):
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    @staticmethod
    def load(path: str | os.PathLike[str]) -> CurveFacts:
        """Read facts written by :meth:`save`.

        Raises:
            CurveError: not a facts file, or one of another version.
            OSError: the file cannot be read.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") not in (1, FACTS_VERSION):
                    raise CurveError(f"{path}: facts version {meta.get('version')!r}, "
                                     f"expected 1 or {FACTS_VERSION}")
                arrays = {name: z[name] for name in _ARRAYS}
                rate = float(meta.get("sample_rate", 1.0))
                sampled = {name: z[name] for name in _SAMPLE_ARRAYS} if rate < 1.0 else {}
        except (KeyError, ValueError) as e:
            raise CurveError(f"{path}: not a curve facts file ({e})") from None
        return CurveFacts(**arrays, **sampled, instances=tuple(meta["instances"]),
                          block_size=int(meta["block_size"]),
                          unique_blocks=int(meta["unique_blocks"]), source=str(meta["source"]),
                          sample_rate=rate)


_SAMPLE_ARRAYS = ("seg_class", "internal1", "s_reads")
_ARRAYS = ("seg_offsets", "seg_threshold", "seg_length", "seg_step", "internal",
           "read_blocks", "input_len", "is_read", "instance", "ts_ns")


def _frame(head: dict[str, Any], hb: np.ndarray, ht: np.ndarray, read_blocks: int,
           input_tokens: int) -> pl.DataFrame:
    import polars as pl

    k = len(hb)
    return pl.DataFrame({
        **head,
        "hit_blocks": np.asarray(hb, dtype=np.int64),
        "hit_tokens": np.asarray(ht, dtype=np.int64),
        "read_blocks": np.full(k, read_blocks, dtype=np.int64),
        "input_tokens": np.full(k, input_tokens, dtype=np.int64),
        "block_hit_rate": np.asarray(hb, dtype=np.float64) / read_blocks if read_blocks
        else np.zeros(k),
        "token_hit_rate": np.asarray(ht, dtype=np.float64) / input_tokens if input_tokens
        else np.zeros(k),
    })


def curve_facts(trace: Trace, *, sample_rate: float = 1.0, sample_seed: int = 0,
                full_depth: int = 1, heavy_share: float = 1e-4,
                read_rows: str = "refuse") -> CurveFacts:
    """One pass over ``trace``: the facts of an exact ``lru`` capacity curve.

    Args:
        trace: requests in timestamp order (``KIND_REQUEST`` and ``KIND_WRITE`` rows).
        sample_rate: 1 for exact facts; in ``(0, 1)`` the facts of a spatial key
            sample (SHARDS; see the module docstring): memory and time shrink with
            the rate, projections become estimates.
        sample_seed: picks which keys a sample holds.
        full_depth: in a sample, keys at block depth below this are all kept (chain
            roots: few keys, many reads).
        heavy_share: in a sample, keys estimated to carry at least this share of all
            reads are all kept (:func:`heavy_keys`; 0 turns this off).
        read_rows: what to do with ``KIND_READ`` rows: ``"refuse"`` (raise), or
            ``"peek"``: measure them on the stack and touch nothing, as if the write
            that follows a read (the server's read -> startWriteCache ->
            finishWriteCache flow, whose ``FinishWriteCache`` rows touch every key the
            write covered) refreshed its keys. Exact for a server's event log when
            every read's hit keys are written again before the next call of the same
            group; the server's capacity advisor computes the same figures live.

    Returns:
        The :class:`CurveFacts` of the trace.

    Raises:
        CurveError: the trace has ``KIND_READ`` rows (see the module docstring), or
            the rate is not in ``(0, 1]``.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 3]])).unique_blocks
        3
    """
    if not 0.0 < sample_rate <= 1.0:
        raise CurveError(f"sample rate must be in (0, 1], got {sample_rate}")
    if full_depth < 0:
        raise CurveError(f"full depth must be >= 0, got {full_depth}")
    if read_rows not in ("refuse", "peek"):
        raise CurveError(f"read_rows must be 'refuse' or 'peek', got {read_rows!r}")
    n = trace.n_requests
    if n and read_rows == "refuse" and np.any(trace.kind == KIND_READ):
        bad = int(np.flatnonzero(trace.kind == KIND_READ)[0])
        raise CurveError(
            f"{trace.source}: row {bad} is a read-only event (KIND_READ); the one-pass LRU "
            "curve is exact only for combined requests and write-only rows (a read refreshes "
            "only the blocks that hit, which depends on the capacity): use replay instead, "
            "or read_rows='peek' (--read-rows peek) for a server's event log"
        )
    is_read = trace.kind != KIND_WRITE
    read_blocks = np.where(is_read, trace.key_counts(), 0)
    offsets, keys, mask = trace.offsets, trace.keys, trace.mask
    weighted = sample_rate < 1.0
    cls = np.zeros(0, dtype=np.int8)
    if weighted:
        offsets, keys, mask, cls = _sample_keys(trace, sample_rate, sample_seed, full_depth,
                                                heavy_share)
    has_mask = mask is not None
    mask_arr = mask if mask is not None else np.zeros(0, dtype=np.bool_)
    seg_off, thr, sln, stp, scl, internal, internal1, idcls, n_ids, _ = _facts_kernel(
        np.ascontiguousarray(trace.instance, dtype=np.int64), offsets, keys,
        mask_arr, has_mask, is_read, cls, weighted, 1.0 / sample_rate,
        commit=trace.kind != KIND_READ,
    )
    sampled: dict[str, Any] = {}
    unique = float(n_ids)
    if weighted:
        w = np.where(cls == 1, 1.0 / sample_rate, 1.0)
        cw = np.concatenate(([0.0], np.cumsum(w)))
        per_req = cw[offsets[1:]] - cw[offsets[:-1]]
        n1 = int(np.count_nonzero(idcls))
        unique = (n_ids - n1) + n1 / sample_rate
        sampled = {"sample_rate": float(sample_rate), "seg_class": scl,
                   "internal1": internal1, "s_reads": np.where(is_read, per_req, 0.0)}
    return CurveFacts(
        seg_offsets=seg_off, seg_threshold=thr, seg_length=sln, seg_step=stp,
        internal=internal, read_blocks=read_blocks,
        input_len=np.asarray(trace.input_len, dtype=np.int64), is_read=is_read,
        instance=np.asarray(trace.instance, dtype=np.int32), instances=tuple(trace.instances),
        ts_ns=np.asarray(trace.ts_ns, dtype=np.int64), block_size=int(trace.block_size),
        unique_blocks=round(unique), source=trace.source, **sampled,
    )


def sample_mask(keys: np.ndarray, rate: float, seed: int = 0) -> np.ndarray:
    """bool per key: in the spatial sample of ``rate`` (a splitmix64 hash of key and seed).

    Example:
        >>> m = sample_mask(np.arange(100_000, dtype=np.int64), 0.1)
        >>> bool(0.09 < m.mean() < 0.11)
        True
    """
    keep = np.empty(keys.shape[0], dtype=np.bool_)
    cls = np.empty(keys.shape[0], dtype=np.int8)
    _sample_kernel(np.array([0, keys.shape[0]], dtype=np.int64), keys, _limit(rate),
                   _seed_mix(seed), 0, np.zeros(1, np.int64), np.zeros(1, np.bool_), keep, cls)
    return keep


def _limit(rate: float) -> np.uint64:
    return np.uint64(min(int(rate * 2.0**64), 2**64 - 1))


def _seed_mix(seed: int) -> np.uint64:
    return np.uint64(((seed & 0xFFFFFFFF) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True)
def _splitmix(x: np.uint64) -> np.uint64:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _heavy_table(heavy: np.ndarray, smix: np.uint64, tab: np.ndarray, used: np.ndarray) -> None:
    """Open-addressing set of the heavy keys (``tab``/``used``: a power-of-two size)."""
    size = tab.shape[0]
    for i in range(heavy.shape[0]):
        k = heavy[i]
        h = np.int64(_splitmix(np.uint64(k) ^ smix) & np.uint64(size - 1))
        while used[h]:
            h = (h + 1) & (size - 1)
        tab[h] = k
        used[h] = True


@numba.njit(cache=True)
def _is_heavy(k: Any, z: np.uint64, heavy_tab: np.ndarray, heavy_used: np.ndarray) -> bool:
    """Whether key ``k`` (hash ``z``) is in the open-addressing heavy-key set."""
    hmask = np.uint64(heavy_tab.shape[0] - 1)
    slot = z & hmask
    while heavy_used[slot]:
        if heavy_tab[slot] == k:
            return True
        slot = (slot + np.uint64(1)) & hmask
    return False


@numba.njit(cache=True)
def _sample_kernel(offsets: np.ndarray, keys: np.ndarray, limit: np.uint64, seed: np.uint64,
                   full_depth: int, heavy_tab: np.ndarray, heavy_used: np.ndarray,
                   keep: np.ndarray, cls: np.ndarray) -> int:
    """Per key: keep it (class 0: shallower than ``full_depth`` or heavy; class 1: hash
    below ``limit``); returns the number kept. ``heavy_tab`` is an open-addressing set
    (power-of-two size; ``heavy_used`` marks its slots)."""
    any_heavy = False
    for i in range(heavy_used.shape[0]):
        if heavy_used[i]:
            any_heavy = True
            break
    kept = 0
    for q in range(offsets.shape[0] - 1):
        for j in range(offsets[q], offsets[q + 1]):
            k = keys[j]
            z = _splitmix(np.uint64(k) ^ seed)
            full = j - offsets[q] < full_depth or (
                any_heavy and _is_heavy(k, z, heavy_tab, heavy_used))
            if full:
                keep[j] = True
                cls[j] = 0
                kept += 1
            elif z < limit:
                keep[j] = True
                cls[j] = 1
                kept += 1
            else:
                keep[j] = False
                cls[j] = 1
    return kept


@numba.njit(cache=True)
def _sample_compact(offsets: np.ndarray, keys: np.ndarray, mask: np.ndarray, has_mask: bool,
                    limit: np.uint64, seed: np.uint64, full_depth: int, heavy_tab: np.ndarray,
                    heavy_used: np.ndarray, out_offsets: np.ndarray, out_keys: np.ndarray,
                    out_mask: np.ndarray, out_cls: np.ndarray) -> int:
    """:func:`_sample_kernel`'s choice, written out compacted in the same pass: the kept
    keys, their masks and classes and the rows' new offsets; returns the number kept."""
    any_heavy = False
    for i in range(heavy_used.shape[0]):
        if heavy_used[i]:
            any_heavy = True
            break
    kept = 0
    out_offsets[0] = 0
    for q in range(offsets.shape[0] - 1):
        for j in range(offsets[q], offsets[q + 1]):
            k = keys[j]
            z = _splitmix(np.uint64(k) ^ seed)
            full = j - offsets[q] < full_depth or (
                any_heavy and _is_heavy(k, z, heavy_tab, heavy_used))
            if full or z < limit:
                out_keys[kept] = k
                out_cls[kept] = 0 if full else 1
                if has_mask:
                    out_mask[kept] = mask[j]
                kept += 1
        out_offsets[q + 1] = kept
    return kept


def heavy_keys(trace: Trace, *, seed: int = 0, min_share: float = 1e-4,
               request_frac: float = 0.01, min_requests: int = 2000) -> np.ndarray:
    """Keys that carry at least ``min_share`` of all block reads, estimated from a
    random sample of the requests (sorted int64; small by construction: at most
    ``1 / min_share`` keys).

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=list(range(50)), keys=[[7, i] for i in range(50)])
        >>> heavy_keys(t, min_share=0.2).tolist()
        [7]
    """
    n = trace.n_requests
    lens = trace.key_counts()
    total = int(lens.sum())
    if n == 0 or total == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n, max(min_requests, int(n * request_frac)))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    starts = trace.offsets[rows]
    rl = lens[rows]
    idx = np.repeat(starts - np.concatenate(([0], np.cumsum(rl)[:-1])), rl) + np.arange(rl.sum())
    u, c = np.unique(trace.keys[idx], return_counts=True)
    est = c * (n / k)
    return u[(est >= min_share * total) & (c >= 3)].astype(np.int64)


def _sample_keys(trace: Trace, rate: float, seed: int, full_depth: int, heavy_share: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The sampled keys of every request (kept in order), their masks and classes.

    Class 0 (kept at rate 1): keys shallower than ``full_depth`` and heavy keys (see
    :func:`heavy_keys`): the few keys that carry a large share of the reads would
    otherwise dominate the estimate's variance. Class 1: the hash sample.
    """
    heavy = heavy_keys(trace, seed=seed, min_share=heavy_share) if heavy_share > 0 else \
        np.zeros(0, dtype=np.int64)
    return sample_csr(trace.offsets, trace.keys, trace.mask, rate, seed, full_depth, heavy)


def sample_csr(offsets: np.ndarray, keys: np.ndarray, mask: np.ndarray | None, rate: float,
               seed: int, full_depth: int, heavy: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The spatial key sample of CSR rows: kept offsets, keys, masks and classes.

    Class 0 (kept at rate 1): keys at depth below ``full_depth`` and the ``heavy`` keys;
    class 1: keys whose hash of key and ``seed`` falls below ``rate * 2**64``.

    Example:
        >>> o, k, m, c = sample_csr(np.array([0, 2, 3]), np.array([5, 6, 7]), None, 1e-9, 0,
        ...                         1, np.array([7]))
        >>> o.tolist(), k.tolist(), c.tolist()
        ([0, 1, 2], [5, 7], [0, 0])
    """
    heavy = np.ascontiguousarray(heavy, dtype=np.int64)
    size = 1
    while size < 4 * heavy.size:
        size *= 2
    tab = np.zeros(size, dtype=np.int64)
    used = np.zeros(size, dtype=np.bool_)
    smix = _seed_mix(seed)
    _heavy_table(heavy, smix, tab, used)
    n_keys = keys.shape[0]
    new_offsets = np.empty(offsets.shape[0], dtype=np.int64)
    out_keys = np.empty(n_keys, dtype=np.int64)
    out_cls = np.empty(n_keys, dtype=np.int8)
    has_mask = mask is not None
    m_in = mask if mask is not None else np.zeros(0, dtype=np.bool_)
    out_mask = np.empty(n_keys if has_mask else 0, dtype=np.bool_)
    kept = _sample_compact(offsets, keys, m_in, has_mask, _limit(rate), smix, full_depth, tab,
                           used, new_offsets, out_keys, out_mask, out_cls)
    return (new_offsets, out_keys[:kept].copy(), out_mask[:kept].copy() if has_mask else None,
            out_cls[:kept].copy())


def exact_curve(trace: Trace, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
    """:meth:`CurveFacts.curve` of :func:`curve_facts` (one pass, every capacity).

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]])
        >>> exact_curve(t, [1, 2, 3])["hit_blocks"].to_list()
        [0, 1, 2]
    """
    return curve_facts(trace).curve(capacities)


def auto_capacities(unique_blocks: int, points: int) -> list[int]:
    """``points`` distinct log-spaced capacities from 1 block to ``unique_blocks``.

    Rounding collisions at the low end are pushed up to the next free integer, so
    there are exactly ``min(points, unique_blocks)`` capacities.

    Example:
        >>> auto_capacities(1000, 4)
        [1, 10, 100, 1000]
        >>> auto_capacities(5, 8)
        [1, 2, 3, 4, 5]
    """
    if points < 1:
        raise CurveError(f"need at least one capacity, got {points}")
    top = max(1, int(unique_blocks))
    if points >= top:
        return list(range(1, top + 1))
    caps = np.rint(np.geomspace(1, top, points)).astype(np.int64)
    for i in range(1, points):
        caps[i] = max(caps[i], caps[i - 1] + 1)
    for i in range(points - 1, -1, -1):  # keep the top at unique_blocks
        caps[i] = min(caps[i], top - (points - 1 - i))
    return [int(c) for c in caps]


def bytes_to_blocks(capacity_bytes: Sequence[int], block_bytes: int | Mapping[str, int],
                    instances: Sequence[str] = ()) -> list[int]:
    """Byte capacities as block capacities, when every instance has the same block cost.

    Args:
        capacity_bytes: capacities in bytes.
        block_bytes: bytes of one block, or per instance id.
        instances: the trace's instances (each must be in a ``block_bytes`` mapping).

    Raises:
        CurveError: the instances' block costs differ (the stack model counts blocks).

    Example:
        >>> bytes_to_blocks([1 << 20], {"a": 4096, "b": 4096}, ["a", "b"])
        [256]
    """
    if isinstance(block_bytes, Mapping):
        missing = [i for i in instances if i not in block_bytes]
        if missing:
            raise CurveError(f"no block cost for instance(s) {', '.join(missing)}")
        costs = {int(block_bytes[i]) for i in instances} if instances else {
            int(v) for v in block_bytes.values()}
        if len(costs) != 1:
            raise CurveError(
                f"instances have different block costs ({sorted(costs)} bytes): a byte "
                "capacity is not a block capacity; the one-pass LRU curve needs one cost"
            )
        cost = costs.pop()
    else:
        cost = int(block_bytes)
    if cost <= 0:
        raise CurveError(f"block cost must be positive, got {cost}")
    return [int(b) // cost for b in capacity_bytes]

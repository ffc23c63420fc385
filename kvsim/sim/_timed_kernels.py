"""Numba kernels of the time-aware simulator (built on the core's kernels).

One call per request phase: the read walks the tiers of an instance in read order
(:func:`read_tiers`), the write inserts a request's keys into one tier and evicts
to its capacity exactly as the plain replay does (:func:`write_tier`).
:func:`timed_loop` runs the whole event loop of the common case (writes at prefill
end, write-through or selective, fixed routing) in one call; the Python loop of
:mod:`kvsim.sim.timed` runs every other case, and the tests hold the two equal.

Example:
    >>> import numpy as np
    >>> hk, hq = np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)
    >>> size = 0
    >>> for key, q in [(5, 0), (3, 1), (5, 2)]:
    ...     size = heap_push(hk, hq, size, key, q)
    >>> out = []
    >>> while size:
    ...     out.append((int(hk[0]), int(hq[0])))
    ...     size = heap_pop(hk, hq, size)
    >>> out   # by time, then request
    [(3, 1), (5, 0), (5, 2)]
"""

from __future__ import annotations

import numpy as np

from kvsim.core._jit import kernel
from kvsim.core.events import EventArrays
from kvsim.core.kernels import evict_to, write_serving
from kvsim.core.table import M_USED, SERVING, Tables, lookup, prefetch_keys


@kernel
def _held(t: Tables, i: int, key: int) -> bool:
    r = lookup(t, i, key)
    return r >= 0 and t.state[r] == SERVING


@kernel
def read_tiers(
    t0: Tables, i0: int, t1: Tables, i1: int, t2: Tables, i2: int, n_tiers: int,
    keys: np.ndarray, counts: np.ndarray, rows0: np.ndarray,
) -> int:
    """Longest prefix of ``keys`` held by the union of the tiers; returns its length.

    Each key is served by the first tier (in read order) that holds it SERVING;
    ``counts[k]`` gets the number of prefix keys served by tier ``k``. The read
    does not refresh recency (the write at prefill end does, as in the replay).
    When ``rows0`` is not empty it gets the tier-0 rows of the leading run of keys
    that tier 0 serves, and ``counts[3]`` that run's length.
    """
    for k in range(counts.shape[0]):
        counts[k] = 0
    n = keys.shape[0]
    if n > 8:
        prefetch_keys(t0, i0, keys, 0, n)
    record = rows0.shape[0] > 0
    lead = True
    for j in range(n):
        key = keys[j]
        r = lookup(t0, i0, key)
        if r >= 0 and t0.state[r] == SERVING:
            counts[0] += 1
            if record and lead:
                rows0[j] = r
                counts[3] += 1
            continue
        lead = False
        if n_tiers > 1 and _held(t1, i1, key):
            counts[1] += 1
            continue
        if n_tiers > 2 and _held(t2, i2, key):
            counts[2] += 1
            continue
        return j
    return n


@kernel
def write_tier(
    t: Tables, ev: EventArrays, i: int, keys: np.ndarray, now: int, rows: np.ndarray,
    isnew: np.ndarray, delete_now: bool, evict: bool, known: int = 0,
) -> int:
    """Write every key (tail-first commit, as the replay contract), then evict to
    capacity when ``evict``; returns the number of new blocks.

    ``rows[:known]`` may carry the (checked) SERVING rows of the first keys.
    ``rows[:len(keys)]`` gets each key's row (-1 for a repeat or a WRITING block).
    The caller guarantees ``len(keys)`` free rows.
    """
    if keys.shape[0] > 8:
        prefetch_keys(t, i, keys, known, keys.shape[0])
    n_new = write_serving(t, ev, i, keys, now, rows, isnew, known)
    if evict:
        g = t.i_group[i]
        evict_to(t, ev, g, i, t.g_cap[g], now, delete_now)
    return n_new


# ---------------------------------------------------------------- the fast event loop
@kernel
def _before(hk: np.ndarray, hq: np.ndarray, a: int, b: int) -> bool:
    return hk[a] < hk[b] or (hk[a] == hk[b] and hq[a] < hq[b])


@kernel
def _swap(hk: np.ndarray, hq: np.ndarray, a: int, b: int) -> None:
    x = hk[a]
    hk[a] = hk[b]
    hk[b] = x
    y = hq[a]
    hq[a] = hq[b]
    hq[b] = y


@kernel
def heap_push(hk: np.ndarray, hq: np.ndarray, size: int, key: int, q: int) -> int:
    """Push ``(key, q)`` on the binary min-heap ``hk``/``hq`` of ``size``; returns the size."""
    i = size
    hk[i] = key
    hq[i] = q
    while i > 0:
        par = (i - 1) >> 1
        if _before(hk, hq, par, i):
            break
        _swap(hk, hq, par, i)
        i = par
    return size + 1


@kernel
def heap_pop(hk: np.ndarray, hq: np.ndarray, size: int) -> int:
    """Drop the top of the heap; returns the new size."""
    size -= 1
    hk[0] = hk[size]
    hq[0] = hq[size]
    i = 0
    while True:
        lft = 2 * i + 1
        if lft >= size:
            break
        m = lft
        if lft + 1 < size and _before(hk, hq, lft + 1, lft):
            m = lft + 1
        if _before(hk, hq, i, m):
            break
        _swap(hk, hq, i, m)
        i = m
    return size


@kernel
def _tier(t0: Tables, t1: Tables, t2: Tables, k: int) -> Tables:
    if k == 0:
        return t0
    if k == 1:
        return t1
    return t2


@kernel
def _ev(e0: EventArrays, e1: EventArrays, e2: EventArrays, k: int) -> EventArrays:
    if k == 0:
        return e0
    if k == 1:
        return e1
    return e2


@kernel
def timed_loop(
    t0: Tables, e0: EventArrays, t1: Tables, e1: EventArrays, t2: Tables, e2: EventArrays,
    n_tiers: int, tidx: np.ndarray, dnow: np.ndarray, route: np.ndarray,
    ts: np.ndarray, off: np.ndarray, keys: np.ndarray, il: np.ndarray, bs: int,
    tps: float, lat_ns: np.ndarray, rbps: np.ndarray, wbps: np.ndarray, bb: int,
    evict: bool, n_write: int, min_reuse: int, hk: np.ndarray, hq: np.ndarray,
    state: np.ndarray, p_limit: int,
    o_hit: np.ndarray, o_th: np.ndarray, o_wr: np.ndarray, o_queue: np.ndarray,
    o_load: np.ndarray, o_pre: np.ndarray, o_ttft: np.ndarray, o_nc: np.ndarray,
    free: np.ndarray, free_nc: np.ndarray, busy: np.ndarray, write_ns: np.ndarray,
    counts: np.ndarray, rows: np.ndarray, isnew: np.ndarray, pick: np.ndarray,
    krows: np.ndarray, kn: np.ndarray,
) -> int:
    """The event loop of :func:`kvsim.sim.timed.simulate` for the common case.

    Arrivals (request order) and prefill ends (a heap of ``(end, q)``) are taken in
    ``(time, request)`` order, arrivals first. ``n_write`` tiers get every key; when
    ``n_write < n_tiers`` the last tier (the pool) gets the keys whose access count
    in tier 0 passed ``min_reuse`` (selective write-through). ``state`` = [next
    arrival, heap size]. ``krows`` (aligned with ``keys``) and ``kn`` keep the tier-0
    rows the read found; the write reuses those still valid (same key, instance and
    SERVING) instead of looking them up again, as the replay does. Returns 0 when
    arrivals up to ``p_limit`` are done (and, at the end, the heap is empty), or 1
    when a tier needs more rows (nothing of the pending event was done; grow and call
    again).
    """
    n = ts.shape[0]
    p = state[0]
    size = state[1]
    while p < p_limit or (p >= n and size > 0):
        arrival = p < n and (size == 0 or ts[p] < hk[0] or (ts[p] == hk[0] and p < hq[0]))
        if arrival:
            q = p
            now = ts[q]
            s = route[q]
            a = off[q]
            kq = keys[a:off[q + 1]]
            h = read_tiers(t0, tidx[0, s], t1, tidx[min(1, n_tiers - 1), s], t2,
                           tidx[min(2, n_tiers - 1), s], n_tiers, kq, counts,
                           krows[a:off[q + 1]])
            kn[q] = counts[3]
            o_hit[q] = h
            load = 0.0
            for k in range(n_tiers):
                o_th[q, k] = counts[k]
                if counts[k] > 0:
                    load += lat_ns[k]
                    if rbps[k] > 0:
                        load += counts[k] * bb * 1e9 / rbps[k]
            ht = h * bs
            if ht > il[q]:
                ht = il[q]
            miss = il[q] - ht
            pre = miss * 1e9 / tps if tps > 0 else 0.0
            li = np.int64(load + 0.5)
            pi = np.int64(pre + 0.5)
            start = free[s] if free[s] > now else now
            end = start + li + pi
            free[s] = end
            busy[s] += li + pi
            o_queue[q] = start - now
            o_load[q] = li
            o_pre[q] = pi
            o_ttft[q] = end - now
            nc_pre = il[q] * 1e9 / tps if tps > 0 else 0.0
            nc = (free_nc[s] if free_nc[s] > now else now) + np.int64(nc_pre + 0.5)
            free_nc[s] = nc
            o_nc[q] = nc - now
            size = heap_push(hk, hq, size, end, q)
            p += 1
            continue
        now = hk[0]
        q = hq[0]
        a = off[q]
        m = off[q + 1] - a
        for k in range(n_tiers):
            tk = _tier(t0, t1, t2, k)
            if tk.meta[M_USED] + m > tk.key.shape[0]:
                state[0] = p
                state[1] = size
                return 1
        size = heap_pop(hk, hq, size)
        s = route[q]
        kq = keys[a:a + m]
        n_pick = 0
        known = 0
        i0 = tidx[0, s]
        for j in range(kn[q]):
            r = krows[a + j]
            if t0.inst[r] != i0 or t0.key[r] != kq[j] or t0.state[r] != SERVING:
                break
            rows[j] = r
            known += 1
        for k in range(n_write):
            tk = _tier(t0, t1, t2, k)
            w = write_tier(tk, _ev(e0, e1, e2, k), tidx[k, s], kq, now, rows, isnew,
                           dnow[k, s], evict, known if k == 0 else 0)
            o_wr[q, k] += w
            if wbps[k] > 0 and w > 0:
                write_ns[k] += w * bb * 1e9 / wbps[k]
            if k == 0 and n_write < n_tiers:
                for j in range(m):
                    r = rows[j]
                    if r >= 0 and t0.acc[r] > min_reuse:
                        pick[n_pick] = kq[j]
                        n_pick += 1
        if n_write < n_tiers and n_pick > 0:
            k = n_tiers - 1
            tk = _tier(t0, t1, t2, k)
            w = write_tier(tk, _ev(e0, e1, e2, k), tidx[k, s], pick[:n_pick], now, rows,
                           isnew, dnow[k, s], evict)
            o_wr[q, k] += w
            if wbps[k] > 0 and w > 0:
                write_ns[k] += w * bb * 1e9 / wbps[k]
    state[0] = p
    state[1] = size
    return 0

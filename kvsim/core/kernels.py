"""Numba kernels of the core: matching, writes, eviction and batch replay.

Every function here is a module-level ``@kernel`` function over the
:class:`~kvsim.core.table.Tables` arrays, so compiled code is cached on disk and a
second process starts fast. :mod:`kvsim.core.reference` holds plain-Python twins
used by differential tests.

Match semantics (``keys`` of one instance, ``mask`` True = held by the engine):

* prefix: masked blocks are internal reads and hits; the unmasked ones are
  walked left to right (masked ones skipped) and the run of SERVING blocks up to
  the first miss are the external hits.
* batch: every block independently.
* reverse-roll sliding window: the right-most run of ``w`` consecutive available
  blocks (masked or SERVING).
"""

from __future__ import annotations

import numpy as np

from kvsim.core._jit import inline_kernel, kernel, prefetch
from kvsim.core.events import (
    EV_EVICTED,
    EV_READ,
    EV_REMOVED,
    EV_STORED,
    EV_WRITE_FAILED,
    EventArrays,
    emit,
)
from kvsim.core.policies import dispatch
from kvsim.core.table import (
    COUNT_MAX,
    DELETING,
    M_HWM,
    M_SLOT_COUNTS,
    M_STAMP,
    M_USED,
    SERVING,
    STORAGE_SLOTS,
    WRITING,
    Tables,
    alloc_row,
    flush_frees,
    free_row,
    lookup,
    prefetch_keys,
    prefetch_slot,
    queue_free,
    stamp,
)

MODE_GROUP_ROUGH = 1
MODE_INSTANCE_ROUGH = 2
MODE_INSTANCE_PRECISE = 3
MODE_GROUP_PRECISE = 4

MASKED = -2  # row placeholder for a masked key in match outputs

# Whether any policy of the dispatch tracks leaves / expires blocks. Module-level
# constants, so numba prunes the guarded branches at compile time and never compiles
# the leaf or expiry code for policy sets that do not use it.
_ANY_LEAVES: bool = dispatch.ANY_LEAVES
_ANY_EXPIRY: bool = dispatch.ANY_EXPIRY


@kernel
def slot_add(t: Tables, r: int, held: int, serving: int) -> None:
    """Count row ``r`` in (or out of) its instance's per-storage-slot block counts, when
    the table keeps them (``meta[M_SLOT_COUNTS]``: the server's managers do; replay's
    hot loops skip the work)."""
    if t.meta[M_SLOT_COUNTS] == 0:
        return
    s = t.loc[r] % STORAGE_SLOTS
    i = t.inst[r]
    t.i_slots[i, s, 0] += held
    t.i_slots[i, s, 1] += serving


@kernel
def set_loc(t: Tables, rows: np.ndarray, loc: np.ndarray) -> None:
    """Move ``rows`` to storage slots ``loc`` (one per row, or one for all), keeping the
    per-slot block counts of WRITING and SERVING rows true."""
    one = loc.shape[0] == 1
    for j in range(rows.shape[0]):
        r = rows[j]
        if r < 0:
            continue
        st = t.state[r]
        counted = st == WRITING or st == SERVING
        srv = 1 if st == SERVING else 0
        if counted:
            slot_add(t, r, -1, -srv)
        t.loc[r] = loc[0] if one else loc[j]
        if counted:
            slot_add(t, r, 1, srv)


# t_access sentinel marking rows already resolved within the request being written
_SEEN = np.iinfo(np.int64).min

KIND_REQUEST = 0
KIND_READ = 1
KIND_WRITE = 2


# ---------------------------------------------------------------- matching
@kernel
def match_prefix(
    t: Tables, i: int, keys: np.ndarray, mask: np.ndarray, has_mask: bool, out: np.ndarray
) -> int:
    """Longest available prefix; ``out[j]`` = row (or ``MASKED``) for j < result."""
    n = keys.shape[0]
    for j in range(n):
        if has_mask and mask[j]:
            out[j] = MASKED
            continue
        r = lookup(t, i, keys[j])
        if r < 0 or t.state[r] != SERVING:
            return j
        out[j] = r
    return n


@kernel
def match_batch(
    t: Tables, i: int, keys: np.ndarray, mask: np.ndarray, has_mask: bool, out: np.ndarray
) -> int:
    """Per-block lookup; ``out[j]`` = row, ``MASKED`` or -1; returns available blocks."""
    hits = 0
    for j in range(keys.shape[0]):
        if has_mask and mask[j]:
            out[j] = MASKED
            hits += 1
            continue
        r = lookup(t, i, keys[j])
        if r >= 0 and t.state[r] == SERVING:
            out[j] = r
            hits += 1
        else:
            out[j] = -1
    return hits


@kernel
def match_sliding_window(
    t: Tables, i: int, keys: np.ndarray, mask: np.ndarray, has_mask: bool, w: int,
    out: np.ndarray,
) -> int:
    """Start of the right-most window of ``w`` available blocks, or -1.

    ``out`` gets the rows of the window's blocks (``MASKED`` for masked ones) and -1
    elsewhere.
    """
    n = keys.shape[0]
    for j in range(n):
        out[j] = -1
    run = 0
    for j in range(n - 1, -1, -1):
        if has_mask and mask[j]:
            run += 1
        else:
            r = lookup(t, i, keys[j])
            if r >= 0 and t.state[r] == SERVING:
                run += 1
            else:
                run = 0
        if run == w:
            for k in range(j, j + w):
                if has_mask and mask[k]:
                    out[k] = MASKED
                else:
                    out[k] = lookup(t, i, keys[k])
            return j
    return -1


Q_PREFIX = 0
Q_BATCH = 1
Q_SW = 2


@kernel
def match_and_touch(
    t: Tables, i: int, keys: np.ndarray, mask: np.ndarray, has_mask: bool, query: int,
    w: int, out: np.ndarray, now: int, touch: bool,
) -> int:
    """One read in one call: match (``query`` = ``Q_PREFIX``, ``Q_BATCH`` or ``Q_SW``)
    then, if ``touch``, refresh the hit rows as :func:`touch_rows` would.

    ``out`` must come filled with -1. Returns what the match kernel returns (prefix:
    the prefix length; batch: available blocks; sliding window: the window's start
    or -1). A server read is one kernel dispatch instead of two.
    """
    n = keys.shape[0]
    if query == Q_PREFIX:
        res = match_prefix(t, i, keys, mask, has_mask, out)
        n_touch = res
    elif query == Q_BATCH:
        res = match_batch(t, i, keys, mask, has_mask, out)
        n_touch = n
    else:
        res = match_sliding_window(t, i, keys, mask, has_mask, w, out)
        n_touch = n
    if touch:
        touch_rows(t, out, n_touch, now)
    return res


@kernel
def common_slot(loc: np.ndarray, rows: np.ndarray) -> int:
    """The storage slot (``loc``) every one of ``rows`` shares, or -1 when ``rows`` is
    empty, holds a row < 0 or spans several slots. Reads nothing else."""
    n = rows.shape[0]
    if n == 0 or rows[0] < 0:
        return -1
    s = loc[rows[0]]
    for j in range(1, n):
        r = rows[j]
        if r < 0 or loc[r] != s:
            return -1
    return int(s)


@kernel
def serving_rows_on_slots(state: np.ndarray, inst: np.ndarray, loc: np.ndarray,
                          i_group: np.ndarray, hwm: int, g: int, slots: np.ndarray,
                          out: np.ndarray) -> int:
    """Write the SERVING rows of group ``g`` whose storage slot is selected in
    ``slots`` (bool per slot) to ``out`` in row order; returns how many. One pass over
    rows ``[0, hwm)``, no allocation (``out`` holds at least ``hwm``)."""
    n = 0
    for r in range(hwm):
        if state[r] == SERVING and slots[loc[r] % STORAGE_SLOTS] and i_group[inst[r]] == g:
            out[n] = r
            n += 1
    return n


# ---------------------------------------------------------------- leaves
@kernel
def _orphan_children(t: Tables, r: int) -> None:
    hwm = t.meta[M_HWM]
    for c in range(hwm):
        if t.parent[c] == r and t.state[c] != 0:
            t.parent[c] = -1
    t.nchild[r] = 0


@kernel
def _detach(t: Tables, r: int) -> None:
    """Leaf bookkeeping for a row leaving the cache (leaf-tracking policies)."""
    p = t.parent[r]
    if p >= 0:
        t.nchild[p] -= 1
        t.parent[r] = -1
    if t.nchild[r] > 0:
        _orphan_children(t, r)


# ---------------------------------------------------------------- touch / write
@inline_kernel
def _bump(t: Tables, r: int) -> None:
    """Count one access (saturating)."""
    if t.acc[r] < COUNT_MAX:
        t.acc[r] += 1


@inline_kernel
def _writing_row(t: Tables, i: int, key: int, r: int, now: int) -> int:
    """A WRITING row for ``key`` of instance ``i``: ``r`` (its DELETING row, found by the
    caller) brought back as a fresh write, or a new row when ``r`` < 0."""
    if r >= 0:
        t.state[r] = WRITING
        t.t_write[r] = now
        t.t_access[r] = stamp(t, now)
        t.acc[r] = 1
        return r
    return alloc_row(t, i, key, WRITING, now)


@kernel
def touch_rows(t: Tables, rows: np.ndarray, n: int, now: int) -> None:
    """Refresh the recency of SERVING ``rows[:n]`` in the policy's commit order."""
    if n <= 0:
        return
    g0 = -1
    code = 0
    for jj in range(n):
        r = rows[jj]
        if r < 0:
            continue
        g0 = t.i_group[t.inst[r]]
        code = t.g_policy[g0]
        break
    if g0 < 0:
        return
    tf = dispatch.tail_first(code)
    for jj in range(n):
        j = n - 1 - jj if tf else jj
        r = rows[j]
        if r < 0 or t.state[r] != SERVING:
            continue
        dispatch.hit(t, code, g0, r, now)
        _bump(t, r)
        t.t_access[r] = stamp(t, now)


@kernel
def _link_parent(t: Tables, r: int, prev: int) -> None:
    if prev >= 0 and t.parent[r] < 0:
        t.parent[r] = prev
        t.nchild[prev] += 1


@kernel
def write_serving(
    t: Tables, ev: EventArrays, i: int, keys: np.ndarray, now: int,
    rows: np.ndarray, isnew: np.ndarray, known: int = 0,
) -> int:
    """Insert (or touch) every key as SERVING, in the policy's commit order.

    The caller guarantees ``len(keys)`` free rows. Returns the number of new
    blocks. Rows that are being written by a session (WRITING) are left alone.
    ``rows[:known]`` may carry the SERVING rows of the first keys, already looked
    up by the read (saves a second lookup per hit).
    """
    g = t.i_group[i]
    code = t.g_policy[g]
    leaves = dispatch.tracks_leaves(code)
    cost = t.i_cost[i]
    n = keys.shape[0]
    n_new = 0
    prev = -1
    for j in range(n):
        k = keys[j]
        r = rows[j] if j < known else lookup(t, i, k)
        isnew[j] = False
        if r >= 0 and t.t_access[r] == _SEEN:
            rows[j] = -1  # the same key earlier in this request
            continue
        if r < 0:
            r = alloc_row(t, i, k, SERVING, now)
            isnew[j] = True
        elif t.state[r] == DELETING:
            t.state[r] = SERVING
            t.acc[r] = 1
            t.t_write[r] = now
            isnew[j] = True
        elif t.state[r] != SERVING:
            rows[j] = -1
            prev = r
            continue
        if isnew[j]:
            n_new += 1
            t.i_blocks[i] += 1
            slot_add(t, r, 1, 1)
            t.g_used[g] += cost
            if _ANY_LEAVES and leaves:
                _link_parent(t, r, prev)
            emit(ev, EV_STORED, i, k, now, 0)
        rows[j] = r
        t.t_access[r] = _SEEN
        prev = r
    tf = dispatch.tail_first(code)
    for jj in range(n):
        j = n - 1 - jj if tf else jj
        r = rows[j]
        if r < 0:
            continue
        if isnew[j]:
            t.t_access[r] = stamp(t, now)
            dispatch.commit(t, code, g, r, now)
        else:
            dispatch.hit(t, code, g, r, now)
            _bump(t, r)
            t.t_access[r] = stamp(t, now)
    return n_new


# ---------------------------------------------------------------- eviction
@kernel
def evict_row(t: Tables, ev: EventArrays, r: int, now: int, delete_now: bool) -> None:
    """Take SERVING row ``r`` out of the cache: DELETING, and queued to be freed.

    With ``delete_now`` the row is queued for :func:`~kvsim.core.table.flush_frees`
    (the caller flushes); otherwise it stays DELETING until reaped.
    """
    i = t.inst[r]
    g = t.i_group[i]
    code = t.g_policy[g]
    dispatch.remove(t, code, g, r)
    if _ANY_LEAVES and dispatch.tracks_leaves(code):
        _detach(t, r)
    t.i_blocks[i] -= 1
    slot_add(t, r, -1, -1)
    t.g_used[g] -= t.i_cost[i]
    emit(ev, EV_EVICTED, i, t.key[r], now, 0)
    t.state[r] = DELETING
    t.t_access[r] = now
    if delete_now:
        queue_free(t, r)  # callers end with flush_frees


@kernel
def _evict_from(
    t: Tables, ev: EventArrays, g: int, i: int, limit: int, target: int, now: int,
    delete_now: bool, stop_at_target: bool,
) -> int:
    code = t.g_policy[g]
    n = 0
    while n < limit:
        if stop_at_target and t.g_used[g] <= target:
            break
        v = dispatch.victim(t, code, g, i)
        if v < 0:
            break
        evict_row(t, ev, v, now, delete_now)
        n += 1
    return n


@kernel
def _evict_group_precise(
    t: Tables, ev: EventArrays, g: int, target: int, now: int, delete_now: bool
) -> int:
    """Evict the group's best victim across its instances, one at a time."""
    code = t.g_policy[g]
    n_inst = t.i_group.shape[0]
    members = 0
    only = -1
    for i in range(n_inst):
        if t.i_group[i] == g:
            members += 1
            only = i
    if members == 1:  # one instance: its own order is the group's order
        total = _evict_from(t, ev, g, only, 1 << 62, target, now, delete_now, True)
        flush_frees(t)
        t.g_evicted[g] += total
        return total
    total = 0
    while t.g_used[g] > target:
        best = -1
        b1 = 0
        b2 = 0
        for i in range(n_inst):
            if t.i_group[i] != g:
                continue
            v = dispatch.victim(t, code, g, i)
            if v < 0:
                continue
            r1, r2 = dispatch.rank(t, code, v)
            if best < 0 or r1 < b1 or (r1 == b1 and r2 < b2):
                best = v
                b1 = r1
                b2 = r2
        if best < 0:
            break
        evict_row(t, ev, best, now, delete_now)
        total += 1
    flush_frees(t)
    t.g_evicted[g] += total
    return total


@kernel
def _expire(t: Tables, ev: EventArrays, g: int, now: int, delete_now: bool) -> int:
    """Evict every expired block of a group whose policy expires blocks (``ttl``),
    oldest first, per instance."""
    n = 0
    code = t.g_policy[g]
    for i in range(t.i_group.shape[0]):
        if t.i_group[i] != g:
            continue
        r = dispatch.expired_tail(t, code, g, i, now)
        while r >= 0:
            evict_row(t, ev, r, now, delete_now)
            n += 1
            r = dispatch.expired_tail(t, code, g, i, now)
    flush_frees(t)
    t.g_evicted[g] += n
    return n


@kernel
def evict_to(
    t: Tables, ev: EventArrays, g: int, writer: int, target: int, now: int, delete_now: bool
) -> int:
    """Evict from group ``g`` until its usage is at most ``target``.

    Modes: ``group_precise`` (kvsim's default) evicts one block at a time, the
    policy's best victim over all the group's instances (an exact shared cache);
    ``instance_precise`` evicts one block at a time from the writing
    instance (then the others, round robin) and stops exactly at the target;
    ``instance_rough`` evicts whole batches from the writer first;
    ``group_rough`` takes a batch from each instance of the group in turn.
    Returns the number of blocks evicted.
    """
    expired = 0
    if _ANY_EXPIRY and dispatch.has_expiry(t.g_policy[g]):
        expired = _expire(t, ev, g, now, delete_now)
    if t.g_used[g] <= target:
        return expired
    mode = t.g_mode[g]
    if mode == MODE_GROUP_PRECISE:
        return expired + _evict_group_precise(t, ev, g, target, now, delete_now)
    batch = t.g_batch[g]
    if batch < 1:
        batch = 1
    total = 0
    precise = mode == MODE_INSTANCE_PRECISE
    if writer >= 0 and mode != MODE_GROUP_ROUGH:
        lim = 1 << 62 if precise else batch
        while t.g_used[g] > target:
            n = _evict_from(t, ev, g, writer, lim, target, now, delete_now, precise)
            total += n
            if n == 0 or precise:
                break
    n_inst = t.i_group.shape[0]
    while t.g_used[g] > target:
        progressed = 0
        for step in range(n_inst):
            i = (t.g_rr[g] + step) % n_inst
            if t.i_group[i] != g:
                continue
            n = _evict_from(t, ev, g, i, batch, target, now, delete_now, precise)
            progressed += n
            total += n
            if t.g_used[g] <= target:
                t.g_rr[g] = (i + 1) % n_inst
                break
        if progressed == 0:
            break
    flush_frees(t)
    t.g_evicted[g] += total
    return expired + total


# ---------------------------------------------------------------- two-phase writes
@kernel
def start_write(
    t: Tables, ev: EventArrays, i: int, keys: np.ndarray, now: int, rows: np.ndarray,
    isnew: np.ndarray, delete_now: bool, prev0: int = -1,
) -> int:
    """Allocate WRITING rows for keys with no block; returns new count, or -1 over quota.

    On input ``isnew[j]`` must be True exactly when ``keys[j]`` is the first occurrence
    of its key in ``keys`` (:func:`first_occurrence`): a key listed twice in one call is
    new once (an O(n log n) mask from the caller instead of an O(n^2) scan here). On
    output, keys that already have a block (WRITING or SERVING) get ``isnew = False``.
    When the new blocks would push the group past its hard quota the kernel first
    evicts; if that cannot make room nothing is allocated and -1 is returned.
    The quota test is overflow-safe (``need > quota - used``, with ``n x cost`` below
    2^63 because the manager bounds ``cost`` by ``MAX_BLOCK_BYTES`` and rows are int32).
    The caller guarantees ``len(keys)`` free rows. ``prev0`` is the row of the key
    before ``keys[0]`` in the request (a write made in steps: the parent link of a
    leaf-tracking policy crosses the step boundary), -1 none.
    """
    g = t.i_group[i]
    cost = t.i_cost[i]
    n = keys.shape[0]
    n_new = 0
    for j in range(n):
        if not isnew[j]:  # a repeat of an earlier key of this call
            continue
        r = lookup(t, i, keys[j])
        fresh = r < 0 or t.state[r] == DELETING
        isnew[j] = fresh
        if fresh:
            n_new += 1
    need = n_new * cost
    if t.g_quota[g] > 0 and need > t.g_quota[g] - t.g_used[g]:
        evict_to(t, ev, g, i, t.g_quota[g] - need, now, delete_now)
        if need > t.g_quota[g] - t.g_used[g]:
            return -1
    leaves = dispatch.tracks_leaves(t.g_policy[g])
    prev = prev0
    for j in range(n):
        if not isnew[j]:
            r = lookup(t, i, keys[j])
            rows[j] = r
            prev = r
            continue
        r = _writing_row(t, i, keys[j], lookup(t, i, keys[j]), now)
        rows[j] = r
        t.i_pending[i] += 1
        slot_add(t, r, 1, 0)
        t.g_used[g] += cost
        if _ANY_LEAVES and leaves:
            _link_parent(t, r, prev)
        prev = r
    return n_new


@kernel
def finish_write(
    t: Tables, ev: EventArrays, i: int, rows: np.ndarray, keys: np.ndarray,
    success: np.ndarray, now: int,
) -> int:
    """Commit (success) or drop (failure) the WRITING ``rows``; returns committed count.

    ``keys`` guards against a row reused since the session started: only rows that
    still hold the same key in state WRITING are touched.
    """
    g = t.i_group[i]
    code = t.g_policy[g]
    cost = t.i_cost[i]
    n = rows.shape[0]
    tf = dispatch.tail_first(code)
    leaves = dispatch.tracks_leaves(code)
    done = 0
    for jj in range(n):
        j = n - 1 - jj if tf else jj
        r = rows[j]
        if r < 0 or t.state[r] != WRITING or t.key[r] != keys[j] or t.inst[r] != i:
            continue
        t.i_pending[i] -= 1
        if success[j]:
            t.state[r] = SERVING
            t.t_write[r] = now
            t.t_access[r] = stamp(t, now)
            t.i_blocks[i] += 1
            slot_add(t, r, 0, 1)
            dispatch.commit(t, code, g, r, now)
            emit(ev, EV_STORED, i, keys[j], now, 0)
            done += 1
        else:
            t.g_used[g] -= cost
            slot_add(t, r, -1, 0)
            if _ANY_LEAVES and leaves:
                _detach(t, r)
            emit(ev, EV_WRITE_FAILED, i, keys[j], now, 0)
            free_row(t, r)
    return done


# ---------------------------------------------------------------- bulk restore
@kernel
def restore_serving(
    t: Tables, i: int, keys: np.ndarray, tw: np.ndarray, ta: np.ndarray, acc: np.ndarray,
    loc: np.ndarray, order: np.ndarray, chunk: int, rows: np.ndarray,
) -> int:
    """Insert persisted blocks of instance ``i`` as SERVING in one pass (a restart);
    returns how many were committed.

    ``order`` lists the entries oldest access first (a stable argsort of ``ta``). The
    result is exactly that of :meth:`CacheManager.restore_blocks`' chunked path (a
    ``start_write`` + ``finish_write`` per ``chunk`` entries, then the persisted times),
    without its sessions, events or per-chunk calls: per chunk, rows are allocated in
    the order ``start_write`` allocates them (reversed for tail-first policies, parent
    links included), then committed oldest first through the policy's ``commit`` hook
    with the persisted access count already set; write and access times then become the
    persisted ones (access times made strictly increasing in commit order).

    The caller guarantees the group's quota holds every entry and ``len(keys)`` free
    rows; ``rows`` is scratch of at least ``chunk`` entries. Keys already present (not
    DELETING) are left alone, as is a key's later repeat.
    """
    g = t.i_group[i]
    code = t.g_policy[g]
    cost = t.i_cost[i]
    tf = dispatch.tail_first(code)
    leaves = dispatch.tracks_leaves(code)
    n = order.shape[0]
    done = 0
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        m = c1 - c0
        # the chunk's entries sit anywhere in the columns (they are in access order):
        # start every miss first, then the index slots of their keys
        for p in range(c0, c1):
            j = order[p]
            prefetch(keys, j)
            prefetch(tw, j)
            prefetch(ta, j)
            prefetch(acc, j)
            prefetch(loc, j)
        for p in range(c0, c1):
            prefetch_slot(t, i, keys[order[p]])
        now = ta[order[c1 - 1]]
        prev = -1
        for pp in range(m):  # allocate, as start_write does
            p = c1 - 1 - pp if tf else c0 + pp
            j = order[p]
            r = lookup(t, i, keys[j])
            if r >= 0 and t.state[r] != DELETING:
                rows[p - c0] = -1
                prev = r
                continue
            r = _writing_row(t, i, keys[j], r, now)
            rows[p - c0] = r
            t.loc[r] = loc[j]
            slot_add(t, r, 1, 0)
            t.g_used[g] += cost
            if _ANY_LEAVES and leaves:
                _link_parent(t, r, prev)
            prev = r
        for pp in range(m):  # commit oldest first, as finish_write does
            r = rows[pp]
            if r < 0:
                continue
            a = acc[order[c0 + pp]]
            t.acc[r] = COUNT_MAX if a > COUNT_MAX else a
            t.state[r] = SERVING
            t.t_write[r] = now
            t.t_access[r] = stamp(t, now)
            t.i_blocks[i] += 1
            slot_add(t, r, 0, 1)
            dispatch.commit(t, code, g, r, now)
            done += 1
        v = np.int64(0)
        first = True
        for pp in range(m):  # the persisted times
            r = rows[pp]
            if r < 0:
                continue
            j = order[c0 + pp]
            t.t_write[r] = tw[j]
            v = ta[j] if first or ta[j] > v + 1 else v + 1
            first = False
            t.t_access[r] = v
        if not first and v > t.meta[M_STAMP]:
            t.meta[M_STAMP] = v
    return done


_RADIX_BITS = 11
RADIX_BUCKETS = 1 << _RADIX_BITS


@kernel
def radix_argsort(vals: np.ndarray, out: np.ndarray, tmp: np.ndarray, key_a: np.ndarray,
                  key_b: np.ndarray, counts: np.ndarray) -> None:
    """``out`` = the stable ascending order of int64 ``vals`` (what
    ``np.argsort(vals, kind="stable")`` returns), by an LSD radix sort on 11-bit digits
    that skips the digits on which every value agrees (access times of one state span
    a few dozen bits). A restart orders millions of access times; numpy's stable
    argsort is a comparison sort (~4x slower here).

    Scratch (no allocation in kernels): ``tmp`` int64 and ``key_a``/``key_b`` uint64 of
    ``len(vals)``, ``counts`` int64 of :data:`RADIX_BUCKETS`.
    """
    n = vals.shape[0]
    sign = np.uint64(1) << np.uint64(63)
    if n == 0:
        return
    u0 = np.uint64(vals[0]) ^ sign
    diff = np.uint64(0)
    ordered = True
    for j in range(n):
        u = np.uint64(vals[j]) ^ sign
        key_a[j] = u
        diff |= u ^ u0
        out[j] = j
        if j > 0 and vals[j] < vals[j - 1]:
            ordered = False
    if ordered:
        return
    mask = np.uint64(RADIX_BUCKETS - 1)
    src_k, dst_k = key_a, key_b
    src_i, dst_i = out, tmp
    in_out = True
    shift = 0
    while shift < 64:
        sh = np.uint64(shift)
        shift += _RADIX_BITS
        if ((diff >> sh) & mask) == 0:
            continue  # every value has the same digit here
        for d in range(RADIX_BUCKETS):
            counts[d] = 0
        for j in range(n):
            counts[np.int64((src_k[j] >> sh) & mask)] += 1
        total = 0
        for d in range(RADIX_BUCKETS):
            c = counts[d]
            counts[d] = total
            total += c
        for j in range(n):
            b = np.int64((src_k[j] >> sh) & mask)
            q = counts[b]
            counts[b] = q + 1
            dst_k[q] = src_k[j]
            dst_i[q] = src_i[j]
        src_k, dst_k = dst_k, src_k
        src_i, dst_i = dst_i, src_i
        in_out = not in_out
    if not in_out:
        for j in range(n):
            out[j] = src_i[j]


# ---------------------------------------------------------------- removal
@kernel
def remove_row(t: Tables, ev: EventArrays, r: int, now: int) -> None:
    """Remove SERVING row ``r`` at once (removeCache / trimCache)."""
    i = t.inst[r]
    g = t.i_group[i]
    code = t.g_policy[g]
    dispatch.remove(t, code, g, r)
    if _ANY_LEAVES and dispatch.tracks_leaves(code):
        _detach(t, r)
    t.i_blocks[i] -= 1
    slot_add(t, r, -1, -1)
    t.g_used[g] -= t.i_cost[i]
    emit(ev, EV_REMOVED, i, t.key[r], now, 0)
    free_row(t, r)


@kernel
def remove_keys(
    t: Tables, ev: EventArrays, i: int, keys: np.ndarray, mask: np.ndarray, has_mask: bool,
    now: int,
) -> int:
    """Remove the SERVING blocks of ``keys`` (skipping masked ones); returns removed."""
    n = 0
    for j in range(keys.shape[0]):
        if has_mask and mask[j]:
            continue
        r = lookup(t, i, keys[j])
        if r >= 0 and t.state[r] == SERVING:
            remove_row(t, ev, r, now)
            n += 1
    return n


@kernel
def trim(t: Tables, ev: EventArrays, i: int, lo: int, hi: int, now: int, r0: int = 0,
         r1: int = -1) -> int:
    """Remove SERVING blocks of instance ``i`` (-1 = all) written in ``[lo, hi)``, among
    table rows ``[r0, r1)`` (``r1`` -1: up to the high-water mark)."""
    n = 0
    hwm = t.meta[M_HWM]
    if 0 <= r1 < hwm:
        hwm = r1
    for r in range(r0, hwm):
        if t.state[r] != SERVING:
            continue
        if i >= 0 and t.inst[r] != i:
            continue
        w = t.t_write[r]
        if w < lo or w >= hi:
            continue
        remove_row(t, ev, r, now)
        n += 1
    return n


@kernel
def reap_deleting_by_group(t: Tables, cutoff: np.ndarray, orphan_cutoff: int) -> int:
    """Free DELETING rows evicted at or before their group's ``cutoff[g]``.

    Each group has its own ``delay_before_delete_ms``, so each its own cutoff; rows of
    removed instances (no group any more) use ``orphan_cutoff``.
    """
    freed = 0
    for r in range(t.meta[M_HWM]):
        if t.state[r] != DELETING:
            continue
        g = t.i_group[t.inst[r]]
        c = cutoff[g] if g >= 0 else orphan_cutoff
        if t.t_access[r] <= c:
            free_row(t, r)
            freed += 1
    return freed


# ---------------------------------------------------------------- replay
@kernel
def replay_requests(
    t: Tables,
    ev: EventArrays,
    req_inst: np.ndarray,
    ts: np.ndarray,
    offsets: np.ndarray,
    keys: np.ndarray,
    mask: np.ndarray,
    has_mask: bool,
    kind: np.ndarray,
    start: int,
    end: int,
    batch_mode: bool,
    delete_now: bool,
    out_hit: np.ndarray,
    out_ihit: np.ndarray,
    out_iread: np.ndarray,
    out_cached: np.ndarray,
    out_used: np.ndarray,
    out_evicted: np.ndarray,
    tmp_rows: np.ndarray,
    tmp_new: np.ndarray,
) -> int:
    """Replay requests ``[start, end)`` through the cache; returns where it stopped.

    ``delete_now`` frees evicted blocks at once (simulation); otherwise they stay
    DELETING until reaped (a group's ``delay_before_delete_ms``).
    Stops early (returning the request index) when the table has fewer free rows
    than the next request has keys, so the caller can grow it and resume.
    Combined requests (``KIND_REQUEST``) follow the replay contract: read on the
    cache as it was, write every key in commit order, then evict to capacity. In
    ``batch_mode`` a request is its flattened block stream: each block in commit
    order is read, written and followed by eviction, as a block cache would.
    """
    rows_total = t.key.shape[0]
    for q in range(start, end):
        a = offsets[q]
        b = offsets[q + 1]
        n = b - a
        if t.meta[M_USED] + n > rows_total:
            return q
        if n > tmp_rows.shape[0]:
            return q
        i = req_inst[q]
        g = t.i_group[i]
        now = ts[q]
        k = kind[q]
        ev0 = t.g_evicted[g]
        ihit = 0
        iread = 0
        hits = 0
        if has_mask:
            for j in range(a, b):
                if mask[j]:
                    iread += 1
        if n > 8:
            prefetch_keys(t, i, keys, a, b)
        if batch_mode:
            code = t.g_policy[g]
            tf = dispatch.tail_first(code)
            for jj in range(n):
                j = b - 1 - jj if tf else a + jj
                if has_mask and mask[j]:
                    ihit += 1
                    hits += 1
                r = lookup(t, i, keys[j])
                served = r >= 0 and t.state[r] == SERVING
                if served and not (has_mask and mask[j]):
                    hits += 1
                if k == KIND_READ:
                    if served:
                        dispatch.hit(t, code, g, r, now)
                        _bump(t, r)
                        t.t_access[r] = stamp(t, now)
                    continue
                write_serving(t, ev, i, keys[j : j + 1], now, tmp_rows, tmp_new, 0)
                evict_to(t, ev, g, i, t.g_cap[g], now, delete_now)
        else:
            if k != KIND_WRITE:
                for j in range(a, b):
                    if has_mask and mask[j]:
                        continue
                    r = lookup(t, i, keys[j])
                    if r < 0 or t.state[r] != SERVING:
                        break
                    tmp_rows[hits] = r
                    hits += 1
                if k == KIND_READ:
                    touch_rows(t, tmp_rows, hits, now)
                ihit = iread
                hits += ihit
            if k != KIND_READ:
                known = hits - ihit if (k == KIND_REQUEST and not has_mask) else 0
                write_serving(t, ev, i, keys[a:b], now, tmp_rows, tmp_new, known)
                evict_to(t, ev, g, i, t.g_cap[g], now, delete_now)
        if k != KIND_WRITE:
            emit(ev, EV_READ, i, hits, now, n)
        out_hit[q] = hits
        out_ihit[q] = ihit
        out_iread[q] = iread
        out_cached[q] = t.i_blocks[i]
        out_used[q] = t.g_used[g]
        out_evicted[q] = t.g_evicted[g] - ev0
    return end


# ---------------------------------------------------------------- filtered eviction
# Used only by the server's per-storage-type reclaim (the manager picks the victims with
# numpy from the policy's rank keys); replay and the ordinary reclaim never call these.
@kernel
def mark_fresh(t: Tables, i: int, keys: np.ndarray, isnew: np.ndarray) -> int:
    """Of the keys whose ``isnew`` flag is set on input (the first occurrence of each key
    in the request, :func:`~kvsim.core.manager.first_occurrence`), keep it set only for
    those with no block or a DELETING one, as :func:`start_write`'s first pass does;
    returns how many stay set (the blocks a ``start_write`` of them would allocate now).
    """
    n_new = 0
    for j in range(keys.shape[0]):
        if not isnew[j]:
            continue
        r = lookup(t, i, keys[j])
        fresh = r < 0 or t.state[r] == DELETING
        isnew[j] = fresh
        if fresh:
            n_new += 1
    return n_new


@kernel
def rank_rows(t: Tables, code: int, rows: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> None:
    """The policy's cross-instance eviction rank of each row (smaller goes first)."""
    for j in range(rows.shape[0]):
        a, b = dispatch.rank(t, code, rows[j])
        r1[j] = a
        r2[j] = b


@kernel
def evict_rows(
    t: Tables, ev: EventArrays, g: int, rows: np.ndarray, now: int, delete_now: bool
) -> int:
    """Evict ``rows`` in order (those still SERVING in group ``g``); returns how many."""
    n = 0
    for j in range(rows.shape[0]):
        r = rows[j]
        if r < 0 or t.state[r] != SERVING or t.i_group[t.inst[r]] != g:
            continue
        evict_row(t, ev, r, now, delete_now)
        n += 1
    flush_frees(t)
    t.g_evicted[g] += n
    return n

"""Ghost lists: per-group FIFOs of evicted keys' hashes with a set over them.

``s3fifo`` (one FIFO: keys evicted from the small queue) and ``arc`` (two: B1 and B2)
remember recently evicted keys. A ghost holds no block row: each group that needs one
owns a region of three flat arrays of :class:`~kvsim.core.table.Tables`, laid out by
:meth:`~kvsim.core.table.BlockTable.set_ghost` from the group's capacity (the manager
calls it when a group is configured and when an instance joins), so the bytes per
cached block do not change:

* ``gh_ring`` -- ``rings`` rings of ``2 x ring_len`` 64-bit key hashes (8 bytes each);
* ``gh_skey`` / ``gh_sval`` -- an open-addressing set (linear probing, backward-shift
  deletion, load <= 0.7: it is sized for ``rings x ring_len`` live entries) from a key
  hash to ``2 * seq + ring``, where ``seq`` numbers the entries of that ring.

Each ring is an exact FIFO of at most ``ring_len`` *live* entries: pushing into a ring
that holds ``ring_len`` live entries drops its oldest live one (what a FIFO cache of
``ring_len`` unit objects does, as libCacheSim's ghost queues do). Taking a ghost (a
ghost hit) only deletes its set entry, so its ring slot goes stale in place; popping
skips stale slots, and when stale slots fill the physical ring, the ring is compacted
(live entries keep their order and are renumbered): twice ``ring_len`` slots make
that O(1) amortised per push. ``kvsim.core.reference`` models the same FIFOs.

Hashes are the full 64-bit splitmix of ``(instance, key)`` (0 remapped to 1): two keys
share a ghost with probability about 2^-64 per pair.
"""

from __future__ import annotations

import numpy as np

from kvsim.core._jit import inline_kernel, kernel
from kvsim.core.table import Tables

# gh_meta columns
M_ROFS = 0  # ring region offset in gh_ring
M_LEN = 1  # live entries a ring may hold (0: no ghost); a ring has 2 x M_LEN slots
M_RINGS = 2  # rings
M_SOFS = 3  # set region offset in gh_skey / gh_sval
M_SLEN = 4  # set slots
M_CAP = 5  # the group's capacity in blocks (for policies that need it, e.g. arc's c)
M_NEXT = 6  # 6, 7: next sequence number of ring 0, 1
M_OLD = 8  # 8, 9: oldest sequence number not yet popped of ring 0, 1
M_LIVE = 10  # 10, 11: live entries of ring 0, 1

_S32 = np.uint64(32)


@inline_kernel
def key_hash(inst: int, key: int) -> np.uint64:
    """64-bit hash of ``(inst, key)``, never 0 (0 marks an empty set slot)."""
    x = np.uint64(key) ^ (np.uint64(inst) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    if x == np.uint64(0):
        x = np.uint64(1)
    return x


@inline_kernel
def row_hash(t: Tables, r: int) -> np.uint64:
    """The ghost hash of row ``r``'s block."""
    return key_hash(t.inst[r], t.key[r])


@kernel
def _find(t: Tables, g: int, h: np.uint64) -> int:
    """Absolute set slot holding ``h``, or -1."""
    n = t.gh_meta[g, M_SLEN]
    if n == 0:
        return -1
    base = t.gh_meta[g, M_SOFS]
    i = np.int64(((h >> _S32) * np.uint64(n)) >> _S32)
    while True:
        e = t.gh_skey[base + i]
        if e == np.uint64(0):
            return -1
        if e == h:
            return int(base + i)
        i += 1
        if i == n:
            i = np.int64(0)


@kernel
def _delete(t: Tables, g: int, s: int) -> None:
    """Delete absolute set slot ``s`` (backward shift)."""
    n = t.gh_meta[g, M_SLEN]
    base = t.gh_meta[g, M_SOFS]
    i = s - base
    j = i
    while True:
        j += 1
        if j == n:
            j = 0
        e = t.gh_skey[base + j]
        if e == np.uint64(0):
            break
        home = np.int64(((e >> _S32) * np.uint64(n)) >> _S32)
        if i <= j:
            movable = home <= i or home > j
        else:
            movable = home <= i and home > j
        if movable:
            t.gh_skey[base + i] = e
            t.gh_sval[base + i] = t.gh_sval[base + j]
            i = j
    t.gh_skey[base + i] = np.uint64(0)
    t.gh_sval[base + i] = 0


@kernel
def _pop_slot(t: Tables, g: int, k: int) -> bool:
    """Pop ring ``k``'s oldest slot; True when it held a live entry (now dropped)."""
    old = t.gh_meta[g, M_OLD + k]
    ln = 2 * t.gh_meta[g, M_LEN]
    h = t.gh_ring[t.gh_meta[g, M_ROFS] + k * ln + old % ln]
    t.gh_meta[g, M_OLD + k] = old + 1
    s = _find(t, g, h)
    if s >= 0 and t.gh_sval[s] == 2 * old + k:
        _delete(t, g, s)
        t.gh_meta[g, M_LIVE + k] -= 1
        return True
    return False


@kernel
def live(t: Tables, g: int, k: int) -> int:
    """Live entries of ring ``k``."""
    return int(t.gh_meta[g, M_LIVE + k])


@kernel
def _compact(t: Tables, g: int, k: int) -> None:
    """Squeeze ring ``k``'s stale slots out, keeping its live entries in order."""
    ln = 2 * t.gh_meta[g, M_LEN]
    base = t.gh_meta[g, M_ROFS] + k * ln
    old = t.gh_meta[g, M_OLD + k]
    w = old
    for s in range(old, t.gh_meta[g, M_NEXT + k]):
        h = t.gh_ring[base + s % ln]
        f = _find(t, g, h)
        if f >= 0 and t.gh_sval[f] == 2 * s + k:
            if w != s:  # w <= s: the write never passes an unread slot
                t.gh_ring[base + w % ln] = h
                t.gh_sval[f] = 2 * w + k
            w += 1
    t.gh_meta[g, M_NEXT + k] = w


@kernel
def push(t: Tables, g: int, k: int, h: np.uint64) -> None:
    """Remember hash ``h`` in ring ``k`` (no-op when the group has no ghost).

    A hash already remembered (in either ring) is moved: the newer push wins. A ring
    holding ``M_LEN`` live entries first drops its oldest one.
    """
    cap = t.gh_meta[g, M_LEN]
    if cap == 0:
        return
    s = _find(t, g, h)
    if s >= 0:
        t.gh_meta[g, M_LIVE + (t.gh_sval[s] & 1)] -= 1
        _delete(t, g, s)
    if t.gh_meta[g, M_LIVE + k] >= cap:
        pop_oldest(t, g, k)
    ln = 2 * cap
    if t.gh_meta[g, M_NEXT + k] - t.gh_meta[g, M_OLD + k] == ln:
        _compact(t, g, k)
    seq = t.gh_meta[g, M_NEXT + k]
    t.gh_meta[g, M_NEXT + k] = seq + 1
    t.gh_ring[t.gh_meta[g, M_ROFS] + k * ln + seq % ln] = h
    n = t.gh_meta[g, M_SLEN]
    base = t.gh_meta[g, M_SOFS]
    i = np.int64(((h >> _S32) * np.uint64(n)) >> _S32)
    while t.gh_skey[base + i] != np.uint64(0):
        i += 1
        if i == n:
            i = np.int64(0)
    t.gh_skey[base + i] = h
    t.gh_sval[base + i] = 2 * seq + k
    t.gh_meta[g, M_LIVE + k] += 1


@kernel
def take(t: Tables, g: int, h: np.uint64) -> int:
    """Forget ghost ``h`` if live; its ring (0 or 1), or -1 when it is no ghost."""
    s = _find(t, g, h)
    if s < 0:
        return -1
    k = int(t.gh_sval[s] & 1)
    _delete(t, g, s)
    t.gh_meta[g, M_LIVE + k] -= 1
    return k


@kernel
def pop_oldest(t: Tables, g: int, k: int) -> None:
    """Drop ring ``k``'s oldest live entry (skipping stale slots)."""
    while t.gh_meta[g, M_OLD + k] < t.gh_meta[g, M_NEXT + k]:
        if _pop_slot(t, g, k):
            return

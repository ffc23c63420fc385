"""Numba dispatch from a group's policy code to the policy module's functions.

The one place that lists every policy's kernels; a new policy adds its module to
:data:`kvsim.core.policies.POLICIES` and one branch to each function here.
"""

from __future__ import annotations

from kvsim.core._jit import kernel
from kvsim.core.policies import (
    arc,
    cost_aware,
    fifo,
    leaf_aware_lru,
    lfu,
    lru,
    random_lru,
    s3fifo,
    sieve,
    slru,
    workload_aware,
)
from kvsim.core.table import Tables

# codes (kept equal to each module's SPEC.code; checked by a test)
LRU = 1
LRU_HEAD_FIRST = 2
RANDOM_LRU = 3
LEAF_AWARE_LRU = 4
FIFO = 5
LFU = 6
SIEVE = 7
SLRU = 8
TTL = 9
S3FIFO = 10
ARC = 11
COST_AWARE = 12
WORKLOAD_AWARE = 13


@kernel
def tail_first(code: int) -> bool:
    """Whether the policy commits a request's blocks from the last to the first."""
    return not (code == LRU_HEAD_FIRST or code == LEAF_AWARE_LRU or code == COST_AWARE)


@kernel
def tracks_leaves(code: int) -> bool:
    """Whether the core maintains parent/child counts for the policy."""
    return code == LEAF_AWARE_LRU or code == COST_AWARE


@kernel
def commit(t: Tables, code: int, g: int, r: int, now: int) -> None:
    """Row ``r`` became SERVING."""
    if code == LRU or code == LRU_HEAD_FIRST:
        lru.commit(t, g, r, now)
    elif code == RANDOM_LRU:
        random_lru.commit(t, g, r, now)
    elif code == LEAF_AWARE_LRU:
        leaf_aware_lru.commit(t, g, r, now)
    elif code == FIFO:
        fifo.commit(t, g, r, now)
    elif code == LFU:
        lfu.commit(t, g, r, now)
    elif code == SIEVE:
        sieve.commit(t, g, r, now)
    elif code == SLRU:
        slru.commit(t, g, r, now)
    elif code == TTL:
        lru.commit(t, g, r, now)
    elif code == S3FIFO:
        s3fifo.commit(t, g, r, now)
    elif code == ARC:
        arc.commit(t, g, r, now)
    elif code == COST_AWARE:
        cost_aware.commit(t, g, r, now)
    elif code == WORKLOAD_AWARE:
        workload_aware.commit(t, g, r, now)


@kernel
def hit(t: Tables, code: int, g: int, r: int, now: int) -> None:
    """Row ``r`` was accessed."""
    if code == LRU or code == LRU_HEAD_FIRST:
        lru.hit(t, g, r, now)
    elif code == RANDOM_LRU:
        random_lru.hit(t, g, r, now)
    elif code == LEAF_AWARE_LRU:
        leaf_aware_lru.hit(t, g, r, now)
    elif code == FIFO:
        fifo.hit(t, g, r, now)
    elif code == LFU:
        lfu.hit(t, g, r, now)
    elif code == SIEVE:
        sieve.hit(t, g, r, now)
    elif code == SLRU:
        slru.hit(t, g, r, now)
    elif code == TTL:
        lru.hit(t, g, r, now)
    elif code == S3FIFO:
        s3fifo.hit(t, g, r, now)
    elif code == ARC:
        arc.hit(t, g, r, now)
    elif code == COST_AWARE:
        cost_aware.hit(t, g, r, now)
    elif code == WORKLOAD_AWARE:
        workload_aware.hit(t, g, r, now)


@kernel
def victim(t: Tables, code: int, g: int, i: int) -> int:
    """Next row to evict from instance ``i``, or -1."""
    if code == LRU or code == LRU_HEAD_FIRST:
        return lru.victim(t, g, i)
    if code == RANDOM_LRU:
        return random_lru.victim(t, g, i)
    if code == LEAF_AWARE_LRU:
        return leaf_aware_lru.victim(t, g, i)
    if code == FIFO:
        return fifo.victim(t, g, i)
    if code == LFU:
        return lfu.victim(t, g, i)
    if code == SIEVE:
        return sieve.victim(t, g, i)
    if code == SLRU:
        return slru.victim(t, g, i)
    if code == TTL:
        return lru.victim(t, g, i)
    if code == S3FIFO:
        return s3fifo.victim(t, g, i)
    if code == ARC:
        return arc.victim(t, g, i)
    if code == COST_AWARE:
        return cost_aware.victim(t, g, i)
    if code == WORKLOAD_AWARE:
        return workload_aware.victim(t, g, i)
    return -1


@kernel
def remove(t: Tables, code: int, g: int, r: int) -> None:
    """Row ``r`` leaves the policy's structures."""
    if code == LRU or code == LRU_HEAD_FIRST:
        lru.remove(t, g, r)
    elif code == RANDOM_LRU:
        random_lru.remove(t, g, r)
    elif code == LEAF_AWARE_LRU:
        leaf_aware_lru.remove(t, g, r)
    elif code == FIFO:
        fifo.remove(t, g, r)
    elif code == LFU:
        lfu.remove(t, g, r)
    elif code == SIEVE:
        sieve.remove(t, g, r)
    elif code == SLRU:
        slru.remove(t, g, r)
    elif code == TTL:
        lru.remove(t, g, r)
    elif code == S3FIFO:
        s3fifo.remove(t, g, r)
    elif code == ARC:
        arc.remove(t, g, r)
    elif code == COST_AWARE:
        cost_aware.remove(t, g, r)
    elif code == WORKLOAD_AWARE:
        workload_aware.remove(t, g, r)


@kernel
def rank(t: Tables, code: int, r: int) -> tuple[int, int]:
    """Eviction order key of a candidate victim (smaller goes first) across instances."""
    if code == FIFO or code == SIEVE:
        return 0, t.t_write[r]
    if code == SLRU:
        return (1 if t.pbits[r] & 2 else 0), t.t_access[r]
    if code == LFU:
        return lfu.bucket(t, r), t.t_access[r]
    if code == S3FIFO:
        return s3fifo.rank(t, r)
    if code == ARC:
        return arc.rank(t, r)
    if code == COST_AWARE:
        return cost_aware.rank(t, r)
    if code == WORKLOAD_AWARE:
        return workload_aware.rank(t, r)
    return 0, t.t_access[r]

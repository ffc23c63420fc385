"""Blocks awaiting room: how policies see the cache "before the insert".

The replay contract inserts a request's blocks and then evicts while usage exceeds
capacity; a block cache such as libCacheSim evicts first and inserts after, and some
policies' rules (ARC's REPLACE, S3-FIFO's queue sizes) read list sizes at that moment.
A policy that wants the evict-first view counts the blocks it commits while the group
is over capacity (they *await room*), at most as many as the excess, and reads its list
sizes without them. Each eviction gives one of them its room; the count drops to 0 once
the group fits. On a block stream (one new block per write) this is exactly the
evict-then-insert order; for a request with several new blocks it treats them as
inserted one by one after the evictions, in commit order.
"""

from __future__ import annotations

from kvsim.core._jit import kernel
from kvsim.core.table import Tables


@kernel
def excess(t: Tables, g: int, i: int) -> int:
    """Blocks of instance ``i``'s cost group ``g`` must still evict (0 when it fits)."""
    over = t.g_used[g] - t.g_cap[g]
    if over <= 0:
        return 0
    cost = t.i_cost[i]
    if cost < 1:
        cost = 1
    return int((over + cost - 1) // cost)


@kernel
def fits_after_removal(t: Tables, g: int, r: int) -> bool:
    """True when the group fits its capacity once row ``r`` (being removed) is gone."""
    return t.g_used[g] - t.i_cost[t.inst[r]] <= t.g_cap[g]

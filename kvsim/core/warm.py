"""Load every kernel a manager call uses before the first real call needs it.

The kernels are compiled on first use and then cached on disk, so a process pays for
each the first time it calls it: a few milliseconds to load from the cache, or
seconds to compile after an install or a change to the core. A server that pays that
inside its first client calls answers them late (clients time out); :func:`warm_up`
pays it up front, on a scratch manager that is then thrown away.

Example:
    >>> seconds = warm_up(["lru"])
    >>> seconds >= 0
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from kvsim.core.clock import ManualClock
from kvsim.core.manager import QUERY_BATCH, QUERY_PREFIX, QUERY_SW, CacheManager, access_order
from kvsim.core.spec import EVICTION_MODES, EvictionSpec, GroupSpec, InstanceSpec, StorageSpec
from kvsim.core.table import STORAGE_SLOTS

__all__ = ["warm_up"]


def warm_up(policies: Iterable[str] = ("lru",), *, modes: Iterable[str] | None = None) -> float:
    """Run every manager call once per policy (and eviction mode) on a scratch manager.

    The kernels warmed are those specialised to exactly the set ``policies`` (see
    :meth:`~kvsim.core.manager.CacheManager.use_policies`).

    Args:
        policies: registered policy names to load the eviction paths of.
        modes: eviction modes to exercise (default: all of them).

    Returns:
        The seconds it took (compiling, or loading from the disk cache).
    """
    t0 = time.perf_counter()
    clock = ManualClock(1)
    mgr = CacheManager(clock, rows=64, event_level=2, slot_counts=True)
    mgr.add_storage(StorageSpec("warm"))
    # every group first: the manager's kernels are specialised to the set of policies
    # of its groups, so exercising one group at a time would compile growing sets
    names = []
    for policy in sorted(set(policies)):
        for mode in sorted(set(modes) if modes is not None else EVICTION_MODES):
            name = f"{policy}/{mode}"
            mgr.create_group(GroupSpec(name=name, quota_blocks=12, used_percentage=0.5,
                                       eviction=EvictionSpec(policy=policy, mode=mode,
                                                             batch_size=2)))
            mgr.register_instance(InstanceSpec(f"{name}/i", name, block_size=1))
            names.append(name)
    for name in names:
        iid = f"{name}/i"
        for base in range(0, 48, 4):
            clock.advance(1_000_000)
            keys = np.arange(base, base + 6, dtype=np.int64)
            ws = mgr.start_write(iid, keys, timeout_s=1.0)
            mgr.finish_write(ws.session_id, np.ones(ws.new_keys.shape[0], dtype=bool))
            rows = mgr.match(iid, keys, query=QUERY_BATCH, touch=False).rows
            mgr.set_loc(rows[rows >= 0], base % 2)
            mask = np.zeros(keys.shape[0], dtype=bool)
            mask[0] = True
            for query in (QUERY_PREFIX, QUERY_BATCH, QUERY_SW):
                mgr.match(iid, keys, query=query, sw_size=2)
                r = mgr.match(iid, keys, query=query, sw_size=2, mask=mask, touch=False)
                mgr.rows_slot(r.rows)
            mgr.access(iid, keys + 1)
        mgr.start_write(iid, np.arange(100, 103, dtype=np.int64), timeout_s=1e-3)
        clock.advance(10_000_000)
        mgr.expire_sessions()
        mgr.reclaim(name)
        on1 = np.zeros(STORAGE_SLOTS, dtype=bool)
        on1[1] = True
        mgr.evict_on_slots(name, on1, 1,
                           np.ones(mgr.instance_index(iid) + 1, dtype=np.int64))
        mgr.reap()
        mgr.count_new(iid, np.arange(0, 8, dtype=np.int64))  # placement's room check
        mgr.tick()
        mgr.remove(iid, np.arange(0, 4, dtype=np.int64))
        mgr.trim(iid, begin_ns=0, end_ns=clock.now_ns() // 2)
        mgr.trim(iid)
        k = np.arange(200, 203, dtype=np.int64)  # a restart's bulk restore
        mgr.restore_blocks(iid, k, t_write=k, t_access=k, access_count=k, loc=k % 2)
        access_order(np.arange(5000, 0, -1))  # its radix sort of access times
        mgr.remove_instance(iid)
        mgr.remove_group(name)
    mgr.drain_events()
    return time.perf_counter() - t0

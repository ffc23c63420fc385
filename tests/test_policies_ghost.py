"""The policies with ghosts or priorities: s3fifo, arc, cost_aware, workload_aware.

All four are also checked against their plain-Python twins by the differential tests
(``REFERENCED`` in test_core_kernels.py: per-request hits, prefix and batch match) and
by the generic checks over every registered policy (test_core_policies.py,
test_bounds.py). Here: the ghost rings against their twin, the ghost storage layout,
and one defining behaviour of each policy.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import examples

from kvsim.config import KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.core.manager import CacheManager
from kvsim.core.policies import _ghost
from kvsim.core.reference import GhostRings, ReferenceCache
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec
from kvsim.core.table import BlockTable
from kvsim.sim.replay import replay
from kvsim.trace.model import Trace

OPS = st.lists(st.tuples(st.sampled_from(["push", "take", "pop"]), st.integers(0, 1),
                         st.integers(0, 12)), max_size=120)


@settings(max_examples=examples(80), deadline=None)
@given(ops=OPS, length=st.integers(1, 6))
def test_ghost_rings_equal_twin(ops: list[tuple[str, int, int]], length: int) -> None:
    table = BlockTable.create(rows=8, instances=1, groups=3)
    table.set_ghost(1, 2, length, 10)
    t = table.t
    twin = GhostRings(2, length)
    for op, k, key in ops:
        h = np.uint64(_ghost.key_hash(0, key))
        if op == "push":
            _ghost.push(t, 1, k, h)
            twin.push(k, key)
        elif op == "take":
            assert _ghost.take(t, 1, h) == twin.take(key)
        else:
            _ghost.pop_oldest(t, 1, k)
            twin.pop_oldest(k)
        assert [_ghost.live(t, 1, j) for j in (0, 1)] == twin.live
    live = {key for key in range(13)
            if _ghost.take(t, 1, np.uint64(_ghost.key_hash(0, key))) >= 0}
    assert live == set(twin.where)
    other = t.gh_meta[[0, 2]]  # other groups: no ghost, no counts
    assert not other[:, [_ghost.M_LEN, _ghost.M_RINGS, _ghost.M_SLEN]].any()
    assert not other[:, _ghost.M_NEXT:].any()


def _manager(policy: str, quota: int, instances: tuple[str, ...] = ("i0",),
             group: str = "g") -> CacheManager:
    m = CacheManager(ManualClock(1), event_level=2)
    m.create_group(GroupSpec(group, quota_blocks=quota, eviction=EvictionSpec(policy=policy)))
    for name in instances:
        m.register_instance(InstanceSpec(name, group))
    return m


def test_ghost_storage_is_sized_from_capacity_and_kept_per_group() -> None:
    m = _manager("s3fifo", 100)
    meta = m.table.t.gh_meta
    assert (meta[0, _ghost.M_RINGS], meta[0, _ghost.M_LEN], meta[0, _ghost.M_CAP]) == (1, 90, 100)
    for k in range(200):  # fill the ghost
        m.access("i0", [k])
    live = _ghost.live(m.table.t, 0, 0)
    assert live > 0
    m.create_group(GroupSpec("h", quota_blocks=50, eviction=EvictionSpec(policy="arc")))
    m.create_group(GroupSpec("u", quota_blocks=0, eviction=EvictionSpec(policy="arc")))
    t = m.table.t
    assert (t.gh_meta[1, _ghost.M_RINGS], t.gh_meta[1, _ghost.M_LEN]) == (2, 50)
    assert t.gh_meta[2, _ghost.M_LEN] == 0  # unbounded: no ghost
    assert _ghost.live(t, 0, 0) == live  # group g kept its ghosts
    # the ghost FIFO of 90 holds the last 90 keys that left S, as the twin's does
    ref = ReferenceCache("s3fifo", 100)
    ref.replay([[k] for k in range(200)])
    assert len(ref.ghost.where) == live == 90
    for k in range(200):
        assert (_ghost.take(t, 0, np.uint64(_ghost.key_hash(0, k))) == 0) == \
            (k in ref.ghost.where), k
    lru = _manager("lru", 100)
    assert lru.table.t.gh_meta[0, _ghost.M_LEN] == 0
    assert m.table.nbytes() == m.table.t.hot.nbytes + m.table.t.cold.nbytes + \
        m.table.t.slots.nbytes  # no per-row cost


def _hits(reqs: list[list[int]], policy: str, cap: int, **params: float) -> list[int]:
    t = Trace.from_lists(ts_ns=list(range(len(reqs))), keys=reqs, block_size=16)
    cfg = KVSimConfig.single_cache(capacity_blocks=cap, policy=policy, params=params)
    return replay(t, cfg).hit_blocks.tolist()


def test_s3fifo_protects_reused_blocks_and_readmits_ghosts() -> None:
    scan = [[k] for k in range(10, 40)]
    reqs = [[1], [1], [1], *scan, [1]]
    # two hits (move_threshold 2) moved 1 to main before the scan evicted S
    assert _hits(reqs, "s3fifo", 20)[-1] == 1
    assert _hits(reqs, "s3fifo", 20, move_threshold=3)[-1] == 0
    assert _hits(reqs, "lru", 20)[-1] == 0
    ref = ReferenceCache("s3fifo", 20)
    ref.replay([[k] for k in range(100, 140)])
    gone = sorted(ref.ghost.where)
    assert gone and not ref.cached() & set(gone)  # keys that left S are ghosts
    ref.replay([[gone[-1]]])  # a ghost comes back straight into main
    assert gone[-1] in ref.protected and gone[-1] not in ref.ghost.where


def test_arc_adapts_p_like_its_twin() -> None:
    rng = np.random.default_rng(4)
    reqs = [[int(k)] for k in rng.zipf(1.3, 600) % 40]
    m = _manager("arc", 8)
    ref = ReferenceCache("arc", 8)
    ps = []
    for q, r in enumerate(reqs):
        m.clock.set(q + 2)
        got = m.access("i0", r).hit_blocks
        assert got == ref.access(r), q
        assert float(m.table.t.g_polf[0, 0]) == ref.p
        ps.append(ref.p)
    assert len(set(ps)) > 2  # p moved both ways


def test_cost_aware_keeps_the_deeper_leaf() -> None:
    """Equal frequency: the shallow leaf goes before the deep one (lru takes the older)."""
    reqs = [[20, 21, 22, 23], [10], [30]]
    m = CacheManager(ManualClock(1))
    m.create_group(GroupSpec("g", quota_blocks=5, eviction=EvictionSpec(
        policy="cost_aware", params={"depth_weight": 1.0})))
    m.register_instance(InstanceSpec("i0", "g"))
    lru = _manager("lru", 5)
    for r in reqs:
        m.access("i0", r)
        lru.access("i0", r)
    assert sorted(m.cached_keys("i0").tolist()) == [20, 21, 22, 23, 30]
    assert sorted(lru.cached_keys("i0").tolist()) == [10, 20, 21, 22, 30]
    ref = ReferenceCache("cost_aware", 5, depth_weight=1.0)
    ref.replay(reqs)
    assert ref.cached() == {20, 21, 22, 23, 30}


def test_workload_aware_evicts_the_category_without_reuse() -> None:
    m = _manager("workload_aware", 4, instances=("A", "B"))
    lru = _manager("lru", 4, instances=("A", "B"))
    for mm in (m, lru):
        for q, (inst, keys) in enumerate([("A", [1]), ("A", [1]), ("B", [100]), ("B", [101]),
                                          ("B", [102]), ("B", [103])]):
            mm.clock.set(10 * (q + 1))
            mm.access(inst, keys)
    assert m.cached_keys("A").tolist() == [1]  # A's block is reused: B's oldest went
    assert lru.cached_keys("A").tolist() == []
    assert 0 < m.table.t.i_polf[0, 0] < 1 and m.table.t.i_polf[1, 0] == 0

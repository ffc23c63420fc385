"""The issue-3 policies beyond the foundation's: sieve, slru, ttl.

sieve and slru are also checked against their plain-Python twins by the
differential tests (``REFERENCED`` in test_core_kernels.py) and by the generic
checks over every registered policy (test_core_policies.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.config import KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.core.manager import CacheManager
from kvsim.core.reference import ReferenceCache
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec
from kvsim.sim.replay import replay
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace

S = 1_000_000_000


@pytest.fixture(scope="module")
def trace() -> Trace:
    return generate_trace(GenSpec(seed=3, requests=400, instances=2))


def _hits(trace: Trace, policy: str, cap: int, **params: float) -> np.ndarray:
    cfg = KVSimConfig.single_cache(capacity_blocks=cap, policy=policy, params=params)
    return replay(trace, cfg).hit_blocks


def test_ttl_with_a_long_life_is_lru(trace: Trace) -> None:
    for cap in (200, 2000):
        assert _hits(trace, "ttl", cap, ttl_s=1e6).tolist() == _hits(trace, "lru", cap).tolist()


def test_ttl_cache_is_a_subset_of_lru(trace: Trace) -> None:
    """Expiry only ever removes LRU-tail blocks, so no request hits more than under lru."""
    for cap in (200, 20_000):
        ttl = _hits(trace, "ttl", cap, ttl_s=2.0)
        lru = _hits(trace, "lru", cap)
        assert np.all(ttl <= lru)
    assert ttl.sum() < lru.sum()  # a large cache holds blocks past 2 s: expiry must bite


def test_ttl_expires_without_pressure() -> None:
    m = CacheManager(ManualClock(0))
    m.create_group(GroupSpec("g", quota_blocks=100,
                             eviction=EvictionSpec(policy="ttl", params={"ttl_s": 10})))
    m.register_instance(InstanceSpec("i", "g"))
    m.access("i", [1, 2, 3])
    m.clock.advance(5 * S)
    m.access("i", [1, 2])  # refreshes 1 and 2
    m.clock.advance(6 * S)  # block 3 is now 11 s old, 1 and 2 are 6 s old
    assert m.reclaim() == 1
    assert m.cached_keys("i").tolist() == [1, 2]


def test_sieve_keeps_visited_blocks() -> None:
    """SIEVE's defining move: a visited block survives the hand once, an unvisited one goes."""
    ref = ReferenceCache("sieve", 3)
    ref.replay([[1], [2], [3], [1], [4]])  # 1 visited; inserting 4 evicts 2
    assert ref.cached() == {1, 3, 4}
    t = Trace.from_lists(ts_ns=list(range(6)), keys=[[1], [2], [3], [1], [4], [2]],
                         block_size=16)
    hits = _hits(t, "sieve", 3)
    assert hits.tolist() == [0, 0, 0, 1, 0, 0]  # 2 was evicted, 1 was kept


def test_slru_protects_reused_blocks() -> None:
    """A block hit once moves to the protected segment and outlives a scan of new blocks."""
    scan = [[k] for k in range(10, 20)]
    reqs = [[1], [1], *scan, [1]]
    t = Trace.from_lists(ts_ns=list(range(len(reqs))), keys=reqs, block_size=16)
    slru = _hits(t, "slru", 4, protected_frac=0.5)
    lru = _hits(t, "lru", 4)
    assert slru[-1] == 1 and lru[-1] == 0

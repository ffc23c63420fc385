"""Snapshot and restore of block metadata and write sessions (what a restart needs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from kvsim.core.clock import ManualClock
from kvsim.core.errors import DuplicateEntity, InvalidArgument, NotFound
from kvsim.core.manager import CacheManager
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec

INSTANCES = ("a", "b")


def _make(quota: int, policy: str, start_ns: int = 1_000) -> CacheManager:
    m = CacheManager(ManualClock(start_ns), event_level=0)
    m.create_group(GroupSpec("g", quota_blocks=quota, eviction=EvictionSpec(policy=policy)))
    for name in INSTANCES:
        m.register_instance(InstanceSpec(name, "g"))
    return m


def _chain(root: int, n: int) -> list[int]:
    return [root * 1000 + j for j in range(n)]


requests = st.lists(
    st.tuples(st.sampled_from(INSTANCES), st.integers(0, 6), st.integers(1, 6)),
    min_size=1, max_size=40)


def _run(m: CacheManager, reqs: list[tuple[str, int, int]]) -> list[int]:
    hits = []
    for inst, root, n in reqs:
        m.clock.advance(1_000)  # type: ignore[attr-defined]
        hits.append(m.access(inst, _chain(root, n)).hit_blocks)
    return hits


def _restored(m: CacheManager, quota: int, policy: str) -> CacheManager:
    d = m.export_blocks()
    r = _make(quota, policy, start_ns=m.clock.now_ns())
    for inst in INSTANCES:
        sel = np.array([i == inst for i in d.instance_id], dtype=bool)
        r.restore_blocks(inst, d.key[sel], t_write=d.t_write[sel], t_access=d.t_access[sel],
                         access_count=d.access_count[sel], loc=d.loc[sel])
    return r


@settings(max_examples=examples(80), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(before=requests, after=requests, quota=st.integers(3, 30),
       policy=st.sampled_from(["lru", "lru_head_first"]))
def test_restore_keeps_contents_times_and_future(before, after, quota, policy) -> None:
    """A restored manager holds the same blocks with the same times and, fed the same
    requests, gives the same hits as the original (recency order survived)."""
    m = _make(quota, policy)
    _run(m, before)
    r = _restored(m, quota, policy)
    a, b = m.export_blocks(), r.export_blocks()
    assert a.instance_id == b.instance_id
    np.testing.assert_array_equal(a.key, b.key)
    np.testing.assert_array_equal(a.t_write, b.t_write)
    np.testing.assert_array_equal(a.t_access, b.t_access)
    np.testing.assert_array_equal(a.access_count, b.access_count)
    assert _run(m, after) == _run(r, after)


def test_restore_orders_by_access_and_respects_quota() -> None:
    m = _make(2, "lru")
    assert m.restore_blocks("a", [7, 8, 9], t_write=[1, 2, 3], t_access=[30, 10, 20]) == 3
    assert m.cached_keys("a").tolist() == [7, 9]
    # 9 (accessed at 20) is now the least recent: a new block evicts it
    m.access("a", [5])
    assert m.cached_keys("a").tolist() == [5, 7]
    # keys already present are left alone
    assert m.restore_blocks("a", [5], t_write=[0], t_access=[0]) == 0
    with pytest.raises(InvalidArgument, match="t_access has 1 entries for 2 keys"):
        m.restore_blocks("a", [1, 2], t_write=[0, 0], t_access=[0])


def test_restore_large_chunks_split_to_fit() -> None:
    n = 10_000
    m = _make(6_000, "lru")
    keys = np.arange(n, dtype=np.int64)
    assert m.restore_blocks("a", keys, t_write=keys, t_access=keys + 1) >= 6_000
    # the 6,000 most recent survive
    assert m.cached_keys("a").tolist() == list(range(4_000, n))


def test_sessions_round_trip_and_expiry() -> None:
    m = _make(0, "lru")
    w1 = m.start_write("a", [1, 2, 3], timeout_s=5)
    w2 = m.start_write("b", [4], timeout_s=50)
    infos = {s.session_id: s for s in m.sessions()}
    assert set(infos) == {w1.session_id, w2.session_id}
    assert infos[w1.session_id].keys.tolist() == [1, 2, 3]

    r = _make(0, "lru", start_ns=m.clock.now_ns())
    for s in m.sessions():
        r.restore_session(s.instance_id, s.keys, session_id=s.session_id,
                          deadline_ns=s.deadline_ns)
    with pytest.raises(DuplicateEntity):
        r.restore_session("a", [9], session_id=w1.session_id, deadline_ns=0)
    assert r.pending_sessions() == 2
    assert r.match("a", [1]).hit_blocks == 0  # WRITING is not readable
    # new sessions never reuse a restored id
    assert r.start_write("a", [77]).session_id > max(infos)
    r.clock.advance(10 * 10**9)  # type: ignore[attr-defined]
    assert r.expire_sessions() == 1  # w1's deadline (5 s) passed, w2's (50 s) did not
    with pytest.raises(NotFound):
        r.finish_write(w1.session_id, [True, True, True])
    assert r.finish_write(w2.session_id, [True]).committed == 1
    assert r.cached_keys("b").tolist() == [4]
    assert r.cached_keys("a", serving_only=False).tolist() == [77]

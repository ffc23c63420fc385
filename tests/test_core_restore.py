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
from kvsim.core.policies import BUILTIN
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


# ---------------------------------------------------------------- bulk restore
def _policy_manager(policy: str, quota: int, delay_ms: int = 0) -> CacheManager:
    m = CacheManager(ManualClock(5_000), event_level=0, slot_counts=True)
    m.create_group(GroupSpec("g", quota_blocks=quota, delay_before_delete_ms=delay_ms,
                             eviction=EvictionSpec(policy=policy)))
    for name in INSTANCES:
        m.register_instance(InstanceSpec(name, "g"))
    m.reserve_rows(2048)  # the same table (and free list) on every side
    return m


def _tables_equal(a: CacheManager, b: CacheManager) -> None:
    ta, tb = a.table.t, b.table.t
    for name in ta._fields:
        if name == "scratch":  # the free batch's scratch: contents are not state
            continue
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)


entries = st.lists(
    st.tuples(st.sampled_from(INSTANCES), st.integers(0, 60), st.integers(0, 400),
              st.integers(0, 400), st.integers(0, 70), st.integers(0, 3)),
    min_size=0, max_size=120)


@settings(max_examples=examples(120), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(sorted(BUILTIN)),
       pre=st.lists(st.tuples(st.sampled_from(INSTANCES), st.integers(0, 80),
                              st.integers(1, 4)), max_size=8),
       rows=entries, chunk=st.sampled_from([1, 3, 7, 4096]), evict=st.integers(0, 200),
       after=st.lists(st.tuples(st.sampled_from(INSTANCES), st.integers(0, 60),
                                st.integers(1, 5)), max_size=12),
       delay=st.sampled_from([0, 10]))
def test_bulk_restore_equals_chunked_path(policy, pre, rows, chunk, evict, after,
                                          delay) -> None:
    """The one-pass kernel (and its plain-Python twin, the kernel's body run by the
    interpreter) leaves exactly the table the chunked start/finish path leaves, for
    every registered policy: same rows, times, counts, index, policy lists and
    counters; so the same lookups, and the same evictions afterwards."""
    from unittest import mock

    import kvsim.core.manager as M

    sides = [_policy_manager(policy, 0, delay) for _ in range(3)]
    for m in sides:  # some blocks already there (and, with a delay, DELETING ones)
        for inst, root, n in pre:
            m.clock.advance(100)  # type: ignore[attr-defined]
            m.access(inst, [root + j for j in range(n)])
        m.evict_blocks("g", 2)
    twin = sides[2].kernels.restore_serving
    with mock.patch.object(M, "_RESTORE_CHUNK", chunk):
        for inst in INSTANCES:
            sel = [r for r in rows if r[0] == inst]
            k = np.array([r[1] for r in sel], np.int64)
            tw = np.array([r[2] for r in sel], np.int64)
            ta = np.array([r[3] for r in sel], np.int64)
            acc = np.array([r[4] for r in sel], np.int64)
            loc = np.array([r[5] for r in sel], np.int64)
            kw = dict(t_write=tw, t_access=ta, access_count=acc, loc=loc)
            got = [sides[0].restore_blocks(inst, k, bulk=False, **kw),
                   sides[1].restore_blocks(inst, k, **kw)]
            # the twin: the kernel's body under the interpreter (prefetch hints off)
            with mock.patch.object(sides[2].kernels, "restore_serving", twin.py_func), \
                    mock.patch.object(sides[2].kernels, "prefetch", lambda a, j: None):
                got.append(sides[2].restore_blocks(inst, k, **kw))
            assert got[0] == got[1] == got[2]
    _tables_equal(sides[0], sides[1])
    _tables_equal(sides[0], sides[2])
    probe = list(range(0, 90))
    for inst in INSTANCES:
        assert (sides[0].match(inst, probe, query="batch", touch=False).found.tolist()
                == sides[1].match(inst, probe, query="batch", touch=False).found.tolist())
    # the same future: reads, writes and evictions one block at a time
    seen: list[list[list[int]]] = [[], []]
    for side, m in enumerate(sides[:2]):
        for inst, root, n in after:
            m.clock.advance(1_000)  # type: ignore[attr-defined]
            m.access(inst, [root + j for j in range(n)])
        for _ in range(min(evict, 40)):
            if m.evict_blocks("g", 1) == 0:
                break
            seen[side].append([*m.cached_keys("a").tolist(), -1, *m.cached_keys("b").tolist()])
    assert seen[0] == seen[1]
    _tables_equal(sides[0], sides[1])


def test_bulk_restore_needs_quota_room_else_chunks() -> None:
    """A set larger than the quota takes the chunked path (evicting the oldest)."""
    for bulk in (True, False):
        m = _make(6_000, "lru")
        keys = np.arange(10_000, dtype=np.int64)
        m.restore_blocks("a", keys, t_write=keys, t_access=keys + 1, bulk=bulk)
        assert m.cached_keys("a").tolist() == list(range(4_000, 10_000))


def test_reserve_rows_grows_once() -> None:
    m = _make(0, "lru")
    m.reserve_rows(100_000)
    rows = m.row_capacity
    assert 100_000 <= rows <= 100_000 * 1.2
    keys = np.arange(100_000, dtype=np.int64)
    assert m.restore_blocks("a", keys, t_write=keys, t_access=keys) == 100_000
    assert m.row_capacity == rows  # no growth while restoring
    m.reserve_rows(10)
    assert m.row_capacity == rows


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(vals=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300)
       | st.lists(st.integers(0, 50), max_size=300)
       | st.lists(st.integers(10**18, 10**18 + 2**40), min_size=4096, max_size=5000),
       twin=st.booleans())
def test_radix_order_is_the_stable_argsort(vals, twin) -> None:
    """The core's radix sort of access times (and its plain-Python twin, the kernel's
    body under the interpreter) gives numpy's stable argsort, ties in input order."""
    from kvsim.core import kernels as K
    from kvsim.core.manager import access_order

    a = np.array(vals, dtype=np.int64)
    n = a.shape[0]
    out = np.empty(n, np.int64)
    fn = K.radix_argsort.py_func if twin and n <= 400 else K.radix_argsort
    fn(a, out, np.empty(n, np.int64), np.empty(n, np.uint64), np.empty(n, np.uint64),
       np.empty(K.RADIX_BUCKETS, np.int64))
    want = np.argsort(a, kind="stable")
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(access_order(a), want)

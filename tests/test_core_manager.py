"""CacheManager: registry, quotas, two-phase writes, removal, delayed deletion, events."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from kvsim.core.clock import ManualClock
from kvsim.core.errors import (
    DuplicateEntity,
    InstanceNotFound,
    InvalidArgument,
    KVSimError,
    NotFound,
    QuotaExceeded,
)
from kvsim.core.manager import STORAGE_SLOTS, CacheManager
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec, LocationSpec, StorageSpec

MS = 1_000_000
S = 1_000_000_000
TP2 = (LocationSpec("tp0", 1000), LocationSpec("tp1", 1000))  # 2000 bytes per block


def make(quota: int = 0, *, policy: str = "lru", level: int = 2, instances=("i0",),
         interval_ms: int = 0, **group_kw) -> CacheManager:
    m = CacheManager(ManualClock(1_000), event_level=level, reclaim_interval_ms=interval_ms)
    m.create_group(GroupSpec("g", quota_blocks=quota, eviction=EvictionSpec(policy=policy),
                             **group_kw))
    for name in instances:
        m.register_instance(InstanceSpec(name, "g"))
    return m


def write(m: CacheManager, inst: str, keys: list[int], ok: list[bool] | None = None) -> int:
    w = m.start_write(inst, keys)
    return m.finish_write(w.session_id, ok if ok is not None else [True] * len(w.new_keys)
                          ).committed


def usage(m: CacheManager, group: str = "g"):
    return next(u for u in m.usage() if u.name == group)


def kinds(m: CacheManager) -> list[tuple[str, int]]:
    return [(e.kind, e.key) for e in m.drain_events()]


# ---------------------------------------------------------------- registry
def test_register_idempotent_and_duplicates() -> None:
    m = make(10)
    spec = GroupSpec("g", quota_blocks=10)
    m.create_group(spec)  # identical: no-op
    with pytest.raises(DuplicateEntity):
        m.create_group(GroupSpec("g", quota_blocks=11))
    a = m.register_instance(InstanceSpec("i1", "g"))
    assert m.register_instance(InstanceSpec("i1", "g")) == a
    assert m.instance_index("i1") == a != m.instance_index("i0")
    with pytest.raises(DuplicateEntity):
        m.register_instance(InstanceSpec("i1", "g", block_size=32))
    m.add_storage(StorageSpec("s", "file"))
    m.add_storage(StorageSpec("s", "file"))
    with pytest.raises(DuplicateEntity):
        m.add_storage(StorageSpec("s", "memory"))
    with pytest.raises(NotFound):
        m.register_instance(InstanceSpec("i2", "nogroup"))
    with pytest.raises(InvalidArgument):
        m.register_instance(InstanceSpec("i3", "g", block_size=0))
    assert [s.instance_id for s in m.instances()] == ["i0", "i1"]
    with pytest.raises(InvalidArgument):
        m.remove_group("g")  # still has instances


def test_unknown_instance_everywhere() -> None:
    m = make(10)
    calls = [
        lambda: m.match("nope", [1]),
        lambda: m.start_write("nope", [1]),
        lambda: m.access("nope", [1]),
        lambda: m.remove("nope", [1]),
        lambda: m.trim("nope"),
        lambda: m.cached_keys("nope"),
        lambda: m.block_info("nope", [1]),
        lambda: m.remove_instance("nope"),
    ]
    for call in calls:
        with pytest.raises(InstanceNotFound):
            call()
    assert InstanceNotFound.code == "INSTANCE_NOT_EXIST"


def test_bad_arguments() -> None:
    m = make(10)
    write(m, "i0", [1, 2, 3])
    with pytest.raises(InvalidArgument):
        m.match("i0", [1, 2], query="nope")
    with pytest.raises(InvalidArgument):
        m.match("i0", [1, 2], query="sw", sw_size=3)
    with pytest.raises(InvalidArgument):
        m.match("i0", [1, 2], mask=np.array([True]))
    with pytest.raises(InvalidArgument):
        m.start_write("i0", [4], timeout_s=0)
    with pytest.raises(InvalidArgument):
        m.create_group(GroupSpec("h", used_percentage=0))
    with pytest.raises(InvalidArgument):
        m.update_group(GroupSpec("g", quota_blocks=10, eviction=EvictionSpec(policy="fifo")))
    m.create_group(GroupSpec("small", max_instance_count=1))
    m.register_instance(InstanceSpec("x", "small"))
    with pytest.raises(QuotaExceeded):
        m.register_instance(InstanceSpec("y", "small"))


# ---------------------------------------------------------------- quotas
def test_block_quota() -> None:
    m = make(5)
    with pytest.raises(QuotaExceeded):
        m.start_write("i0", [1, 2, 3, 4, 5, 6])
    assert m.pending_sessions() == 0 and usage(m).used == 0  # nothing was allocated
    assert len(m.cached_keys("i0", serving_only=False)) == 0
    w = m.start_write("i0", [1, 2, 3, 4, 5])
    with pytest.raises(QuotaExceeded):  # all 5 are pending: nothing evictable
        m.start_write("i0", [6])
    m.finish_write(w.session_id, [True] * 5)
    m.clock.advance(1)
    assert write(m, "i0", [6, 7]) == 2  # evicts two SERVING blocks (LRU: the tail 5, 4)
    assert m.cached_keys("i0").tolist() == [1, 2, 3, 6, 7]
    u = usage(m)
    assert (u.unit, u.used, u.quota, u.capacity, u.serving_blocks, u.evicted_blocks) == (
        "blocks", 5, 5, 5, 5, 2)


@pytest.mark.parametrize(("quota", "blocks"), [(10_000, 5), (11_999, 5), (12_000, 6), (1999, 0)])
def test_byte_quota(quota: int, blocks: int) -> None:
    m = CacheManager(ManualClock(), event_level=0)
    m.create_group(GroupSpec("g", quota_bytes=quota))
    m.register_instance(InstanceSpec("i0", "g", location_specs=TP2))
    assert m.instance("i0").block_bytes == 2000
    m.access("i0", list(range(1, 9)))
    assert len(m.cached_keys("i0")) == blocks
    u = usage(m)
    assert (u.unit, u.used, u.quota, u.serving_blocks) == ("bytes", 2000 * blocks, quota, blocks)
    m.trim()
    with pytest.raises(QuotaExceeded):
        m.start_write("i0", list(range(blocks + 1)))
    if blocks:
        assert write(m, "i0", list(range(blocks))) == blocks
        assert usage(m).used == 2000 * blocks
    # a byte quota needs block sizes
    with pytest.raises(InvalidArgument):
        m.register_instance(InstanceSpec("nosize", "g"))


def test_watermark_at_each_write_when_the_interval_is_zero() -> None:
    m = make(10, used_percentage=0.5)  # reclaim_interval_ms 0: the contract
    assert write(m, "i0", list(range(8))) == 8
    assert usage(m).used == 5 and usage(m).evicted_blocks == 3
    fin = m.finish_write(m.start_write("i0", [50]).session_id, [True])
    assert fin.tick is not None and fin.tick.reclaimed == 1
    assert [r.trigger for r in fin.tick.reclaims] == ["quota"]
    assert m.evicted_by_trigger == {"quota": 4}


def test_reclaimer_ticks_at_multiples_of_the_interval() -> None:
    m = make(10, used_percentage=0.5, interval_ms=100)
    write(m, "i0", list(range(8)))
    assert usage(m).used == 8  # the writes keep only the hard quota
    assert m.advance_to(99_000_000) == []  # 1 us .. 99 ms: no multiple of 100 ms
    reps = m.advance_to(1_050_000_000)  # due at 100 ms, ..., 1000 ms: first and last run
    assert [r.now_ns for r in reps] == [100_000_000, 1_000_000_000]
    assert [r.reclaimed for r in reps] == [3, 0] and usage(m).used == 5
    assert m.clock.now_ns() == 1_050_000_000
    assert m.advance_to(5) == [] and m.clock.now_ns() == 1_050_000_000  # never back


def test_used_percentage() -> None:
    m = make(10, used_percentage=0.5, interval_ms=1000)
    assert usage(m).capacity == 5
    assert write(m, "i0", list(range(8))) == 8  # writes may go up to the hard quota
    assert usage(m).used == 8
    assert m.reclaim() == 3
    assert usage(m).used == 5
    w = m.start_write("i0", list(range(100, 110)))  # needs 10: evicts all 5 SERVING
    assert usage(m).used == 10 and usage(m).serving_blocks == 0
    with pytest.raises(QuotaExceeded):
        m.start_write("i0", [999])  # over the hard quota with nothing evictable
    m.finish_write(w.session_id, [True] * 10)
    assert m.reclaim("g") == 5 and usage(m).used == 5
    m.trim()
    r = m.access("i0", list(range(200, 209)))  # a combined request evicts to the capacity
    assert r.cached_blocks == 5 and r.evicted == 4 and usage(m).used == 5


# ---------------------------------------------------------------- two-phase writes
def test_two_phase_write() -> None:
    m = make(10)
    w = m.start_write("i0", [1, 2, 3])
    assert w.is_new.tolist() == [True] * 3 and w.new_keys.tolist() == [1, 2, 3]
    assert m.match("i0", [1, 2, 3]).hit_blocks == 0
    assert m.match("i0", [1, 2, 3], query="batch").hit_blocks == 0
    assert [b["status"] for b in m.block_info("i0", [1, 2, 3])] == ["writing"] * 3
    u = usage(m)
    assert (u.used, u.pending_blocks, u.serving_blocks) == (3, 3, 0)
    with pytest.raises(InvalidArgument):
        m.finish_write(w.session_id, [True, False])
    m.clock.advance(5)
    f = m.finish_write(w.session_id, [True, False, True])
    assert (f.committed, f.failed) == (2, 1)
    assert m.match("i0", [1, 2, 3], query="batch").found.tolist() == [True, False, True]
    assert m.match("i0", [1, 2, 3]).hit_blocks == 1
    assert m.block_info("i0", [2]) == [{"key": 2, "status": "not_found"}]
    assert m.block_info("i0", [1])[0]["write_time_ns"] == 1_005
    u = usage(m)
    assert (u.used, u.pending_blocks, u.serving_blocks) == (2, 0, 2)
    with pytest.raises(NotFound):
        m.finish_write(w.session_id, [True, True, True])
    with pytest.raises(NotFound):
        m.finish_write(12345, [])


def test_start_write_skips_present_keys() -> None:
    m = make(0)
    m.access("i0", [1, 2])
    w1 = m.start_write("i0", [1, 2, 3, 4])
    assert w1.is_new.tolist() == [False, False, True, True]
    assert w1.new_keys.tolist() == [3, 4]
    w2 = m.start_write("i0", [3, 5, 5])  # 3 is WRITING in w1; 5 listed twice is new once
    assert w2.is_new.tolist() == [False, True, False]
    assert usage(m).pending_blocks == 3
    assert m.finish_write(w2.session_id, [False]).failed == 1
    assert m.finish_write(w1.session_id, [True, True]).committed == 2
    assert m.cached_keys("i0").tolist() == [1, 2, 3, 4]


def test_expire_sessions() -> None:
    m = make(10, level=2)
    w = m.start_write("i0", [1, 2, 3], timeout_s=1.0)
    m.start_write("i0", [4], timeout_s=5.0)
    m.drain_events()
    m.clock.advance(S // 2)
    assert m.expire_sessions() == 0
    m.clock.advance(S // 2)  # exactly at the deadline
    assert m.expire_sessions() == 1
    assert m.pending_sessions() == 1
    u = usage(m)
    assert (u.used, u.pending_blocks) == (1, 1)
    assert m.cached_keys("i0", serving_only=False).tolist() == [4]
    ev = kinds(m)
    assert ev[0][0] == "expired" and sorted(ev[1:]) == [("write_failed", k) for k in (1, 2, 3)]
    with pytest.raises(NotFound):
        m.finish_write(w.session_id, [True] * 3)
    m.clock.advance(10 * S)
    assert m.expire_sessions() == 1 and usage(m).used == 0


# ---------------------------------------------------------------- removal
def test_remove_with_mask() -> None:
    m = make(0)
    m.access("i0", [1, 2, 3, 4, 5])
    m.drain_events()
    assert m.remove("i0", [1, 2, 3, 99], mask=np.array([False, True, False, False])) == 2
    assert m.cached_keys("i0").tolist() == [2, 4, 5]
    assert sorted(kinds(m)) == [("removed", 1), ("removed", 3)]
    assert m.remove("i0", [4]) == 1
    assert usage(m).used == 2


def test_trim() -> None:
    m = make(0, instances=("a", "b"))
    for t, keys in ((10_000, [1, 2]), (20_000, [3, 4]), (30_000, [5, 6])):
        m.clock.set(t)
        m.access("a", keys)
        m.access("b", keys)
    m.clock.set(40_000)
    m.access("a", [1, 2])  # a hit does not change the write time
    # [15000, 30000): the blocks written at 20000 (the end is exclusive)
    assert m.trim("a", begin_ns=15_000, end_ns=30_000) == 2
    assert m.cached_keys("a").tolist() == [1, 2, 5, 6]
    assert m.trim("a", end_ns=10_001) == 2
    assert m.cached_keys("a").tolist() == [5, 6]
    assert m.trim("b", begin_ns=30_000) == 2
    assert m.trim() == 6  # a: 5, 6; b: 1, 2, 3, 4
    assert usage(m).used == 0 and m.table.used_rows == 0


def test_remove_instance_returns_quota() -> None:
    m = make(10, instances=("a", "b"))
    write(m, "a", [1, 2, 3])
    m.start_write("a", [4, 5])
    write(m, "b", [1])
    m.remove_instance("a")
    assert usage(m).used == 1 and m.pending_sessions() == 0
    with pytest.raises(InstanceNotFound):
        m.match("a", [1])


# ---------------------------------------------------------------- delayed deletion
def test_delayed_deletion() -> None:
    m = make(10, delay_before_delete_ms=100, used_percentage=1.0)
    assert write(m, "i0", list(range(10))) == 10
    m.update_group(GroupSpec("g", quota_blocks=10, used_percentage=0.4, delay_before_delete_ms=100))
    m.clock.advance(1)
    assert m.reclaim() == 6
    u = usage(m)
    assert (u.used, u.serving_blocks) == (4, 4)  # DELETING blocks are not counted
    deleting = [b["key"] for b in m.block_info("i0", list(range(10))) if b["status"] == "deleting"]
    assert len(deleting) == 6
    assert m.match("i0", deleting, query="batch").hit_blocks == 0  # and not visible
    assert m.table.used_rows == 10  # but still hold their rows
    m.clock.advance(100 * MS - 1)
    assert m.reap() == 0
    m.clock.advance(1)
    assert m.reap() == 6
    assert m.table.used_rows == 4
    assert all(b["status"] == "not_found" for b in m.block_info("i0", deleting))


def test_deleting_block_is_rewritten() -> None:
    m = make(4, delay_before_delete_ms=1000)
    write(m, "i0", [1, 2, 3, 4])
    m.clock.advance(1)
    w = m.start_write("i0", [5])  # evicts one block (LRU: 4) as DELETING
    assert m.block_info("i0", [4])[0]["status"] == "deleting"
    m.finish_write(w.session_id, [True])
    w = m.start_write("i0", [4])  # rewriting a DELETING key reuses it
    assert w.is_new.tolist() == [True]
    m.finish_write(w.session_id, [True])
    assert m.match("i0", [4]).hit_blocks == 1
    assert usage(m).used == 4
    m.clock.advance(10 * S)
    m.reap()
    assert m.match("i0", [4]).hit_blocks == 1  # the rewritten block was not reaped


def test_access_evictions_honour_delayed_deletion() -> None:
    m = make(2, delay_before_delete_ms=1000)
    m.access("i0", [1, 2, 3])  # evicts the LRU block 3
    assert m.block_info("i0", [3])[0]["status"] == "deleting"


def test_reap_honours_each_groups_delay() -> None:
    """Each group's own delay: a group without delay (or a shorter one) must not make the
    others' DELETING blocks go early."""
    m = CacheManager(ManualClock(0), event_level=0)
    m.create_group(GroupSpec("nodelay", quota_blocks=10))
    m.create_group(GroupSpec("fast", quota_blocks=10, delay_before_delete_ms=10))
    m.create_group(GroupSpec("slow", quota_blocks=4, delay_before_delete_ms=1000))
    m.register_instance(InstanceSpec("b", "slow"))
    write(m, "b", [1, 2, 3, 4])
    m.update_group(GroupSpec("slow", quota_blocks=4, used_percentage=0.5,
                             delay_before_delete_ms=1000))
    assert m.reclaim("slow") == 2
    assert m.reap() == 0  # not due
    m.clock.advance(10 * MS)
    assert m.reap() == 0  # the fast group's delay is not the slow group's
    m.clock.advance(990 * MS)
    assert m.reap() == 2
    assert m.table.used_rows == 2


# ---------------------------------------------------------------- events and usage
def test_events_by_level() -> None:
    def scenario(level: int) -> list[tuple[str, int]]:
        m = make(3, level=level)
        m.access("i0", [1, 2])  # read (0 hits), stored x2
        m.access("i0", [1, 2, 3, 4])  # read (2 hits), stored 3, 4, evicted (LRU tail: 4)
        w = m.start_write("i0", [7, 8])  # 3 used + 2 new > 3: evicts 3, 2 (LRU)
        m.finish_write(w.session_id, [True, False])  # tail first: write_failed 8, stored 7
        ev = m.drain_events()
        assert m.drain_events() == []
        return [(e.kind, e.key, e.aux) if e.kind in ("read", "write_started") else (e.kind, e.key)
                for e in ev]

    assert scenario(0) == []
    assert scenario(1) == [("read", 0, 2), ("read", 2, 4), ("write_started", 2, 1)]
    assert scenario(2) == [
        ("stored", 1), ("stored", 2), ("read", 0, 2),
        ("stored", 3), ("stored", 4), ("evicted", 4), ("read", 2, 4),
        ("evicted", 3), ("evicted", 2), ("write_started", 2, 1),
        ("write_failed", 8), ("stored", 7),
    ]


def test_match_touch_and_queries() -> None:
    m = make(2)
    m.clock.advance(1)
    m.access("i0", [1])
    m.clock.advance(1)
    m.access("i0", [2])
    m.match("i0", [1], touch=False)
    m.access("i0", [3])
    assert m.cached_keys("i0").tolist() == [2, 3]  # 1 stayed the LRU block
    m.match("i0", [2])  # a touching read
    m.access("i0", [4])
    assert m.cached_keys("i0").tolist() == [2, 4]
    r = m.match("i0", [9, 2, 4], query="sw", sw_size=2)
    assert (r.window_start, r.hit_blocks, r.found.tolist()) == (1, 2, [False, True, True])
    r = m.match("i0", [9, 2, 4], mask=np.array([True, False, False]))
    assert (r.hit_blocks, r.rows[0]) == (3, -2)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["access", "start", "finish", "expire", "remove",
                                                "reclaim", "trim"]),
                              st.sampled_from(["a", "b"]),
                              st.lists(st.integers(0, 15), min_size=1, max_size=5),
                              st.integers(0, 3)), max_size=40),
       quota=st.integers(1, 12), pct=st.sampled_from([0.5, 1.0]))
def test_usage_is_consistent(ops, quota: int, pct: float) -> None:
    """After any call sequence: used = serving + pending (blocks), within the hard quota,
    and the per-instance keys agree with the counters."""
    m = make(quota, instances=("a", "b"), used_percentage=pct, level=0)
    sessions: list[tuple[int, int]] = []
    for op, inst, keys, x in ops:
        m.clock.advance(S // 4)
        try:
            if op == "access":
                m.access(inst, keys)
            elif op == "start":
                w = m.start_write(inst, keys, timeout_s=1.0)
                sessions.append((w.session_id, len(w.new_keys)))
            elif op == "finish" and sessions:
                sid, n = sessions.pop(x % len(sessions))
                m.finish_write(sid, [bool((x >> j) & 1) for j in range(n)])
            elif op == "expire":
                m.expire_sessions()
            elif op == "remove":
                m.remove(inst, keys)
            elif op == "reclaim":
                m.reclaim()
            elif op == "trim":
                m.trim(inst)
        except (QuotaExceeded, NotFound):
            pass
        u = usage(m)
        serving = sum(len(m.cached_keys(i)) for i in ("a", "b"))
        held = sum(len(m.cached_keys(i, serving_only=False)) for i in ("a", "b"))
        assert u.serving_blocks == serving
        assert u.pending_blocks == held - serving
        assert u.used == u.serving_blocks + u.pending_blocks <= quota
        assert m.table.used_rows == held


# ---------------------------------------------------------------- server trigger helpers
def _victims(m: CacheManager, before: dict[str, list[int]]) -> set[tuple[str, int]]:
    return {(i, k) for i, ks in before.items() for k in ks
            if k not in set(m.cached_keys(i).tolist())}


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "ttl"])
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.lists(st.integers(0, 30), min_size=1,
                                                          max_size=5)),
                    min_size=5, max_size=30),
       n=st.integers(1, 12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_evict_on_slots_equals_group_precise_reclaim(policy: str, ops, n: int) -> None:
    """All blocks on one slot: the rank-order filtered eviction picks the same victims as
    the ordinary group_precise eviction (exact policies; fifo with one block per write,
    as blocks written in the same nanosecond tie)."""
    from kvsim.core.manager import STORAGE_SLOTS

    params = {"ttl_s": 10**6} if policy == "ttl" else {}
    a, b = CacheManager(ManualClock(1_000)), CacheManager(ManualClock(1_000))
    for m in (a, b):
        m.create_group(GroupSpec("g", eviction=EvictionSpec(policy=policy, params=params)))
        for name in ("i0", "i1", "i2"):
            m.register_instance(InstanceSpec(name, "g"))
    for m in (a, b):
        for j, (inst, keys) in enumerate(ops):
            m.clock.advance(MS)  # type: ignore[attr-defined]
            if policy == "fifo":
                keys = keys[:1]
            if j % 3 == 2:
                m.match(f"i{inst}", keys)
            else:
                m.access(f"i{inst}", keys)
    before = {f"i{i}": a.cached_keys(f"i{i}").tolist() for i in range(3)}
    total = sum(len(v) for v in before.values())
    n = min(n, total)
    slots = np.zeros(STORAGE_SLOTS, dtype=bool)
    slots[0] = True
    got = a.evict_on_slots("g", slots, n, np.ones(3, dtype=np.int64))
    assert got == (n, n)
    assert b.evict_blocks("g", n) == n
    assert _victims(a, before) == _victims(b, before)


def test_evict_on_slots_leaves_other_slots_alone() -> None:
    from kvsim.core.manager import STORAGE_SLOTS

    m = make(instances=("i0",))
    m.access("i0", list(range(10)))
    t = m.table.t
    rows = m.match("i0", [1, 3, 5], query="batch", touch=False).rows
    m.set_loc(rows, 2)
    assert t.loc[rows].tolist() == [2, 2, 2]
    on2 = np.zeros(STORAGE_SLOTS, dtype=bool)
    on2[2] = True
    held, serving = m.slot_usage("g", np.full(1, 7, dtype=np.int64))
    assert (held[2], held[0], serving[2]) == (21, 49, 21)
    assert m.evict_on_slots("g", on2, 100, np.ones(1, dtype=np.int64)) == (3, 3)
    assert m.cached_keys("i0").tolist() == [0, 2, 4, 6, 7, 8, 9]
    assert m.evict_on_slots("g", on2, 1, np.ones(1, dtype=np.int64)) == (0, 0)


@pytest.mark.parametrize("mode", ["group_precise", "instance_precise"])
def test_evict_blocks_exact_in_precise_modes_with_mixed_costs(mode: str) -> None:
    m = CacheManager(ManualClock(1_000))
    m.create_group(GroupSpec("g", quota_bytes=10**9, eviction=EvictionSpec(mode=mode)))
    m.register_instance(InstanceSpec("big", "g", location_specs=(LocationSpec("a", 3000),)))
    m.register_instance(InstanceSpec("small", "g", location_specs=(LocationSpec("a", 1000),)))
    for k in range(12):
        m.clock.advance(MS)  # type: ignore[attr-defined]
        m.access("big" if k % 3 == 0 else "small", [k])
    for want in (1, 2, 5):
        held = m.key_count("g")[0]
        assert m.evict_blocks("g", want, writer="small") == want
        assert m.key_count("g")[0] == held - want
    assert m.count_new("small", [1, 2, 99, 99, 100]) >= 2


def test_count_new_matches_start_write() -> None:
    m = make(instances=("i0",))
    m.access("i0", [1, 2, 3])
    w0 = m.start_write("i0", [9])  # WRITING
    for keys in ([1, 4, 4, 5], [9, 9, 10], [], [1, 2, 3]):
        n = m.count_new("i0", keys)
        w = m.start_write("i0", keys)
        assert n == int(w.is_new.sum())
        m.finish_write(w.session_id, [False] * len(w.new_keys))
    m.finish_write(w0.session_id, [True])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["write", "finish", "access", "remove", "trim",
                                           "expire", "evict_slot", "evict", "drop"]),
                          st.integers(0, 2), st.lists(st.integers(0, 40), min_size=1,
                                                      max_size=8),
                          st.integers(0, 3), st.integers(0, 255)),
                min_size=1, max_size=40),
       st.sampled_from(["lru", "fifo", "s3fifo"]), st.booleans())
def test_slot_counts_equal_a_table_scan(ops: list, policy: str, delayed: bool) -> None:
    """The per-slot block counts the kernels keep (``slot_counts=True``) equal a pass
    over the table after any sequence of writes (placed on slots), commits and failures,
    reads, evictions (quota, per slot, by count), removals, trims, expiries and a
    removed instance."""
    m = CacheManager(ManualClock(1_000), event_level=1, slot_counts=True)
    m.create_group(GroupSpec("g", quota_blocks=30, eviction=EvictionSpec(policy=policy),
                             delay_before_delete_ms=5 if delayed else 0))
    m.create_group(GroupSpec("h", quota_blocks=12))
    names = ["a", "b", "c"]
    for n, g in zip(names, ("g", "g", "h"), strict=True):
        m.register_instance(InstanceSpec(n, g))
    w = np.array([3, 5, 7], dtype=np.int64)
    open_: list[int] = []
    for op, who, keys, slot, bits in ops:
        inst = names[who]
        if inst not in {s.instance_id for s in m.instances()}:
            continue
        m.clock.advance(MS)  # type: ignore[attr-defined]
        try:
            if op == "write":
                ws = m.start_write(inst, keys, timeout_s=0.003)
                m.set_loc(m._sessions[ws.session_id].rows, slot)
                open_.append(ws.session_id)
            elif op == "finish" and open_:
                sid = open_.pop(bits % len(open_))
                if sid in m._sessions:
                    n_new = m._sessions[sid].keys.shape[0]
                    m.finish_write(sid, [(bits >> (j % 8)) & 1 == 1 for j in range(n_new)])
            elif op == "access":
                m.access(inst, keys)
            elif op == "remove":
                m.remove(inst, keys)
            elif op == "trim":
                m.trim(inst)
            elif op == "expire":
                m.clock.advance(10 * MS)  # type: ignore[attr-defined]
                m.expire_sessions()
                m.reap()
            elif op == "evict_slot":
                on = np.zeros(STORAGE_SLOTS, dtype=bool)
                on[slot] = True
                m.evict_on_slots(m.instance(inst).group, on, bits % 20, w)
            elif op == "evict":
                m.evict_blocks(m.instance(inst).group, bits % 5)
            elif op == "drop" and bits % 4 == 0:
                m.remove_instance(inst)
        except KVSimError:
            pass
        for g in ("g", "h"):
            fast, scan = m.slot_usage(g, w), m.slot_usage_scan(g, w)
            np.testing.assert_array_equal(fast[0], scan[0])
            np.testing.assert_array_equal(fast[1], scan[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["lru", "fifo", "lfu", "s3fifo", "slru"]),
       st.lists(st.tuples(st.integers(0, 2), st.lists(st.integers(0, 60), min_size=1,
                                                       max_size=6), st.integers(0, 3)),
                min_size=5, max_size=40),
       st.sets(st.integers(0, 3), min_size=1), st.integers(1, 60))
def test_evict_on_slots_takes_the_prefix_of_the_full_rank_order(
        policy: str, writes: list, on: set, amount: int) -> None:
    """Whatever ``amount`` asks, ``evict_on_slots`` evicts exactly the shortest prefix of
    the full rank order (what evicting everything on those slots walks) that frees it:
    the top-k shortcut never changes the victims (mixed weights, ties in ``t_write``)."""
    def build() -> CacheManager:
        m = CacheManager(ManualClock(1_000), event_level=2, slot_counts=True)
        m.create_group(GroupSpec("g", eviction=EvictionSpec(policy=policy)))
        for n in ("a", "b", "c"):
            m.register_instance(InstanceSpec(n, "g"))
        for who, keys, slot in writes:
            m.clock.advance(MS if slot else 0)  # type: ignore[attr-defined]
            ws = m.start_write("abc"[who], keys)
            m.set_loc(m._sessions[ws.session_id].rows, slot)
            m.finish_write(ws.session_id, [True] * len(ws.new_keys))
            m.match("abc"[(who + 1) % 3], keys[:1])  # some reads: recency and counts move
        m.drain_events()
        return m

    w = np.array([2, 3, 5], dtype=np.int64)
    mask = np.zeros(STORAGE_SLOTS, dtype=bool)
    mask[sorted(on)] = True
    full, part = build(), build()
    full.evict_on_slots("g", mask, 10**9, w)
    order = [(e.instance, e.key) for e in full.drain_events() if e.kind == "evicted"]
    n, freed = part.evict_on_slots("g", mask, amount, w)
    got = [(e.instance, e.key) for e in part.drain_events() if e.kind == "evicted"]
    cum = np.cumsum([w[i] for i, _ in order]) if order else np.zeros(0)
    want = order[:int(np.searchsorted(cum, amount, side="left")) + 1] if order else []
    assert got == want and n == len(want)
    assert freed == (int(cum[len(want) - 1]) if want else 0)

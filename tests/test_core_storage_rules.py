"""The storage rules in the core, on a manual clock, without any transport: placement,
per-type quotas, storage capacity, ``max_key_count``, health, delete delay and the
reclaimer's report."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.core.clock import ManualClock
from kvsim.core.errors import DuplicateEntity, NotFound, QuotaExceeded
from kvsim.core.manager import CacheManager
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec, LocationSpec, StorageSpec

BLOCK = 100


def make(*, interval_ms: int = 1000, **group: object) -> CacheManager:
    m = CacheManager(ManualClock(1_000), slot_counts=True, reclaim_interval_ms=interval_ms)
    m.add_storage(StorageSpec("fast", type="memory"))
    m.add_storage(StorageSpec("slow", type="file", capacity_bytes=group.pop("slow_cap", 0)))  # type: ignore[arg-type]
    g = {"name": "g", "quota_blocks": 1000, "storage_candidates": ("fast", "slow")} | group
    m.create_group(GroupSpec(**g))  # type: ignore[arg-type]
    for i in ("i0", "i1"):
        m.register_instance(InstanceSpec(i, "g", location_specs=(LocationSpec("tp", BLOCK),)))
    return m


def write(m: CacheManager, keys: list[int], iid: str = "i0") -> str:
    m.clock.advance(1_000_000)  # type: ignore[attr-defined]
    w = m.start_write(iid, keys)
    m.finish_write(w.session_id, np.ones(w.new_keys.shape[0], dtype=bool))
    return w.storage


def storage_of(m: CacheManager, key: int, iid: str = "i0") -> str:
    rows = m.match(iid, [key], query="batch", touch=False).rows
    st = m.storage.at(int(m.rows_slots(rows)[0]))
    return st.name if st is not None and rows[0] >= 0 else ""


def test_placement_spills_to_the_next_candidate_then_evicts_on_the_last() -> None:
    m = make(storage_type_quotas=(("memory", 3 * BLOCK),))
    assert write(m, [1, 2, 3]) == "fast"
    assert write(m, [4]) == "slow"  # memory is at its quota: spill, nothing evicted
    assert m.evicted_by_trigger == {}
    m2 = make(storage_type_quotas=(("memory", 3 * BLOCK),), storage_candidates=("fast",))
    write(m2, [1, 2, 3])
    assert write(m2, [4]) == "fast"  # the only candidate: its oldest block goes
    assert m2.evicted_by_trigger == {"write_storage_type": 1}
    # lru commits a request tail first: its last key is its least recent block
    assert sorted(m2.cached_keys("i0").tolist()) == [1, 2, 4]


def test_storage_capacity_counts_every_group_and_the_tick_brings_it_back() -> None:
    m = make(slow_cap=4 * BLOCK, storage_candidates=("slow",))
    write(m, [1, 2], "i0")
    write(m, [3, 4], "i1")
    with pytest.raises(QuotaExceeded, match="capacity of storage 'slow'"):
        m.start_write("i0", [5, 6, 7, 8, 9])  # more than the storage holds at all
    m.update_storage(StorageSpec("slow", type="file", capacity_bytes=2 * BLOCK))
    rep = m.tick()
    assert [(r.trigger, r.storage, r.blocks, r.used) for r in rep.reclaims] == [
        ("storage_capacity", "slow", 2, 4 * BLOCK)]


def test_max_key_count_refuses_and_the_tick_frees_room() -> None:
    m = make(max_key_count=10, used_percentage=0.8)
    write(m, list(range(10)))
    with pytest.raises(QuotaExceeded, match="max_key_count of 10"):
        m.start_write("i0", [100])
    rep = m.tick()
    assert [(r.trigger, r.blocks, r.capacity, r.limit) for r in rep.reclaims] == [
        ("max_key_count", 2, 8, 10)]
    write(m, [100, 101])


def test_unhealthy_storage_is_avoided_and_its_blocks_written_again() -> None:
    m = make()
    write(m, [1, 2])
    assert storage_of(m, 1) == "fast"
    assert m.set_storage_health("fast", False, "probe failed")
    assert not m.set_storage_health("fast", False, "probe failed")  # no change
    # reads treat its blocks as misses; the next write of them places them on slow
    assert m.client_request("i0", [1, 2], write=False).hit_blocks == 0
    write(m, [1, 2])
    assert storage_of(m, 1) == "slow"
    m.set_storage_available("slow", False)
    with pytest.raises(QuotaExceeded, match="fast: unhealthy"):
        m.start_write("i0", [9])


def test_one_session_record_found_by_tag_and_owned() -> None:
    m = make()
    w = m.start_write("i0", [1, 2], tag="tok")
    with pytest.raises(DuplicateEntity):
        m.start_write("i0", [3], tag="tok")
    info = m.find_session("tok")
    assert info is not None and info.session_id == w.session_id and info.slot == w.slot
    with pytest.raises(NotFound):
        m.finish_write(w.session_id, [True, True], instance_id="i1")
    fin = m.finish_write(w.session_id, [True, False], instance_id="i0")
    assert fin.committed == 1 and fin.held_keys.tolist() == [1]
    assert m.find_session("tok") is None


def test_delete_delay_frees_on_the_reclaimers_time() -> None:
    m = make(quota_blocks=4, delay_before_delete_ms=50,
             eviction=EvictionSpec(policy="lru"), interval_ms=0)
    write(m, [1, 2, 3, 4])
    write(m, [5, 6])  # evicts 1, 2: DELETING until 50 ms have passed
    assert m.usage()[0].evicted_blocks == 2
    m.clock.advance(10_000_000)  # type: ignore[attr-defined]
    assert m.tick().reaped == 0
    m.clock.advance(60_000_000)  # type: ignore[attr-defined]
    assert m.tick().reaped == 2


def test_expired_sessions_are_in_the_report() -> None:
    m = make()
    w = m.start_write("i0", [1, 2], timeout_s=0.5, tag="t1")
    m.clock.advance(10**9)  # type: ignore[attr-defined]
    rep = m.tick()
    assert [(s.session_id, s.tag, s.keys.tolist()) for s in rep.expired] == [
        (w.session_id, "t1", [1, 2])]

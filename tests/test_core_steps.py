"""Long calls in steps (``CacheManager.step_keys`` and the ``pause`` hook): a write,
finish, removal or trim cut into slices gives exactly the state, events and results of
the same call made whole; between the slices other calls run."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.core.clock import ManualClock
from kvsim.core.errors import InstanceNotFound, NotFound, QuotaExceeded
from kvsim.core.manager import CacheManager
from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec, LocationSpec
from kvsim.core.table import M_HWM

S = 1_000_000_000
POLICIES = ["lru", "fifo", "lru_head_first", "leaf_aware_lru", "arc", "lfu"]
COLUMNS = ("key", "state", "inst", "t_write", "t_access", "acc", "loc", "parent", "nchild")


def make(policy: str, step: int, quota: int = 0, delay_ms: int = 0) -> CacheManager:
    m = CacheManager(ManualClock(1_000), event_level=2, slot_counts=True)
    m.step_keys = step
    m.create_group(GroupSpec("g", quota_blocks=quota, eviction=EvictionSpec(policy=policy),
                             delay_before_delete_ms=delay_ms))
    m.register_instance(InstanceSpec("i0", "g", location_specs=(LocationSpec("tp0", 64),)))
    m.register_instance(InstanceSpec("i1", "g"))
    return m


def state(m: CacheManager) -> dict[str, object]:
    """Everything the two managers must agree on."""
    t = m.table.t
    n = int(t.meta[M_HWM])
    out: dict[str, object] = {c: getattr(t, c)[:n].tolist() for c in COLUMNS
                              if hasattr(t, c)}
    out["usage"] = [(u.used, u.serving_blocks, u.pending_blocks) for u in m.usage()]
    out["events"] = [(e.kind, e.instance, e.key, e.time_ns, e.aux) for e in m.drain_events()]
    out["sessions"] = [(s.session_id, s.keys.tolist(), s.is_new.tolist()) for s in m.sessions()]
    return out


def history(m: CacheManager, rng: np.random.Generator, pauses: list[int]) -> list[object]:
    """A fixed sequence of calls with big requests (duplicates, held keys, masks);
    returns what each call answered."""
    clock = m.clock
    assert isinstance(clock, ManualClock)
    out: list[object] = []

    def pause() -> None:
        pauses[0] += 1

    base = rng.integers(0, 400, size=120)
    w = m.start_write("i0", base, pause=pause)
    out.append((w.is_new.tolist(), w.new_keys.tolist()))
    clock.advance(1000)
    f = m.finish_write(w.session_id, rng.random(w.new_keys.shape[0]) < 0.8, pause=pause)
    out.append((f.committed, f.failed, f.held_keys.tolist(), f.tick is not None))
    for rnd in range(3):
        clock.advance(1000)
        keys = np.concatenate([rng.integers(0, 600, size=150), base[:20]])
        try:
            w = m.start_write("i0", keys, pause=pause)
        except QuotaExceeded as e:
            out.append(("refused", str(e)))
            continue
        out.append((w.is_new.tolist(), w.new_keys.tolist()))
        r = m.match("i1", keys[:5])  # another instance's call in between
        out.append(r.hit_blocks)
        clock.advance(1000)
        ok = rng.random(w.new_keys.shape[0]) < (0.5 + 0.2 * rnd)
        f = m.finish_write(w.session_id, ok, pause=pause)
        out.append((f.committed, f.failed, f.held_keys.tolist()))
        clock.advance(1000)
        gone = rng.integers(0, 600, size=90)
        out.append(m.remove("i0", gone, mask=rng.random(90) < 0.3, pause=pause))
    clock.advance(1000)
    out.append(m.trim("i0", begin_ns=0, end_ns=4_000, pause=pause))
    out.append(m.match("i0", np.arange(600)).hit_blocks)
    return out


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("quota", [0, 250])
def test_steps_equal_the_whole_call(policy: str, quota: int) -> None:
    whole, steps = make(policy, 1 << 20, quota), make(policy, 7, quota)
    p_whole, p_steps = [0], [0]
    a = history(whole, np.random.default_rng(3), p_whole)
    b = history(steps, np.random.default_rng(3), p_steps)
    assert a == b
    assert state(whole) == state(steps)
    assert p_whole[0] == 0 and p_steps[0] > 50  # the slices paused (and only they)


@pytest.mark.parametrize("policy", ["lru", "leaf_aware_lru"])
def test_a_refused_write_in_steps_equals_the_whole_one(policy: str) -> None:
    """Over the quota even after evicting everything: refused, nothing reserved, the
    same evictions as the whole call."""
    ms = [make(policy, n, quota=100) for n in (1 << 20, 9)]
    for m in ms:
        w = m.start_write("i0", range(80))
        m.finish_write(w.session_id, np.ones(80, dtype=bool))
        w = m.start_write("i1", range(1000, 1010))  # held: not evictable
        with pytest.raises(QuotaExceeded, match="writing 95 blocks"):
            m.start_write("i0", [*range(500, 595), 500, 501])
    assert state(ms[0]) == state(ms[1])
    assert ms[1].usage()[0].pending_blocks == 10


def test_expiry_and_restore_of_a_session_written_in_steps() -> None:
    ms = [make("lru", n) for n in (1 << 20, 5)]
    for m in ms:
        w = m.start_write("i0", [*range(40), 3, 4], timeout_s=1)
        assert m.find_session("") is None
        m.clock.advance(2 * S)  # type: ignore[attr-defined]
        assert len(m.tick().expired) == 1
        assert w.session_id not in [s.session_id for s in m.sessions()]
    assert state(ms[0]) == state(ms[1])


def test_calls_run_between_the_steps() -> None:
    """What runs in a pause: reads, another write, and a removal of the instance (the
    write is then refused and leaves nothing)."""
    m = make("lru", 4)
    seen: list[int] = []

    def read() -> None:
        seen.append(m.match("i0", [0, 1, 2]).hit_blocks)

    w = m.start_write("i0", range(20), pause=read)
    assert seen and m.find_session("") is None
    m.finish_write(w.session_id, np.ones(20, dtype=bool), pause=read)
    # the head is committed last (tail first): the reads between the slices miss it
    assert seen[-1] == 0 and m.match("i0", [0, 1, 2]).hit_blocks == 3

    def drop() -> None:
        if m.pending_sessions() and "i1" in [s.instance_id for s in m.instances()]:
            m.remove_instance("i1")

    with pytest.raises(InstanceNotFound):
        m.start_write("i1", range(100, 130), pause=drop)
    assert m.pending_sessions() == 0
    assert m.usage()[0].used == 20
    m.register_instance(InstanceSpec("i1", "g"))
    w = m.start_write("i1", range(100, 130))
    with pytest.raises(NotFound):
        m.finish_write(w.session_id, np.ones(30, dtype=bool), pause=drop)
    assert m.pending_sessions() == 0 and m.usage()[0].used == 20


def test_a_session_being_finished_is_not_found_again() -> None:
    m = make("lru", 4)
    w = m.start_write("i0", range(20), tag="t")
    again: list[object] = []

    def finish_again() -> None:
        again.append(m.find_session("t"))

    m.finish_write(w.session_id, np.ones(20, dtype=bool), pause=finish_again)
    assert again and all(x is None for x in again)


def test_a_restored_session_with_done_keys_takes_the_starts_mask() -> None:
    """A session re-opened after a finish interrupted by a restart (``done`` = the start's
    new keys already final) takes a mask of the start's length, its first ``done``
    entries ignored, or one per key still open; any other length is refused."""
    for full in (True, False):
        m = CacheManager(ManualClock(1_000), event_level=2)
        m.create_group(GroupSpec("g", quota_blocks=100))
        m.register_instance(InstanceSpec("i0", "g"))
        keys = np.arange(10, 20, dtype=np.int64)
        m.restore_blocks("i0", keys[:3], t_write=np.zeros(3, np.int64),
                         t_access=np.zeros(3, np.int64))  # the saved part
        m.restore_session("i0", keys[3:], session_id=7, deadline_ns=10**12,
                          request_keys=keys[3:], is_new=np.ones(7, bool), tag="t", done=3)
        ses = m.find_session("t")
        assert ses is not None and ses.done == 3 and ses.keys.tolist() == keys[3:].tolist()
        with pytest.raises(Exception, match="10 new blocks"):
            m.finish_write(7, np.ones(9, bool))
        ok = np.array([False] * 3 + [True, False] * 3 + [True])  # the start's 10
        fin = m.finish_write(7, ok if full else ok[3:])
        assert (fin.committed, fin.failed) == (4, 3)
        held = m.match("i0", keys, query="batch", touch=False).rows >= 0
        assert held.tolist() == [True] * 3 + ok[3:].tolist()  # the saved part stays
        assert m.usage()[0].pending_blocks == 0 and m.usage()[0].serving_blocks == 7

"""Generic checks over every registered policy, and the eviction modes."""

from __future__ import annotations

import functools
import importlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TreeTrace, examples, multi_instance_traces, tree_traces

from kvsim.config import KVSimConfig
from kvsim.core import reference as ref
from kvsim.core.clock import ManualClock
from kvsim.core.manager import CacheManager
from kvsim.core.policies import BY_CODE, POLICIES, dispatch
from kvsim.core.spec import EVICTION_MODES, EvictionSpec, GroupSpec, InstanceSpec
from kvsim.core.table import N_PARAMS, lookup
from kvsim.sim.replay import replay
from kvsim.trace.model import Trace

PARAMS = {"random_lru": {"sample_rate": 0.25, "seed": 7}}
ALL_POLICIES = sorted(POLICIES)
MODES = sorted(EVICTION_MODES)
SETTINGS = settings(max_examples=examples(40), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def _config(cap: int, policy: str, match: str = "prefix", mode: str = "group_precise",
            batch: int = 1, seed: int | None = None) -> KVSimConfig:
    params = dict(PARAMS.get(policy, {}))
    if seed is not None:
        params["seed"] = seed
    return KVSimConfig.single_cache(capacity_blocks=cap, policy=policy, params=params,
                                    match=match, mode=mode, batch_size=batch)


def _trace(tt: TreeTrace) -> Trace:
    return Trace.from_lists(ts_ns=list(range(len(tt.requests))),
                            keys=[list(r) for r in tt.requests], block_size=16,
                            instance=list(tt.instances))


def _manager(policy: str, *, quota: int, mode: str = "group_precise", batch: int = 1,
             pct: float = 1.0, instances: tuple[str, ...] = ("i0",), event_level: int = 2,
             params: dict | None = None) -> CacheManager:
    # the reclaimer on its interval: these tests call reclaim() themselves (at interval
    # 0 every finish_write would run it)
    m = CacheManager(ManualClock(1), event_level=event_level, reclaim_interval_ms=1000)
    m.create_group(GroupSpec(
        "g", quota_blocks=quota, used_percentage=pct,
        eviction=EvictionSpec(policy=policy, params=params if params is not None
                              else PARAMS.get(policy, {}), mode=mode, batch_size=batch)))
    for name in instances:
        m.register_instance(InstanceSpec(name, "g"))
    return m


# ---------------------------------------------------------------- registry / dispatch
@pytest.mark.parametrize("name", ALL_POLICIES)
def test_dispatch_agrees_with_spec(name: str) -> None:
    spec = POLICIES[name]
    assert importlib.import_module(f"kvsim.core.policies.{name}").SPEC is spec
    assert spec.name == name
    assert getattr(dispatch, name.upper()) == spec.code
    assert BY_CODE[spec.code] is spec
    assert bool(dispatch.tail_first(spec.code)) == spec.tail_first
    assert bool(dispatch.tracks_leaves(spec.code)) == spec.tracks_leaves
    if name in ref.TAIL_FIRST:
        assert ref.TAIL_FIRST[name] == spec.tail_first
    p = spec.params_cls.from_dict(PARAMS.get(name, {}))
    assert p.to_vector().shape == (N_PARAMS,)


def test_policy_codes_are_unique() -> None:
    codes = [s.code for s in POLICIES.values()]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_commit_order_and_leaf_tracking_follow_spec(name: str) -> None:
    """After one request [1, 2, 3] the newest committed row is key 1 (tail first) or key 3
    (head first); only leaf-tracking policies link children to parents."""
    spec = POLICIES[name]
    m = _manager(name, quota=0)
    m.access("i0", [1, 2, 3])
    t = m.table.t
    rows = [lookup(t, 0, k) for k in (1, 2, 3)]
    if name == "lfu":
        newest = int(t.f_head[0, 1])
    elif name == "cost_aware":  # priority wheel slots: the newest by access stamp
        newest = max(rows, key=lambda r: int(t.t_access[r]))
    elif name == "s3fifo":  # unbounded: no small-queue target, fill_main sends all to M
        newest = int(t.i_pol[0, 2])
    else:
        newest = int(t.i_head[0])
    assert newest == (rows[0] if spec.tail_first else rows[2])
    if spec.tracks_leaves:
        assert [int(t.parent[r]) for r in rows] == [-1, rows[0], rows[1]]
        assert [int(t.nchild[r]) for r in rows] == [1, 1, 0]
    else:
        assert all(t.nchild[r] == 0 for r in rows)


# ---------------------------------------------------------------- generic replay checks
@SETTINGS
@given(tt=st.one_of(tree_traces(), multi_instance_traces()), match=st.sampled_from(
    ["prefix", "batch"]), data=st.data())
def test_capacity_never_exceeded_and_hits_bounded_by_ideal(tt: TreeTrace, match: str,
                                                           data: st.DataObject) -> None:
    trace = _trace(tt)
    ideal = replay(trace, _config(0, "lru", match)).hit_blocks
    d = tt.distinct_keys()
    caps = sorted({1, 2, max(1, tt.max_len - 1), max(1, d // 2)})
    mode = data.draw(st.sampled_from(MODES))
    batch = data.draw(st.integers(1, 4))
    single = len(set(tt.instances)) == 1
    for cap in caps:
        for policy in ALL_POLICIES:
            r = replay(trace, _config(cap, policy, match, mode, batch))
            assert (r.group_used <= cap).all(), (policy, cap, mode)
            assert (r.cached_blocks <= cap).all(), (policy, cap, mode)
            assert (r.hit_blocks <= ideal).all(), (policy, cap, mode)
            assert (r.hit_blocks <= trace.key_counts()).all()
            if single:
                assert (r.group_used == r.cached_blocks).all()
    for policy in ALL_POLICIES:  # a cache that holds everything is the ideal cache
        r = replay(trace, _config(max(1, d), policy, match, mode, batch))
        assert (r.hit_blocks == ideal).all(), policy
        assert r.evicted.sum() == 0


@SETTINGS
@given(tt=multi_instance_traces(), cap=st.integers(1, 12))
def test_replay_is_deterministic(tt: TreeTrace, cap: int) -> None:
    trace = _trace(tt)
    for policy in ALL_POLICIES:
        for match in ("prefix", "batch"):
            a = replay(trace, _config(cap, policy, match))
            b = replay(trace, KVSimConfig.from_dict(_config(cap, policy, match).to_dict()))
            assert a.hit_blocks.tolist() == b.hit_blocks.tolist(), policy
            assert a.evicted.tolist() == b.evicted.tolist(), policy


def _big_tree_trace(seed: int, n_req: int = 3000) -> Trace:
    """A deterministic forest trace (numpy): 30 roots, random paths of up to 12 blocks."""
    rng = np.random.default_rng(seed)
    n_nodes = 4000
    parent = np.full(n_nodes, -1)
    for j in range(30, n_nodes):
        parent[j] = rng.integers(max(0, j - 200), j)
    keys = rng.permutation(10**6)[:n_nodes]
    reqs = []
    for v in rng.integers(0, n_nodes, n_req):
        path = []
        while v >= 0 and len(path) < 12:
            path.append(int(keys[v]))
            v = parent[v]
        reqs.append(path[::-1])
    return Trace.from_lists(ts_ns=list(range(n_req)), keys=reqs, block_size=16)


def test_random_lru_seeds() -> None:
    """Same seed: identical per-request hits; different seeds: not all identical."""
    trace = _big_tree_trace(3)
    runs = {s: replay(trace, _config(300, "random_lru", seed=s)).hit_blocks for s in range(7, 12)}
    again = replay(trace, KVSimConfig.single_cache(
        capacity_blocks=300, policy="random_lru", params={"sample_rate": 0.25, "seed": 7}))
    assert runs[7].tolist() == again.hit_blocks.tolist()
    assert any(runs[s].tolist() != runs[7].tolist() for s in range(8, 12))
    # sampling 1 in 1 is random eviction; sampling everything approaches LRU
    lru = replay(trace, _config(300, "lru")).hit_blocks.sum()
    rnd = replay(trace, KVSimConfig.single_cache(
        capacity_blocks=300, policy="random_lru", params={"sample_rate": 1.0})).hit_blocks.sum()
    near = replay(trace, KVSimConfig.single_cache(
        capacity_blocks=300, policy="random_lru", params={"sample_rate": 0.001})).hit_blocks.sum()
    assert abs(int(near) - int(lru)) < abs(int(rnd) - int(lru))


# ---------------------------------------------------------------- prefix closure
PREFIX_CLOSED = sorted(n for n, s in POLICIES.items() if s.prefix_closed)


def test_prefix_closed_policies_exist() -> None:
    assert {"lru", "leaf_aware_lru"} <= set(PREFIX_CLOSED)
    assert not POLICIES["lru_head_first"].prefix_closed


@SETTINGS
@given(tt=st.one_of(tree_traces(), multi_instance_traces()), cap=st.integers(1, 10),
       mode=st.sampled_from(MODES), batch=st.integers(1, 3))
def test_prefix_closed_cache(tt: TreeTrace, cap: int, mode: str, batch: int) -> None:
    """After every combined request, each cached key's prefix parent is cached too."""
    parent = tt.forest.parent_key()
    names = sorted(set(tt.instances))
    for policy in PREFIX_CLOSED:
        m = _manager(policy, quota=cap, mode=mode, batch=batch, instances=tuple(names),
                     event_level=0)
        for q, (inst, req) in enumerate(zip(tt.instances, tt.requests, strict=True)):
            m.clock.set(q + 1)
            m.access(inst, list(req))
            for name in names:
                cached = set(m.cached_keys(name).tolist())
                for k in cached:
                    p = parent[k]
                    assert p is None or p in cached, (policy, mode, q, name, k, p)
            assert m.usage()[0].used <= cap


def test_lru_head_first_strands_tails() -> None:
    """The contract's point: head-first commit evicts the head and keeps its tail."""
    m = _manager("lru_head_first", quota=2)
    m.access("i0", [1, 2])
    m.access("i0", [3])
    assert m.cached_keys("i0").tolist() == [2, 3]  # 2 without its prefix 1
    assert m.match("i0", [1, 2]).hit_blocks == 0
    m = _manager("lru", quota=2)
    m.access("i0", [1, 2])
    m.access("i0", [3])
    assert m.cached_keys("i0").tolist() == [1, 3]


# ---------------------------------------------------------------- pending writes
@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tt=multi_instance_traces(max_requests=25), policy=st.sampled_from(ALL_POLICIES),
       mode=st.sampled_from(MODES), batch=st.integers(1, 3), cap=st.integers(4, 10))
def test_pending_blocks_are_never_evicted(tt: TreeTrace, policy: str, mode: str, batch: int,
                                          cap: int) -> None:
    names = tuple(sorted(set(tt.instances)))
    m = _manager(policy, quota=cap, mode=mode, batch=batch, instances=names)
    used_keys = set(tt.forest.keys)
    pending = [k for k in range(10**6, 10**6 + 10) if k not in used_keys][:3]  # unused keys
    for inst, req in list(zip(tt.instances, tt.requests, strict=True))[:3]:
        m.access(inst, list(req))
    w = m.start_write(names[0], pending)
    assert w.is_new.all()

    def check(extra_pending: int = 0) -> None:
        assert set(pending) <= set(m.cached_keys(names[0], serving_only=False).tolist())
        assert not set(pending) & set(m.cached_keys(names[0]).tolist())
        assert m.match(names[0], pending, query="batch").hit_blocks == 0
        u = m.usage()[0]
        assert u.pending_blocks == 3 + extra_pending and u.used <= cap
        for e in m.drain_events():
            if e.kind == "evicted" and e.instance == 0:
                assert e.key not in pending

    check()
    for q, (inst, req) in enumerate(zip(tt.instances, tt.requests, strict=True)):
        m.clock.set(q + 2)
        m.access(inst, list(req))
        check()
    # a second session that needs every non-pending block of the quota: it evicts
    other = [k for k in range(2 * 10**6, 2 * 10**6 + 20) if k not in used_keys][: cap - 3]
    w2 = m.start_write(names[-1], other)
    check(len(other))
    assert m.usage()[0].used == cap
    m.finish_write(w2.session_id, [True] * len(w2.new_keys))
    check()
    m.update_group(GroupSpec("g", quota_blocks=cap, used_percentage=0.3, eviction=EvictionSpec(
        policy=policy, params=PARAMS.get(policy, {}), mode=mode, batch_size=batch)))
    m.reclaim()
    check()
    assert m.finish_write(w.session_id, [True, True, True]).committed == 3
    assert m.match(names[0], pending, query="batch").hit_blocks == 3
    assert m.usage()[0].pending_blocks == 0


# ---------------------------------------------------------------- eviction modes
def _filled(mode: str, *, sizes: list[int], quota: int, pct: float, batch: int,
            policy: str = "lru") -> CacheManager:
    """Instances i0.. with sizes[i] SERVING blocks each, written by sessions (no eviction)."""
    names = tuple(f"i{j}" for j in range(len(sizes)))
    m = _manager(policy, quota=quota, mode=mode, batch=batch, pct=pct, instances=names)
    for step in range(max(sizes)):  # interleaved writes: every instance ages evenly
        for j, n in enumerate(sizes):
            if step < n:
                m.clock.advance(1)
                w = m.start_write(names[j], [1000 * j + step])
                m.finish_write(w.session_id, [True])
    m.drain_events()
    return m


def _evicted_by_instance(m: CacheManager) -> list[int]:
    return [e.instance for e in m.drain_events() if e.kind == "evicted"]


@settings(max_examples=examples(40), deadline=None)
@given(mode=st.sampled_from(MODES), sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
       pct=st.floats(0.1, 1.0), batch=st.integers(1, 8),
       policy=st.sampled_from(ALL_POLICIES))
def test_reclaim_goes_to_capacity(mode: str, sizes: list[int], pct: float, batch: int,
                                  policy: str) -> None:
    total = sum(sizes)
    quota = max(1, total)
    m = _filled(mode, sizes=sizes, quota=quota, pct=pct, batch=batch, policy=policy)
    cap = int(quota * pct)
    assert m.usage()[0].capacity == cap
    n = m.reclaim()
    used = m.usage()[0].used
    ev = _evicted_by_instance(m)
    assert used <= cap
    assert n == total - used == len(ev)
    if total > cap:
        if mode.endswith("precise"):
            assert used == cap
        else:
            assert used > cap - batch  # whole batches: the last one overshoots by < batch
            for j, c in Counter(ev).items():
                assert c % batch == 0 or c == sizes[j], (j, c)
    if mode == "group_precise" and policy in ("lru", "fifo"):
        # one shared cache: the oldest blocks of the group went, whatever their instance
        order = [(1000 * j + step) for step in range(max(sizes, default=0))
                 for j, sz in enumerate(sizes) if step < sz]
        kept = {k for j in range(len(sizes)) for k in m.cached_keys(f"i{j}").tolist()}
        assert kept == set(order[len(order) - used:] if used else [])


@pytest.mark.parametrize("mode", ["group_rough", "instance_rough"])
def test_rough_modes_evict_whole_batches(mode: str) -> None:
    m = _filled(mode, sizes=[40, 40, 40], quota=120, pct=0.5, batch=7)
    m.reclaim()
    per = Counter(_evicted_by_instance(m))
    assert all(v % 7 == 0 for v in per.values()), per
    assert sum(per.values()) == 63  # 9 batches of 7: 120 -> 57 (< 60 by less than a batch)
    assert m.usage()[0].used == 57


def _set_pct(m: CacheManager, pct: float, batch: int) -> None:
    m.update_group(GroupSpec("g", quota_blocks=120, used_percentage=pct, eviction=EvictionSpec(
        policy="lru", mode="group_rough", batch_size=batch)))


def test_group_rough_round_robin() -> None:
    m = _filled("group_rough", sizes=[40, 40, 40], quota=120, pct=0.5, batch=10)
    m.reclaim()
    assert _evicted_by_instance(m) == [i for i in (0, 1, 2, 0, 1, 2) for _ in range(10)]
    _set_pct(m, 0.25, 10)  # 60 -> 30: one more round
    m.reclaim()
    assert _evicted_by_instance(m) == [i for i in (0, 1, 2) for _ in range(10)]
    _set_pct(m, 0.2, 5)  # 30 -> 24: i0's batch leaves 25, i1's batch 20
    m.reclaim()
    assert _evicted_by_instance(m) == [0] * 5 + [1] * 5
    assert m.usage()[0].used == 20
    _set_pct(m, 0.1, 5)  # 20 -> 12: the cursor resumes at i2, then i0
    m.reclaim()
    assert _evicted_by_instance(m) == [2] * 5 + [0] * 5
    assert [len(m.cached_keys(f"i{j}")) for j in range(3)] == [0, 5, 5]


@pytest.mark.parametrize(("mode", "evicted"), [
    ("group_precise", [("A", 6), ("A", 5)]),  # the group's LRU blocks, A's older tail
    ("instance_precise", [("B", 106), ("B", 105)]),  # the writer's own LRU blocks first
    ("instance_rough", [("B", 106), ("B", 105), ("B", 104)]),  # a whole batch of the writer
    ("group_rough", [("A", 6), ("A", 5), ("A", 4)]),  # a batch per instance from the cursor
])
def test_modes_choose_victims(mode: str, evicted: list[tuple[str, int]]) -> None:
    m = _manager("lru", quota=10, mode=mode, batch=3, instances=("A", "B"))
    m.clock.set(10)
    m.access("A", [1, 2, 3, 4, 5, 6])
    m.clock.set(20)
    m.access("B", [101, 102, 103, 104, 105, 106])
    got = [("AB"[e.instance], e.key) for e in m.drain_events() if e.kind == "evicted"]
    assert got == evicted
    assert m.usage()[0].used == 12 - len(evicted)

"""The numba kernels against their plain-Python twins (kvsim.core.reference).

Inputs are random prefix-tree traces (requests are root-to-node paths of random
forests) and random cache states with WRITING / SERVING / DELETING blocks.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    TreeTrace,
    cache_states,
    examples,
    masks_for,
    multi_instance_traces,
    tree_traces,
)

from kvsim.config import KVSimConfig
from kvsim.core import reference as ref
from kvsim.core.kernels import MASKED, match_batch, match_prefix, match_sliding_window
from kvsim.core.table import DELETING, SERVING, WRITING, BlockTable, alloc_row, lookup
from kvsim.sim.replay import replay
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

REFERENCED = tuple(ref.TAIL_FIRST)  # every policy but random_lru and ttl
# policies whose group_precise eviction is exactly one shared cache across instances (sieve's
# hand, slru's segments, s3fifo's and arc's lists are per instance, cost_aware breaks ties
# by recency, workload_aware ranks instances by their estimates: approximations there)
SHARED_EXACT = ("lru", "lru_head_first", "fifo", "lfu", "leaf_aware_lru")
STATE_CODE = {"serving": SERVING, "writing": WRITING, "deleting": DELETING}
SETTINGS = settings(max_examples=examples(60), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_reference_covers_the_expected_policies() -> None:
    assert set(REFERENCED) == {"lru", "lru_head_first", "fifo", "lfu", "leaf_aware_lru", "sieve",
                               "slru", "s3fifo", "arc", "cost_aware", "workload_aware"}


# ---------------------------------------------------------------- matching
def _table_of(states: list[dict[int, str]]) -> BlockTable:
    n = sum(len(s) for s in states)
    table = BlockTable.create(rows=max(4, n), instances=len(states), groups=1)
    for i, s in enumerate(states):
        for k, name in s.items():
            assert alloc_row(table.t, i, k, STATE_CODE[name], 0) >= 0
    return table


def _check_rows(table: BlockTable, inst: int, keys: list[int], mask: list[bool] | None,
                out: np.ndarray, chosen: list[bool]) -> None:
    """``out[j]`` is MASKED / the key's SERVING row where chosen, -1 elsewhere."""
    for j, k in enumerate(keys):
        if not chosen[j]:
            assert out[j] == -1, (j, k)
        elif mask is not None and mask[j]:
            assert out[j] == MASKED
        else:
            assert out[j] == lookup(table.t, inst, k) >= 0
            assert table.t.state[out[j]] == SERVING


@st.composite
def match_cases(draw) -> tuple[TreeTrace, list[dict[int, str]], list[tuple]]:
    tt = draw(st.one_of(tree_traces(max_requests=12), multi_instance_traces(max_requests=12)))
    names = sorted(set(tt.instances))
    states = draw(cache_states(tt.forest, len(names)))
    pool = sorted({k for s in states for k in s} | set(tt.forest.keys))
    queries = []
    for name, req in zip(tt.instances, tt.requests, strict=True):
        keys = list(req)
        if draw(st.booleans()):  # also arbitrary key lists (repeats, no prefix structure)
            keys = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))
        queries.append((names.index(name), keys, draw(masks_for(len(keys)))))
    return tt, states, queries


@SETTINGS
@given(case=match_cases())
def test_match_kernels_equal_twins(case) -> None:
    _, states, queries = case
    table = _table_of(states)
    t = table.t
    for inst, keys, mask in queries:
        k = np.array(keys, dtype=np.int64)
        m = np.array(mask if mask is not None else [], dtype=bool)
        has = mask is not None
        n = len(keys)
        cache = states[inst]

        out = np.full(n, -7, dtype=np.int32)
        got = match_prefix(t, inst, k, m, has, out)
        want = ref.match_prefix(cache, keys, mask)
        assert got == want
        _check_rows(table, inst, keys, mask, np.where(np.arange(n) < got, out, -1),
                    [j < got for j in range(n)])

        out = np.full(n, -7, dtype=np.int32)
        got = match_batch(t, inst, k, m, has, out)
        want_list = ref.match_batch(cache, keys, mask)
        assert got == sum(want_list)
        _check_rows(table, inst, keys, mask, out, want_list)

        for w in range(1, n + 1):
            out = np.full(n, -7, dtype=np.int32)
            got = match_sliding_window(t, inst, k, m, has, w, out)
            want = ref.match_sliding_window(cache, keys, mask, w)
            assert got == want, f"w={w}"
            chosen = [want >= 0 and want <= j < want + w for j in range(n)]
            _check_rows(table, inst, keys, mask, out, chosen)


def test_match_hand_example() -> None:
    """Instance isolation and states on a hand-made table (1 serving, 2 writing, 3 deleting)."""
    table = _table_of([{1: "serving", 2: "writing", 3: "deleting", 4: "serving"},
                       {1: "deleting", 2: "serving", 3: "serving", 4: "serving"}])
    t = table.t
    k = np.array([1, 2, 3, 4], dtype=np.int64)
    out = np.zeros(4, dtype=np.int32)
    none = np.zeros(0, dtype=bool)
    assert match_prefix(t, 0, k, none, False, out) == 1
    assert match_prefix(t, 1, k, none, False, out) == 0
    assert match_prefix(t, 0, k, np.array([0, 1, 1, 0], dtype=bool), True, out) == 4
    assert match_batch(t, 0, k, none, False, out) == 2
    assert match_batch(t, 1, k, none, False, out) == 3
    assert match_sliding_window(t, 1, k, none, False, 3, out) == 1
    assert match_sliding_window(t, 0, k, none, False, 2, out) == -1


# ---------------------------------------------------------------- replay
@functools.cache
def _config(capacity: int, policy: str, match: str, mode: str = "group_precise") -> KVSimConfig:
    return KVSimConfig.single_cache(capacity_blocks=capacity, policy=policy, match=match,
                                    mode=mode)


def _trace(tt: TreeTrace, ts: list[int] | None = None) -> Trace:
    n = len(tt.requests)
    return Trace.from_lists(ts_ns=ts if ts is not None else list(range(n)),
                            keys=[list(r) for r in tt.requests], block_size=16,
                            instance=list(tt.instances))


def _capacities(tt: TreeTrace) -> list[int]:
    d = tt.distinct_keys()
    return sorted({0, 1, 2, max(1, tt.max_len - 1), max(1, d // 2), d})


def _ties(n: int) -> st.SearchStrategy[list[int]]:
    """Non-decreasing timestamps with many ties."""
    return st.lists(st.integers(0, 2), min_size=n, max_size=n).map(
        lambda d: np.cumsum(d).tolist())


def _assert_all_policies_match(trace: Trace, reqs: list, cap: int,
                               policies: tuple[str, ...] = REFERENCED) -> None:
    """Per-request hits of every referenced policy, prefix and batch match, equal the twin's."""
    for policy in policies:
        for match in ("prefix", "batch"):
            got = replay(trace, _config(cap, policy, match)).hit_blocks.tolist()
            want = ref.ReferenceCache(policy, cap, batch=match == "batch").replay(reqs)
            assert got == want, (policy, match, cap)


@SETTINGS
@given(tt=tree_traces(), data=st.data())
def test_replay_equals_reference_cache(tt: TreeTrace, data: st.DataObject) -> None:
    """Every referenced policy, prefix and batch match, several capacities (0 = unbounded),
    one instance; timestamps with ties must not matter."""
    trace = _trace(tt, data.draw(_ties(len(tt.requests))))
    reqs = [list(r) for r in tt.requests]
    for cap in _capacities(tt):
        _assert_all_policies_match(trace, reqs, cap)
        assert replay(trace, _config(cap, "lru", "prefix")).hit_blocks.tolist() == \
            ref.ordered_dict_lru(reqs, cap), cap


@SETTINGS
@given(tt=multi_instance_traces())
def test_group_precise_is_one_shared_cache(tt: TreeTrace) -> None:
    """Several instances reading the same keys (distinct timestamps): group_precise is
    exactly one cache over (instance, key) pairs."""
    trace = _trace(tt)
    reqs = tt.tagged()
    for cap in _capacities(tt):
        _assert_all_policies_match(trace, reqs, cap, SHARED_EXACT)


def test_group_precise_with_timestamp_ties() -> None:
    """Access times are made strictly increasing, so ties across instances still order."""
    reqs = [("A", [1]), ("B", [2]), ("A", [3]), ("A", [1]), ("B", [4]), ("B", [2])]
    trace = Trace.from_lists(ts_ns=[0] * len(reqs), keys=[k for _, k in reqs],
                             instance=[i for i, _ in reqs], block_size=16)
    got = replay(trace, _config(3, "lru", "prefix")).hit_blocks.tolist()
    want = ref.ReferenceCache("lru", 3).replay([[(i, k) for k in ks] for i, ks in reqs])
    assert want == [0, 0, 0, 1, 0, 0]
    assert got == want


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(st.lists(st.integers(0, 12), min_size=0, max_size=8), min_size=1,
                     max_size=30))
def test_replay_equals_reference_on_arbitrary_key_lists(reqs: list[list[int]]) -> None:
    """Not prefix-chained, repeats inside a request, empty requests: still the twin's rules."""
    tt = TreeTrace(None, tuple(tuple(r) for r in reqs), ("i0",) * len(reqs))  # type: ignore[arg-type]
    trace = _trace(tt)
    distinct = len({k for r in reqs for k in r})
    for cap in sorted({0, 1, 3, max(1, distinct // 2)}):
        for policy in REFERENCED:
            for match in ("prefix", "batch"):
                got = replay(trace, _config(cap, policy, match)).hit_blocks.tolist()
                want = ref.ReferenceCache(policy, cap, batch=match == "batch").replay(reqs)
                assert got == want, (policy, match, cap)


@SETTINGS
@given(tt=st.one_of(tree_traces(), multi_instance_traces()))
def test_split_read_write_trace_equals_combined(tt: TreeTrace) -> None:
    """Each request split into a read row then a write row at the same time: the reads
    hit exactly what the combined requests hit (recency-ordered policies, prefix match)."""
    trace = _trace(tt)
    n = trace.n_requests
    split = trace.select(np.repeat(np.arange(n), 2))
    split = dataclasses.replace(split, kind=np.tile(np.array([KIND_READ, KIND_WRITE],
                                                             dtype=np.int8), n))
    for cap in _capacities(tt):
        for policy in ("lru", "lru_head_first", "fifo", "leaf_aware_lru"):
            combined = replay(trace, _config(cap, policy, "prefix")).hit_blocks.tolist()
            r = replay(split, _config(cap, policy, "prefix"))
            assert r.hit_blocks[::2].tolist() == combined, (policy, cap)
            s = r.summary()
            assert (s["hit_blocks"], s["read_blocks"]) == (sum(combined), trace.n_keys)


@SETTINGS
@given(tt=multi_instance_traces(), c1=st.integers(1, 8), c2=st.integers(0, 8),
       policy=st.sampled_from(SHARED_EXACT))
def test_groups_are_independent_caches(tt: TreeTrace, c1: int, c2: int, policy: str) -> None:
    """Two groups: instance i1 alone in group b (capacity c2, 0 = unbounded, quota given in
    bytes), the others share group a (capacity c1 x used_percentage 0.5 of 2 x c1)."""
    cfg = KVSimConfig.from_dict({
        "instance_groups": [
            {"name": "a", "quota": {"blocks": 2 * c1}, "used_percentage": 0.5,
             "eviction": {"policy": policy}},
            {"name": "b", "quota": {"bytes": 3000 * c2 + 2999 if c2 else 0},
             "eviction": {"policy": policy}},
        ],
        "instances": [{"instance_id": "i1", "group": "b",
                       "location_spec_infos": [{"name": "tp0", "size": 1000},
                                               {"name": "tp1", "size": 2000}]}],
        "replay": {"default_group": "a"},
    })
    r = replay(_trace(tt), cfg)
    tagged = tt.tagged()
    in_b = [inst == "i1" for inst in tt.instances]
    for group_b, cap in ((False, c1), (True, c2)):
        idx = [q for q in range(len(tagged)) if in_b[q] == group_b]
        want = ref.ReferenceCache(policy, cap).replay([tagged[q] for q in idx])
        assert r.hit_blocks[idx].tolist() == want, (group_b, cap)
        if cap and group_b:
            assert (r.group_used[idx] <= 3000 * cap).all()


# ---------------------------------------------------------------- fused read
@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tt=tree_traces(), data=st.data())
def test_match_and_touch_equals_match_then_touch(tt: TreeTrace, data: st.DataObject) -> None:
    """The server's one-call read (match_and_touch) leaves every table array and returns
    exactly what the match kernel followed by touch_rows does."""
    from kvsim.core.clock import ManualClock
    from kvsim.core.kernels import Q_BATCH, Q_PREFIX, Q_SW, match_and_touch, touch_rows
    from kvsim.core.manager import CacheManager
    from kvsim.core.spec import EvictionSpec, GroupSpec, InstanceSpec

    policy = data.draw(st.sampled_from(REFERENCED))
    cap = data.draw(st.integers(2, 40))
    mgrs = []
    for _ in range(2):  # two identical managers
        m = CacheManager(ManualClock(1))
        m.create_group(GroupSpec("g", quota_blocks=cap, eviction=EvictionSpec(policy=policy)))
        m.register_instance(InstanceSpec("i", "g"))
        mgrs.append(m)
    for j, req in enumerate(tt.requests):
        keys = np.asarray(req, dtype=np.int64)
        if data.draw(st.booleans()):
            for m in mgrs:
                m.clock.set(10 * j + 1)  # type: ignore[attr-defined]
                m.access("i", keys)
        else:
            q = data.draw(st.sampled_from([Q_PREFIX, Q_BATCH, Q_SW]))
            w = data.draw(st.integers(1, max(1, keys.shape[0])))
            drawn = data.draw(masks_for(keys.shape[0]))
            mask = (np.zeros(keys.shape[0], dtype=bool) if drawn is None
                    else np.asarray(drawn, dtype=bool).reshape(keys.shape[0]))
            fused, split = mgrs
            t1, t2 = fused.table.t, split.table.t
            out1 = np.full(keys.shape[0], -1, dtype=np.int32)
            out2 = out1.copy()
            has = bool(mask.any())
            r1 = match_and_touch(t1, 0, keys, mask, has, q, w, out1, 10 * j + 5, True)
            if q == Q_PREFIX:
                r2 = match_prefix(t2, 0, keys, mask, has, out2)
                n_touch = r2
            elif q == Q_BATCH:
                r2 = match_batch(t2, 0, keys, mask, has, out2)
                n_touch = keys.shape[0]
            else:
                if keys.shape[0] == 0:
                    continue
                r2 = match_sliding_window(t2, 0, keys, mask, has, w, out2)
                n_touch = keys.shape[0]
            touch_rows(t2, out2, n_touch, 10 * j + 5)
            assert r1 == r2
            assert out1.tolist() == out2.tolist()
    t1, t2 = mgrs[0].table.t, mgrs[1].table.t
    for name, a, b in zip(t1._fields, t1, t2, strict=True):
        assert np.array_equal(a, b), name

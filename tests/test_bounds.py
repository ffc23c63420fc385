"""The offline bounds: the prefix-cache Belady optimum and the ideal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TreeTrace, examples, multi_instance_traces, tree_traces

from kvsim.config import KVSimConfig
from kvsim.core.policies import POLICIES
from kvsim.optimizer.bounds import belady, belady_hits, ideal, prepare
from kvsim.sim.replay import replay
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace

SETTINGS = settings(max_examples=examples(150), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _trace(tt: TreeTrace) -> Trace:
    return Trace.from_lists(ts_ns=list(range(len(tt.requests))),
                            keys=[list(r) for r in tt.requests], block_size=16,
                            instance=list(tt.instances))


def _reference(trace: Trace, capacity: int) -> list[int]:
    """Brute-force prefix Belady (same rules as the kernel), hit blocks per request."""
    inst_of = trace.instance.tolist()
    reqs = [[(inst_of[i], int(k)) for k in trace.request_keys(i)]
            for i in range(trace.n_requests)]
    parent: dict[tuple[int, int], tuple[int, int] | None] = {}
    depth: dict[tuple[int, int], int] = {}
    for r in reqs:
        for j, b in enumerate(r):
            if b not in parent:
                parent[b] = r[j - 1] if j else None
                depth[b] = j

    def next_use(b: tuple[int, int], after: int) -> float:
        for j in range(after + 1, len(reqs)):
            if b in reqs[j]:
                return j
        return math.inf

    cached: set[tuple[int, int]] = set()
    hits = []
    for i, r in enumerate(reqs):
        h = 0
        for b in r:
            if b not in cached:
                break
            h += 1
        hits.append(h)
        cached.update(r)
        while len(cached) > capacity:
            parents = {parent[b] for b in cached}
            leaves = [b for b in cached if b not in parents]
            victim = max(leaves, key=lambda b: (next_use(b, i), depth[b], b[1], b[0]))
            cached.remove(victim)
    return hits


@SETTINGS
@given(tt=st.one_of(tree_traces(max_nodes=25, max_requests=30),
                    multi_instance_traces(max_nodes=25, max_requests=30)),
       cap=st.integers(0, 30))
def test_belady_matches_brute_force(tt: TreeTrace, cap: int) -> None:
    t = _trace(tt)
    assert belady_hits(prepare(t), cap).tolist() == _reference(t, cap)


def test_belady_small_capacity_grid_matches_brute_force() -> None:
    t = generate_trace(GenSpec(seed=3, requests=60, instances=2, token_scale=0.05))
    p = prepare(t)
    for cap in (0, 1, 2, 5, 10, 25, 60):
        assert belady_hits(p, cap).tolist() == _reference(t, cap), cap


def test_prepare_next_use_and_parents() -> None:
    t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[5, 6], [5], [9, 5], [6]],
                         instance=["a", "a", "b", "a"])
    p = prepare(t)
    # (a,5)=0 (b,5)=1 (a,6)=2 (b,9)=3: numbered in (key, instance) order
    assert p.ids.tolist() == [0, 2, 0, 3, 1, 2]
    assert p.next_use.tolist() == [1, 3, 4, 4, 4, 4]
    assert p.parent.tolist() == [-1, 3, 0, -1]
    assert p.n_blocks == 4


def test_rates_follow_the_contract() -> None:
    t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]],
                         input_len=[40, 20, 40], block_size=16)
    (r,) = belady(t, [2])
    assert r == {"capacity": 2, "hit_blocks": 2, "hit_tokens": 32,
                 "block_hit_rate": 2 / 5, "token_hit_rate": 32 / 100}
    with pytest.raises(ValueError, match="capacity"):
        belady(t, [-1])


def test_empty_trace() -> None:
    t = Trace.from_lists(ts_ns=[], keys=[])
    assert belady(t, [0, 3]) == [
        {"capacity": c, "hit_blocks": 0, "hit_tokens": 0, "block_hit_rate": 0.0,
         "token_hit_rate": 0.0} for c in (0, 3)]


@pytest.mark.parametrize(("seed", "instances"), [(1, 1), (2, 2), (3, 1), (4, 2)])
def test_belady_bounds_every_policy(seed: int, instances: int) -> None:
    t = generate_trace(GenSpec(seed=seed, requests=300, instances=instances))
    p = prepare(t)
    caps = [1, 4, 16, 64, 256, 1024]
    opt = belady(p, caps)
    for name in sorted(POLICIES):
        for cap, b in zip(caps, opt, strict=True):
            r = replay(t, KVSimConfig.single_cache(capacity_blocks=cap, policy=name))
            got = r.summary()["hit_blocks"]
            assert b["hit_blocks"] >= got, (name, cap, b["hit_blocks"], got)
    ideal_figs = ideal(t)
    (unbounded,) = belady(p, [p.n_blocks])
    same = [k for k in ideal_figs if k != "mean_request_token_hit_rate"]  # replay only
    assert {k: unbounded[k] for k in same} == {k: ideal_figs[k] for k in same}
    (huge,) = belady(p, [10 * p.n_blocks])
    assert huge["hit_blocks"] == ideal_figs["hit_blocks"]


def test_pool_matches_in_process() -> None:
    t = generate_trace(GenSpec(seed=5, requests=300, instances=2))
    caps = [3, 30, 300]
    assert belady(t, caps, jobs=2) == belady(t, caps, jobs=1)


@pytest.mark.slow
def test_mooncake_between_lru_and_ideal(mooncake_path) -> None:
    from kvsim.trace.readers import read_trace

    t = read_trace(mooncake_path)
    lru = {1000: 12990, 5859: 40644, 20000: 84692, 97656: 104926}
    out = belady(t, list(lru), jobs=1)
    for r in out:
        assert lru[r["capacity"]] <= r["hit_blocks"] <= 105592, r
    hb = [r["hit_blocks"] for r in out]
    assert hb == sorted(hb)
    assert np.isclose(out[-1]["token_hit_rate"], 0.373380, atol=1e-6)

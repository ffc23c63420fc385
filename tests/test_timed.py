"""The time-aware simulator: equality with the replay, both event loops, tiers, routing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.config import ConfigError, KVSimConfig
from kvsim.sim.replay import replay
from kvsim.sim.timed import simulate
from kvsim.sim.timed_report import write_timed_outputs
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace
from tests.strategies import examples, multi_instance_traces

FIELDS = ("instance", "hit_blocks", "tier_hits", "written", "queue_ns", "load_ns",
          "prefill_ns", "ttft_ns", "ttft_nocache_ns", "busy_ns", "write_ns")


@pytest.fixture(scope="module")
def gen_trace() -> Trace:
    return generate_trace(GenSpec(seed=7, target_keys=40_000, instances=3))


def two_tiers(write_policy: str = "through", routing: str = "trace", **timing) -> KVSimConfig:
    return KVSimConfig.from_dict({
        "timing": {"prefill_tokens_per_s": 20_000, "block_bytes": 1 << 16, **timing},
        "tiers": {"write_policy": write_policy, "levels": [
            {"name": "gpu", "capacity_blocks": 300, "read_bytes_per_s": 1e11,
             "write_bytes_per_s": 1e11},
            {"name": "pool", "scope": "pool", "capacity_blocks": 3000,
             "read_bytes_per_s": 1e10, "write_bytes_per_s": 5e9, "latency_us": 30}]},
        "routing": {"policy": routing, "instances": 4},
    })


# ---------------------------------------------------------------- equality with replay
@pytest.mark.parametrize("capacity", [50, 700, 0])
@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_zero_time_one_tier_equals_replay(gen_trace: Trace, capacity: int, engine: str) -> None:
    cfg = KVSimConfig.single_cache(capacity_blocks=capacity)
    a = replay(gen_trace, cfg)
    b = simulate(gen_trace, cfg, engine=engine)
    assert np.array_equal(a.hit_blocks, b.hit_blocks)
    assert b.summary()["block_hit_rate"] == a.summary()["block_hit_rate"]
    assert int(b.ttft_ns.sum()) == 0


@settings(max_examples=examples(40), deadline=None)
@given(tt=multi_instance_traces(max_nodes=30, max_requests=30), cap=st.integers(0, 12),
       policy=st.sampled_from(["lru", "fifo", "lfu", "slru"]))
def test_zero_time_equals_replay_hypothesis(tt, cap: int, policy: str) -> None:
    n = len(tt.requests)
    t = Trace.from_lists(ts_ns=[j // 3 for j in range(n)], keys=[list(r) for r in tt.requests],
                         instance=list(tt.instances), block_size=4)
    cfg = KVSimConfig.single_cache(capacity_blocks=cap, policy=policy)
    a = replay(t, cfg)
    for engine in ("python", "compiled"):
        assert simulate(t, cfg, engine=engine).hit_blocks.tolist() == a.hit_blocks.tolist()


def test_single_tier_spec_equals_replay_per_instance(gen_trace: Trace) -> None:
    """A ``local`` tier = one cache per instance = replay with a group per instance."""
    cfg = KVSimConfig.from_dict({"tiers": {"levels": [{"name": "gpu", "capacity_blocks": 200}]}})
    groups = KVSimConfig.from_dict({
        "instance_groups": [{"name": n, "quota": {"blocks": 200}} for n in gen_trace.instances],
        "instances": [{"instance_id": n, "group": n, "block_size": gen_trace.block_size}
                      for n in gen_trace.instances]})
    assert np.array_equal(simulate(gen_trace, cfg).hit_blocks,
                          replay(gen_trace, groups).hit_blocks)


# ---------------------------------------------------------------- the two event loops
@pytest.mark.parametrize("write_policy", ["through", "selective"])
@pytest.mark.parametrize("routing", ["trace", "round_robin"])
def test_compiled_loop_equals_python_loop(gen_trace: Trace, write_policy: str,
                                          routing: str) -> None:
    cfg = two_tiers(write_policy, routing)
    a = simulate(gen_trace, cfg, engine="python")
    b = simulate(gen_trace, cfg, engine="compiled")
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.summary()["tiers"][1]["hit_blocks"] > 0


def test_compiled_refuses_what_it_cannot_run(gen_trace: Trace) -> None:
    with pytest.raises(ConfigError, match="compiled loop"):
        simulate(gen_trace, two_tiers("back"), engine="compiled")
    with pytest.raises(ConfigError, match="engine"):
        simulate(gen_trace, two_tiers(), engine="gpu")


# ---------------------------------------------------------------- timing
def test_concurrent_requests_do_not_see_each_other_early() -> None:
    t = Trace.from_lists(ts_ns=[0, 10, 2 * 10**9], keys=[[1, 2, 3]] * 3, block_size=16)
    cfg = KVSimConfig.from_dict({"timing": {"prefill_tokens_per_s": 48,
                                            "decode_ms_per_token": 5}})
    r = simulate(t, cfg)
    assert r.hit_blocks.tolist() == [0, 0, 3]
    assert r.ttft_ns.tolist() == [10**9, 2 * 10**9 - 10, 0]
    assert r.ttft_nocache_ns.tolist() == [10**9, 2 * 10**9 - 10, 10**9]
    s = r.summary()
    assert s["prefill_gpu_s"] == 2.0 and s["prefill_gpu_s_saved"] == 1.0
    assert s["ttft_s"]["p50"] == 1.0


def test_load_time_per_tier() -> None:
    t = Trace.from_lists(ts_ns=[0, 10**9], keys=[[1, 2], [1, 2]], block_size=16)
    cfg = KVSimConfig.from_dict({
        "timing": {"block_bytes": 1000},
        "tiers": {"write_policy": "through", "levels": [
            {"name": "gpu", "capacity_blocks": 0},
            {"name": "pool", "scope": "pool", "read_bytes_per_s": 1e6, "latency_us": 100}]}})
    r = simulate(t, cfg)
    assert r.tier_hits.tolist() == [[0, 0], [2, 0]]  # the GPU serves first
    assert r.load_ns.tolist() == [0, 0]
    back = dataclasses.replace(cfg, tiers=dataclasses.replace(
        cfg.tiers, levels=cfg.tiers.levels[1:]))
    r2 = simulate(t, back)
    assert r2.load_ns.tolist() == [0, 100_000 + 2_000_000]


def test_write_back_demotes_evicted_blocks() -> None:
    t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [5, 6], [1, 2]], block_size=16)
    cfg = KVSimConfig.from_dict({"tiers": {"write_policy": "back", "levels": [
        {"name": "gpu", "capacity_blocks": 2},
        {"name": "pool", "scope": "pool", "capacity_blocks": 10}]}})
    r = simulate(t, cfg)
    assert r.tier_hits.tolist() == [[0, 0], [0, 0], [0, 2]]
    assert r.written[:, 1].tolist() == [0, 2, 2]  # demotions counted on the evicting write
    assert r.counters["demoted_blocks"] == 4


def test_selective_write_through_needs_reuse() -> None:
    keys = [[1, 2], [1, 2], [1, 3]]
    t = Trace.from_lists(ts_ns=[0, 1, 2], keys=keys, block_size=16)
    cfg = KVSimConfig.from_dict({"tiers": {"write_policy": "selective",
                                           "selective_min_reuse": 1, "levels": [
        {"name": "gpu", "capacity_blocks": 10},
        {"name": "pool", "scope": "pool", "capacity_blocks": 10}]}})
    r = simulate(t, cfg)
    assert r.written[:, 1].tolist() == [0, 2, 0]  # reused once: 1 and 2 go to the pool


def test_two_phase_sessions_expire_on_the_virtual_clock() -> None:
    t = Trace.from_lists(ts_ns=[0, 5 * 10**9], keys=[[1, 2, 3], [1, 2, 3]], block_size=16)
    slow = {"prefill_tokens_per_s": 12, "write": "two_phase", "write_timeout_s": 2,
            "reclaim_interval_ms": 500}
    r = simulate(t, KVSimConfig.from_dict({"timing": slow}))
    assert r.counters["expired_sessions"] == 2  # 4 s of prefill > 2 s timeout, twice
    assert r.hit_blocks.tolist() == [0, 0]
    ok = simulate(t, KVSimConfig.from_dict({"timing": slow | {"write_timeout_s": 30}}))
    assert ok.counters["expired_sessions"] == 0 and ok.hit_blocks.tolist() == [0, 3]


def test_top_level_reclaim_interval_is_the_simulators_cadence() -> None:
    """``reclaim.interval_ms`` (the one cadence) drives ``simulate`` as the older
    ``timing.reclaim_interval_ms`` did."""
    t = Trace.from_lists(ts_ns=[0, 5 * 10**9], keys=[[1, 2, 3], [1, 2, 3]], block_size=16)
    slow = {"prefill_tokens_per_s": 12, "write": "two_phase", "write_timeout_s": 2}
    old = simulate(t, KVSimConfig.from_dict({"timing": slow | {"reclaim_interval_ms": 500}}))
    new = simulate(t, KVSimConfig.from_dict({"timing": slow, "reclaim": {"interval_ms": 500}}))
    assert new.counters["expired_sessions"] == old.counters["expired_sessions"] == 2
    assert new.hit_blocks.tolist() == old.hit_blocks.tolist()


def test_delay_before_delete_on_virtual_clock() -> None:
    t = Trace.from_lists(ts_ns=[0, 10**9, 2 * 10**9], keys=[[1, 2], [3, 4], [1, 2]],
                         block_size=16)
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "g", "quota": {"blocks": 2},
                             "delay_before_delete_ms": 100_000}]})
    r = simulate(t, cfg)
    assert r.hit_blocks.tolist() == [0, 0, 0]  # evicted blocks wait, invisible to reads


def test_session_outputs_feed_the_next_turn() -> None:
    t = dataclasses.replace(
        Trace.from_lists(ts_ns=[0, 10**9], keys=[[1, 2], [1, 2, 3, 4]],
                         input_len=[32, 64], output_len=[32, 0], block_size=16),
        session=np.array([7, 7]), turn=np.array([0, 1], dtype=np.int32))
    off = simulate(t, KVSimConfig.from_dict({}))
    on = simulate(t, KVSimConfig.from_dict({"timing": {"session_outputs": True}}))
    assert off.hit_blocks.tolist() == [0, 2]
    assert on.hit_blocks.tolist() == [0, 4] and on.counters["output_blocks"] == 2


# ---------------------------------------------------------------- routing
def test_prefix_routing_follows_the_cache() -> None:
    keys = [[1, 2, 3], [9], [9, 8], [1, 2, 3, 4]]
    t = Trace.from_lists(ts_ns=[0, 10**9, 2 * 10**9, 3 * 10**9], keys=keys, block_size=16)
    cfg = KVSimConfig.from_dict({"tiers": {"levels": [{"name": "gpu", "capacity_blocks": 10}]},
                                 "timing": {"prefill_tokens_per_s": 1e9},
                                 "routing": {"policy": "prefix", "instances": 2}})
    r = simulate(t, cfg)
    assert r.instance.tolist() == [0, 1, 1, 0]
    assert r.hit_blocks.tolist() == [0, 0, 1, 3]
    rr = simulate(t, dataclasses.replace(cfg, routing=dataclasses.replace(
        cfg.routing, policy="round_robin")))
    assert rr.hit_blocks.tolist() == [0, 0, 0, 0]
    lb = r.load_balance()
    assert lb["requests"] == {"i0": 2, "i1": 2} and lb["cv_requests"] == 0.0


def test_least_loaded_routing_is_cache_blind() -> None:
    """Shortest queue, ties to the least busy instance: a repeat of the same prefix goes
    to the idle instance, not to the one holding it (prefix routing would)."""
    keys = [[1, 2, 3], [1, 2, 3], [7], [1, 2, 3]]
    t = Trace.from_lists(ts_ns=[0, 0, 0, 10**10], keys=keys, block_size=16)
    cfg = KVSimConfig.from_dict({"tiers": {"levels": [{"name": "gpu", "capacity_blocks": 10}]},
                                 "timing": {"prefill_tokens_per_s": 16.0},
                                 "routing": {"policy": "least_loaded", "instances": 3}})
    r = simulate(t, cfg)
    # request 0 busies i0 for 3 s, request 1 goes to i1, request 2 to i2; request 3 (all
    # idle) to the least busy so far: i2 (1 s), which does not hold 1, 2, 3
    assert r.instance.tolist() == [0, 1, 2, 2]
    assert r.hit_blocks.tolist() == [0, 0, 0, 0]
    p = simulate(t, dataclasses.replace(cfg, routing=dataclasses.replace(
        cfg.routing, policy="prefix")))
    assert p.hit_blocks.tolist()[-1] == 3


def test_random_routing_is_seeded(gen_trace: Trace) -> None:
    cfg = two_tiers(routing="random")
    a = simulate(gen_trace, cfg).instance
    b = simulate(gen_trace, cfg).instance
    c = simulate(gen_trace, dataclasses.replace(cfg, routing=dataclasses.replace(
        cfg.routing, seed=7))).instance
    assert a.tolist() == b.tolist() != c.tolist()
    counts = np.bincount(a, minlength=4)
    assert counts.min() > 0.15 * a.shape[0]  # uniform over 4 instances


def test_load_routing_balances(gen_trace: Trace) -> None:
    cfg = two_tiers(routing="load")
    r = simulate(gen_trace, cfg)
    p = simulate(gen_trace, two_tiers(routing="prefix"))
    assert r.load_balance()["cv_busy"] <= p.load_balance()["cv_busy"] + 1e-9
    assert sorted(set(r.instance.tolist())) == [0, 1, 2, 3]


# ---------------------------------------------------------------- config and outputs
@pytest.mark.parametrize(("data", "where"), [
    ({"timing": {"write": "later"}}, "timing.write"),
    ({"timing": {"prefill_tokens_per_s": -1}}, "timing.prefill_tokens_per_s"),
    ({"tiers": {"levels": [{"name": "p", "scope": "pool"}, {"name": "g"}]}},
     "tiers.levels[0].scope"),
    ({"tiers": {"levels": [{"name": "g"}, {"name": "g"}]}}, "tiers.levels[1].name"),
    ({"routing": {"policy": "anywhere"}}, "routing.policy"),
    ({"routing": {"policy": "random", "seed": -1}}, "routing.seed"),
    ({"routing": {"instances": 0}}, "routing.instances"),
    ({"tiers": {"write_policy": "back"}, "timing": {"write": "two_phase"}},
     "tiers.write_policy"),
])
def test_config_errors_name_the_field(data: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        KVSimConfig.from_dict(data)


def test_config_round_trip() -> None:
    cfg = two_tiers("selective", "load")
    again = KVSimConfig.from_dict(cfg.to_dict())
    assert again.tiers == cfg.tiers and again.timing == cfg.timing
    assert again.routing == cfg.routing
    assert "timing" not in KVSimConfig.single_cache().to_dict()  # old configs unchanged


def test_outputs_written_together(gen_trace: Trace, tmp_path) -> None:
    r = simulate(gen_trace, two_tiers())
    paths = write_timed_outputs(tmp_path, r)
    names = sorted(p.name for p in paths)
    assert names == ["load.png", "summary.json", "tiers.png", "timeseries.csv", "ttft.png"]
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["summary"]["tiers"][0]["tier"] == "gpu"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_simulate(tmp_path) -> None:
    from click.testing import CliRunner

    from kvsim.cli import main

    lines = [{"timestamp": 1000 * j, "input_length": 1100, "output_length": 10,
              "hash_ids": [0, 1, 2 + j % 2]} for j in range(6)]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("timing: {prefill_tokens_per_s: 2000}\n"
                   "tiers:\n  levels:\n    - {name: gpu, capacity_blocks: 4}\n"
                   "    - {name: pool, scope: pool, capacity_blocks: 100}\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["simulate", str(p), "--config", str(cfg), "--json",
                                  "--routing", "prefix", "--instances", "2", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["hit_blocks"] == 10  # keys 0, 1 from request 1 on (tail dropped)
    assert doc["config"]["routing"]["policy"] == "prefix"
    assert (out / "ttft.png").is_file()
    bad = CliRunner().invoke(main, ["simulate", str(p), "--config", str(cfg),
                                    "--capacity-blocks", "5"])
    assert bad.exit_code != 0 and "--capacity-blocks" in bad.output


@pytest.mark.parametrize(("capacity", "hit_blocks"), [(5_859, 40_644), (20_000, 84_692)])
def test_pool_zero_time_reproduces_the_golden_figures(mooncake_path, capacity: int,
                                                      hit_blocks: int) -> None:
    """Four instances sharing one pool, zero times: the contract's single-cache integers."""
    from kvsim.trace.readers import read_trace

    t = read_trace(mooncake_path, "mooncake")
    cfg = KVSimConfig.from_dict({
        "tiers": {"levels": [{"name": "pool", "scope": "pool", "capacity_blocks": capacity}]},
        "routing": {"policy": "round_robin", "instances": 4}})
    r = simulate(t, cfg)
    assert int(r.hit_blocks.sum()) == hit_blocks
    assert sorted(r.load_balance()["requests"].values()) == [3007, 3008, 3008, 3008]


def test_at_end_refuses_the_storage_rules_it_would_ignore() -> None:
    """at_end writes have no storages (the contract's write): a storage rule is refused;
    two_phase runs the core's client flow and honours it."""
    t = Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 2]], block_size=16)
    base = {"storages": [{"name": "s", "type": "memory", "uri": "mem://s",
                          "capacity_bytes": 10**6}],
            "instance_groups": [{"name": "default", "quota": {"blocks": 8},
                                 "storage_candidates": ["s"]}]}
    with pytest.raises(ConfigError, match=r"storages\[0\]\.capacity_bytes: simulate .*at_end"):
        simulate(t, KVSimConfig.from_dict(base))
    two = base | {"timing": {"write": "two_phase"}}
    assert simulate(t, KVSimConfig.from_dict(two)).hit_blocks.tolist() == [0, 2]
    down = two | {"reclaim": {"storage_health": [{"storage": "s", "at_ms": 0,
                                                  "healthy": False}]}}
    r = simulate(t, KVSimConfig.from_dict(down))
    assert r.hit_blocks.tolist() == [0, 0] and r.counters["write_failed_blocks"] == 4


CLIENT_TRACE = generate_trace(GenSpec(seed=11, requests=600, instances=4, block_size=16))


def _client_config(policy: str, used: float, interval: int, limit: str) -> KVSimConfig:
    groups = []
    for g in ("a", "b"):
        grp: dict = {"name": g, "quota": {"blocks": 400}, "used_percentage": used,
                     "storage_candidates": (["fast"] if limit in ("capacity", "type_quota")
                                            else ["fast", "slow"]),
                     "eviction": {"policy": policy, "batch_size": 7}}
        if limit == "type_quota":
            grp["quota"]["storage_types"] = {"memory": 150 * 1000}
        if limit == "max_key_count":
            grp["max_key_count"] = 300
        if limit == "delete_delay":
            grp["delay_before_delete_ms"] = 50
        groups.append(grp)
    t = CLIENT_TRACE
    span_ms = int(t.ts_ns[-1] - t.ts_ns[0]) // 1_000_000
    return KVSimConfig.from_dict({
        "storages": [{"name": "fast", "type": "memory", "uri": "mem://fast",
                      "capacity_bytes": 250 * 1000 if limit == "capacity" else 0},
                     {"name": "slow", "type": "memory", "uri": "mem://slow"}],
        "instance_groups": groups,
        "instances": [{"instance_id": n, "group": "ab"[i % 2], "block_size": 16,
                       "location_spec_infos": [{"name": "tp0", "size": 1000}]}
                      for i, n in enumerate(t.instances)],
        "reclaim": {"interval_ms": interval, "storage_health": (
            [{"storage": "fast", "at_ms": span_ms // 3, "healthy": False},
             {"storage": "fast", "at_ms": 2 * span_ms // 3, "healthy": True}]
            if limit == "health" else [])},
        "timing": {"write": "two_phase"}})


@pytest.mark.parametrize(("policy", "used", "interval", "limit"), [
    ("lru", 1.0, 0, "none"), ("sieve", 0.8, 0, "none"), ("s3fifo", 0.8, 100, "none"),
    ("lru", 1.0, 100, "capacity"), ("lfu", 0.8, 100, "type_quota"),
    ("lru", 0.9, 0, "max_key_count"), ("slru", 1.0, 100, "delete_delay"),
    ("lru", 1.0, 100, "health")])
def test_zero_time_two_phase_equals_replay_client_flow(policy: str, used: float,
                                                       interval: int, limit: str) -> None:
    """two_phase on the config's groups is the core's client flow: with zero latencies
    and infinite throughput, request for request what ``replay --flow client`` gives,
    every storage rule, the reclaimer cadence and the health schedule included."""
    cfg = _client_config(policy, used, interval, limit)
    want = replay(CLIENT_TRACE, cfg, flow="client")
    got = simulate(CLIENT_TRACE, cfg)
    assert got.hit_blocks.tolist() == want.hit_blocks.tolist()
    assert int(want.hit_blocks.sum()) > 0

"""The one-pass exact LRU curve (kvsim.optimizer.curve) against full replays."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples, multi_instance_traces, tree_traces

from kvsim.cli import main
from kvsim.config import KVSimConfig
from kvsim.optimizer.curve import (
    CurveError,
    CurveFacts,
    _facts_kernel,
    auto_capacities,
    bytes_to_blocks,
    curve_facts,
    heavy_keys,
    sample_mask,
)
from kvsim.sim.replay import replay
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace
from kvsim.trace.readers import read_trace

GOLDEN = {1000: 12990, 5859: 40644, 20000: 84692, 97656: 104926}
HYP_CAPS = [1, 2, 3, 5, 8, 13, 0]


def _caps40() -> list[int]:
    caps = set(GOLDEN)
    points = 36
    while len(caps) < 40:
        caps = set(GOLDEN) | {int(c) for c in np.rint(np.geomspace(1, 120_000, points))}
        points += 1
    return sorted(caps)


@pytest.fixture(scope="module")
def mooncake(mooncake_path: Path) -> Trace:
    return read_trace(mooncake_path, "mooncake")


@pytest.fixture(scope="module")
def mooncake_facts(mooncake: Trace) -> CurveFacts:
    return curve_facts(mooncake)


def _replay_hits(trace: Trace, cap: int) -> tuple[np.ndarray, dict]:
    r = replay(trace, KVSimConfig.single_cache(capacity_blocks=cap))
    return r.hit_blocks, r.summary()


def _check_equal(trace: Trace, caps: list[int]) -> None:
    facts = curve_facts(trace)
    df = facts.curve(caps)
    for i, cap in enumerate(caps):
        want, s = _replay_hits(trace, cap)
        np.testing.assert_array_equal(facts.hit_blocks(cap), want, err_msg=f"capacity {cap}")
        assert df["hit_blocks"][i] == s["hit_blocks"]
        assert df["hit_tokens"][i] == s["hit_tokens"]
        assert df["read_blocks"][i] == s["read_blocks"]
        assert df["input_tokens"][i] == s["input_tokens"]


# ------------------------------------------------------------------ Mooncake, 40 capacities
def test_mooncake_40_capacities_equal_replay(mooncake: Trace,
                                             mooncake_facts: CurveFacts) -> None:
    caps = _caps40()
    assert len(caps) == 40 and caps[0] == 1 and caps[-1] == 120_000
    df = mooncake_facts.curve(caps)
    for i, cap in enumerate(caps):
        want, s = _replay_hits(mooncake, cap)
        assert df["hit_blocks"][i] == s["hit_blocks"], cap
        assert df["hit_tokens"][i] == s["hit_tokens"], cap
        assert df["block_hit_rate"][i] == pytest.approx(s["block_hit_rate"], abs=0)
        assert df["token_hit_rate"][i] == pytest.approx(s["token_hit_rate"], abs=0)
        np.testing.assert_array_equal(mooncake_facts.hit_blocks(cap), want, err_msg=str(cap))
    got = dict(zip(df["capacity"].to_list(), df["hit_blocks"].to_list(), strict=True))
    assert {c: got[c] for c in GOLDEN} == GOLDEN


def test_mooncake_golden_rates_and_ideal(mooncake_facts: CurveFacts) -> None:
    df = mooncake_facts.curve([97656, 0, 1000])  # any order, 0 = unbounded
    assert df["hit_blocks"].to_list() == [104926, 105592, 12990]
    assert round(df["token_hit_rate"][0], 6) == 0.371025
    assert round(df["block_hit_rate"][1], 6) == 0.381900
    assert df["read_blocks"][0] == 276_491 and df["input_tokens"][0] == 144_793_823
    assert mooncake_facts.n_requests == 12_031


def test_mooncake_windows_and_instances_sum_to_totals(mooncake: Trace,
                                                      mooncake_facts: CurveFacts) -> None:
    caps = [5859, 20000]
    tot = mooncake_facts.curve(caps)
    w = mooncake_facts.by_window(caps, points=50)
    for i, cap in enumerate(caps):
        d = w.filter(w["capacity"] == cap)
        assert d["hit_blocks"].sum() == tot["hit_blocks"][i]
        assert d["hit_tokens"].sum() == tot["hit_tokens"][i]
    r = replay(mooncake, KVSimConfig.single_cache(capacity_blocks=5859))
    ts = r.timeseries(points=50)
    d = w.filter(w["capacity"] == 5859)
    assert d["hit_blocks"].to_list() == ts["hit_blocks"].to_list()
    assert d["end_ns"].to_list() == ts["end_ns"].to_list()
    inst = mooncake_facts.by_instance(caps)
    assert inst["hit_blocks"].to_list() == tot["hit_blocks"].to_list()


# ------------------------------------------------------------------ generated traces
def _from_tree(tt, input_len=None) -> Trace:
    return Trace.from_lists(ts_ns=list(range(len(tt.requests))), keys=list(tt.requests),
                            instance=list(tt.instances), block_size=4, input_len=input_len)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tt=tree_traces())
def test_tree_traces_equal_replay(tt) -> None:
    _check_equal(_from_tree(tt), HYP_CAPS)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tt=multi_instance_traces())
def test_multi_instance_traces_equal_replay(tt) -> None:
    t = _from_tree(tt)
    _check_equal(t, HYP_CAPS)
    facts = curve_facts(t)
    r = replay(t, KVSimConfig.single_cache(capacity_blocks=5))
    want = r.by("instance").sort("instance")
    got = facts.by_instance([5]).sort("instance")
    assert got["hit_blocks"].to_list() == want["hit_blocks"].to_list()
    assert got["hit_tokens"].to_list() == want["hit_tokens"].to_list()


@st.composite
def messy_traces(draw) -> Trace:
    """Arbitrary (unchained) key lists with repeats inside requests, partial tails
    (short input_len), write-only rows, optional masks and several instances."""
    n = draw(st.integers(1, 30))
    keys = [draw(st.lists(st.integers(0, 12), max_size=8)) for _ in range(n)]
    inst = [draw(st.sampled_from(["a", "b"])) for _ in range(n)]
    input_len = [max(0, 4 * len(k) - draw(st.integers(0, 5))) for k in keys]
    t = Trace.from_lists(ts_ns=list(range(n)), keys=keys, instance=inst, block_size=4,
                         input_len=input_len)
    kind = np.array([draw(st.sampled_from([0, 0, 0, KIND_WRITE])) for _ in range(n)],
                    dtype=np.int8)
    mask = None
    if draw(st.booleans()):
        mask = np.array(draw(st.lists(st.booleans(), min_size=t.n_keys, max_size=t.n_keys)),
                        dtype=bool)
    return replace(t, kind=kind, mask=mask)


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(t=messy_traces())
def test_messy_traces_equal_replay(t: Trace) -> None:
    _check_equal(t, HYP_CAPS)


def test_position_compaction_many_repeats() -> None:
    rng = np.random.default_rng(7)
    keys = [list(rng.integers(0, 300, size=int(rng.integers(1, 40)))) for _ in range(16_000)]
    t = Trace.from_lists(ts_ns=list(range(len(keys))), keys=keys, block_size=16)
    *_, n_ids, compactions = _facts_kernel(
        t.instance.astype(np.int64), t.offsets, t.keys, np.zeros(0, dtype=bool), False,
        np.ones(t.n_requests, dtype=bool), np.zeros(0, dtype=np.int8), False, 1.0)
    assert n_ids == 300 and compactions >= 4  # the position space was compacted
    _check_equal(t, [1, 10, 50, 150, 299, 0])
    # the weighted (sampled) path compacts both position sets
    cls = (np.arange(t.n_keys) % 2).astype(np.int8)
    *_, n_ids, compactions = _facts_kernel(
        t.instance.astype(np.int64), t.offsets, t.keys, np.zeros(0, dtype=bool), False,
        np.ones(t.n_requests, dtype=bool), cls, True, 1.0)
    assert n_ids == 300 and compactions >= 4
    caps = [10, 50, 150, 299]
    est = curve_facts(t, sample_rate=0.5, full_depth=0, heavy_share=0).curve(caps)
    assert _mae(est, curve_facts(t).curve(caps)) < 0.1


def test_hash_growth_inside_long_requests() -> None:
    rng = np.random.default_rng(11)
    pool = rng.integers(-(2**63), 2**63 - 1, size=30_000, dtype=np.int64)
    keys = []
    for _ in range(60):  # long requests, many new keys each: the key map grows mid-trace
        start = int(rng.integers(0, 25_000))
        keys.append(list(pool[start : start + int(rng.integers(1, 5_000))]))
    t = Trace.from_lists(ts_ns=list(range(len(keys))), keys=keys, block_size=8,
                         instance=[str(i % 3) for i in range(len(keys))])
    facts = curve_facts(t)
    assert facts.unique_blocks == len({(i % 3, k) for i, r in enumerate(keys) for k in r})
    _check_equal(t, [100, 2_000, 10_000, 0])


def test_refuses_read_only_rows() -> None:
    t = Trace.from_lists(ts_ns=[0, 1], keys=[[1], [1]])
    t = replace(t, kind=np.array([0, KIND_READ], dtype=np.int8))
    with pytest.raises(CurveError, match="KIND_READ"):
        curve_facts(t)


def test_negative_capacity_rejected() -> None:
    f = curve_facts(Trace.from_lists(ts_ns=[0], keys=[[1]]))
    with pytest.raises(CurveError):
        f.curve([-1])


def test_empty_trace() -> None:
    f = curve_facts(Trace.from_lists(ts_ns=[], keys=[]))
    assert f.curve([1, 0])["hit_blocks"].to_list() == [0, 0]
    assert f.unique_blocks == 0


# ------------------------------------------------------------------ helpers and files
def test_auto_capacities() -> None:
    assert auto_capacities(1000, 4) == [1, 10, 100, 1000]
    caps = auto_capacities(170_899, 40)
    assert caps[0] == 1 and caps[-1] == 170_899 and len(caps) == 40
    assert auto_capacities(0, 3) == [1]


def test_bytes_to_blocks() -> None:
    assert bytes_to_blocks([10_000, 4096], 4096) == [2, 1]
    assert bytes_to_blocks([8192], {"a": 1024, "b": 1024}, ["a", "b"]) == [8]
    with pytest.raises(CurveError, match="different block costs"):
        bytes_to_blocks([8192], {"a": 1024, "b": 2048}, ["a", "b"])
    with pytest.raises(CurveError, match="no block cost"):
        bytes_to_blocks([8192], {"a": 1024}, ["a", "b"])


# ------------------------------------------------------------------ sampled curves
def _mae(a, b) -> float:
    return float(np.abs(a["block_hit_rate"].to_numpy() - b["block_hit_rate"].to_numpy()).mean())


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tt=multi_instance_traces())
def test_sample_of_everything_is_exact(tt) -> None:
    """The weighted path with every key kept at rate 1 (all shallower than full_depth)
    must reproduce the exact curve to the block."""
    t = _from_tree(tt)
    exact = curve_facts(t)
    s = curve_facts(t, sample_rate=0.5, full_depth=10**9)
    assert s.sampled and s.unique_blocks == exact.unique_blocks
    assert s.curve(HYP_CAPS).equals(exact.curve(HYP_CAPS))
    assert s.by_instance([3]).equals(exact.by_instance([3]))


def test_sampled_mooncake_error(mooncake: Trace, mooncake_facts: CurveFacts) -> None:
    """SHARDS-style estimates land near the exact curve; dropping the chain roots'
    stratum (full_depth=0) is far worse on a trace whose requests share one root."""
    caps = _caps40()
    exact = mooncake_facts.curve(caps)
    errs = {r: _mae(curve_facts(mooncake, sample_rate=r).curve(caps), exact)
            for r in (0.1, 0.01)}
    assert errs[0.1] < 0.005 and errs[0.01] < 0.015, errs
    flat = _mae(curve_facts(mooncake, sample_rate=0.1, full_depth=0, heavy_share=0).curve(caps),
                exact)
    assert flat > 5 * errs[0.1]
    s = curve_facts(mooncake, sample_rate=0.1)
    assert abs(s.unique_blocks - mooncake_facts.unique_blocks) < 0.05 * \
        mooncake_facts.unique_blocks
    ideal = s.curve([0]).row(0, named=True)
    assert abs(ideal["block_hit_rate"] - 0.381900) < 0.01
    assert s.curve(caps)["read_blocks"][0] == exact["read_blocks"][0]  # exact denominators
    with pytest.raises(CurveError, match="exact facts"):
        s.hit_blocks(1000)


def test_sample_mask_is_a_fixed_fraction() -> None:
    keys = np.arange(-50_000, 50_000, dtype=np.int64)
    for rate in (0.5, 0.1, 0.01):
        m = sample_mask(keys, rate, seed=3)
        assert abs(m.mean() - rate) < 4 * np.sqrt(rate / keys.size) + 1e-3
        assert np.array_equal(m, sample_mask(keys, rate, seed=3))
    assert not np.array_equal(sample_mask(keys, 0.5, 1), sample_mask(keys, 0.5, 2))
    assert sample_mask(keys, 1.0).all()
    t = Trace.from_lists(ts_ns=list(range(400)), keys=[[1, 2, 100 + i] for i in range(400)])
    assert heavy_keys(t, min_share=0.2).tolist() == [1, 2]
    with pytest.raises(CurveError, match="sample rate"):
        curve_facts(Trace.from_lists(ts_ns=[0], keys=[[1]]), sample_rate=0.0)


def test_sampled_facts_round_trip(tmp_path: Path, mooncake: Trace) -> None:
    s = curve_facts(mooncake, sample_rate=0.05, sample_seed=4)
    g = CurveFacts.load(s.save(tmp_path / "s.npz"))
    assert g.sampled and g.sample_rate == 0.05
    assert g.curve([100, 5000, 0]).equals(s.curve([100, 5000, 0]))


def test_save_load_round_trip(tmp_path: Path, mooncake_facts: CurveFacts) -> None:
    p = mooncake_facts.save(tmp_path / "sub" / "facts.npz")
    g = CurveFacts.load(p)
    for name in ("seg_offsets", "seg_threshold", "seg_length", "seg_step", "internal",
                 "read_blocks", "input_len", "is_read", "instance", "ts_ns"):
        a, b = getattr(mooncake_facts, name), getattr(g, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert (g.instances, g.block_size, g.unique_blocks, g.source) == (
        mooncake_facts.instances, mooncake_facts.block_size, mooncake_facts.unique_blocks,
        mooncake_facts.source)
    caps = _caps40()
    assert g.curve(caps).equals(mooncake_facts.curve(caps))
    assert [q.name for q in p.parent.iterdir()] == ["facts.npz"]  # no temp files left


def test_load_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(CurveError, match="not a curve facts file"):
        CurveFacts.load(p)


# ------------------------------------------------------------------ CLI
def test_cli_json(mooncake_path: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["curve", str(mooncake_path), "--capacities",
                                    "1000,5859,20000,97656", "--json", "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [d["hit_blocks"] for d in doc] == list(GOLDEN.values())
    assert set(doc[0]) == {"capacity", "hit_blocks", "hit_tokens", "block_hit_rate",
                           "token_hit_rate"}
    assert round(doc[1]["token_hit_rate"], 6) == 0.143720
    import polars as pl

    df = pl.read_parquet(tmp_path / "o" / "curve.parquet")
    assert df["hit_blocks"].to_list() == list(GOLDEN.values())
    assert (tmp_path / "o" / "curve.png").stat().st_size > 1000


def test_cli_save_and_from_facts(mooncake_path: Path, tmp_path: Path) -> None:
    facts = tmp_path / "f.npz"
    runner = CliRunner()
    res = runner.invoke(main, ["curve", str(mooncake_path), "--limit", "3000", "--auto", "5",
                               "--save-facts", str(facts), "--no-out"])
    assert res.exit_code == 0, res.output
    assert "token_hit_rate" in res.stdout and facts.is_file()
    a = runner.invoke(main, ["curve", "--from-facts", str(facts), "--auto", "7", "--json",
                             "--no-out"])
    b = runner.invoke(main, ["curve", str(mooncake_path), "--limit", "3000", "--auto", "7",
                             "--json", "--no-out"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert len(json.loads(a.stdout)) == 7


def test_cli_usage_errors(mooncake_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["curve", "--no-out"])
    assert res.exit_code == 2 and "exactly one" in res.output
    res = runner.invoke(main, ["curve", str(mooncake_path), "--capacities", "1",
                               "--auto", "3", "--no-out"])
    assert res.exit_code == 2
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    res = runner.invoke(main, ["curve", "--from-facts", str(bad), "--no-out"])
    assert res.exit_code == 1 and "Error" in res.output
    res = runner.invoke(main, ["curve", str(mooncake_path), "--sample", "0", "--no-out"])
    assert res.exit_code == 2 and "--sample" in res.output


def test_cli_sampled(mooncake_path: Path) -> None:
    res = CliRunner().invoke(main, ["curve", str(mooncake_path), "--sample", "0.1",
                                    "--capacities", "5859,97656", "--no-out"])
    assert res.exit_code == 0, res.output
    assert "0.1 key sample" in res.stdout

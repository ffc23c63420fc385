"""Tests of kvsim.sim.report (records, tables, time series, atomic outputs) and sweeps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from kvsim.config import KVSimConfig
from kvsim.sim import report
from kvsim.sim.replay import ReplayResult, ideal, replay
from kvsim.sim.sweep import (
    is_ideal_cache,
    parse_params,
    run_sweep,
    single_cache_configs,
    tokens_to_blocks,
)
from kvsim.trace.model import Trace
from kvsim.trace.readers import read_trace

SAMPLE = Path(__file__).resolve().parents[1] / "kvsim" / "data" / "sample.parquet"


@pytest.fixture(scope="module")
def sample() -> Trace:
    return read_trace(SAMPLE).head(800)


@pytest.fixture(scope="module")
def results(sample: Trace) -> list[ReplayResult]:
    return [replay(sample, KVSimConfig.single_cache(capacity_blocks=c)) for c in (1500, 6000)]


def tiny() -> Trace:
    return Trace.from_lists(ts_ns=[0, 10, 20, 30], keys=[[1, 2], [1, 2, 3], [4], [1, 2, 3]],
                            block_size=16, instance=["a", "b", "a", "b"])


# ---------------------------------------------------------------------- records
def test_result_record_matches_summary(results: list[ReplayResult]) -> None:
    for r in results:
        rec = report.result_record(r)
        s = r.summary()
        for k in ("hit_blocks", "read_blocks", "hit_tokens", "input_tokens", "block_hit_rate",
                  "token_hit_rate", "internal_token_hit_rate", "external_token_hit_rate",
                  "evicted_blocks", "peak_used", "peak_used_unit"):
            assert rec[k] == s[k], k
        assert rec["label"] == r.label and rec["policy"] == "lru"
        assert rec["capacity_blocks"] == r.config.groups[0].quota_blocks
        assert sum(i["hit_blocks"] for i in rec["per_instance"]) == rec["hit_blocks"]
        assert [i["instance"] for i in rec["per_instance"]] != []
        assert rec["per_group"][0]["hit_tokens"] == rec["hit_tokens"]
        assert 0 < rec["peak_used"] <= rec["capacity_blocks"]
        assert rec["peak_used_unit"] == "blocks"
        # the group's peak is its own usage (not its largest instance's count)
        assert rec["per_group"][0]["peak_used"] == int(r.group_used.max())
        assert "peak_cached_blocks" in rec["per_instance"][0]


def test_peak_used_is_exact() -> None:
    t = tiny()
    r = replay(t, KVSimConfig.single_cache(capacity_blocks=3))
    assert report.peak_used(r) == int(r.group_used.max()) <= 3
    # two groups: the sum of each group's latest usage
    cfg = KVSimConfig.from_dict({
        "instance_groups": [{"name": "ga", "quota": {"blocks": 2}},
                            {"name": "gb", "quota": {"blocks": 3}}],
        "instances": [{"instance_id": "a", "group": "ga", "block_size": 16},
                      {"instance_id": "b", "group": "gb", "block_size": 16}],
        "replay": {"default_group": "ga"}})
    r2 = replay(t, cfg)
    used = {"ga": 0, "gb": 0}
    peak = 0
    for q in range(t.n_requests):
        used[r2.group_of_instance[t.instance[q]]] = int(r2.group_used[q])
        peak = max(peak, sum(used.values()))
    assert report.peak_used(r2) == peak
    assert report.config_record(cfg)["capacity_blocks"] == 5


def test_config_record_unbounded_and_bytes() -> None:
    rec = report.config_record(KVSimConfig.single_cache())
    assert rec["capacity_blocks"] is None and rec["capacity_bytes"] is None
    assert report.capacity_text(KVSimConfig.single_cache()) == "∞"
    cfg = single_cache_configs([], capacity_bytes=[4096 * 10], block_bytes=4096,
                               instances=["a", "b"])[0]
    rec = report.config_record(cfg)
    assert rec["capacity_bytes"] == 40960 and rec["capacity_blocks"] is None
    r = replay(tiny(), cfg)
    assert r.summary()["hit_blocks"] == replay(
        tiny(), KVSimConfig.single_cache(capacity_blocks=10)).summary()["hit_blocks"]


def test_document_is_strict_json(sample: Trace, results: list[ReplayResult]) -> None:
    doc = report.build_document(report.trace_record(sample, path="x.parquet", fmt="parquet"),
                                results, ideal(sample))
    text = report.document_json(doc)
    back = json.loads(text)
    assert back["trace"] == {"path": "x.parquet", "format": "parquet", "requests": 800,
                             "keys": sample.n_keys,
                             "input_tokens": int(sample.input_len.sum()),
                             "block_size": 16, "instances": ["inst0", "inst1"]}
    assert len(back["results"]) == 2 and back["ideal"]["hit_blocks"] >= max(
        r["hit_blocks"] for r in back["results"])


def test_tables_render(results: list[ReplayResult], sample: Trace) -> None:
    buf = io.StringIO()
    con = Console(file=buf, width=200)
    con.print(report.summary_table(results, ideal(sample), title="t"))
    con.print(report.instance_table(results))
    con.print(report.group_table(results))
    text = buf.getvalue()
    for needle in ("lru@1500", "lru@6000", "ideal", "token hit", "req-mean tok", "inst0",
                   "inst1", "default", "aggregate",
                   f"{results[0].summary()['token_hit_rate']:.6f}"):
        assert needle in text


def test_both_hit_rate_definitions(results: list[ReplayResult], sample: Trace) -> None:
    """Aggregate (sum / sum, the contract's) and the mean of per-request ratios, each
    recomputed here from the per-request hits."""
    for r in results:
        s = r.summary()
        hit_tok = [min(h * sample.block_size, n)
                   for h, n in zip(r.hit_blocks.tolist(), sample.input_len.tolist(), strict=True)]
        inputs = sample.input_len.tolist()
        assert s["token_hit_rate"] == pytest.approx(sum(hit_tok) / sum(inputs))
        ratios = [h / n for h, n in zip(hit_tok, inputs, strict=True) if n > 0]
        assert s["mean_request_token_hit_rate"] == pytest.approx(sum(ratios) / len(ratios))
        assert s["mean_request_token_hit_rate"] != pytest.approx(s["token_hit_rate"])
        rec = report.result_record(r)
        assert rec["mean_request_token_hit_rate"] == s["mean_request_token_hit_rate"]
        per_group = r.by("group")["mean_request_token_hit_rate"].to_list()
        assert per_group == [pytest.approx(s["mean_request_token_hit_rate"])]
    assert "mean_request_token_hit_rate" in ideal(sample)


# ---------------------------------------------------------------------- time series
def test_timeseries_frame(results: list[ReplayResult]) -> None:
    ts = report.timeseries_frame(results, points=50)
    assert ts.columns[:3] == ["label", "window", "t_s"]
    assert ts["label"].unique(maintain_order=True).to_list() == ["lru@1500", "lru@6000"]
    for r in results:
        d = ts.filter(pl.col("label") == r.label)
        assert d["hit_tokens"].sum() == r.summary()["hit_tokens"]
        assert d["cum_token_hit_rate"][-1] == pytest.approx(r.summary()["token_hit_rate"])
        assert d["group_used"].max() <= r.config.groups[0].quota_blocks
        assert d["group_used"][-1] == r.group_used[-1]
    empty = report.timeseries_frame([])
    assert empty.is_empty() and "label" in empty.columns


# ---------------------------------------------------------------------- files
def test_write_outputs(tmp_path: Path, sample: Trace, results: list[ReplayResult]) -> None:
    ts = report.timeseries_frame(results)
    doc = report.build_document(report.trace_record(sample), results, None)
    paths = report.write_outputs(tmp_path / "a" / "b", doc, ts, ts_format="csv")
    assert [p.name for p in paths] == ["summary.json", "timeseries.csv", "hitrate.png"]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == sorted(
        p.name for p in paths)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rewriting replaces the files in place
    report.write_outputs(tmp_path / "a" / "b", doc, ts, ts_format="csv", plot=False)
    assert len(list((tmp_path / "a" / "b").iterdir())) == 3


def test_failed_write_leaves_nothing(tmp_path: Path, sample: Trace,
                                     results: list[ReplayResult]) -> None:
    doc = report.build_document(report.trace_record(sample), results, None)
    bad_ts = pl.DataFrame({"label": ["x"], "t_s": [1.0]})  # plotting it fails mid-way
    out = tmp_path / "o"
    with pytest.raises(Exception):  # noqa: B017 - any plotting error
        report.write_outputs(out, doc, bad_ts)
    assert list(out.iterdir()) == []  # no summary.json, no temp files
    (out / "summary.json").mkdir()
    with pytest.raises(IsADirectoryError):
        report.write_outputs(out, doc, report.timeseries_frame(results))
    assert [p.name for p in out.iterdir()] == ["summary.json"]
    with pytest.raises(ValueError, match="timeseries format"):
        report.write_outputs(tmp_path / "p", doc, bad_ts, ts_format="xlsx")


# ---------------------------------------------------------------------- sweep helpers
def test_parse_params() -> None:
    assert parse_params("random_lru", ["sample_rate=0.25", "seed=2"]) == {
        "sample_rate": 0.25, "seed": 2}
    with pytest.raises(ValueError, match="'seed'"):
        parse_params("random_lru", ["seed=1.5"])
    with pytest.raises(ValueError, match="'bogus'"):
        parse_params("random_lru", ["bogus=1"])
    with pytest.raises(ValueError, match="expected a number"):
        parse_params("random_lru", ["sample_rate=high"])
    with pytest.raises(ValueError, match="unknown policy"):
        parse_params("nosuch", [])


def test_tokens_to_blocks() -> None:
    assert tokens_to_blocks(3_000_000, 512) == 5859
    assert tokens_to_blocks(511, 512) == 0
    with pytest.raises(ValueError):
        tokens_to_blocks(10, 0)


def test_run_sweep_in_order_and_parallel(sample: Trace) -> None:
    cfgs = single_cache_configs([4000, 500, 0])
    seen: list[tuple[int, int]] = []
    one = run_sweep(sample, cfgs, jobs=1, progress=lambda d, t: seen.append((d, t)))
    two = run_sweep(sample, cfgs, jobs=2)
    assert two.jobs == 2 and one.jobs == 1
    assert [r.label for r in two.results] == ["lru@4000", "lru@500", "lru@inf"]
    for a, b in zip(one.results, two.results, strict=True):
        assert a.trace is sample and b.trace is sample
        for col in ("hit_blocks", "cached_blocks", "group_used", "evicted"):
            assert np.array_equal(getattr(a, col), getattr(b, col))
    # the ideal is read off the unbounded run, and equals ideal()
    assert is_ideal_cache(cfgs[2]) and one.ideal == ideal(sample) == two.ideal
    assert seen[-1] == (3 * sample.n_requests, 3 * sample.n_requests)
    # without an unbounded run the ideal is one more task
    sw = run_sweep(sample, cfgs[:2], jobs=2, labels=["x", "y"])
    assert [r.label for r in sw.results] == ["x", "y"] and sw.ideal == ideal(sample)


def test_run_sweep_worker_error_propagates(sample: Trace) -> None:
    cfg = KVSimConfig.from_dict({"instance_groups": [{"name": "g"}],
                                 "replay": {"default_group": "g"}})
    bad = KVSimConfig(groups=(), source="<empty>")
    with pytest.raises(ValueError, match="at least one group"):
        run_sweep(sample, [cfg, bad], jobs=2)


def test_miss_breakdown_in_the_document() -> None:
    """Issue 19: results carry the advisor's miss reasons when the ideal was replayed;
    compulsory misses are the ideal's, capacity misses what the bigger cache recovers."""
    t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [3, 4], [1, 2], [3, 4]],
                         block_size=16)
    small, big = (replay(t, KVSimConfig.single_cache(capacity_blocks=c)) for c in (2, 4))
    doc = report.build_document(report.trace_record(t), [small, big], ideal(t))
    m_small, m_big = (r["misses"] for r in doc["results"])
    assert m_small == {"total": 8, "compulsory": 4, "capacity": 4, "unusable": 0,
                       "session_failed": 0}
    assert m_big["total"] == m_big["compulsory"] == 4 and m_big["capacity"] == 0
    assert "misses" in doc["legend"]
    # the breakdown comes from a one-pass over the trace: no ideal run needed
    no_ideal = report.build_document(report.trace_record(t), [small], None)["results"][0]
    assert no_ideal["misses"] == m_small
    assert no_ideal["per_group"][0]["misses"] == m_small

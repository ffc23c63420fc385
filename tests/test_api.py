"""Tests of the notebook API, kvsim.api, against the CLI's JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import MOONCAKE_PATH as MOONCAKE
from conftest import needs_mooncake

import kvsim.api as kv
from kvsim.cli import main
from kvsim.config import ConfigError, KVSimConfig
from kvsim.trace.model import TraceError

SAMPLE = kv.sample_trace_path()
CAPS = [2000, 8000, 30000]


@pytest.fixture(scope="module")
def run() -> kv.ReplayRun:
    return kv.replay(SAMPLE, capacity_blocks=CAPS, jobs=1)


@pytest.fixture(scope="module")
def cli_doc() -> dict[str, Any]:
    r = CliRunner().invoke(main, ["replay", "--capacity-blocks", ",".join(map(str, CAPS)),
                                  "--json", "--no-out"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_sample_path_exists() -> None:
    assert SAMPLE.is_file()


def test_summary_matches_cli_json(run: kv.ReplayRun, cli_doc: dict[str, Any]) -> None:
    s = run.summary
    assert isinstance(s, pl.DataFrame) and s.height == len(CAPS)
    assert s["label"].to_list() == [f"lru@{c}" for c in CAPS]
    for row, res in zip(s.to_dicts(), cli_doc["results"], strict=True):
        for k, v in res.items():
            if k in ("elapsed_s", "per_instance", "per_group", "groups", "misses"):
                continue
            if k == "params":
                assert json.loads(row[k]) == v
            else:
                assert row[k] == v, k
    assert run.ideal == cli_doc["ideal"]
    assert run.document()["trace"]["requests"] == cli_doc["trace"]["requests"]


def test_per_instance_and_group_match_cli(run: kv.ReplayRun, cli_doc: dict[str, Any]) -> None:
    pi = run.per_instance
    assert pi.columns[:3] == ["label", "instance", "group"]
    assert pi.height == len(CAPS) * 2
    cli_rows = [dict(row, label=res["label"]) for res in cli_doc["results"]
                for row in res["per_instance"]]
    assert [{k: r[k] for k in sorted(r)} for r in pi.to_dicts()] == [
        {k: r[k] for k in sorted(r)} for r in cli_rows]
    pg = run.per_group
    assert pg["hit_blocks"].to_list() == [r["hit_blocks"] for r in cli_doc["results"]]


def test_timeseries_and_pandas(run: kv.ReplayRun) -> None:
    ts = run.timeseries
    assert ts["label"].unique(maintain_order=True).to_list() == [f"lru@{c}" for c in CAPS]
    for r in run.results:
        d = ts.filter(pl.col("label") == r.label)
        assert d["hit_blocks"].sum() == r.summary()["hit_blocks"]
    wide = run.timeseries_at(60.0)
    assert wide.filter(pl.col("label") == "lru@2000").height < ts.filter(
        pl.col("label") == "lru@2000").height
    for table in ("summary", "per_instance", "per_group", "timeseries"):
        df = run.to_pandas(table)
        assert isinstance(df, pd.DataFrame) and len(df) > 0
    with pytest.raises(ValueError, match="table must be one of"):
        run.to_pandas("nope")
    assert "lru@2000" in repr(run)


def test_load_trace_and_replay_trace_object() -> None:
    t = kv.load_trace(SAMPLE, limit=200)
    assert t.n_requests == 200 and t.block_size == 16
    a = kv.replay(t, 1000)
    b = kv.replay(SAMPLE, [1000], limit=200)
    assert a.summary.drop("elapsed_s").equals(b.summary.drop("elapsed_s"))
    with pytest.raises(ValueError, match="need a trace path"):
        kv.replay(t, 1000, limit=10)
    with pytest.raises(TraceError):
        kv.load_trace(SAMPLE.parent / "missing.jsonl")


def test_unbounded_default_is_ideal() -> None:
    r = kv.replay(SAMPLE, limit=300)
    assert r.summary["capacity_blocks"].to_list() == [None]
    assert r.summary["hit_blocks"].item() == r.ideal["hit_blocks"]


def test_capacity_tokens_params_and_config(tmp_path: Path) -> None:
    t = kv.load_trace(SAMPLE, limit=400)
    by_tokens = kv.replay(t, capacity_tokens=[16_000, 64_000], jobs=1)
    assert by_tokens.summary["capacity_blocks"].to_list() == [1000, 4000]
    p1 = kv.replay(t, 1000, policy="random_lru", params={"sample_rate": 0.5, "seed": 1})
    p2 = kv.replay(t, 1000, policy="random_lru", params=["sample_rate=0.5", "seed=1"])
    assert p1.summary["hit_blocks"].item() == p2.summary["hit_blocks"].item()
    with pytest.raises(ValueError, match="'sample_rat'"):
        kv.replay(t, 1000, policy="random_lru", params=["sample_rat=0.5"])
    cfg_path = tmp_path / "one.yaml"
    KVSimConfig.single_cache(capacity_blocks=1000).save(cfg_path)
    c1 = kv.replay(t, config=cfg_path)
    c2 = kv.replay(t, config=KVSimConfig.single_cache(capacity_blocks=1000).to_dict())
    assert c1.summary["label"].item() == "one"
    assert c1.summary["hit_blocks"].item() == c2.summary["hit_blocks"].item() == \
        kv.replay(t, 1000).summary["hit_blocks"].item()
    with pytest.raises(ValueError, match="cannot be combined with config"):
        kv.replay(t, 1000, config=cfg_path)
    with pytest.raises(ConfigError, match=r"eviction\.policy"):
        kv.replay(t, config={"instance_groups": [{"name": "default",
                                                  "eviction": {"policy": "nosuch"}}]})


def test_save(tmp_path: Path) -> None:
    r = kv.replay(SAMPLE, [3000, 9000], limit=300, jobs=2)
    paths = r.save(tmp_path / "out")
    assert [p.name for p in paths] == ["summary.json", "timeseries.parquet", "hitrate.png"]
    assert json.loads(paths[0].read_text())["results"][1]["capacity_blocks"] == 9000
    r.plot(tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


@needs_mooncake
def test_golden_via_api() -> None:
    r = kv.replay(MOONCAKE, capacity_tokens=[3_000_000, 50_000_000], fmt="mooncake")
    assert r.summary["capacity_blocks"].to_list() == [5859, 97656]
    assert r.summary["hit_blocks"].to_list() == [40644, 104926]
    assert r.ideal["hit_blocks"] == 105592

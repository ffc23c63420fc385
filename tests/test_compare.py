"""Policy comparison: the library function and ``kvsim compare``."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from kvsim.cli import main, sample_trace_path
from kvsim.config import KVSimConfig
from kvsim.optimizer.bounds import belady
from kvsim.optimizer.compare import COLUMNS, compare, compare_table, parse_policy_params
from kvsim.sim.replay import ideal, replay
from kvsim.trace.generator import GenSpec, generate_trace

SAMPLE = sample_trace_path()


def test_compare_rows_match_replay_belady_and_ideal() -> None:
    t = generate_trace(GenSpec(seed=7, requests=200, instances=2))
    caps = [300, 30]
    df = compare(t, ["lru", "random_lru"], caps, jobs=1,
                 params={"random_lru": {"sample_rate": 0.5, "seed": 1}})
    assert tuple(df.columns) == COLUMNS
    assert df["policy"].to_list() == ["lru"] * 2 + ["random_lru"] * 2 + ["belady"] * 2 + [
        "ideal"] * 2
    assert df["capacity"].to_list() == [30, 300] * 4
    r = replay(t, KVSimConfig.single_cache(capacity_blocks=30, policy="random_lru",
                                           params={"sample_rate": 0.5, "seed": 1}))
    row = df.filter((pl.col("policy") == "random_lru") & (pl.col("capacity") == 30)).to_dicts()[0]
    assert row["hit_blocks"] == r.summary()["hit_blocks"]
    assert row["hit_tokens"] == r.summary()["hit_tokens"]
    b = df.filter(pl.col("policy") == "belady").drop("policy").to_dicts()
    assert b == belady(t, [30, 300])
    i = df.filter(pl.col("policy") == "ideal").to_dicts()[0]
    figs = ideal(t)
    cols = [k for k in figs if k in i]  # compare's columns: the aggregate rates
    assert len(cols) == 4 and {k: i[k] for k in cols} == {k: figs[k] for k in cols}


def test_compare_rejects_bad_input() -> None:
    t = generate_trace(GenSpec(seed=1, requests=20))
    with pytest.raises(ValueError, match="unknown policy"):
        compare(t, ["lrx"], [10])
    with pytest.raises(ValueError, match="positive"):
        compare(t, ["lru"], [0, 10])
    with pytest.raises(ValueError, match="twice"):
        compare(t, ["lru", "lru"], [10])


def test_parse_policy_params() -> None:
    assert parse_policy_params(["random_lru.seed=3", "random_lru.sample_rate=0.5"],
                               ["random_lru"]) == {"random_lru": {"seed": 3, "sample_rate": 0.5}}
    with pytest.raises(ValueError, match=r"POLICY\.NAME=VALUE"):
        parse_policy_params(["seed=3"], ["random_lru"])
    with pytest.raises(ValueError, match="not compared"):
        parse_policy_params(["random_lru.seed=3"], ["lru"])
    with pytest.raises(ValueError, match="no parameter"):
        parse_policy_params(["lru.bogus=1"], ["lru"])


def test_compare_table_shape() -> None:
    df = pl.DataFrame({"policy": ["lru", "lru", "belady", "belady"], "capacity": [1, 2, 1, 2],
                       "token_hit_rate": [0.1, 0.2, 0.3, 0.4]})
    table = compare_table(df)
    assert table.row_count == 2
    assert len(table.columns) == 3


@pytest.mark.skipif(not SAMPLE.is_file(), reason="shipped sample trace missing")
def test_cli_compare_writes_files_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compare", str(SAMPLE), "--policies", "lru,fifo", "--capacities", "100,1k,10000",
            "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert isinstance(rows, list) and len(rows) == 4 * 3
    assert all(set(r) == set(COLUMNS) for r in rows)
    assert [r["policy"] for r in rows[::3]] == ["lru", "fifo", "belady", "ideal"]
    assert [r["capacity"] for r in rows[:3]] == [100, 1000, 10000]
    by = {(r["policy"], r["capacity"]): r for r in rows}
    for c in (100, 1000, 10000):
        assert by[("belady", c)]["hit_blocks"] >= by[("lru", c)]["hit_blocks"]
        assert by[("belady", c)]["hit_blocks"] >= by[("fifo", c)]["hit_blocks"]
        assert by[("ideal", c)]["hit_blocks"] >= by[("belady", c)]["hit_blocks"]
    assert (out / "compare.png").stat().st_size > 0
    df = pl.read_parquet(out / "compare.parquet")
    assert tuple(df.columns) == COLUMNS and df.height == 12
    assert df.to_dicts() == rows
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    res = CliRunner().invoke(main, [*args, "--no-out", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "belady" in res.stdout and "ideal" in res.stdout and "fifo" in res.stdout


@pytest.mark.skipif(not SAMPLE.is_file(), reason="shipped sample trace missing")
def test_cli_compare_errors(tmp_path: Path) -> None:
    base = ["compare", str(SAMPLE), "--no-out", "--limit", "50"]
    res = CliRunner().invoke(main, [*base, "--policies", "lrx", "--capacities", "10"])
    assert res.exit_code != 0 and "unknown policy" in res.output
    res = CliRunner().invoke(main, [*base, "--capacities", "ten"])
    assert res.exit_code == 2 and "not a number" in res.output
    res = CliRunner().invoke(main, [*base, "--policies", "lru", "--capacities", "10",
                                    "--param", "fifo.x=1"])
    assert res.exit_code != 0 and "not compared" in res.output

"""End-to-end tests of ``kvsim replay`` (click's CliRunner and one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import MISSING_MOONCAKE, needs_mooncake
from conftest import MOONCAKE_PATH as MOONCAKE

from kvsim.cli import _IntList, main, sample_trace_path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = sample_trace_path()


GOLDEN_CAPS = [1000, 5859, 20000, 97656]
GOLDEN_HITS = [12990, 40644, 84692, 104926]
GOLDEN_BLOCK = [0.046982, 0.146999, 0.306310, 0.379492]
GOLDEN_TOKEN = [0.045933, 0.143720, 0.299476, 0.371025]


def run(args: list[str], **kw: Any) -> Result:
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


def run_json(args: list[str]) -> dict[str, Any]:
    r = run([*args, "--json", "--no-out"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # the whole of stdout is the document


def comparable(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Results without wall-clock fields (everything else is deterministic)."""
    return [{k: v for k, v in res.items() if k != "elapsed_s"} for res in doc["results"]]


# ---------------------------------------------------------------------- golden figures
@pytest.fixture(scope="module")
def golden_doc() -> dict[str, Any]:
    if not MOONCAKE.is_file():
        pytest.skip(MISSING_MOONCAKE)
    caps = ",".join(map(str, GOLDEN_CAPS))
    return run_json(["replay", str(MOONCAKE), "--format", "mooncake", "--capacity-blocks", caps])


@needs_mooncake
def test_golden_figures(golden_doc: dict[str, Any]) -> None:
    res = golden_doc["results"]
    assert [r["capacity_blocks"] for r in res] == GOLDEN_CAPS
    assert [r["policy"] for r in res] == ["lru"] * 4
    assert [r["hit_blocks"] for r in res] == GOLDEN_HITS
    assert [round(r["block_hit_rate"], 6) for r in res] == GOLDEN_BLOCK
    assert [round(r["token_hit_rate"], 6) for r in res] == GOLDEN_TOKEN
    ideal = golden_doc["ideal"]
    assert ideal["hit_blocks"] == 105592
    assert round(ideal["block_hit_rate"], 6) == 0.381900
    assert round(ideal["token_hit_rate"], 6) == 0.373380
    tr = golden_doc["trace"]
    assert (tr["requests"], tr["keys"], tr["input_tokens"], tr["block_size"]) == (
        12031, 276491, 144793823, 512)
    for r in res:
        assert r["read_blocks"] == 276491 and r["input_tokens"] == 144793823
        assert r["internal_hits"] == 0 and r["external_hits"] == r["hit_blocks"]
        assert r["peak_used"] <= r["capacity_blocks"] and r["peak_used_unit"] == "blocks"
        assert r["per_instance"][0]["hit_blocks"] == r["hit_blocks"]
        assert r["per_group"][0]["group"] == "default"


@needs_mooncake
def test_golden_read_in_blocks(golden_doc: dict[str, Any]) -> None:
    """The real trace read in 50 kB blocks (a streamed sweep, as a JSONL past 64 MiB is):
    the golden document, ideal and misses included."""
    caps = ",".join(map(str, GOLDEN_CAPS))
    doc = run_json(["replay", str(MOONCAKE), "--format", "mooncake", "--capacity-blocks",
                    caps, "--chunk-mb", "0.05"])
    assert comparable(doc) == comparable(golden_doc)
    assert doc["ideal"] == golden_doc["ideal"] and doc["trace"] == golden_doc["trace"]


@needs_mooncake
def test_golden_subprocess_matches_clirunner(golden_doc: dict[str, Any], tmp_path: Path) -> None:
    caps = ",".join(map(str, GOLDEN_CAPS))
    p = subprocess.run(
        [sys.executable, "-m", "kvsim", "replay", str(MOONCAKE), "--format", "mooncake",
         "--capacity-blocks", caps, "--json", "--no-out"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["hit_blocks"] for r in doc["results"]] == GOLDEN_HITS
    assert comparable(doc) == comparable(golden_doc)
    assert doc["ideal"] == golden_doc["ideal"]
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []  # --no-out wrote nothing


@needs_mooncake
def test_capacity_tokens_equal_blocks() -> None:
    base = ["replay", str(MOONCAKE), "--format", "mooncake"]
    by_tokens = run_json([*base, "--capacity-tokens", "3000000,50000000"])
    by_blocks = run_json([*base, "--capacity-blocks", "5859,97656"])
    assert comparable(by_tokens) == comparable(by_blocks)
    assert [r["hit_blocks"] for r in by_tokens["results"]] == [40644, 104926]
    # suffixes give the same capacities
    by_suffix = run_json([*base, "--capacity-tokens", "3M,50M", "--jobs", "1"])
    assert comparable(by_suffix) == comparable(by_blocks)


def test_int_list_parsing() -> None:
    t = _IntList()
    assert t.convert("1000, 5_859,3M,1Ki", None, None) == [1000, 5859, 3_000_000, 1024]
    with pytest.raises(Exception, match="not a number"):
        t.convert("12x", None, None)
    with pytest.raises(Exception, match="non-negative integer"):
        t.convert("-5", None, None)
    with pytest.raises(Exception, match="0 is not a capacity"):
        t.convert("1000,0", None, None)


# ---------------------------------------------------------------------- sweeps
def test_sweep_jobs_2_equals_jobs_1() -> None:
    args = ["replay", str(SAMPLE), "--capacity-blocks", "500,3000,20000"]
    one = run_json([*args, "--jobs", "1"])
    two = run_json([*args, "--jobs", "2"])
    assert [r["capacity_blocks"] for r in two["results"]] == [500, 3000, 20000]  # input order
    assert comparable(one) == comparable(two)
    assert one["ideal"] == two["ideal"]
    hits = [r["hit_blocks"] for r in one["results"]]
    assert hits == sorted(hits) and hits[-1] <= one["ideal"]["hit_blocks"]


def test_policy_param_and_limit() -> None:
    doc = run_json(["replay", str(SAMPLE), "--limit", "500", "--capacity-blocks", "1000",
                    "--policy", "random_lru", "--param", "sample_rate=0.5", "--param", "seed=3"])
    assert doc["trace"]["requests"] == 500 and doc["trace"]["limit"] == 500
    r = doc["results"][0]
    assert r["policy"] == "random_lru" and r["params"] == {"sample_rate": 0.5, "seed": 3}
    assert r["requests"] == 500


def test_capacity_bytes() -> None:
    base = ["replay", str(SAMPLE), "--limit", "400"]
    by_bytes = run_json([*base, "--capacity-bytes", "64Mi", "--block-bytes", "65536"])
    by_blocks = run_json([*base, "--capacity-blocks", "1024"])
    r = by_bytes["results"][0]
    assert r["capacity_bytes"] == 64 * 2**20 and r["capacity_blocks"] is None
    assert r["hit_blocks"] == by_blocks["results"][0]["hit_blocks"]
    bad = run([*base, "--capacity-bytes", "64Mi", "--no-out"])
    assert bad.exit_code == 2 and "--block-bytes" in bad.output


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "two.yaml"
    cfg.write_text(
        "instance_groups:\n"
        "  - {name: a, quota: {blocks: 3000}, eviction: {policy: lru}}\n"
        "  - {name: b, quota: {blocks: 3000}, eviction: {policy: fifo}}\n"
        "instances:\n"
        "  - {instance_id: inst0, group: a, block_size: 16}\n"
        "  - {instance_id: inst1, group: b, block_size: 16}\n"
        "replay: {default_group: a}\n"
    )
    doc = run_json(["replay", str(SAMPLE), "--config", str(cfg)])
    r = doc["results"][0]
    assert r["label"] == "two" and r["capacity_blocks"] == 6000 and r["policy"] is None
    assert {g["group"] for g in r["per_group"]} == {"a", "b"}
    assert {(i["instance"], i["group"]) for i in r["per_instance"]} == {("inst0", "a"),
                                                                        ("inst1", "b")}
    assert r["peak_used"] <= 6000
    # tables: per-group table when there is more than one group
    out = run(["replay", str(SAMPLE), "--config", str(cfg), "--no-out"])
    assert out.exit_code == 0 and "per group" in out.stdout and "per instance" in out.stdout


# ---------------------------------------------------------------------- outputs
def test_outputs_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run(["replay", str(SAMPLE), "--capacity-blocks", "2000,8000", "--out", str(out),
             "--window", "30"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["hitrate.png", "summary.json",
                                                     "timeseries.parquet"]
    doc = json.loads((out / "summary.json").read_text())
    assert [x["label"] for x in doc["results"]] == ["lru@2000", "lru@8000"]
    ts = pl.read_parquet(out / "timeseries.parquet")
    for col in ("label", "window", "t_s", "end_ns", "token_hit_rate", "cum_token_hit_rate",
                "block_hit_rate", "cached_blocks", "group_used", "cached_blocks[inst0]"):
        assert col in ts.columns
    assert ts["label"].unique(maintain_order=True).to_list() == ["lru@2000", "lru@8000"]
    assert ts.filter(pl.col("label") == "lru@2000")["group_used"].max() <= 2000
    spans = ts.group_by("label").agg(pl.col("t_s").max())["t_s"].to_list()
    assert all(s > 0 for s in spans)
    t_s = ts.filter(pl.col("label") == "lru@2000")["t_s"]
    assert ((t_s / 30 - (t_s / 30).round()).abs() < 1e-9).all()  # 30 s windows
    png = (out / "hitrate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert oct((out / "summary.json").stat().st_mode & 0o777) != oct(0o600)


def test_outputs_csv(tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = run(["replay", str(SAMPLE), "--limit", "300", "--out", str(out),
             "--timeseries-format", "csv", "--json"])
    assert r.exit_code == 0
    json.loads(r.stdout)  # stdout is still only the document
    assert sorted(p.name for p in out.iterdir()) == ["hitrate.png", "summary.json",
                                                     "timeseries.csv"]
    assert "cum_token_hit_rate" in pl.read_csv(out / "timeseries.csv").columns


def test_out_dir_is_a_file_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        r = run(["replay", str(SAMPLE), "--limit", "50", "--out", str(out)])
        assert r.exit_code != 0
        assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    assert blocker.read_text() == "x"


def test_failing_write_leaves_no_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "o"
    (out / "hitrate.png").mkdir(parents=True)  # the chart cannot be written
    r = run(["replay", str(SAMPLE), "--limit", "50", "--out", str(out)])
    assert r.exit_code != 0 and "hitrate.png" in r.output
    assert [p.name for p in out.iterdir()] == ["hitrate.png"]  # no summary, no temp files


# ---------------------------------------------------------------------- defaults
def test_no_arguments_uses_sample(tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        r = runner.invoke(main, ["replay"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "sample.parquet" in r.stdout and "3,000 requests" in r.stdout
        assert "ideal" in r.stdout and "token hit" in r.stdout and "0.702430" in r.stdout
        assert "per instance" in r.stdout and "inst1" in r.stdout  # two instances
        files = sorted(p.name for p in (Path(cwd) / "kvsim-out").iterdir())
        assert files == ["hitrate.png", "summary.json", "timeseries.parquet"]


def test_version_help_and_trace_group() -> None:
    r = run(["--version"])
    assert r.exit_code == 0 and "0.1.0" in r.output
    r = run(["--help"])
    assert "replay" in r.output and "trace" in r.output
    r = run(["trace", "--help"])
    assert r.exit_code == 0 and "convert" in r.output and "stats" in r.output
    r = run(["replay", "--help"])
    assert "--capacity-tokens" in r.output and "random_lru" in r.output


# ---------------------------------------------------------------------- bad input
def test_malformed_trace_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]}\n'
        '{"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n'
        '{"timestamp": 2, "input_length": 600, "output_length": 5, "hash_ids": [1, "x"]}\n'
    )
    r = run(["replay", str(bad), "--format", "mooncake", "--no-out"])
    assert r.exit_code != 0
    assert f"{bad}:3" in r.output and "hash_ids" in r.output
    assert "Traceback" not in r.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, '
                      '"hash_ids": [1]}\n{not json\n')
    r = run(["replay", str(broken), "--no-out"])
    assert r.exit_code != 0 and f"{broken}:2" in r.output and "invalid JSON" in r.output


def test_json_writes_no_files_unless_out_is_given(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["replay", str(SAMPLE), "--limit", "200", "--capacity-blocks", "2000", "--json"]
    r = run(args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert not (tmp_path / "kvsim-out").exists()
    assert doc["compile_s"] >= 0 and "peak_used" in doc["legend"]
    r = run([*args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and (tmp_path / "o" / "summary.json").is_file()


def test_capacity_zero_is_refused() -> None:
    r = run(["replay", str(SAMPLE), "--capacity-blocks", "0", "--no-out"])
    assert r.exit_code == 2
    assert "--capacity-blocks" in r.output and "0 is not a capacity" in r.output


def test_per_group_peak_is_the_groups_own() -> None:
    """Two instances in one group: the group's peak is the group's usage (sum of both)."""
    doc = run_json(["replay", str(SAMPLE), "--limit", "600", "--capacity-blocks", "5000"])
    r = doc["results"][0]
    inst_peaks = [i["peak_cached_blocks"] for i in r["per_instance"]]
    group = r["per_group"][0]
    assert len(inst_peaks) == 2 and group["peak_used"] <= 5000 and r["peak_used"] <= 5000
    assert group["peak_used"] > max(inst_peaks)  # the old field was max(inst_peaks)


def test_missing_trace_file(tmp_path: Path) -> None:
    r = run(["replay", str(tmp_path / "nope.jsonl"), "--no-out"])
    assert r.exit_code != 0 and "nope.jsonl" in r.output and "Traceback" not in r.output


def test_unknown_policy_param() -> None:
    r = run(["replay", str(SAMPLE), "--policy", "random_lru", "--param", "sampel_rate=0.5",
             "--no-out"])
    assert r.exit_code != 0 and "sampel_rate" in r.output and "sample_rate" in r.output
    r = run(["replay", str(SAMPLE), "--policy", "random_lru", "--param", "sample_rate=7",
             "--no-out"])
    assert r.exit_code != 0 and "sample_rate" in r.output
    r = run(["replay", str(SAMPLE), "--param", "oops", "--no-out"])
    assert r.exit_code != 0 and "NAME=VALUE" in r.output
    r = run(["replay", str(SAMPLE), "--policy", "nosuch", "--no-out"])
    assert r.exit_code == 2 and "nosuch" in r.output


def test_bad_config_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("instance_groups:\n  - name: g\n    quota: {blocks: 100}\n"
                   "    eviction: {policy: lru, batch_sise: 4}\n")
    r = run(["replay", str(SAMPLE), "--config", str(cfg), "--no-out"])
    assert r.exit_code != 0
    assert str(cfg) in r.output and "instance_groups[0].eviction.batch_sise" in r.output
    cfg.write_text("instance_groups:\n  - name: g\n    quota: {blocks: -1}\n")
    r = run(["replay", str(SAMPLE), "--config", str(cfg), "--no-out"])
    assert r.exit_code != 0 and "instance_groups[0].quota.blocks" in r.output


def test_flags_conflicting_with_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("instance_groups:\n  - name: g\n    quota: {blocks: 100}\n")
    r = run(["replay", str(SAMPLE), "--config", str(cfg), "--capacity-blocks", "5",
             "--policy", "fifo", "--no-out"])
    assert r.exit_code == 2 and "--capacity-blocks" in r.output and "--policy" in r.output
    r = run(["replay", str(SAMPLE), "--capacity-blocks", "5", "--capacity-tokens", "80",
             "--no-out"])
    assert r.exit_code == 2


def test_unsorted_trace_warns_or_fails_strict(tmp_path: Path) -> None:
    t = tmp_path / "unsorted.jsonl"
    t.write_text(
        '{"timestamp": 5, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}\n'
        '{"timestamp": 1, "input_length": 1024, "output_length": 1, "hash_ids": [1, 3]}\n'
    )
    r = run(["replay", str(t), "--json", "--no-out"])
    assert r.exit_code == 0
    assert "warning:" in r.stderr and "order" in r.stderr
    assert json.loads(r.stdout)["trace"]["requests"] == 2
    r = run(["replay", str(t), "--strict", "--no-out"])
    assert r.exit_code != 0 and f"{t}:2" in r.output


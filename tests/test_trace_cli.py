"""The ``kvsim trace`` command group."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from conftest import MOONCAKE_PATH as MOONCAKE
from conftest import needs_mooncake

from kvsim.trace import GenSpec, generate_trace, read_trace, trace_diff
from kvsim.trace.cli import trace_group

SAMPLE = Path(__file__).resolve().parents[1] / "kvsim" / "data" / "sample.parquet"


def run(*args: str | Path) -> tuple[int, str, str]:
    r = CliRunner().invoke(trace_group, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@needs_mooncake
def test_convert_mooncake_to_parquet_then_stats(tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    code, _, err = run("convert", MOONCAKE, out)
    assert code == 0, err
    assert "wrote 12,031 requests, 276,491 keys" in err and "(parquet, block_size 512)" in err
    code, stdout, err = run("stats", out, "--json")
    assert code == 0, err
    s = orjson.loads(stdout)
    assert s["format"] == "parquet"
    assert (s["requests"], s["keys"], s["input_tokens"]) == (12_031, 276_491, 144_793_823)
    assert s["ideal_hit_blocks"] == 105_592
    assert round(s["ideal_block_hit_rate"], 6) == 0.381900
    assert round(s["ideal_token_hit_rate"], 6) == 0.373380


@needs_mooncake
def test_convert_options_and_formats(tmp_path: Path) -> None:
    keep = tmp_path / "keep.jsonl"
    code, _, err = run("convert", MOONCAKE, keep, "--to", "kvcm", "--tail", "keep")
    assert code == 0, err
    t = read_trace(keep)  # kvcm, detected from the content
    assert t.n_keys == 288_500 and t.block_size == 16  # kvcm default: pass --block-size
    lossy = tmp_path / "lossy.jsonl"
    code, _, err = run("convert", SAMPLE, lossy, "--to", "mooncake")
    assert code == 0 and "note: mooncake cannot store instance, session, turn, type_code" in err
    same = tmp_path / "same.jsonl"
    assert run("convert", MOONCAKE, same, "--block-size", "256", "--chain", "off")[0] == 0
    assert (
        read_trace(same, "mooncake", block_size=256).n_keys
        == read_trace(MOONCAKE, block_size=256).n_keys
    )
    assert orjson.loads(same.read_text().split("\n", 1)[0]).keys() == {
        "timestamp",
        "input_length",
        "output_length",
        "hash_ids",
    }


@needs_mooncake
def test_stats_table(tmp_path: Path) -> None:
    code, stdout, err = run("stats", MOONCAKE)
    assert code == 0, err
    assert "ideal block hit rate" in stdout and "0.381900" in stdout and "276,491" in stdout


@pytest.mark.parametrize("fmt", ["parquet", "kvcm", "bailian", "mooncake"])
def test_gen_every_format(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"g.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    code, _, err = run(
        "gen",
        out,
        "--format",
        fmt,
        "--seed",
        "4",
        "--requests",
        "300",
        "--instances",
        "1",
        "--token-scale",
        "0.3",
    )
    assert code == 0, err
    assert "wrote 300 requests" in err
    back = read_trace(out, fmt, block_size=16)
    want = generate_trace(GenSpec(seed=4, requests=300, token_scale=0.3))
    assert trace_diff(want, back, columns=("ts_ns", "offsets", "keys", "input_len")) == []


def test_gen_options(tmp_path: Path) -> None:
    out = tmp_path / "g.parquet"
    code, _, err = run(
        "gen",
        out,
        "--target-keys",
        "20000",
        "--instances",
        "2",
        "--arrival",
        "bursty",
        "--block-size",
        "32",
        "--mix",
        "1,0,0",
        "--zipf-a",
        "0.5",
        "--rate",
        "2",
        "--max-context",
        "8000",
    )
    assert code == 0, err
    t = read_trace(out)
    assert t.block_size == 32 and len(t.instances) == 2 and t.n_keys >= 20_000
    assert t.type_code is not None and set(t.type_code.tolist()) == {0}  # chat only
    assert (t.input_len <= 8000).all()
    code, _, err = run("gen", out, "--duration", "30")
    assert code == 0 and read_trace(out).ts_ns.max() < 30e9


def test_sample_trace_is_reproducible(tmp_path: Path) -> None:
    """kvsim/data/README.md's command regenerates kvsim/data/sample.parquet byte for byte."""
    out = tmp_path / "sample.parquet"
    code, _, err = run(
        "gen",
        out,
        "--seed",
        "0",
        "--requests",
        "3000",
        "--instances",
        "2",
        "--block-size",
        "16",
        "--token-scale",
        "0.25",
    )
    assert code == 0, err
    assert out.read_bytes() == SAMPLE.read_bytes()
    t = read_trace(SAMPLE)
    assert (t.n_requests, len(t.instances), t.block_size) == (3000, 2, 16)
    assert 100_000 <= t.n_keys <= 300_000 and SAMPLE.stat().st_size < 2_000_000


def test_errors_are_clean(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": "x", "output_length": 1, "hash_ids": []}\n')
    code, stdout, err = run("stats", bad)
    assert code == 1
    assert "Error: " in err and "bad.jsonl:1: field 'input_length'" in err
    assert "Traceback" not in stdout + err
    code, _, err = run("convert", tmp_path / "missing.jsonl", tmp_path / "o.parquet")
    assert code == 1 and "cannot read" in err and not (tmp_path / "o.parquet").exists()
    code, _, err = run("gen", tmp_path / "x.parquet", "--requests", "5", "--target-keys", "5")
    assert code == 2 and "not both" in err
    code, _, err = run("gen", tmp_path / "x.parquet", "--mix", "1,2")
    assert code == 2 and "--mix" in err
    code, _, err = run("gen", tmp_path / "x.parquet", "--requests", "3", "--max-context", "5")
    assert code == 1 and "produced no requests" in err and "Traceback" not in err


def test_out_of_order_warning_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "o.jsonl"
    p.write_text(
        '{"timestamp": 5, "input_length": 512, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 1, "input_length": 512, "output_length": 1, "hash_ids": [2]}\n'
    )
    code, _, err = run("convert", p, tmp_path / "o.parquet")
    assert code == 0 and "warning: " in err and "1 rows out of timestamp order" in err
    code, _, err = run("convert", p, tmp_path / "o2.parquet", "--strict")
    assert code == 1 and "o.jsonl:2: timestamp out of order" in err

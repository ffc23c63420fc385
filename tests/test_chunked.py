"""Replay from chunks (issue 17): the same integers as the whole-trace replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kvsim.config import ConfigError, KVSimConfig
from kvsim.data import sample_trace_path
from kvsim.sim.chunked import iter_parquet_chunks, replay_chunks
from kvsim.sim.replay import replay
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace, TraceError
from kvsim.trace.readers import read_trace
from kvsim.trace.writers import trace_to_arrow

FIELDS = ("hit_blocks", "internal_hits", "internal_reads", "cached_blocks", "group_used",
          "evicted")


@pytest.fixture(scope="module")
def chunked_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped sample rewritten with row groups of 250 requests."""
    p = tmp_path_factory.mktemp("chunks") / "sample.parquet"
    pq.write_table(trace_to_arrow(read_trace(sample_trace_path())), p, row_group_size=250)
    return p


@pytest.mark.parametrize("capacity", [5_000, 0])
def test_chunked_replay_equals_whole_trace(chunked_file: Path, capacity: int) -> None:
    whole = read_trace(chunked_file)
    cfg = KVSimConfig.single_cache(capacity_blocks=capacity)
    ref = replay(whole, cfg)
    chunks = list(iter_parquet_chunks(chunked_file, rows=333))
    assert len(chunks) == -(-whole.n_requests // 333) > 5
    assert max(c.n_requests for c in chunks) == 333
    got = replay_chunks(iter_parquet_chunks(chunked_file, rows=333), cfg)
    assert got.chunks == len(chunks)
    for f in FIELDS:
        assert getattr(got, f).tolist() == getattr(ref, f).tolist(), f
    s = ref.summary()
    assert got.hit_tokens == s["hit_tokens"] and got.input_tokens == s["input_tokens"]
    assert got.token_hit_rate == pytest.approx(s["token_hit_rate"])
    if capacity:  # the table is sized by the capacity, not by the trace
        assert got.peak_rows < whole.n_keys // 4


@pytest.mark.parametrize("flow", ["combined", "client"])
def test_chunked_replay_equals_whole_trace_with_storage_rules(tmp_path: Path, flow: str) -> None:
    """The one replay loop fed in chunks: a reclaimer every 50 ms of trace time and (client
    flow) a storage capacity and a storage taken down, then up, mid-trace give the whole
    trace's integers."""
    whole = generate_trace(GenSpec(seed=5, requests=400, instances=3, block_size=64))
    span_ms = int(whole.ts_ns[-1] - whole.ts_ns[0]) // 1_000_000
    cfg = KVSimConfig.from_dict({
        "storages": [{"name": "fast", "type": "memory", "uri": "mem://fast",
                      "capacity_bytes": 500_000},
                     {"name": "slow", "type": "file", "uri": str(tmp_path / "slow")}],
        "instance_groups": [{"name": "default", "quota": {"blocks": 1000},
                             "used_percentage": 0.8, "storage_candidates": ["fast", "slow"],
                             "eviction": {"policy": "sieve"}}],
        "instances": [{"instance_id": name, "group": "default", "block_size": 64,
                       "location_spec_infos": [{"name": "tp0", "size": 1000}]}
                      for name in whole.instances],
        "reclaim": {"interval_ms": 50, "storage_health": [
            {"storage": "fast", "at_ms": span_ms // 3, "healthy": False},
            {"storage": "fast", "at_ms": 2 * span_ms // 3, "healthy": True}]},
    })
    pieces = [whole.select(np.arange(a, min(a + 70, whole.n_requests)))
              for a in range(0, whole.n_requests, 70)]
    if flow == "combined":  # no storages in the contract's request: refused, as replay()
        with pytest.raises(ConfigError, match=r"storages\[0\]\.capacity_bytes, "
                                              r"reclaim\.storage_health: .*--flow client"):
            replay_chunks(pieces, cfg, flow=flow)
        cfg = KVSimConfig.from_dict(cfg.to_dict() | {
            "storages": [{"name": "fast", "type": "memory", "uri": "mem://fast"},
                         {"name": "slow", "type": "file", "uri": str(tmp_path / "slow")}],
            "reclaim": {"interval_ms": 50}})
    ref = replay(whole, cfg, flow=flow)
    got = replay_chunks(pieces, cfg, flow=flow)
    assert got.chunks == len(pieces) == 6
    for f in FIELDS:
        assert getattr(got, f).tolist() == getattr(ref, f).tolist(), f
    assert got.hit_tokens == ref.summary()["hit_tokens"] > 0
    if flow == "client":  # the schedule did something: without it the hits differ
        plain = replay(whole, KVSimConfig.from_dict(cfg.to_dict() | {
            "reclaim": {"interval_ms": 50}}), flow=flow)
        assert plain.hit_blocks.tolist() != ref.hit_blocks.tolist()


def test_chunks_out_of_time_order_are_refused() -> None:
    t = Trace.from_lists(ts_ns=[10, 20, 30], keys=[[1], [2], [3]])
    later, earlier = t.select(np.array([2])), t.head(2)
    with pytest.raises(TraceError, match="chunk 2 starts at 10 ns"):
        replay_chunks([later, earlier], KVSimConfig.single_cache(capacity_blocks=4))


def test_unreadable_parquet_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(TraceError, match=r"bad\.parquet: cannot read parquet"):
        next(iter_parquet_chunks(bad))


# ---------------------------------------------------------------------- JSONL in blocks
JSONL_FORMATS = ("mooncake", "bailian", "kvcm")


@pytest.fixture(scope="module")
def jsonl_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped sample (3,000 requests) written in each JSONL format the replay reads
    in blocks."""
    from kvsim.trace.writers import write_trace

    d = tmp_path_factory.mktemp("jsonl")
    t = read_trace(sample_trace_path())
    out = {}
    for fmt in JSONL_FORMATS:
        out[fmt] = d / f"sample.{fmt}.jsonl"
        write_trace(t, out[fmt], fmt=fmt)
    return out


@pytest.mark.parametrize("fmt", JSONL_FORMATS)
def test_jsonl_blocks_replay_equals_whole_trace(jsonl_files: dict[str, Path], fmt: str) -> None:
    """Blocks of 3,000 bytes (records straddle every block end; the first chunk holds
    the chain check's 1,000 records) replay to the whole file's integers, a sweep with
    its ideal and misses too."""
    from kvsim.sim.chunked import sweep_chunks
    from kvsim.sim.misses import replay_misses
    from kvsim.sim.sweep import run_sweep, single_cache_configs
    from kvsim.trace.readers import iter_jsonl_chunks

    p = jsonl_files[fmt]
    whole = read_trace(p, fmt)
    lens = [len(x) for x in p.read_bytes().split(b"\n")]
    assert min(lens) < 3000 < sum(lens[:3])  # lines shorter than a block, blocks cut lines
    chunks = list(iter_jsonl_chunks(p, fmt, block_bytes=3000))
    assert len(chunks) > 100
    assert sum(c.n_requests for c in chunks) == whole.n_requests
    if fmt != "kvcm":
        assert chunks[0].n_requests >= 1000  # the chaining decided as the whole file's
    assert np.concatenate([c.keys for c in chunks]).tolist() == whole.keys.tolist()
    cfg = KVSimConfig.single_cache(capacity_blocks=5_000)
    ref = replay(whole, cfg)
    got = replay_chunks(iter_jsonl_chunks(p, fmt, block_bytes=3000), cfg)
    for f in FIELDS:
        assert getattr(got, f).tolist() == getattr(ref, f).tolist(), f
    assert got.hit_tokens == ref.summary()["hit_tokens"] > 0
    # a sweep fed from one pass: every run, the ideal and the misses as run_sweep's
    configs = single_cache_configs([2_000, 20_000, 0], instances=whole.instances,
                                   instance_block_size=whole.block_size)
    plain = run_sweep(whole, configs, jobs=1)
    streamed = sweep_chunks(iter_jsonl_chunks(p, fmt, block_bytes=3000), configs)
    assert streamed.ideal == plain.ideal
    for a, b in zip(plain.results, streamed.results, strict=True):
        for f in FIELDS:
            assert getattr(a, f).tolist() == getattr(b, f).tolist(), f
        sa, sb = a.summary(), b.summary()
        sa.pop("elapsed_s", None), sb.pop("elapsed_s", None)
        assert sa == sb
    assert replay_misses(plain.results) == replay_misses(streamed.results,
                                                         ideal_hits=streamed.ideal_hits)


@pytest.mark.parametrize("fmt", JSONL_FORMATS)
def test_jsonl_block_errors_name_the_line(jsonl_files: dict[str, Path], tmp_path: Path,
                                          fmt: str) -> None:
    """A bad line far into the file (many blocks in) is named by its line number, with
    the message of the whole-file read."""
    from kvsim.trace.readers import iter_jsonl_chunks

    lines = jsonl_files[fmt].read_bytes().split(b"\n")
    bad_json = list(lines)
    bad_json[2216] = bad_json[2216][:-7]  # line 2217 cut short
    bad_field = list(lines)
    key = b'"keys"' if fmt == "kvcm" else b'"hash_ids"'
    bad_field[2499] = bad_field[2499].replace(key + b":[", key + b':["x",', 1)
    for name, content, expect in (("json", bad_json, ":2217: invalid JSON"),
                                  ("field", bad_field, ":2500: field ")):
        p = tmp_path / f"{name}.jsonl"
        p.write_bytes(b"\n".join(content))
        with pytest.raises(TraceError) as whole_err:
            read_trace(p, fmt)
        with pytest.raises(TraceError) as block_err:
            list(iter_jsonl_chunks(p, fmt, block_bytes=3000))
        assert expect in str(whole_err.value)
        assert str(block_err.value) == str(whole_err.value)


def test_jsonl_blocks_out_of_order_are_refused_and_the_cli_reads_the_whole_file(
        tmp_path: Path) -> None:
    """A block starting before the previous block's end cannot be sorted in blocks: the
    reader says so, and ``kvsim replay`` falls back to the whole file (sorted)."""
    import json

    import orjson
    from click.testing import CliRunner

    from kvsim.cli import main
    from kvsim.trace.readers import ChunkOrderError, TraceWarning, iter_jsonl_chunks

    p = tmp_path / "late.jsonl"
    rows = [{"timestamp": t, "input_length": 1024, "output_length": 1, "hash_ids": [t, t + 1]}
            for t in [*range(10, 1500), 5]]
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with pytest.raises(ChunkOrderError, match=r"late\.jsonl:\d+: the block from this line"
                       ), pytest.warns(TraceWarning, match="sorted stably"):
        list(iter_jsonl_chunks(p, "mooncake", block_bytes=4096))  # its block is sorted
    docs = []
    for mb in ("0.004", "0"):
        r = CliRunner().invoke(main, ["replay", str(p), "--capacity-blocks", "100", "--json",
                                      "--chunk-mb", mb], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert ("reading the whole file" in r.stderr) == (mb != "0")
        docs.append(r.stdout)
    strip = [[{k: v for k, v in res.items() if k != "elapsed_s"}
              for res in json.loads(d)["results"]] for d in docs]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("fmt", JSONL_FORMATS)
def test_cli_replay_in_blocks_equals_whole_read(jsonl_files: dict[str, Path], fmt: str) -> None:
    """``kvsim replay --chunk-mb`` (tiny blocks) prints the whole read's document: results,
    ideal, misses, trace record."""
    import json

    from click.testing import CliRunner

    from kvsim.cli import main

    docs = []
    for mb in ("0.01", "0"):
        r = CliRunner().invoke(main, ["replay", str(jsonl_files[fmt]), "--format", fmt,
                                      "--capacity-blocks", "2000,20000", "--json",
                                      "--chunk-mb", mb], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        d.pop("compile_s")
        for res in d["results"]:
            res.pop("elapsed_s")
        docs.append(d)
    assert docs[0] == docs[1]
    assert docs[0]["results"][0]["misses"]["total"] > 0

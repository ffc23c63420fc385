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

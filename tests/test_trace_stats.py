"""trace_stats: golden Mooncake figures, hand examples and a reference model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import orjson
import pytest
from conftest import MOONCAKE_PATH as MOONCAKE
from conftest import needs_mooncake
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.trace import (
    KIND_READ,
    KIND_WRITE,
    Trace,
    TraceStats,
    ideal_hit_blocks,
    read_trace,
    trace_diff,
    trace_stats,
)


@needs_mooncake
def test_mooncake_golden_figures() -> None:
    s = trace_stats(read_trace(MOONCAKE))
    assert s.requests == 12_031
    assert s.keys == 276_491
    assert s.input_tokens == 144_793_823
    assert s.ideal_hit_blocks == 105_592
    assert round(s.ideal_block_hit_rate, 6) == 0.381900
    assert s.ideal_block_hit_rate == 105_592 / 276_491
    assert round(s.ideal_token_hit_rate, 6) == 0.373380
    assert s.instances == 1 and s.block_size == 512
    assert s.duration_s == pytest.approx(3536.999)
    assert s.requests_per_s == pytest.approx(12_031 / 3536.999)
    # Prefix-chained keys: a block is reused iff it hits ideally.
    assert s.unique_blocks == s.keys - s.ideal_hit_blocks
    assert s.reuse_fraction == pytest.approx(s.ideal_block_hit_rate)
    assert s.max_access_count == 12_031  # every prompt starts with the same block
    d = s.to_dict()
    assert orjson.loads(orjson.dumps(d)) == d and isinstance(s, TraceStats)


def test_hits_are_longest_prefix_seen_in_earlier_requests() -> None:
    t = Trace.from_lists(
        ts_ns=[0, 1, 2, 3, 4],
        keys=[[1, 2, 3], [1, 9, 3], [1, 2, 3, 4], [5, 5], [5, 5]],
        input_len=[48, 40, 60, 32, 20],
        block_size=16,
    )
    # req 1: 1 hits, 9 misses -> 1 (3 was seen but after a miss);
    # req 2: 1 2 3 hit, 4 new -> 3; req 3: 5 twice, first seen here -> 0; req 4 -> 2.
    assert ideal_hit_blocks(t).tolist() == [0, 1, 3, 0, 2]
    s = trace_stats(t)
    assert s.ideal_hit_blocks == 6 and s.keys == 14
    # hit_tokens = min(hit_blocks * 16, input_len): 16 + 48 + 20 (not 32)
    assert s.ideal_hit_tokens == 84
    assert s.ideal_token_hit_rate == 84 / 200
    assert s.unique_blocks == 6  # 1 2 3 9 4 5
    assert s.max_access_count == 4  # key 5


def test_instances_do_not_share_blocks() -> None:
    t = Trace.from_lists(
        ts_ns=[0, 1, 2, 3],
        keys=[[1, 2], [1, 2], [1, 2], [1]],
        block_size=16,
        instance=["a", "b", "a", "b"],
    )
    assert ideal_hit_blocks(t).tolist() == [0, 0, 2, 1]
    assert trace_stats(t).unique_blocks == 4


def test_read_and_write_events() -> None:
    t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2], [1, 2], [1, 2]], block_size=16)
    t = replace(t, kind=np.array([KIND_READ, KIND_WRITE, KIND_READ, KIND_WRITE], np.int8))
    # The first read finds nothing and stores nothing; the write stores; then a hit.
    assert ideal_hit_blocks(t).tolist() == [0, 0, 2, 0]
    s = trace_stats(t)
    assert (s.read_requests, s.read_keys, s.ideal_hit_blocks) == (2, 4, 2)
    assert s.ideal_block_hit_rate == 0.5
    assert s.read_input_tokens == 64 and s.input_tokens == 128


def test_reuse_distance_and_popularity() -> None:
    # accesses: a b a c a b  -> reuse gaps: a 2, a 2, b 4
    t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 3], [1, 2]], block_size=16)
    s = trace_stats(t)
    assert s.reuse_fraction == 3 / 6
    assert (s.reuse_p50, s.reuse_p90, s.reuse_p99) == (2.0, 4.0, 4.0)
    assert s.max_access_count == 3
    assert s.top1pct_share == 3 / 6  # top 1 block of 3 (at least one block)
    assert s.top10pct_share == 3 / 6


def test_empty_and_single() -> None:
    s = trace_stats(Trace.from_lists(ts_ns=[5], keys=[[]], input_len=[0]))
    assert (s.requests, s.keys, s.unique_blocks, s.ideal_block_hit_rate) == (1, 0, 0, 0.0)
    assert s.requests_per_s == 0.0 and s.reuse_p50 == 0.0 and s.top1pct_share == 0.0


def reference(t: Trace) -> tuple[list[int], list[int], dict[tuple[int, int], int]]:
    """Plain-Python model of the contract: hit blocks, reuse gaps, access counts."""
    written: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    counts: dict[tuple[int, int], int] = {}
    hits, gaps = [], []
    for r in range(t.n_requests):
        ks = t.request_keys(r).tolist()
        inst = int(t.instance[r])
        n = 0
        if t.kind[r] != KIND_WRITE:
            for k in ks:
                if written.get((inst, k), r) < r:
                    n += 1
                else:
                    break
        hits.append(n)
        for j, k in enumerate(ks):
            a = int(t.offsets[r]) + j
            if (inst, k) in last:
                gaps.append(a - last[(inst, k)])
            last[(inst, k)] = a
            counts[(inst, k)] = counts.get((inst, k), 0) + 1
            if t.kind[r] != KIND_READ:
                written.setdefault((inst, k), r)
    return hits, gaps, counts


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.lists(st.integers(0, 6), max_size=6),
            st.sampled_from(["a", "b"]),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_matches_reference_model(data: list[tuple[list[int], str, int]]) -> None:
    keys, insts, kinds = zip(*data, strict=True)
    t = Trace.from_lists(ts_ns=list(range(len(data))), keys=keys, block_size=4, instance=insts)
    t = replace(t, kind=np.array(kinds, np.int8))
    hits, gaps, counts = reference(t)
    assert ideal_hit_blocks(t).tolist() == hits
    s = trace_stats(t)
    assert s.unique_blocks == len(counts)
    assert s.reuse_fraction == (len(gaps) / t.n_keys if t.n_keys else 0.0)
    if gaps:
        assert s.reuse_p50 == float(np.percentile(gaps, 50, method="inverted_cdf"))
        assert s.reuse_p99 <= max(gaps)
    assert s.max_access_count == max(counts.values(), default=0)


def test_trace_diff() -> None:
    a = Trace.from_lists(ts_ns=[0, 1], keys=[[1], [2, 3]], block_size=16)
    assert trace_diff(a, a) == []
    b = replace(a, keys=np.array([1, 2, 4]), session=np.array([1, 1]))
    assert trace_diff(a, b) == ["keys", "session"]
    assert trace_diff(a, b, columns=("ts_ns",)) == []

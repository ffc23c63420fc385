"""kvsim against libCacheSim: head-first LRU on the flattened block stream.

With ``tail="keep"`` (every hash id), batch match (each block on its own) and the
head-first commit order, kvsim's cache is a plain block-level LRU over the stream of
all keys of all requests in order, which is what libCacheSim's LRU computes over
unit-size objects (``cache_size`` counts objects).
"""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.config import KVSimConfig
from kvsim.sim.replay import replay
from kvsim.trace.readers import read_trace

lcs = pytest.importorskip("libcachesim")

CAPACITIES = (1000, 5859, 20000, 97656)

# oracleGeneral record: uint32 clock time, uint64 obj_id, uint32 obj_size, int64 next vtime
ORACLE_GENERAL = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])


@pytest.fixture(scope="module")
def trace(mooncake_path):
    return read_trace(mooncake_path, "mooncake", tail="keep")


@pytest.fixture(scope="module")
def oracle_file(trace, tmp_path_factory):
    assert ORACLE_GENERAL.itemsize == 24  # struct "<IQIq", packed
    n = trace.n_keys
    rec = np.zeros(n, dtype=ORACLE_GENERAL)
    rec["t"] = np.arange(n)
    rec["id"] = trace.keys.astype(np.uint64)
    rec["size"] = 1
    rec["next"] = -1
    path = tmp_path_factory.mktemp("lcs") / "mooncake_blocks.oracleGeneral.bin"
    rec.tofile(path)
    return path


def _lcs_hits(path, capacity: int, n: int) -> int:
    cache = lcs.LRU(cache_size=capacity)
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, byte_miss_ratio = cache.process_trace(reader)
    assert miss_ratio == pytest.approx(byte_miss_ratio)  # unit sizes: objects == bytes
    return round((1.0 - miss_ratio) * n)


def test_tail_keep_keeps_every_hash_id(trace) -> None:
    assert trace.n_keys == 288_500  # 276,491 full blocks + one partial tail per request
    assert trace.n_keys > 276_491


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_lru_head_first_batch_equals_libcachesim_lru(trace, oracle_file, capacity: int) -> None:
    cfg = KVSimConfig.single_cache(capacity_blocks=capacity, policy="lru_head_first",
                                   match="batch", tail="keep")
    ours = int(replay(trace, cfg).hit_blocks.sum())
    theirs = _lcs_hits(oracle_file, capacity, trace.n_keys)
    assert ours == theirs


def test_c_trace_path_equals_per_request_get(trace, tmp_path) -> None:
    """The C ``process_trace`` route, libCacheSim's per-request ``get`` and kvsim agree
    on a prefix of the trace (so the file format and the hit count are read right)."""
    head = trace.head(1500)
    rec = np.zeros(head.n_keys, dtype=ORACLE_GENERAL)
    rec["t"] = np.arange(head.n_keys)
    rec["id"] = head.keys.astype(np.uint64)
    rec["size"] = 1
    rec["next"] = -1
    path = tmp_path / "head.oracleGeneral.bin"
    rec.tofile(path)
    cache = lcs.LRU(cache_size=500)
    req = lcs.Request()
    req.obj_size = 1
    per_request = 0
    for k in head.keys.tolist():
        req.obj_id = k
        per_request += bool(cache.get(req))
    ours = int(replay(head, KVSimConfig.single_cache(
        capacity_blocks=500, policy="lru_head_first", match="batch")).hit_blocks.sum())
    assert 0 < per_request < head.n_keys
    assert _lcs_hits(path, 500, head.n_keys) == per_request == ours

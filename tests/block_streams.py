"""Block streams (one key per request) shared by the reference suites
(``test_reference_libcachesim.py``, ``test_reference_transcriptions.py``)."""

from __future__ import annotations

import numpy as np

from kvsim.trace.model import Trace


def block_stream(keys: np.ndarray, block_size: int = 16) -> Trace:
    """A trace of one request per key (1 ns apart), each of one full block."""
    n = int(keys.shape[0])
    return Trace(
        ts_ns=np.arange(n, dtype=np.int64), instance=np.zeros(n, dtype=np.int32),
        instances=("default",), offsets=np.arange(n + 1, dtype=np.int64),
        keys=np.ascontiguousarray(keys, dtype=np.int64),
        input_len=np.full(n, block_size, dtype=np.int64),
        output_len=np.zeros(n, dtype=np.int64), block_size=block_size,
        kind=np.zeros(n, dtype=np.int8), query_type=np.zeros(n, dtype=np.int8),
        sw_size=np.zeros(n, dtype=np.int32), source="<block stream>",
    )


def generated_keys(n: int = 60_000, seed: int = 16) -> np.ndarray:
    """Zipf(1.1) reuse over 5,000 keys with a one-hit scan of 300 new keys every 4,000."""
    rng = np.random.default_rng(seed)
    hot = rng.zipf(1.1, n) % 5000
    out = []
    fresh = 1_000_000
    for start in range(0, n, 4000):
        out.append(hot[start:start + 4000])
        out.append(np.arange(fresh, fresh + 300))
        fresh += 300
    return np.concatenate(out).astype(np.int64)

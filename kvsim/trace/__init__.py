"""Traces: the in-memory model, readers, writers, statistics and a generator.

Example:
    >>> from kvsim.trace import GenSpec, generate_trace, trace_stats
    >>> s = trace_stats(generate_trace(GenSpec(seed=0, requests=100)))
    >>> s.requests
    100
"""

from kvsim.trace.generator import SESSION_TYPES, GenSpec, generate_trace
from kvsim.trace.hashing import CHAIN_ROOT, chain_ids, kvcm_token_keys, token_block_keys
from kvsim.trace.model import (
    KIND_READ,
    KIND_REQUEST,
    KIND_WRITE,
    QT_BATCH,
    QT_PREFIX,
    QT_SW,
    Trace,
    TraceError,
)
from kvsim.trace.readers import (
    DEFAULT_BLOCK_SIZE,
    FORMATS,
    TraceWarning,
    detect_format,
    read_agentic,
    read_bailian,
    read_kvcm,
    read_mooncake,
    read_parquet,
    read_requests,
    read_trace,
)
from kvsim.trace.stats import TraceStats, ideal_hit_blocks, trace_diff, trace_stats
from kvsim.trace.writers import (
    write_bailian,
    write_kvcm,
    write_mooncake,
    write_parquet,
    write_trace,
)

__all__ = [
    "CHAIN_ROOT",
    "DEFAULT_BLOCK_SIZE",
    "FORMATS",
    "KIND_READ",
    "KIND_REQUEST",
    "KIND_WRITE",
    "QT_BATCH",
    "QT_PREFIX",
    "QT_SW",
    "SESSION_TYPES",
    "GenSpec",
    "Trace",
    "TraceError",
    "TraceStats",
    "TraceWarning",
    "chain_ids",
    "detect_format",
    "generate_trace",
    "ideal_hit_blocks",
    "kvcm_token_keys",
    "read_agentic",
    "read_bailian",
    "read_kvcm",
    "read_mooncake",
    "read_parquet",
    "read_requests",
    "read_trace",
    "token_block_keys",
    "trace_diff",
    "trace_stats",
    "write_bailian",
    "write_kvcm",
    "write_mooncake",
    "write_parquet",
    "write_trace",
]

"""Replay a trace chunk by chunk, in memory bounded by the chunk and the cache.

:func:`replay` in :mod:`kvsim.sim.replay` holds the whole trace (its keys are most of
the memory of a large trace). :func:`replay_chunks` feeds the core one chunk at a
time (:func:`iter_parquet_chunks` reads a parquet trace by row groups), so a trace
larger than memory replays with the chunk, the block table (sized by the groups'
capacities, growing only when a group is unbounded) and 48 bytes per request of
outcomes. It is the same replay loop (:class:`~kvsim.sim.replay.Replayer`) fed chunk by
chunk, so the outcomes are the same integers as the whole-trace replay's (a test holds
them equal, in both flows and with a storage health schedule), provided the chunks are
in time order.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[1, 2, 3], keys=[[1, 2], [1, 2, 3], [1]])
    >>> r = replay_chunks([t.head(2), t.select(np.array([2]))],
    ...                   KVSimConfig.single_cache(capacity_blocks=8))
    >>> r.hit_blocks.tolist()
    [0, 2, 1]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kvsim.config import KVSimConfig
from kvsim.sim.replay import Replayer, table_rows
from kvsim.trace.model import Trace, TraceError
from kvsim.trace.readers import parquet_table_trace

__all__ = ["ChunkedReplay", "iter_parquet_chunks", "replay_chunks"]


def iter_parquet_chunks(path: str | Path, *, rows: int = 1 << 16,
                        block_size: int | None = None) -> Iterator[Trace]:
    """The requests of a kvsim parquet trace, ``rows`` at a time (read by batches of
    row groups, never the whole file).

    Raises:
        TraceError: unreadable file or a malformed chunk (the message names the file
            and row).
    """
    p = Path(path)
    try:
        pf = pq.ParquetFile(p)
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{p}: cannot read parquet: {e}") from None
    schema_md = pf.schema_arrow.metadata
    row0 = 0
    try:
        batches = pf.iter_batches(batch_size=max(1, int(rows)))
        for batch in batches:
            table = pa.Table.from_batches([batch]).replace_schema_metadata(schema_md)
            yield parquet_table_trace(p, table, block_size=block_size, row0=row0)
            row0 += batch.num_rows
    except pa.ArrowException as e:
        raise TraceError(f"{p}: cannot read parquet (after row {row0}): {e}") from None


@dataclass
class ChunkedReplay:
    """Per-request outcomes of :func:`replay_chunks` (in request order over all chunks)
    and the totals the rates need.

    Attributes:
        hit_blocks, internal_hits, internal_reads, cached_blocks, group_used, evicted:
            as in :class:`kvsim.sim.replay.ReplayResult`.
        read_blocks: block reads (requests that read).
        input_tokens: input tokens of requests that read.
        hit_tokens: ``sum(min(hit_blocks * block_size, input_len))`` over reads.
        chunks: how many chunks were fed.
        peak_rows: the block table's rows at the end (its memory is rows x bytes/row).
        elapsed_s: time in the kernels (compile excluded).
    """

    hit_blocks: np.ndarray
    internal_hits: np.ndarray
    internal_reads: np.ndarray
    cached_blocks: np.ndarray
    group_used: np.ndarray
    evicted: np.ndarray
    read_blocks: int
    input_tokens: int
    hit_tokens: int
    chunks: int
    peak_rows: int
    elapsed_s: float

    @property
    def token_hit_rate(self) -> float:
        """Hit tokens over input tokens (the contract's aggregate)."""
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0


def replay_chunks(chunks: Iterable[Trace], config: KVSimConfig, *,
                  flow: str = "combined") -> ChunkedReplay:
    """Replay the chunks of one trace, in order, through one core: the replay loop of
    :func:`kvsim.sim.replay.replay` (:class:`~kvsim.sim.replay.Replayer`) fed chunk by
    chunk.

    Args:
        chunks: traces in time order (each sorted; a chunk may not start before the
            previous one ended). Instances are matched by name across chunks.
        config: groups, instances, replay options, the reclaim cadence and schedule.
        flow: ``combined`` or ``client`` (see :func:`kvsim.sim.replay.replay`).

    Raises:
        TraceError: a chunk starts before the previous chunk's last request, or no chunk
            holds a request.
    """
    run: Replayer | None = None
    outs: list[list[np.ndarray]] = [[] for _ in range(6)]
    for tr in chunks:
        if tr.n_requests == 0:
            continue
        if run is None:  # the table is sized by the capacities, not by the trace
            run = Replayer(tr, config, rows=table_rows(config, int(tr.key_counts().max())),
                           flow=flow)
        for j, o in enumerate(run.feed(tr)):
            outs[j].append(o)
    if run is None:
        raise TraceError("replay_chunks: no requests in any chunk")
    cat = [np.concatenate(x) for x in outs]
    return ChunkedReplay(
        hit_blocks=cat[0], internal_hits=cat[1], internal_reads=cat[2], cached_blocks=cat[3],
        group_used=cat[4], evicted=cat[5], read_blocks=run.read_blocks,
        input_tokens=run.input_tokens, hit_tokens=run.hit_tokens, chunks=run.fed,
        peak_rows=run.mgr.table.rows, elapsed_s=run.elapsed_s,
    )

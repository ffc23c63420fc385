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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kvsim.config import KVSimConfig
from kvsim.sim.misses import StreamIdeal
from kvsim.sim.replay import Replayer, ReplayResult, default_label, table_rows
from kvsim.trace.model import Trace, TraceError
from kvsim.trace.readers import iter_jsonl_chunks, parquet_table_trace

__all__ = ["ChunkedReplay", "StreamedSweep", "iter_jsonl_chunks", "iter_parquet_chunks",
           "replay_chunks", "sweep_chunks"]


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


class _Columns:
    """Every request's columns of the chunks seen so far, without their keys."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("ts_ns", "instance", "input_len", "output_len", "kind",
                            "query_type", "sw_size", "counts")}
        self.block_size = 0
        self.source = "<chunks>"

    def add(self, tr: Trace) -> None:
        if not self.block_size:
            self.block_size, self.source = tr.block_size, tr.source
        code = np.asarray([self.names.setdefault(n, len(self.names)) for n in tr.instances],
                          dtype=np.int32)
        for k in ("ts_ns", "input_len", "output_len", "kind", "query_type", "sw_size"):
            self.cols[k].append(getattr(tr, k))
        self.cols["instance"].append(code[tr.instance])
        self.cols["counts"].append(tr.key_counts())

    def trace(self) -> Trace:
        """A trace of every request's columns whose keys take no memory (one zero, read
        everywhere): what the reports read (counts, tokens, times, instances)."""
        c = {k: np.concatenate(v) for k, v in self.cols.items()}
        offsets = np.zeros(c["counts"].shape[0] + 1, dtype=np.int64)
        np.cumsum(c["counts"], out=offsets[1:])
        return Trace(ts_ns=c["ts_ns"], instance=c["instance"], instances=tuple(self.names),
                     offsets=offsets,
                     keys=np.broadcast_to(np.zeros(1, dtype=np.int64), (int(offsets[-1]),)),
                     input_len=c["input_len"], output_len=c["output_len"],
                     block_size=self.block_size, kind=c["kind"], query_type=c["query_type"],
                     sw_size=c["sw_size"], source=self.source)


@dataclass
class StreamedSweep:
    """What :func:`sweep_chunks` returns: the fields of
    :class:`~kvsim.sim.sweep.SweepResult` and the ideal hits per request by match mode
    (for :func:`~kvsim.sim.misses.replay_misses`: the results' trace has no keys).

    Attributes:
        results: one :class:`~kvsim.sim.replay.ReplayResult` per config; ``trace`` holds
            every request's columns but no keys.
        ideal: the unbounded-cache figures (:func:`kvsim.sim.replay.ideal`'s), or None.
        ideal_hits: match mode -> int64[n] hits of an unbounded cache.
        jobs: 1 (one process feeds every run).
        chunks: chunks read.
    """

    results: list[ReplayResult]
    ideal: dict[str, Any] | None
    ideal_hits: dict[str, np.ndarray] = field(default_factory=dict)
    jobs: int = 1
    chunks: int = 0


def sweep_chunks(chunks: Iterable[Trace], configs: Sequence[KVSimConfig], *,
                 labels: Sequence[str | None] | None = None, flow: str = "combined",
                 with_ideal: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> StreamedSweep:
    """Replay every config on one pass over a trace's chunks (each chunk is parsed once
    and fed to every run), in memory bounded by a chunk, the runs' block tables, the
    written keys of the ideal (8 bytes per distinct block) and ~50 bytes per request and
    run of outcomes and columns.

    The results are :func:`kvsim.sim.sweep.run_sweep`'s integers (a test holds them
    equal): the same replay loop (:class:`~kvsim.sim.replay.Replayer`), and the ideal
    (:class:`~kvsim.sim.misses.StreamIdeal`) as the whole trace's.

    Args:
        chunks: traces in time order (:func:`iter_jsonl_chunks`, :func:`iter_parquet_chunks`).
        configs: one config per run.
        labels: a label per run (``None``: the replay's default).
        flow: ``combined`` or ``client``.
        with_ideal: also the unbounded cache's figures.
        progress: called as ``progress(requests_done, 0)`` after each chunk (the total is
            not known ahead).

    Raises:
        TraceError: no request in any chunk, or chunks out of time order.
    """
    from kvsim.sim.sweep import IDEAL_KEYS

    labels = list(labels) if labels is not None else [None] * len(configs)
    runs: list[Replayer] = []
    outs: list[list[list[np.ndarray]]] = [[[] for _ in range(6)] for _ in configs]
    matches = sorted({c.replay.match for c in configs} | ({"prefix"} if with_ideal else set()))
    ideals = {m: StreamIdeal(match=m) for m in matches}
    ideal_parts: dict[str, list[np.ndarray]] = {m: [] for m in matches}
    cols = _Columns()
    done = n_chunks = 0
    for tr in chunks:
        if tr.n_requests == 0:
            continue
        if not runs:
            longest = int(tr.key_counts().max())
            runs = [Replayer(tr, c, rows=table_rows(c, longest), flow=flow) for c in configs]
        for run, o in zip(runs, outs, strict=True):
            for j, a in enumerate(run.feed(tr)):
                o[j].append(a)
        for m, st in ideals.items():
            ideal_parts[m].append(st.feed(tr))
        cols.add(tr)
        done += tr.n_requests
        n_chunks += 1
        if progress is not None:
            progress(done, 0)
    if not runs:
        raise TraceError("sweep_chunks: no requests in any chunk")
    trace = cols.trace()
    results = []
    for cfg, label, run, o in zip(configs, labels, runs, outs, strict=True):
        cat = [np.concatenate(x) for x in o]
        if label is None:
            label = default_label(cfg, flow)
        results.append(ReplayResult(
            label=label, trace=trace, config=cfg, group_of_instance=_groups(cfg, trace),
            hit_blocks=cat[0], internal_hits=cat[1], internal_reads=cat[2],
            cached_blocks=cat[3], group_used=cat[4], evicted=cat[5], elapsed_s=run.elapsed_s,
            capacity_units={g.name: g.capacity_units() for g in cfg.groups},
            evicted_by_trigger=dict(run.mgr.evicted_by_trigger)))
    hits = {m: np.concatenate(v) for m, v in ideal_parts.items()}
    figs = None
    if with_ideal:
        zero = np.zeros(trace.n_requests, dtype=np.int64)
        ideal_cfg = KVSimConfig.single_cache(capacity_blocks=0)
        r = ReplayResult(label="ideal", trace=trace, config=ideal_cfg,
                         group_of_instance=("default",) * len(trace.instances),
                         hit_blocks=hits["prefix"], internal_hits=zero, internal_reads=zero,
                         cached_blocks=zero, group_used=zero, evicted=zero, elapsed_s=0.0)
        s = r.summary()
        figs = {k: s[k] for k in IDEAL_KEYS}
    return StreamedSweep(results=results, ideal=figs, ideal_hits=hits, chunks=n_chunks)


def _groups(config: KVSimConfig, trace: Trace) -> tuple[str, ...]:
    """The group of each of ``trace``'s instances (as :func:`kvsim.sim.replay.build_manager`
    registers them: listed, or the default group)."""
    listed = {s.instance_id: s.group for s in config.instances}
    return tuple(listed.get(n, config.replay.default_group) for n in trace.instances)

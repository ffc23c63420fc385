"""What a KV-event recording tells: residency, lifetimes and re-stores after removal.

Engines publish stores and removals, never lookups, so a recording is **not a hit-rate
trace**: it cannot say which requests hit. It does say, per cache, which blocks were
resident when and for how long, and how often a block was stored again after the
engine removed it. A re-store after a removal means the engine needed the block again
after evicting it: a cache that had kept it would have served that request from the
cache. The count of such re-stores is therefore a **lower bound on the misses a larger
cache would have saved** (lower, because a block needed again but not recomputed, or
needed by a request that did not store it, is not seen). Re-stores after an
``AllBlocksCleared`` (an explicit reset) are counted apart and not in that bound.

A cache is one ``(source, dp_rank, medium, group_idx)``; ``AllBlocksCleared`` clears
every cache of its ``(source, dp_rank)``. Times are the batches' engine timestamps.
Definitions:

* *store*: a hash of a ``BlockStored`` not resident in its cache (then resident);
  *duplicate store*: one already resident (nothing changes).
* *removal*: a hash of a ``BlockRemoved`` that is resident (its residency interval ends:
  a *lifetime* = removal time - store time); *unknown removal*: not resident (stored
  before the recording began, or lost in a gap).
* *re-store after removal*: a store of a hash this cache removed (or saw removed)
  earlier in the recording.
* *residency per block*: a block's total resident time over its intervals, the open
  ones closed at the recording's last timestamp.
* resident blocks over time: ``peak`` and the time-weighted ``mean`` per medium.

Example:
    >>> from kvsim.trace.kv_events import EventBatch, KVEvent, RecordedBatch
    >>> st = lambda *h: KVEvent("BlockStored", block_hashes=h, block_size=16)
    >>> rm = lambda *h: KVEvent("BlockRemoved", block_hashes=h)
    >>> bs = [RecordedBatch("e", i, EventBatch(float(i), (ev,)))
    ...       for i, ev in enumerate([st(1, 2), rm(1), st(1), rm(9)])]
    >>> s = event_stats(bs)
    >>> s.stores, s.removals, s.restores_after_removal, s.unknown_removals
    (3, 1, 1, 1)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kvsim.trace.kv_events import (
    ALL_BLOCKS_CLEARED,
    BLOCK_REMOVED,
    BLOCK_STORED,
    RecordedBatch,
)

__all__ = ["EventStats", "MediumStats", "event_stats"]

NOT_A_HIT_RATE = ("KV events carry stores and removals, never lookups: this is not a "
                  "hit-rate trace.")


@dataclass
class MediumStats:
    """Per medium (``GPU``, ``CPU``, ...; ``-`` when the engine names none)."""

    stores: int = 0
    removals: int = 0
    distinct_blocks: int = 0
    peak_resident: int = 0
    mean_resident: float = 0.0
    resident_at_end: int = 0
    restores_after_removal: int = 0


@dataclass
class EventStats:
    """Summary of a KV-event recording (see the module docstring for the definitions)."""

    batches: int = 0
    events: int = 0
    sources: int = 0
    caches: int = 0
    duration_s: float = 0.0
    stores: int = 0
    duplicate_stores: int = 0
    removals: int = 0
    unknown_removals: int = 0
    clears: int = 0
    cleared_blocks: int = 0
    distinct_blocks: int = 0
    restores_after_removal: int = 0
    restored_tokens_after_removal: int = 0
    restores_after_clear: int = 0
    lifetime_p50_s: float = 0.0
    lifetime_p90_s: float = 0.0
    lifetime_p99_s: float = 0.0
    lifetime_max_s: float = 0.0
    completed_lifetimes: int = 0
    residency_p50_s: float = 0.0
    residency_p90_s: float = 0.0
    residency_max_s: float = 0.0
    restore_gap_p50_s: float = 0.0
    restore_gap_p90_s: float = 0.0
    gaps: int = 0
    gap_batches: int = 0
    media: dict[str, MediumStats] = field(default_factory=dict)
    note: str = NOT_A_HIT_RATE

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable)."""
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf")) if values else 0.0


def event_stats(batches: Sequence[RecordedBatch] | Iterable[RecordedBatch],
                gaps: Sequence[dict[str, Any]] = ()) -> EventStats:
    """Compute :class:`EventStats` over recorded batches (in recording order per source).

    Args:
        batches: the recording (e.g. from :func:`~kvsim.trace.kv_events.read_recording`).
        gaps: the recording's lost batch ranges (its metadata), reported as such.

    Returns:
        The statistics.
    """
    bl = sorted(batches, key=lambda b: (b.source, b.seq))
    s = EventStats()
    # per cache: resident key -> store time; keys removed at least once
    resident: dict[tuple[Any, ...], dict[int, float]] = defaultdict(dict)
    removed: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    cleared: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    removed_at: dict[tuple[Any, ...], dict[int, float]] = defaultdict(dict)
    distinct: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    res_time: dict[tuple[Any, ...], float] = defaultdict(float)  # (cache, key) -> seconds
    media: dict[str, MediumStats] = defaultdict(MediumStats)
    count: dict[str, int] = defaultdict(int)  # resident blocks per medium
    area: dict[str, float] = defaultdict(float)  # integral of count dt per medium
    last_t: dict[str, float] = {}
    lifetimes: list[float] = []
    restore_gaps: list[float] = []
    t0 = min((b.batch.ts for b in bl), default=0.0)
    t_end = max((b.batch.ts for b in bl), default=0.0)
    sources = set()

    def advance(medium: str, t: float) -> None:
        if medium in last_t and t > last_t[medium]:
            area[medium] += count[medium] * (t - last_t[medium])
        last_t[medium] = max(t, last_t.get(medium, t))

    def end_interval(cache: tuple[Any, ...], key: int, t: float) -> float:
        t_store = resident[cache].pop(key)
        res_time[(cache, key)] += t - t_store
        return t - t_store

    for rb in bl:
        b = rb.batch
        s.batches += 1
        s.events += len(b.events)
        sources.add(rb.source)
        t = b.ts
        for e in b.events:
            if e.type == ALL_BLOCKS_CLEARED:
                s.clears += 1
                for cache in list(resident):
                    if cache[:2] != (rb.source, b.dp_rank):
                        continue
                    med = cache[2]
                    advance(med, t)
                    for key in list(resident[cache]):
                        end_interval(cache, key, t)
                        cleared[cache].add(key)
                        s.cleared_blocks += 1
                        count[med] -= 1
                continue
            med = e.medium or "-"
            cache = (rb.source, b.dp_rank, med, e.group_idx)
            m = media[med]
            advance(med, t)
            if e.type == BLOCK_STORED:
                for key in e.block_hashes:
                    if key in resident[cache]:
                        s.duplicate_stores += 1
                        continue
                    s.stores += 1
                    m.stores += 1
                    distinct[med].add((cache, key))
                    if key in removed[cache]:
                        s.restores_after_removal += 1
                        m.restores_after_removal += 1
                        s.restored_tokens_after_removal += e.block_size or 0
                        if key in removed_at[cache]:
                            restore_gaps.append(t - removed_at[cache][key])
                    elif key in cleared[cache]:
                        s.restores_after_clear += 1
                    resident[cache][key] = t
                    count[med] += 1
                    m.peak_resident = max(m.peak_resident, count[med])
            elif e.type == BLOCK_REMOVED:
                for key in e.block_hashes:
                    removed[cache].add(key)
                    removed_at[cache][key] = t
                    if key not in resident[cache]:
                        s.unknown_removals += 1
                        continue
                    lifetimes.append(end_interval(cache, key, t))
                    s.removals += 1
                    m.removals += 1
                    count[med] -= 1
    for cache, keys in resident.items():
        for key, t_store in keys.items():
            res_time[(cache, key)] += t_end - t_store
    span = t_end - t0
    for med, m in media.items():
        advance(med, t_end)
        m.distinct_blocks = len(distinct[med])
        m.resident_at_end = count[med]
        m.mean_resident = area[med] / span if span > 0 else float(count[med])
    s.media = dict(sorted(media.items()))
    s.sources = len(sources)
    s.caches = len({c for c in resident} | {c for c in removed})
    s.duration_s = span
    s.distinct_blocks = sum(m.distinct_blocks for m in media.values())
    s.completed_lifetimes = len(lifetimes)
    s.lifetime_p50_s = _pct(lifetimes, 50)
    s.lifetime_p90_s = _pct(lifetimes, 90)
    s.lifetime_p99_s = _pct(lifetimes, 99)
    s.lifetime_max_s = max(lifetimes, default=0.0)
    res = list(res_time.values())
    s.residency_p50_s = _pct(res, 50)
    s.residency_p90_s = _pct(res, 90)
    s.residency_max_s = max(res, default=0.0)
    s.restore_gap_p50_s = _pct(restore_gaps, 50)
    s.restore_gap_p90_s = _pct(restore_gaps, 90)
    s.gaps = len(gaps)
    s.gap_batches = sum(int(g.get("end", 0)) - int(g.get("first", 0)) for g in gaps)
    return s

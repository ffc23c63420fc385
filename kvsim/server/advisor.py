"""The live capacity advisor: what more (or less) cache would buy each instance group.

The service hands the advisor every read (``getCacheLocation``: instance, keys, mask,
the blocks it hit) and every finished write (the keys it left held) as they happen:
one list append under the service lock. On the background tick, :meth:`Advisor.process`
feeds them, per group, to an :class:`~kvsim.optimizer.online_curve.OnlineCurve` (the
one-pass LRU stack of ``kvsim curve``; reads peek, writes commit, as
``kvsim curve EVENTLOG --format kvcm-events --read-rows peek`` computes them) and adds
the hit blocks an LRU cache of each capacity on a factor grid of the group's quota
(1/8x .. 8x) would have served to per-minute and per-hour rings and to totals since
start. The figures equal ``kvsim curve`` of the server's own event log at sample rate 1,
and are estimates (a spatial key sample) below it.

Misses, per group: ``compulsory`` (what an unbounded LRU cache misses too: a key's
first access and, under prefix semantics, the blocks after it in the same read),
``session_failed`` (its write session expired or failed), ``unusable`` (held on a
storage that is disabled or failing its health probe: the prefix stopped there) and
``capacity`` (the rest: written, then evicted or removed, or past a prefix break; the
part a bigger quota buys).

Example:
    >>> a = Advisor(sample_rate=1.0)
    >>> a.note_write("g", "i0", [1, 2], 0)
    >>> a.note_read("g", "i0", np.array([1, 2, 3]), None, 2, 0, 60 * 10**9)
    >>> a.process({"g": 4}, 60 * 10**9)
    2
    >>> grp = a.advice(now_ns=60 * 10**9)["groups"][0]
    >>> grp["windows"]["since_start"]["hit_blocks"][grp["factors"].index(1.0)]
    2.0
    >>> grp["windows"]["since_start"]["misses"]["compulsory"]
    1.0
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import numpy as np

from kvsim.optimizer.online_curve import OnlineCurve

__all__ = ["FACTORS", "WINDOWS", "Advisor"]

#: capacity factors of the quota: 2**(k/4) for k = -12..12 (1/8x .. 8x, 25 points)
FACTORS: tuple[float, ...] = tuple(float(2.0 ** (k / 4)) for k in range(-12, 13))
MINUTE_NS = 60 * 10**9
_MINUTES = 60  # the last hour, per minute
_HOURS = 24  # the last day, per hour
WINDOWS = ("hour", "day", "since_start")
MISS_REASONS = ("compulsory", "capacity", "unusable", "session_failed")
# fixed columns of a bucket row, then one column per capacity (sampled weighted hits)
# _S_IDEAL: sampled weighted hits of an unbounded cache (its misses are compulsory)
_READS, _S_READS, _ACTUAL, _S_IDEAL, _UNUSABLE, _SESSION, _REQUESTS, _UNMASKED = range(8)
_FIXED = 8
MAX_PENDING = 1 << 20  # notes kept between ticks; beyond this, notes are dropped (counted)


class _Ring:
    """Per-bucket rows in a ring of ``size`` slots (slot = bucket id mod size)."""

    def __init__(self, size: int, width: int) -> None:
        self.ids = np.full(size, -1, dtype=np.int64)
        self.rows = np.zeros((size, width), dtype=np.float64)

    def add(self, bucket: int, row: np.ndarray) -> None:
        s = bucket % self.ids.shape[0]
        if self.ids[s] != bucket:
            self.ids[s] = bucket
            self.rows[s] = 0.0
        self.rows[s] += row

    def window(self, last: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket ids, rows) of buckets in ``(last - size, last]``, oldest first."""
        size = self.ids.shape[0]
        sel = (self.ids > last - size) & (self.ids <= last) & (self.ids >= 0)
        order = np.argsort(self.ids[sel])
        return self.ids[sel][order], self.rows[sel][order]


class _Group:
    def __init__(self, name: str, quota_blocks: int, factors: np.ndarray, rate: float,
                 seed: int, now_ns: int) -> None:
        self.name = name
        self.factors = factors
        self.curve = OnlineCurve(self._caps(quota_blocks), sample_rate=rate, seed=seed)
        self._reset(quota_blocks, now_ns)
        self.failed: set[tuple[str, int]] = set()

    def _caps(self, quota_blocks: int) -> np.ndarray:
        """The grid's capacities, then 0 (unbounded: the compulsory misses)."""
        caps = np.maximum(1, np.rint(self.factors * quota_blocks)).astype(np.int64)
        return np.concatenate((caps, [0])).astype(np.int64)

    def _reset(self, quota_blocks: int, now_ns: int) -> None:
        self.quota_blocks = quota_blocks
        width = _FIXED + self.factors.shape[0]
        self.minutes = _Ring(_MINUTES, width)
        self.hours = _Ring(_HOURS, width)
        self.total = np.zeros(width, dtype=np.float64)
        self.since_ns = now_ns

    def set_quota(self, quota_blocks: int, now_ns: int) -> None:
        """A new quota: a new capacity grid; the windows restart, the stack is kept."""
        if quota_blocks != self.quota_blocks:
            self.curve.set_capacities(self._caps(quota_blocks))
            self._reset(quota_blocks, now_ns)


class Advisor:
    """Online per-group LRU capacity curves and miss reasons (see the module docstring).

    Args:
        sample_rate: key sampling rate (1 = exact; 0.01 keeps 1% of the keys plus chain
            roots and heavy keys).
        seed: which keys a sample keeps.
        factors: capacity factors of each group's quota.
    """

    def __init__(self, sample_rate: float = 1.0, *, seed: int = 0,
                 factors: tuple[float, ...] = FACTORS) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"advisor sample rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.factors = np.asarray(factors, dtype=np.float64)
        self._pending: list[tuple[Any, ...]] = []
        self._groups: dict[str, _Group] = {}
        self._inst_codes: dict[str, int] = {}
        self._lock = threading.Lock()  # guards the groups' figures (process vs advice)
        self._process_lock = threading.Lock()  # one process() at a time
        self.dropped = 0
        self.processed = 0
        self.process_seconds = 0.0

    # ------------------------------------------------------------ notes (the hot path)
    def note_read(self, group: str, instance: str, keys: np.ndarray, mask: np.ndarray | None,
                  hit_blocks: int, unusable: int, now_ns: int) -> None:
        """A prefix read: its keys (not modified afterwards), mask, the blocks it hit and
        how many more it would have hit if every storage were usable."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((0, group, instance, keys, mask, hit_blocks, unusable, now_ns))

    def note_write(self, group: str, instance: str, keys: Any, now_ns: int) -> None:
        """A finished write: the keys it left held, in request order (committed tail
        first, so the first key ends most recent)."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((1, group, instance, keys, None, 0, 0, now_ns))

    def note_failed(self, group: str, instance: str, keys: Any) -> None:
        """Keys whose write session expired or failed (a later read of them misses)."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((2, group, instance, keys, None, 0, 0, 0))

    # ------------------------------------------------------------ the tick
    def process(self, quota_blocks: Mapping[str, int], now_ns: int) -> int:
        """Feed the notes since the last call to the groups' curves; returns how many.

        Args:
            quota_blocks: each group's quota in blocks (the grid's 1x); groups not in it
                are dropped.
            now_ns: the server clock (for a group's ``since``).
        """
        with self._process_lock:  # one pass at a time (the tick, or a direct call)
            return self._process(quota_blocks, now_ns)

    def _process(self, quota_blocks: Mapping[str, int], now_ns: int) -> int:
        import time

        t0 = time.perf_counter()
        notes, self._pending = self._pending, []
        with self._lock:
            for name in [g for g in self._groups if g not in quota_blocks]:
                del self._groups[name]
            for name, q in quota_blocks.items():
                g = self._groups.get(name)
                if g is None:
                    self._groups[name] = _Group(name, q, self.factors, self.sample_rate,
                                                self.seed, now_ns)
                else:
                    g.set_quota(q, now_ns)
            by_group: dict[str, list[tuple[Any, ...]]] = {}
            names = set(map(itemgetter(1), notes))
            if len(names) == 1:  # the common case: no per-note Python
                name = names.pop()
                if name in self._groups:
                    by_group[name] = notes
            else:
                for n in notes:
                    if n[1] in self._groups:
                        by_group.setdefault(n[1], []).append(n)
            todo = [(self._groups[name], rows) for name, rows in by_group.items()]
        # the kernels run without the lock (only this thread touches the stacks); the
        # rings and totals are updated under it, so advice() never waits for a pass
        for g, rows in todo:
            self._feed(g, rows)
        self.processed += len(notes)
        self.process_seconds += time.perf_counter() - t0
        return len(notes)

    def _code(self, instance: str) -> int:
        c = self._inst_codes.get(instance)
        if c is None:
            c = self._inst_codes[instance] = len(self._inst_codes)
        return c

    def _feed(self, g: _Group, notes: list[tuple[Any, ...]]) -> None:
        """One group's notes, in order: columns by ``zip``, arrays by numpy (no per-row
        Python on the common path: reads and writes without failures or masks)."""
        if 2 in set(map(itemgetter(0), notes)):
            for n in notes:
                if n[0] == 2 and len(g.failed) < MAX_PENDING:  # remembered until written
                    g.failed.update((n[2], int(k)) for k in n[3])
            notes = [n for n in notes if n[0] != 2]
        if not notes:
            return
        kinds_t, _, insts_t, keys_t, masks_t, hits_t, unus_t, ts_t = zip(*notes, strict=True)
        lens = np.fromiter(map(len, keys_t), dtype=np.int64, count=len(notes))
        keep = lens > 0
        if not keep.all():  # finished writes that left nothing held
            idx = np.flatnonzero(keep).tolist()
            notes = [notes[i] for i in idx]
            if not notes:
                return
            kinds_t, _, insts_t, keys_t, masks_t, hits_t, unus_t, ts_t = zip(*notes,
                                                                             strict=True)
            lens = lens[keep]
        nrows = len(notes)
        offsets = np.zeros(nrows + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        keys = np.concatenate(keys_t).astype(np.int64, copy=False)
        is_read = np.asarray(kinds_t, dtype=np.int8) == 0
        mask = None
        n_masked = np.zeros(nrows, dtype=np.int64)
        if any(m is not None for m in masks_t):
            mask = np.zeros(keys.shape[0], dtype=np.bool_)
            for i, m in enumerate(masks_t):
                if m is not None:
                    mask[offsets[i]:offsets[i + 1]] = m
                    n_masked[i] = int(np.count_nonzero(m))
        minute = np.asarray(ts_t, dtype=np.int64) // MINUTE_NS
        for name in set(insts_t):
            self._code(name)
        inst = np.fromiter(map(self._inst_codes.__getitem__, insts_t), dtype=np.int64,
                           count=nrows)
        if g.failed:  # a written key is no longer a failed one
            for nt in notes:
                if nt[0] == 1:
                    g.failed.difference_update((nt[2], int(k)) for k in nt[3])
        fig = g.curve.feed_csr(minute, inst, offsets, keys, mask, is_read, ~is_read)
        nb = fig.buckets.shape[0]
        bidx = np.searchsorted(fig.buckets, minute)
        rd = is_read.astype(np.float64)
        extra = np.zeros((nb, _FIXED), dtype=np.float64)
        extra[:, _ACTUAL] = np.bincount(bidx, weights=np.asarray(hits_t, np.float64) * rd,
                                        minlength=nb)
        extra[:, _UNUSABLE] = np.bincount(bidx, weights=np.asarray(unus_t, np.float64) * rd,
                                          minlength=nb)
        extra[:, _REQUESTS] = np.bincount(bidx, weights=rd, minlength=nb)
        extra[:, _UNMASKED] = np.bincount(bidx, weights=(lens - n_masked) * rd, minlength=nb)
        if g.failed:
            for i, nt in enumerate(notes):
                if nt[0] == 0 and nt[5] < lens[i]:
                    extra[bidx[i], _SESSION] += sum((nt[2], int(x)) in g.failed
                                                    for x in nt[3][nt[5]:])
        k = self.factors.shape[0]
        with self._lock:
            for b, m in enumerate(fig.buckets.tolist()):
                row = np.empty(_FIXED + k, dtype=np.float64)
                row[:_FIXED] = extra[b]
                row[_READS] = fig.reads[b]
                row[_S_READS] = fig.s_reads[b]
                row[_S_IDEAL] = fig.s_hits[b, -1]
                row[_FIXED:] = fig.s_hits[b, :-1]
                g.minutes.add(m, row)
                g.hours.add(m // 60, row)
                g.total += row

    # ------------------------------------------------------------ answers
    def _figures(self, g: _Group, row: np.ndarray) -> dict[str, Any]:
        reads = float(row[_READS])
        s_reads = float(row[_S_READS])
        ratio = row[_FIXED:] / s_reads if s_reads > 0 else np.zeros(self.factors.shape[0])
        hits = ratio * reads
        if self.sample_rate >= 1.0:
            hits = np.rint(hits)
        misses = max(0.0, row[_UNMASKED] - row[_ACTUAL])
        ideal = float(row[_S_IDEAL]) / s_reads * reads if s_reads > 0 else 0.0
        first = max(0.0, reads - ideal)  # what an unbounded cache misses too
        session = min(float(row[_SESSION]), misses)
        unusable = min(float(row[_UNUSABLE]), misses - session)
        compulsory = min(max(0.0, first - session), misses - session - unusable)
        capacity = max(0.0, misses - session - unusable - compulsory)
        return {
            "read_blocks": int(reads), "requests": int(row[_REQUESTS]),
            "hit_blocks": [float(x) for x in hits],
            "hit_rate": [float(x) for x in (ratio if s_reads > 0 else hits)],
            "actual_hit_blocks": int(row[_ACTUAL]),
            "actual_hit_rate": float(row[_ACTUAL] / reads) if reads else 0.0,
            "misses": {"total": float(misses), "compulsory": float(round(compulsory, 3)),
                       "capacity": float(round(capacity, 3)), "unusable": float(unusable),
                       "session_failed": float(session)},
        }

    def advice(self, now_ns: int, group: str | None = None) -> dict[str, Any]:
        """Per group (and in total, every group at the same factor): the curves over the
        last hour, the last day and since start, the miss reasons, and a per-minute
        timeline of the last hour (actual hit rate and the predicted one at 1x)."""
        minute = now_ns // MINUTE_NS
        i1 = int(np.argmin(np.abs(self.factors - 1.0)))
        out: list[dict[str, Any]] = []
        with self._lock:
            totals = {w: np.zeros(_FIXED + self.factors.shape[0]) for w in WINDOWS}
            total_hits = {w: np.zeros(self.factors.shape[0]) for w in WINDOWS}
            for name in sorted(self._groups):
                g = self._groups[name]
                rows = {"hour": g.minutes.window(minute)[1].sum(axis=0)
                        if (g.minutes.ids >= 0).any() else np.zeros_like(g.total),
                        "day": g.hours.window(minute // 60)[1].sum(axis=0)
                        if (g.hours.ids >= 0).any() else np.zeros_like(g.total),
                        "since_start": g.total}
                wins = {}
                for w, r in rows.items():
                    if r.shape != g.total.shape:
                        r = np.zeros_like(g.total)
                    wins[w] = self._figures(g, r)
                    totals[w][:_FIXED] += r[:_FIXED]
                    total_hits[w] += np.asarray(wins[w]["hit_blocks"])
                ids, mrows = g.minutes.window(minute)
                timeline = []
                for m, r in zip(ids.tolist(), mrows, strict=True):
                    f = self._figures(g, r)
                    timeline.append({"minute_start_us": m * MINUTE_NS // 1000,
                                     "read_blocks": f["read_blocks"],
                                     "actual_hit_rate": f["actual_hit_rate"],
                                     "predicted_hit_rate": f["hit_rate"][i1]})
                if group is not None and name != group:
                    continue
                out.append({"name": name, "quota_blocks": g.quota_blocks,
                            "factors": [float(x) for x in self.factors],
                            "capacity_blocks": g.curve.capacities[:-1].tolist(),
                            "since_us": g.since_ns // 1000,
                            "tracked_keys": g.curve.tracked_keys,
                            "windows": wins, "timeline": timeline})
            total = {}
            for w in WINDOWS:
                reads = float(totals[w][_READS])
                total[w] = {"read_blocks": int(reads),
                            "hit_blocks": [float(x) for x in total_hits[w]],
                            "hit_rate": [float(x / reads) if reads else 0.0
                                         for x in total_hits[w]],
                            "actual_hit_rate": float(totals[w][_ACTUAL] / reads) if reads
                            else 0.0}
        return {"sample_rate": self.sample_rate, "factors": [float(x) for x in self.factors],
                "groups": out, "total": total, "dropped_notes": self.dropped,
                "processed_notes": self.processed,
                "process_seconds": round(self.process_seconds, 6)}

    def metrics(self, now_ns: int) -> list[tuple[str, float, dict[str, str]]]:
        """Prometheus rows: predicted block hit ratio per group and capacity factor over
        the last hour (``kvsim_advisor_hit_ratio``), and the group's curve grid."""
        adv = self.advice(now_ns)
        out: list[tuple[str, float, dict[str, str]]] = []
        for g in adv["groups"]:
            w = g["windows"]["hour"]
            for f, r in zip(g["factors"], w["hit_rate"], strict=True):
                out.append(("kvsim_advisor_hit_ratio", r,
                            {"group": g["name"], "factor": f"{f:g}", "window": "hour"}))
            for reason, v in w["misses"].items():
                out.append(("kvsim_advisor_miss_blocks", v,
                            {"group": g["name"], "reason": reason, "window": "hour"}))
        out.append(("kvsim_advisor_dropped_notes", self.dropped, {}))
        return out

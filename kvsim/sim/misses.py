"""Why blocks missed: the capacity advisor's breakdown, for replay and simulate summaries.

A missed block (read, not hit) is put in one of the server advisor's classes
(:mod:`kvsim.server.advisor`):

- ``compulsory``: an unbounded cache would have missed it too. That is the block's first
  access in its cache's key space (a block is never written before it is read), or a
  block after one in a prefix read (the prefix broke there).
- ``capacity``: the rest: a bigger quota would have hit it (evicted earlier; in
  ``simulate`` also a block written to another instance's local tier, or whose write
  failed or had not finished when it was read: see the ``counters``).
- ``unusable`` and ``session_failed``: blocks on an unusable storage and of expired or
  failed write sessions. The server's; a replay has neither (0).

``compulsory`` comes from :func:`ideal_hit_blocks`, one vectorised pass over the trace:
per request, the blocks an unbounded cache hits, with the replay contract's read rule
(``../shared/docs/replay-contract.md``): a key is cached once an earlier request in
timestamp order (ties in file order) wrote it, masked blocks are always hits, and a
``prefix`` read hits the leading run of cached keys (``batch``: every cached key).
The hit definition itself is unchanged: the hits are the run's own.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 3], [1, 2]], block_size=16)
    >>> ideal_hit_blocks(t).tolist()
    [0, 1, 2]
    >>> breakdown(read_blocks=6, hit_blocks=1, ideal_hits=3)
    {'total': 5, 'compulsory': 3, 'capacity': 2, 'unusable': 0, 'session_failed': 0}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

__all__ = ["MISS_REASONS", "StreamIdeal", "breakdown", "ideal_hit_blocks", "per_group",
           "replay_misses"]

#: The classes, in the order the server's advisor reports them.
MISS_REASONS = ("compulsory", "capacity", "unusable", "session_failed")


def ideal_hit_blocks(trace: Trace, *, match: str = "prefix",
                     by_instance: bool = True, prior: np.ndarray | None = None,
                     seen: list[np.ndarray] | None = None) -> np.ndarray:
    """int64[n]: per request, the blocks an unbounded cache would have hit.

    Args:
        trace: the trace (rows in file order; processed in timestamp order).
        match: ``"prefix"`` (the contract: the leading run of cached keys) or
            ``"batch"`` (every cached key).
        by_instance: keys are namespaced by instance (kvsim's block table keys blocks
            by instance and key, as the replay does); ``False``: one key space for the
            whole trace (a pool shared by every instance).
        prior: bool[n_keys]: keys cached before the trace's first request (the trace is
            one chunk of a longer one: :class:`StreamIdeal`).
        seen: one key space only (one instance, or ``by_instance=False``): ``[written]``,
            the sorted distinct keys written before the trace (another way to give
            ``prior``); replaced by the keys written up to the trace's end.

    Raises:
        ValueError: an unknown ``match``.
    """
    if match not in ("prefix", "batch"):
        raise ValueError(f"match must be 'prefix' or 'batch', not {match!r}")
    n = trace.n_requests
    counts = trace.key_counts().astype(np.int64)
    total = int(counts.sum())
    out = np.zeros(n, dtype=np.int64)
    if n == 0 or total == 0:
        return out
    order = np.argsort(trace.ts_ns, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    req = np.repeat(np.arange(n, dtype=np.int64), counts)
    pos_rank = rank[req]
    keys = trace.keys.astype(np.int64)
    uniq, ids = np.unique(keys, return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    if seen is not None:
        before = _member(uniq, seen[0])  # sorted queries: a cache-friendly search
        prior = before[ids] if prior is None else prior | before[ids]
    if by_instance and len(trace.instances) > 1:
        ids = ids * len(trace.instances) + trace.instance.astype(np.int64)[req]
        _, ids = np.unique(ids, return_inverse=True)
        ids = ids.reshape(-1)
    writes = (trace.kind != KIND_READ)[req]
    first_write = np.full(int(ids.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_write, ids[writes], pos_rank[writes])
    cached = first_write[ids] < pos_rank
    if seen is not None:  # the distinct keys written so far, still sorted
        fresh = uniq[(first_write[: uniq.shape[0]] != np.iinfo(np.int64).max) & ~before]
        if fresh.size:
            seen[0] = np.sort(np.concatenate([seen[0], fresh]), kind="stable")
    if prior is not None:
        cached |= prior
    if trace.mask is not None:
        cached |= trace.mask.astype(bool)
    if match == "prefix":
        local = np.arange(total, dtype=np.int64) - trace.offsets[:-1].astype(np.int64)[req]
        out[:] = counts
        miss = ~cached
        np.minimum.at(out, req[miss], local[miss])
    else:
        out[:] = np.bincount(req, weights=cached, minlength=n).astype(np.int64)
    out[trace.kind == KIND_WRITE] = 0
    return out


class StreamIdeal:
    """:func:`ideal_hit_blocks` of a trace fed chunk by chunk in time order: the keys
    written so far are kept (sorted, 8 bytes per distinct key and key space), so the
    hits of each chunk are those of the whole trace's pass.

    Example:
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 3], [1, 2]])
        >>> s = StreamIdeal()
        >>> [s.feed(t.head(1)).tolist(), s.feed(t.select(np.array([1, 2]))).tolist()]
        [[0], [1, 2]]
    """

    def __init__(self, *, match: str = "prefix", by_instance: bool = True) -> None:
        self.match = match
        self.by_instance = by_instance
        self.seen: dict[str, np.ndarray] = {}  # key space -> sorted keys written so far

    def _space(self, trace: Trace) -> np.ndarray:
        """The key space of each key (an index into ``trace.instances``, or 0)."""
        if not self.by_instance:
            return np.zeros(trace.n_keys, dtype=np.int64)
        return np.repeat(trace.instance.astype(np.int64), trace.key_counts())

    def feed(self, trace: Trace) -> np.ndarray:
        """int64[n]: the ideal hits of ``trace``'s requests (after those fed before)."""
        if len(trace.instances) == 1 or not self.by_instance:  # one key space
            name = trace.instances[0] if self.by_instance else ""
            box = [self.seen.get(name, np.zeros(0, dtype=np.int64))]
            out = ideal_hit_blocks(trace, match=self.match, by_instance=self.by_instance,
                                   seen=box)
            self.seen[name] = box[0]
            return out
        names = trace.instances
        space = self._space(trace)
        keys = trace.keys.astype(np.int64, copy=False)
        prior = np.zeros(trace.n_keys, dtype=bool)
        for j, name in enumerate(names):
            seen = self.seen.get(name)
            if seen is not None and seen.size:
                sel = space == j
                u, inv = np.unique(keys[sel], return_inverse=True)  # sorted queries:
                prior[sel] = _member(u, seen)[inv.reshape(-1)]  # a cache-friendly search
        out = ideal_hit_blocks(trace, match=self.match, by_instance=self.by_instance,
                               prior=prior)
        writes = np.repeat(trace.kind != KIND_READ, trace.key_counts())
        for j, name in enumerate(names):
            new = keys[writes & (space == j)]
            if new.size:
                old = self.seen.get(name)
                self.seen[name] = _sorted_unique(new if old is None
                                                 else np.concatenate([old, new]))
        return out


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort, not ``np.unique``'s hash table: much faster on
    millions of 64-bit keys)."""
    a = np.sort(a, kind="stable")  # two sorted runs (old + new) merge in linear time
    if a.size < 2:
        return a
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _member(x: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """bool per value of ``x``: in ``sorted_keys`` (sorted, distinct)."""
    if not sorted_keys.size:
        return np.zeros(x.shape[0], dtype=bool)
    pos = np.searchsorted(sorted_keys, x)
    pos[pos == sorted_keys.size] = 0
    return sorted_keys[pos] == x


def breakdown(*, read_blocks: int, hit_blocks: int, ideal_hits: int, unusable: int = 0,
              session_failed: int = 0) -> dict[str, int]:
    """``total`` misses and their classes (:data:`MISS_REASONS`), from totals.

    ``compulsory = read_blocks - ideal_hits`` (capped by the misses: a policy never
    hits what an unbounded cache misses, but the cap keeps the classes a partition);
    ``capacity`` is what is left after the other three.
    """
    total = max(0, int(read_blocks) - int(hit_blocks))
    compulsory = min(total, max(0, int(read_blocks) - int(ideal_hits)))
    unusable = min(int(unusable), total - compulsory)
    session_failed = min(int(session_failed), total - compulsory - unusable)
    return {"total": total, "compulsory": compulsory,
            "capacity": total - compulsory - unusable - session_failed,
            "unusable": unusable, "session_failed": session_failed}


def per_group(read_blocks: np.ndarray, hit_blocks: np.ndarray, ideal: np.ndarray,
              group_of_request: np.ndarray, names: tuple[str, ...] | list[str]
              ) -> dict[str, dict[str, Any]]:
    """:func:`breakdown` per group: ``group_of_request`` indexes ``names``."""
    out: dict[str, dict[str, Any]] = {}
    k = len(names)
    rb = np.bincount(group_of_request, weights=read_blocks, minlength=k)
    hb = np.bincount(group_of_request, weights=hit_blocks, minlength=k)
    ib = np.bincount(group_of_request, weights=ideal, minlength=k)
    for g, name in enumerate(names):
        out[name] = breakdown(read_blocks=int(rb[g]), hit_blocks=int(hb[g]),
                              ideal_hits=int(ib[g]))
    return out


def replay_misses(results: Any, *, optimum: Callable[[Trace, int], int] | None = None,
                  ideal_hits: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Per :class:`~kvsim.sim.replay.ReplayResult`: its misses by reason, in total and
    per group, and with ``optimum`` the offline optimum's headroom per group.

    Returns one dict per result: ``misses`` (:func:`breakdown`), ``per_group`` (group
    name to ``misses``, and ``belady`` when computed). The ideal pass runs once per
    match mode; Belady once per (group's instances, capacity) over the sweep.

    ``optimum(trace, capacity)`` returns the optimum's hit blocks of a trace at a
    capacity in blocks (the CLI passes :func:`kvsim.optimizer.bounds.belady`; the
    simulator does not import the optimizer). ``belady``, that figure on the group's
    requests at its eviction target, is given for groups with a block quota: ``capacity``,
    ``hit_blocks`` (the optimum's), ``headroom_blocks`` (the optimum's hits minus the
    run's: what a better policy could still win at this capacity) and the same as a
    block hit rate (``headroom_block_hit_rate``). Byte quotas and unbounded groups get
    none (the optimum is in blocks; unbounded, it is the ideal).

    ``ideal_hits`` gives :func:`ideal_hit_blocks` per match mode already computed (a trace
    replayed in chunks: :class:`StreamIdeal`).
    """
    ideal_by_match: dict[str, np.ndarray] = dict(ideal_hits or {})
    belady_cache: dict[tuple[tuple[int, ...], int], tuple[int, Any]] = {}
    out = []
    for r in results:
        trace = r.trace
        match = r.config.replay.match
        if match not in ideal_by_match:
            ideal_by_match[match] = ideal_hit_blocks(trace, match=match)
        ideal = ideal_by_match[match]
        reads = r.read_blocks
        names = sorted(set(r.group_of_instance), key=list(r.group_of_instance).index)
        gidx = np.array([names.index(g) for g in r.group_of_instance], dtype=np.int64)
        g_of_req = gidx[trace.instance] if trace.n_requests else np.zeros(0, np.int64)
        groups: dict[str, dict[str, Any]] = {
            name: {"misses": m}
            for name, m in per_group(reads, r.hit_blocks, ideal, g_of_req, names).items()
        }
        if optimum is not None:
            units = {g.name: g.unit for g in r.config.groups}
            for k, name in enumerate(names):
                cap = int(r.capacity_units.get(name, 0))
                if cap <= 0 or units.get(name, "blocks") != "blocks":
                    continue
                insts = tuple(int(i) for i in np.flatnonzero(gidx == k))
                rows = np.flatnonzero(np.isin(trace.instance, insts))
                rows = rows[np.argsort(trace.ts_ns[rows], kind="stable")]  # replay order
                if (insts, cap) not in belady_cache:
                    best = int(optimum(trace.select(rows), cap))
                    belady_cache[(insts, cap)] = (best, int(reads[rows].sum()))
                best, nread = belady_cache[(insts, cap)]
                hits = int(r.hit_blocks[rows].sum())
                groups[name]["belady"] = {
                    "capacity": cap, "hit_blocks": best, "headroom_blocks": best - hits,
                    "headroom_block_hit_rate": (best - hits) / nread if nread else 0.0,
                }
        out.append({
            "misses": breakdown(read_blocks=int(reads.sum()),
                                hit_blocks=int(r.hit_blocks.sum()),
                                ideal_hits=int(ideal.sum())),
            "per_group": groups,
        })
    return out

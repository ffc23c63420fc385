"""One-pass exact LRU capacity curves (policy ``lru``, prefix match, ``group_precise``).

Under the replay contract an LRU cache of ``C`` blocks always holds the top ``C``
entries of one recency stack over ``(instance, key)`` pairs: every request touches
all its keys tail first (so its first key ends up the most recent), then the cache
is trimmed to the ``C`` most recently touched keys. A key therefore is cached
before a request at capacity ``C`` iff its *stack distance* (1 + the number of
distinct keys touched since its last touch) is at most ``C``; a never-seen key is
never cached. The request's hit blocks at capacity ``C`` is the length of the
longest prefix whose distances are all ``<= C``: with ``m_j`` the prefix maximum of
the distances, ``hit_blocks(C) = #{j : m_j <= C}``.

:func:`curve_facts` computes the ``m_j`` of every request in one pass (a numba
kernel: a hash map of ``(instance, key)`` to dense ids, a Fenwick tree over
last-access positions, positions compacted when they run out) and stores them
run-length encoded as :class:`CurveFacts`. A segment is an arithmetic run of
prefix maxima ``t, t + s, ..., t + s * (length - 1)`` with step ``s`` 0 (equal
distances) or 1 (consecutive distances, the common case: blocks committed together
tail first have consecutive distances). Any capacity, or many at once, is then a
cheap projection of the facts: totals, per request, per instance, per window.

Scope (everything else raises :class:`CurveError`):

* rows of kind ``KIND_REQUEST`` (read then write) and ``KIND_WRITE`` (write only,
  no read) are exact; ``KIND_READ`` rows are refused: a read refreshes only the
  blocks that hit, which depends on the capacity, so no single recency stack exists;
* block masks are exact as ``replay`` counts them: a masked block is an internal
  hit wherever it sits, is skipped by the prefix match and is written like any other.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2, 3], [4], [1, 2]],
    ...                      block_size=16)
    >>> f = curve_facts(t)
    >>> f.curve([1, 2, 3, 0])["hit_blocks"].to_list()   # 0 = unbounded
    [1, 3, 4, 4]
    >>> f.hit_blocks(2).tolist()
    [0, 2, 0, 1]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from kvsim.core._jit import prefetch
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "CurveError",
    "CurveFacts",
    "auto_capacities",
    "bytes_to_blocks",
    "curve_facts",
    "exact_curve",
]

FACTS_VERSION = 1
UNBOUNDED = np.iinfo(np.int64).max
_MIN_POSITIONS = 1 << 16


class CurveError(ValueError):
    """The one-pass curve cannot represent this trace or request exactly."""


# ----------------------------------------------------------------------------- kernels
@numba.njit(cache=True)
def _mix(key: Any, inst: Any) -> np.uint64:
    x = np.uint64(key) ^ (np.uint64(inst) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _fen_add(fen: np.ndarray, i: int, v: int) -> None:
    n = fen.shape[0] - 1
    while i <= n:
        fen[i] += v
        i += i & (-i)


@numba.njit(cache=True)
def _fen_sum(fen: np.ndarray, i: int) -> int:
    s = 0
    while i > 0:
        s += fen[i]
        i &= i - 1
    return s


@numba.njit(cache=True)
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int(np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56)))


@numba.njit(cache=True)
def _set_pos(words: np.ndarray, fenb: np.ndarray, p: int, on: bool) -> None:
    """Mark (``on``) or unmark position ``p``: its bit and its 64-position block count."""
    b = p >> 6
    bit = np.uint64(1) << np.uint64(p & 63)
    if on:
        words[b] |= bit
        _fen_add(fenb, b + 1, 1)
    else:
        words[b] &= ~bit
        _fen_add(fenb, b + 1, -1)


@numba.njit(cache=True)
def _count_le(words: np.ndarray, fenb: np.ndarray, p: int) -> int:
    """Marked positions ``<= p``: whole blocks from the (small) Fenwick tree, then bits."""
    b = p >> 6
    m = (np.uint64(2) << np.uint64(p & 63)) - np.uint64(1)
    return _fen_sum(fenb, b) + _popcount(words[b] & m)


@numba.njit(cache=True)
def _positions(npos: int) -> tuple[np.ndarray, np.ndarray]:
    nb = (npos >> 6) + 1
    return np.zeros(nb, dtype=np.uint64), np.zeros(nb + 1, dtype=np.int32)


@numba.njit(cache=True)
def _facts_kernel(
    req_inst: np.ndarray, offsets: np.ndarray, keys: np.ndarray, mask: np.ndarray,
    has_mask: bool, is_read: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Prefix-maximum stack distances of every read request, run-length encoded.

    Returns seg_offsets, seg_threshold, seg_length, seg_step, internal, the number of
    distinct ``(instance, key)`` pairs and the number of position compactions.
    """
    n = offsets.shape[0] - 1
    max_len = 1
    for q in range(n):
        max_len = max(max_len, offsets[q + 1] - offsets[q])
    # hash map (instance, key) -> dense id, open addressing, grown at load 1/2
    # slot h: tab[2h] = key, tab[2h + 1] = instance << 32 | (id + 1), 0 = empty (one
    # cache line per probe)
    hcap = 1 << 12
    tab = np.zeros(2 * hcap, dtype=np.int64)
    n_ids = 0
    last = np.zeros(1 << 11, dtype=np.int64)  # last-access position per id (0 = never)
    # positions 1..npos, marked where some id was last accessed: a bitmap, and a
    # Fenwick tree of marked counts per 64-position block (64x smaller: stays cached)
    npos = _MIN_POSITIONS
    while npos < 4 * max_len:
        npos *= 2
    words, fenb = _positions(npos)
    who = np.zeros(npos + 1, dtype=np.int64)
    nxt = 1
    live = 0
    compactions = 0
    seg_off = np.zeros(n + 1, dtype=np.int64)
    cap_s = max(1024, keys.shape[0] // 8)
    thr = np.empty(cap_s, dtype=np.int64)
    sln = np.empty(cap_s, dtype=np.int32)
    stp = np.empty(cap_s, dtype=np.int8)
    ns = 0
    internal = np.zeros(n, dtype=np.int64)
    ids = np.empty(max_len, dtype=np.int64)
    hs = np.empty(max_len, dtype=np.int64)
    for q in range(n):
        a = offsets[q]
        b = offsets[q + 1]
        m = b - a
        inst = np.int64(req_inst[q])
        # ---- room for m new positions: compact live positions to 1..live
        if nxt + m > npos:
            compactions += 1
            newp = npos
            while newp < 2 * (live + max_len):
                newp *= 2
            nwords, nfen = _positions(newp)
            nwho = np.zeros(newp + 1, dtype=np.int64)
            c = 0
            for pos in range(1, nxt):
                d = who[pos]
                if last[d] == pos:
                    c += 1
                    last[d] = c
                    nwho[c] = d
                    nwords[c >> 6] |= np.uint64(1) << np.uint64(c & 63)
            nb = nwords.shape[0]
            for i in range(nb):
                nfen[i + 1] = _popcount(nwords[i])
            for i in range(1, nb + 1):
                j = i + (i & (-i))
                if j <= nb:
                    nfen[j] += nfen[i]
            words = nwords
            fenb = nfen
            who = nwho
            npos = newp
            nxt = c + 1
        # ---- ids (and the read's distances, on the stack as it was before the request)
        rd = is_read[q]
        cur = 0
        t0 = 0
        ln = 0
        st = 0
        stopped = False
        nint = 0
        if 2 * (n_ids + m) > hcap:  # grow and rehash (never inside a request: see hs)
            ncap = 2 * hcap
            while 2 * (n_ids + m) > ncap:
                ncap *= 2
            nt = np.zeros(2 * ncap, dtype=np.int64)
            for s in range(hcap):
                m2 = tab[2 * s + 1]
                if m2 != 0:
                    h2 = np.int64(_mix(tab[2 * s], m2 >> 32) & np.uint64(ncap - 1))
                    while nt[2 * h2 + 1] != 0:
                        h2 = (h2 + 1) & (ncap - 1)
                    nt[2 * h2] = tab[2 * s]
                    nt[2 * h2 + 1] = m2
            tab = nt
            hcap = ncap
        for j in range(a, b):  # hash slots first, prefetched: the probes' misses overlap
            h = np.int64(_mix(keys[j], inst) & np.uint64(hcap - 1))
            hs[j - a] = h
            prefetch(tab, 2 * h)
        for j in range(a, b):
            k = keys[j]
            h = hs[j - a]
            while True:
                meta = tab[2 * h + 1]
                if meta == 0 or (tab[2 * h] == k and (meta >> 32) == inst):
                    break
                h = (h + 1) & (hcap - 1)
            if meta == 0:
                d = n_ids
                tab[2 * h] = k
                tab[2 * h + 1] = (inst << 32) | (d + 1)
                n_ids += 1
                if n_ids > last.shape[0]:
                    nl = np.zeros(2 * last.shape[0], dtype=np.int64)
                    nl[: last.shape[0]] = last
                    last = nl
            else:
                d = (meta & 0xFFFFFFFF) - 1
            ids[j - a] = d
            if not rd:
                continue
            if has_mask and mask[j]:
                nint += 1
                continue
            if stopped:
                continue
            p = last[d]
            if p == 0:
                stopped = True
                continue
            dist = live - _count_le(words, fenb, p) + 1
            if dist > cur:
                cur = dist
            if ln == 0:
                t0 = cur
                ln = 1
                st = 0
            elif ln == 1 and (cur == t0 or cur == t0 + 1):
                st = cur - t0
                ln = 2
            elif ln >= 2 and cur == t0 + st * ln:
                ln += 1
            else:
                if ns == thr.shape[0]:
                    thr = np.concatenate((thr, np.empty(ns, dtype=np.int64)))
                    sln = np.concatenate((sln, np.empty(ns, dtype=np.int32)))
                    stp = np.concatenate((stp, np.empty(ns, dtype=np.int8)))
                thr[ns] = t0
                sln[ns] = ln
                stp[ns] = st
                ns += 1
                t0 = cur
                ln = 1
                st = 0
        if ln > 0:
            if ns == thr.shape[0]:
                thr = np.concatenate((thr, np.empty(ns, dtype=np.int64)))
                sln = np.concatenate((sln, np.empty(ns, dtype=np.int32)))
                stp = np.concatenate((stp, np.empty(ns, dtype=np.int8)))
            thr[ns] = t0
            sln[ns] = ln
            stp[ns] = st
            ns += 1
        internal[q] = nint
        seg_off[q + 1] = ns
        # ---- commit: touch every key tail first (the first key ends most recent)
        for jj in range(m - 1, -1, -1):
            d = ids[jj]
            p = last[d]
            if p > 0:
                _set_pos(words, fenb, p, False)
            else:
                live += 1
            _set_pos(words, fenb, nxt, True)
            who[nxt] = d
            last[d] = nxt
            nxt += 1
    return seg_off, thr[:ns].copy(), sln[:ns].copy(), stp[:ns].copy(), internal, n_ids, \
        compactions


@numba.njit(cache=True)
def _project_kernel(
    seg_off: np.ndarray, thr: np.ndarray, sln: np.ndarray, stp: np.ndarray,
    internal: np.ndarray, is_read: np.ndarray, input_len: np.ndarray, block_size: int,
    group: np.ndarray, n_groups: int, caps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Hit blocks and hit tokens summed per group, for ascending capacities ``caps``."""
    n = seg_off.shape[0] - 1
    K = caps.shape[0]
    hb = np.zeros((n_groups, K), dtype=np.int64)
    ht = np.zeros((n_groups, K), dtype=np.int64)
    for q in range(n):
        if not is_read[q]:
            continue
        g = group[q]
        s = seg_off[q]
        e = seg_off[q + 1]
        acc = internal[q]
        il = input_len[q]
        for k in range(K):
            c = caps[k]
            while s < e and thr[s] + np.int64(stp[s]) * (np.int64(sln[s]) - 1) <= c:
                acc += sln[s]
                s += 1
            h = acc
            if s < e and stp[s] == 1 and thr[s] <= c:
                h += c - thr[s] + 1
            hb[g, k] += h
            tok = h * block_size
            ht[g, k] += tok if tok < il else il
    return hb, ht


@numba.njit(cache=True)
def _per_request_kernel(
    seg_off: np.ndarray, thr: np.ndarray, sln: np.ndarray, stp: np.ndarray,
    internal: np.ndarray, is_read: np.ndarray, cap: int,
) -> np.ndarray:
    n = seg_off.shape[0] - 1
    out = np.zeros(n, dtype=np.int64)
    for q in range(n):
        if not is_read[q]:
            continue
        h = internal[q]
        for s in range(seg_off[q], seg_off[q + 1]):
            end = thr[s] + np.int64(stp[s]) * (np.int64(sln[s]) - 1)
            if end <= cap:
                h += sln[s]
            else:
                if stp[s] == 1 and thr[s] <= cap:
                    h += cap - thr[s] + 1
                break
        out[q] = h
    return out


# ----------------------------------------------------------------------------- facts
def _capacity_array(capacities: Sequence[int] | np.ndarray) -> np.ndarray:
    caps = np.asarray(capacities, dtype=np.int64).reshape(-1)
    if caps.size and caps.min() < 0:
        raise CurveError(f"capacities must be >= 0 blocks (0 = unbounded), got {caps.min()}")
    return np.where(caps == 0, UNBOUNDED, caps)


@dataclass(frozen=True, eq=False)
class CurveFacts:
    """The capacity-independent facts of an LRU replay, from which any capacity projects.

    Attributes:
        seg_offsets: int64[n + 1] CSR offsets of each request's segments.
        seg_threshold: int64[S] first prefix-maximum stack distance of each segment.
        seg_length: int32[S] blocks in the segment.
        seg_step: int8[S] 0 (all distances equal) or 1 (consecutive distances).
        internal: int64[n] masked blocks of read rows (internal hits at any capacity).
        read_blocks: int64[n] blocks read per request (0 for write-only rows).
        input_len: int64[n] prompt tokens per request, as in the trace.
        is_read: bool[n] rows that read (all but ``KIND_WRITE``).
        instance: int32[n] index into ``instances``.
        instances: instance ids.
        ts_ns: int64[n] request times.
        block_size: tokens per block.
        unique_blocks: distinct ``(instance, key)`` pairs of the trace.
        source: where the trace came from.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> f = curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[7, 8], [7, 8]]))
        >>> f.seg_threshold.tolist(), f.seg_length.tolist(), f.seg_step.tolist()
        ([1], [2], [1])
    """

    seg_offsets: np.ndarray
    seg_threshold: np.ndarray
    seg_length: np.ndarray
    seg_step: np.ndarray
    internal: np.ndarray
    read_blocks: np.ndarray
    input_len: np.ndarray
    is_read: np.ndarray
    instance: np.ndarray
    instances: tuple[str, ...]
    ts_ns: np.ndarray
    block_size: int
    unique_blocks: int
    source: str = "<memory>"

    @property
    def n_requests(self) -> int:
        """Number of requests."""
        return int(self.seg_offsets.shape[0] - 1)

    @property
    def input_tokens(self) -> np.ndarray:
        """int64[n] the hit-rate denominator (0 for write-only rows)."""
        return np.where(self.is_read, self.input_len, 0)

    # ------------------------------------------------------------------ projections
    def hit_blocks(self, capacity: int) -> np.ndarray:
        """int64[n] hit blocks per request at ``capacity`` blocks (0 = unbounded).

        Example:
            >>> from kvsim.trace.model import Trace
            >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]])
            >>> curve_facts(t).hit_blocks(2).tolist()
            [0, 0, 1]
        """
        cap = int(_capacity_array([capacity])[0])
        return _per_request_kernel(self.seg_offsets, self.seg_threshold, self.seg_length,
                                   self.seg_step, self.internal, self.is_read, cap)

    def hit_tokens(self, capacity: int) -> np.ndarray:
        """int64[n] ``min(hit_blocks * block_size, input_len)`` per request."""
        return np.minimum(self.hit_blocks(capacity) * self.block_size, self.input_tokens)

    def _grouped(self, capacities: Sequence[int] | np.ndarray, group: np.ndarray,
                 n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        caps = _capacity_array(capacities)
        order = np.argsort(caps, kind="stable")
        hb, ht = _project_kernel(
            self.seg_offsets, self.seg_threshold, self.seg_length, self.seg_step,
            self.internal, self.is_read, self.input_len, int(self.block_size),
            np.ascontiguousarray(group, dtype=np.int64), int(n_groups), caps[order],
        )
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0])
        return np.asarray(capacities, dtype=np.int64).reshape(-1), hb[:, inv], ht[:, inv]

    def curve(self, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """Totals and rates at every capacity (blocks; 0 = unbounded), in the given order.

        Columns: capacity, hit_blocks, hit_tokens, read_blocks, input_tokens,
        block_hit_rate, token_hit_rate.

        Example:
            >>> from kvsim.trace.model import Trace
            >>> t = Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 2]], block_size=4)
            >>> curve_facts(t).curve([1, 2])["hit_tokens"].to_list()
            [4, 8]
        """
        caps, hb, ht = self._grouped(capacities, np.zeros(self.n_requests, np.int64), 1)
        return _frame({"capacity": caps}, hb[0], ht[0], int(self.read_blocks.sum()),
                      int(self.input_tokens.sum()))

    def by_instance(self, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """Per instance and capacity: totals and rates (one shared cache of all instances)."""
        import polars as pl

        n_i = len(self.instances)
        caps, hb, ht = self._grouped(capacities, self.instance, n_i)
        rb = np.bincount(self.instance, weights=self.read_blocks, minlength=n_i)
        it = np.bincount(self.instance, weights=self.input_tokens, minlength=n_i)
        parts = [
            _frame({"instance": [name] * caps.shape[0], "capacity": caps}, hb[i], ht[i],
                   int(rb[i]), int(it[i]))
            for i, name in enumerate(self.instances)
        ]
        return pl.concat(parts)

    def by_window(self, capacities: Sequence[int] | np.ndarray, window_ns: int | None = None,
                  *, points: int = 200) -> pl.DataFrame:
        """Per time window (default: the trace span split into ``points``) and capacity.

        Columns: window, end_ns, capacity, hit_blocks, hit_tokens, read_blocks,
        input_tokens, block_hit_rate, token_hit_rate (windows without requests omitted).
        """
        import polars as pl

        n = self.n_requests
        if n == 0:
            return pl.DataFrame()
        t0 = int(self.ts_ns[0])
        span = max(1, int(self.ts_ns[-1]) - t0)
        if window_ns is None:
            window_ns = max(1, -(-span // points))
        w = (self.ts_ns - t0) // window_ns
        used, group = np.unique(w, return_inverse=True)
        caps, hb, ht = self._grouped(capacities, group, used.shape[0])
        rb = np.bincount(group, weights=self.read_blocks, minlength=used.shape[0])
        it = np.bincount(group, weights=self.input_tokens, minlength=used.shape[0])
        return pl.concat([
            _frame({"window": [int(x)] * caps.shape[0],
                    "end_ns": [int(x) * window_ns + t0 + window_ns] * caps.shape[0],
                    "capacity": caps}, hb[g], ht[g], int(rb[g]), int(it[g]))
            for g, x in enumerate(used)
        ])

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the facts as one ``.npz`` file, atomically (temp file, then rename).

        Example:
            >>> import tempfile, pathlib
            >>> from kvsim.trace.model import Trace
            >>> f = curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[1], [1]]))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     p = f.save(pathlib.Path(d) / "facts.npz")
            ...     CurveFacts.load(p).curve([1])["hit_blocks"].to_list()
            [1]
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"version": FACTS_VERSION, "block_size": int(self.block_size),
                "unique_blocks": int(self.unique_blocks), "source": self.source,
                "instances": list(self.instances)}
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            if hasattr(os, "fchmod"):
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    @staticmethod
    def load(path: str | os.PathLike[str]) -> CurveFacts:
        """Read facts written by :meth:`save`.

        Raises:
            CurveError: not a facts file, or one of another version.
            OSError: the file cannot be read.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {name: z[name] for name in _ARRAYS}
        except (KeyError, ValueError) as e:
            raise CurveError(f"{path}: not a curve facts file ({e})") from None
        if meta.get("version") != FACTS_VERSION:
            raise CurveError(f"{path}: facts version {meta.get('version')!r}, expected "
                             f"{FACTS_VERSION}")
        return CurveFacts(**arrays, instances=tuple(meta["instances"]),
                          block_size=int(meta["block_size"]),
                          unique_blocks=int(meta["unique_blocks"]), source=str(meta["source"]))


_ARRAYS = ("seg_offsets", "seg_threshold", "seg_length", "seg_step", "internal",
           "read_blocks", "input_len", "is_read", "instance", "ts_ns")


def _frame(head: dict[str, Any], hb: np.ndarray, ht: np.ndarray, read_blocks: int,
           input_tokens: int) -> pl.DataFrame:
    import polars as pl

    k = len(hb)
    return pl.DataFrame({
        **head,
        "hit_blocks": np.asarray(hb, dtype=np.int64),
        "hit_tokens": np.asarray(ht, dtype=np.int64),
        "read_blocks": np.full(k, read_blocks, dtype=np.int64),
        "input_tokens": np.full(k, input_tokens, dtype=np.int64),
        "block_hit_rate": np.asarray(hb, dtype=np.float64) / read_blocks if read_blocks
        else np.zeros(k),
        "token_hit_rate": np.asarray(ht, dtype=np.float64) / input_tokens if input_tokens
        else np.zeros(k),
    })


def curve_facts(trace: Trace) -> CurveFacts:
    """One pass over ``trace``: the facts of an exact ``lru`` capacity curve.

    Args:
        trace: requests in timestamp order (``KIND_REQUEST`` and ``KIND_WRITE`` rows).

    Returns:
        The :class:`CurveFacts` of the trace.

    Raises:
        CurveError: the trace has ``KIND_READ`` rows (see the module docstring).

    Example:
        >>> from kvsim.trace.model import Trace
        >>> curve_facts(Trace.from_lists(ts_ns=[0, 1], keys=[[1, 2], [1, 3]])).unique_blocks
        3
    """
    n = trace.n_requests
    if n and np.any(trace.kind == KIND_READ):
        bad = int(np.flatnonzero(trace.kind == KIND_READ)[0])
        raise CurveError(
            f"{trace.source}: row {bad} is a read-only event (KIND_READ); the one-pass LRU "
            "curve is exact only for combined requests and write-only rows (a read refreshes "
            "only the blocks that hit, which depends on the capacity): use replay instead"
        )
    is_read = trace.kind != KIND_WRITE
    has_mask = trace.mask is not None
    mask = trace.mask if trace.mask is not None else np.zeros(0, dtype=np.bool_)
    seg_off, thr, sln, stp, internal, n_ids, _compactions = _facts_kernel(
        np.ascontiguousarray(trace.instance, dtype=np.int64), trace.offsets, trace.keys,
        mask, has_mask, is_read,
    )
    return CurveFacts(
        seg_offsets=seg_off, seg_threshold=thr, seg_length=sln, seg_step=stp,
        internal=internal, read_blocks=np.where(is_read, trace.key_counts(), 0),
        input_len=np.asarray(trace.input_len, dtype=np.int64), is_read=is_read,
        instance=np.asarray(trace.instance, dtype=np.int32), instances=tuple(trace.instances),
        ts_ns=np.asarray(trace.ts_ns, dtype=np.int64), block_size=int(trace.block_size),
        unique_blocks=int(n_ids), source=trace.source,
    )


def exact_curve(trace: Trace, capacities: Sequence[int] | np.ndarray) -> pl.DataFrame:
    """:meth:`CurveFacts.curve` of :func:`curve_facts` (one pass, every capacity).

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [3], [1, 2]])
        >>> exact_curve(t, [1, 2, 3])["hit_blocks"].to_list()
        [0, 1, 2]
    """
    return curve_facts(trace).curve(capacities)


def auto_capacities(unique_blocks: int, points: int) -> list[int]:
    """``points`` distinct log-spaced capacities from 1 block to ``unique_blocks``.

    Rounding collisions at the low end are pushed up to the next free integer, so
    there are exactly ``min(points, unique_blocks)`` capacities.

    Example:
        >>> auto_capacities(1000, 4)
        [1, 10, 100, 1000]
        >>> auto_capacities(5, 8)
        [1, 2, 3, 4, 5]
    """
    if points < 1:
        raise CurveError(f"need at least one capacity, got {points}")
    top = max(1, int(unique_blocks))
    if points >= top:
        return list(range(1, top + 1))
    caps = np.rint(np.geomspace(1, top, points)).astype(np.int64)
    for i in range(1, points):
        caps[i] = max(caps[i], caps[i - 1] + 1)
    for i in range(points - 1, -1, -1):  # keep the top at unique_blocks
        caps[i] = min(caps[i], top - (points - 1 - i))
    return [int(c) for c in caps]


def bytes_to_blocks(capacity_bytes: Sequence[int], block_bytes: int | Mapping[str, int],
                    instances: Sequence[str] = ()) -> list[int]:
    """Byte capacities as block capacities, when every instance has the same block cost.

    Args:
        capacity_bytes: capacities in bytes.
        block_bytes: bytes of one block, or per instance id.
        instances: the trace's instances (each must be in a ``block_bytes`` mapping).

    Raises:
        CurveError: the instances' block costs differ (the stack model counts blocks).

    Example:
        >>> bytes_to_blocks([1 << 20], {"a": 4096, "b": 4096}, ["a", "b"])
        [256]
    """
    if isinstance(block_bytes, Mapping):
        missing = [i for i in instances if i not in block_bytes]
        if missing:
            raise CurveError(f"no block cost for instance(s) {', '.join(missing)}")
        costs = {int(block_bytes[i]) for i in instances} if instances else {
            int(v) for v in block_bytes.values()}
        if len(costs) != 1:
            raise CurveError(
                f"instances have different block costs ({sorted(costs)} bytes): a byte "
                "capacity is not a block capacity; the one-pass LRU curve needs one cost"
            )
        cost = costs.pop()
    else:
        cost = int(block_bytes)
    if cost <= 0:
        raise CurveError(f"block cost must be positive, got {cost}")
    return [int(b) // cost for b in capacity_bytes]

"""The block table: struct-of-arrays block metadata with an open-addressing index.

All per-block state lives in numpy arrays (one row per cached or pending block),
and all per-instance / per-group counters in small arrays beside them, bundled in
one :class:`Tables` named tuple that every numba kernel takes as its first
argument. The index maps ``(instance, key)`` to a row with linear probing and
backward-shift deletion (no tombstones), kept at a load factor of at most 0.7.

Per cached block the table holds 50 bytes of row state plus 4 bytes per index
slot (1.43 to 2.86 slots per row): 56 to 62 bytes. :func:`bytes_per_row` reports
the exact figure of a live table.

Example:
    >>> t = BlockTable.create(rows=4, instances=1, groups=1)
    >>> t.rows, t.index_slots
    (4, 8)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kvsim.core._jit import inline_kernel, kernel

# Block states.
FREE = np.int8(0)
WRITING = np.int8(1)
SERVING = np.int8(2)
DELETING = np.int8(3)

NIL = np.int32(-1)

# meta slots (int64 array)
M_USED = 0  # rows in use
M_FREE = 1  # head of the free-row list (threaded through ``nxt``), -1 when empty
M_HWM = 2  # high-water mark: rows [0, hwm) have been handed out at least once
M_MASK = 3  # index size - 1
M_EVICTED = 4  # total blocks evicted
M_NMETA = 8

# Group parameter matrix width (policy parameters, floats).
N_PARAMS = 8
# LFU frequency buckets per instance (frequencies saturate at LFU_BUCKETS - 1).
LFU_BUCKETS = 64

MAX_LOAD = 0.7


class Tables(NamedTuple):
    """All arrays of the core state; numba kernels take this tuple."""

    # ---- per block row
    key: np.ndarray  # int64
    inst: np.ndarray  # int32 instance index, -1 for a free row
    state: np.ndarray  # int8 FREE / WRITING / SERVING / DELETING
    loc: np.ndarray  # int8 storage index the block is written to
    prv: np.ndarray  # int32 policy order links (doubly linked lists)
    nxt: np.ndarray  # int32 (also the free-row list)
    parent: np.ndarray  # int32 row of the prefix parent when leaves are tracked
    nchild: np.ndarray  # int32 cached children when leaves are tracked
    t_write: np.ndarray  # int64 ns
    t_access: np.ndarray  # int64 ns
    count: np.ndarray  # int32 access count
    # ---- index
    index: np.ndarray  # int32 row or -1
    meta: np.ndarray  # int64[M_NMETA]
    # ---- per instance
    i_group: np.ndarray  # int32
    i_cost: np.ndarray  # int64 cost of one block (bytes, or 1 when counting blocks)
    i_blocks: np.ndarray  # int64 SERVING blocks
    i_pending: np.ndarray  # int64 WRITING blocks
    i_head: np.ndarray  # int32 MRU end of the instance's policy list
    i_tail: np.ndarray  # int32 LRU end
    i_minf: np.ndarray  # int32 LFU: lowest non-empty bucket hint
    f_head: np.ndarray  # int32[I, LFU_BUCKETS]
    f_tail: np.ndarray  # int32[I, LFU_BUCKETS]
    # ---- per group
    g_used: np.ndarray  # int64 cost of WRITING + SERVING blocks
    g_cap: np.ndarray  # int64 eviction target (quota x used_percentage)
    g_quota: np.ndarray  # int64 hard quota (writes beyond it are refused)
    g_policy: np.ndarray  # int32 policy code
    g_mode: np.ndarray  # int32 eviction mode
    g_batch: np.ndarray  # int32 eviction batch per instance (rough modes)
    g_rr: np.ndarray  # int32 round-robin cursor
    g_rng: np.ndarray  # uint64 xorshift state
    g_params: np.ndarray  # float64[G, N_PARAMS]
    g_evicted: np.ndarray  # int64 evicted blocks


ROW_FIELDS = (
    "key", "inst", "state", "loc", "prv", "nxt", "parent", "nchild", "t_write", "t_access", "count",
)
INST_FIELDS = ("i_group", "i_cost", "i_blocks", "i_pending", "i_head", "i_tail", "i_minf")
GROUP_FIELDS = (
    "g_used", "g_cap", "g_quota", "g_policy", "g_mode", "g_batch", "g_rr", "g_rng", "g_evicted",
)

_ROW_DTYPES = {
    "key": np.int64, "inst": np.int32, "state": np.int8, "loc": np.int8, "prv": np.int32,
    "nxt": np.int32, "parent": np.int32, "nchild": np.int32, "t_write": np.int64,
    "t_access": np.int64, "count": np.int32,
}
_INST_DTYPES = {
    "i_group": np.int32, "i_cost": np.int64, "i_blocks": np.int64, "i_pending": np.int64,
    "i_head": np.int32, "i_tail": np.int32, "i_minf": np.int32,
}
_GROUP_DTYPES = {
    "g_used": np.int64, "g_cap": np.int64, "g_quota": np.int64, "g_policy": np.int32,
    "g_mode": np.int32, "g_batch": np.int32, "g_rr": np.int32, "g_rng": np.uint64,
    "g_evicted": np.int64,
}


def index_size_for(rows: int) -> int:
    """Smallest power of two keeping ``rows`` under the maximum load factor."""
    need = max(8, int(np.ceil(rows / MAX_LOAD)))
    return 1 << (need - 1).bit_length()


def _new_rows(rows: int) -> dict[str, np.ndarray]:
    out = {name: np.zeros(rows, dtype=dt) for name, dt in _ROW_DTYPES.items()}
    out["inst"][:] = -1
    out["prv"][:] = -1
    out["parent"][:] = -1
    # free list threaded through nxt: 0 -> 1 -> ... -> rows-1 -> -1
    out["nxt"][:] = np.arange(1, rows + 1, dtype=np.int32)
    out["nxt"][-1] = -1
    return out


class BlockTable:
    """Owner of the :class:`Tables` arrays; grows them by doubling.

    Kernels never allocate: callers check :meth:`free_rows` (and grow) before a
    call that may insert, and kernels that process many requests stop and report
    where they stopped when rows run short.
    """

    def __init__(self, tables: Tables) -> None:
        self.t = tables

    # ------------------------------------------------------------ construction
    @staticmethod
    def create(rows: int = 1024, instances: int = 4, groups: int = 2) -> BlockTable:
        """An empty table with room for ``rows`` blocks."""
        rows = max(4, int(rows))
        r = _new_rows(rows)
        h = index_size_for(rows)
        index = np.full(h, -1, dtype=np.int32)
        meta = np.zeros(M_NMETA, dtype=np.int64)
        meta[M_FREE] = 0
        meta[M_MASK] = h - 1
        inst = {n: np.zeros(instances, dtype=dt) for n, dt in _INST_DTYPES.items()}
        inst["i_head"][:] = -1
        inst["i_tail"][:] = -1
        inst["i_group"][:] = -1
        grp = {n: np.zeros(groups, dtype=dt) for n, dt in _GROUP_DTYPES.items()}
        return BlockTable(
            Tables(
                **r,
                index=index,
                meta=meta,
                **inst,
                f_head=np.full((instances, LFU_BUCKETS), -1, dtype=np.int32),
                f_tail=np.full((instances, LFU_BUCKETS), -1, dtype=np.int32),
                **grp,
                g_params=np.zeros((groups, N_PARAMS), dtype=np.float64),
            )
        )

    # ------------------------------------------------------------ sizes
    @property
    def rows(self) -> int:
        """Allocated block rows."""
        return int(self.t.key.shape[0])

    @property
    def index_slots(self) -> int:
        """Slots of the hash index."""
        return int(self.t.index.shape[0])

    @property
    def used_rows(self) -> int:
        """Rows holding a block (WRITING, SERVING or DELETING)."""
        return int(self.t.meta[M_USED])

    def free_rows(self) -> int:
        """Rows available without growing."""
        return self.rows - self.used_rows

    def nbytes(self) -> int:
        """Bytes of per-row state plus the index (the part that scales with blocks)."""
        return sum(getattr(self.t, f).nbytes for f in ROW_FIELDS) + self.t.index.nbytes

    # ------------------------------------------------------------ growth
    def ensure_rows(self, extra: int) -> None:
        """Grow (by doubling) until ``extra`` more rows fit."""
        need = self.used_rows + int(extra)
        if need <= self.rows:
            return
        new_rows = self.rows
        while new_rows < need:
            new_rows *= 2
        self._grow_rows(new_rows)

    def _grow_rows(self, new_rows: int) -> None:
        old = self.rows
        fresh = _new_rows(new_rows)
        for name in ROW_FIELDS:
            fresh[name][:old] = getattr(self.t, name)
        # append the new rows [old, new_rows) to the front of the free list
        nxt = fresh["nxt"]
        nxt[old:new_rows - 1] = np.arange(old + 1, new_rows, dtype=np.int32)
        nxt[new_rows - 1] = int(self.t.meta[M_FREE])
        meta = self.t.meta.copy()
        meta[M_FREE] = old
        h = index_size_for(new_rows)
        index = np.full(h, -1, dtype=np.int32)
        meta[M_MASK] = h - 1
        t = self.t._replace(**fresh, index=index, meta=meta)
        _rebuild_index(t)
        self.t = t

    def ensure_instances(self, n: int) -> None:
        """Make room for ``n`` instances."""
        cur = self.t.i_group.shape[0]
        if n <= cur:
            return
        size = max(n, cur * 2)
        upd: dict[str, np.ndarray] = {}
        for name, dt in _INST_DTYPES.items():
            arr = np.zeros(size, dtype=dt)
            if name in ("i_head", "i_tail", "i_group"):
                arr[:] = -1
            arr[:cur] = getattr(self.t, name)
            upd[name] = arr
        for name in ("f_head", "f_tail"):
            arr = np.full((size, LFU_BUCKETS), -1, dtype=np.int32)
            arr[:cur] = getattr(self.t, name)
            upd[name] = arr
        self.t = self.t._replace(**upd)

    def ensure_groups(self, n: int) -> None:
        """Make room for ``n`` groups."""
        cur = self.t.g_used.shape[0]
        if n <= cur:
            return
        size = max(n, cur * 2)
        upd: dict[str, np.ndarray] = {}
        for name, dt in _GROUP_DTYPES.items():
            arr = np.zeros(size, dtype=dt)
            arr[:cur] = getattr(self.t, name)
            upd[name] = arr
        params = np.zeros((size, N_PARAMS), dtype=np.float64)
        params[:cur] = self.t.g_params
        upd["g_params"] = params
        self.t = self.t._replace(**upd)


def bytes_per_row(table: BlockTable) -> float:
    """Bytes of core state per allocated block row (rows plus index)."""
    return table.nbytes() / table.rows


# ---------------------------------------------------------------- kernels
@inline_kernel
def _hash(inst: int, key: int) -> np.uint64:
    # splitmix64 finaliser over key mixed with the instance
    x = np.uint64(key) ^ (np.uint64(inst) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@kernel
def lookup(t: Tables, inst: int, key: int) -> int:
    """Row of ``(inst, key)`` or -1."""
    mask = np.uint64(t.meta[M_MASK])
    i = _hash(inst, key) & mask
    index = t.index
    while True:
        r = index[i]
        if r < 0:
            return -1
        if t.key[r] == key and t.inst[r] == inst:
            return r
        i = (i + np.uint64(1)) & mask


@kernel
def _index_put(t: Tables, row: int) -> None:
    mask = np.uint64(t.meta[M_MASK])
    i = _hash(t.inst[row], t.key[row]) & mask
    while t.index[i] >= 0:
        i = (i + np.uint64(1)) & mask
    t.index[i] = row


@kernel
def _rebuild_index(t: Tables) -> None:
    for r in range(t.key.shape[0]):
        if t.state[r] != 0:
            _index_put(t, r)


@kernel
def alloc_row(t: Tables, inst: int, key: int, state: int, now: int) -> int:
    """Take a free row for ``(inst, key)``, index it, return it (-1 if full)."""
    r = t.meta[M_FREE]
    if r < 0:
        return -1
    t.meta[M_FREE] = t.nxt[r]
    t.meta[M_USED] += 1
    if r + 1 > t.meta[M_HWM]:
        t.meta[M_HWM] = r + 1
    t.key[r] = key
    t.inst[r] = inst
    t.state[r] = state
    t.loc[r] = 0
    t.prv[r] = -1
    t.nxt[r] = -1
    t.parent[r] = -1
    t.nchild[r] = 0
    t.t_write[r] = now
    t.t_access[r] = now
    t.count[r] = 1
    _index_put(t, r)
    return r


@kernel
def free_row(t: Tables, row: int) -> None:
    """Drop ``row`` from the index (backward shift) and return it to the free list."""
    mask = np.uint64(t.meta[M_MASK])
    index = t.index
    i = _hash(t.inst[row], t.key[row]) & mask
    while index[i] != row:
        i = (i + np.uint64(1)) & mask
    # backward-shift deletion
    j = i
    while True:
        j = (j + np.uint64(1)) & mask
        r = index[j]
        if r < 0:
            break
        home = _hash(t.inst[r], t.key[r]) & mask
        # can r move into hole i?  (is home cyclically outside (i, j]?)
        if i <= j:
            movable = home <= i or home > j
        else:
            movable = home <= i and home > j
        if movable:
            index[i] = r
            i = j
    index[i] = -1
    t.state[row] = 0
    t.inst[row] = -1
    t.nxt[row] = t.meta[M_FREE]
    t.meta[M_FREE] = row
    t.meta[M_USED] -= 1

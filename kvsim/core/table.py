"""The block table: struct-of-arrays block metadata with an open-addressing index.

All per-block state lives in numpy arrays (one row per cached or pending block),
and all per-instance / per-group counters in small arrays beside them, bundled in
one :class:`Tables` named tuple that every numba kernel takes as its first
argument. The index maps ``(instance, key)`` to a row with linear probing and
backward-shift deletion (no tombstones), kept at a load factor of at most 0.7;
each slot holds the key's 32-bit hash beside the row so probes rarely touch rows.

Per cached block the table holds 49 bytes of row state (a 32-byte hot record
and a 17-byte cold one) plus 8 bytes per index slot (1.43 slots per row, the
index is sized exactly): about 60.4 bytes. :func:`bytes_per_row` reports
the exact figure of a live table.

Example:
    >>> t = BlockTable.create(rows=100, instances=1, groups=1)
    >>> t.rows, t.index_slots
    (100, 143)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kvsim.core._jit import inline_kernel, kernel, prefetch

# Block states.
FREE = 0
WRITING = 1
SERVING = 2
DELETING = 3


# meta slots (int64 array)
M_USED = 0  # rows in use
M_FREE = 1  # head of the free-row list (threaded through ``nxt``), -1 when empty
M_HWM = 2  # high-water mark: rows [0, hwm) have been handed out at least once
M_SLOTS = 3  # index size (slots)
M_PENDING = 4  # evicted rows waiting in ``scratch`` to be freed
M_STAMP = 5  # last time stamp handed out (see ``stamp``)
M_SLOT_COUNTS = 6  # 1: keep ``i_slots`` (per-storage-slot block counts), 0: do not
M_NMETA = 8

# Group parameter matrix width (policy parameters, floats).
N_PARAMS = 8
# LFU frequency buckets per instance (frequencies saturate at LFU_BUCKETS - 1).
LFU_BUCKETS = 64

MAX_LOAD = 0.7
# evicted rows freed per batch (their index slots are prefetched meanwhile)
SCRATCH = 256


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
    pbits: np.ndarray  # int8 policy flags (visited bit, segment, ...)
    t_write: np.ndarray  # int64 ns
    t_access: np.ndarray  # int64 ns
    acc: np.ndarray  # int16 access count (saturating)
    hot: np.ndarray  # the HOT_DTYPE records the row fields above view
    cold: np.ndarray  # the COLD_DTYPE records
    scratch: np.ndarray  # int32 rows evicted but not yet freed (batched frees)
    # ---- index
    slots: np.ndarray  # uint64 index slots: (32-bit hash << 32) | row, or EMPTY
    meta: np.ndarray  # int64[M_NMETA]
    # ---- per instance
    i_group: np.ndarray  # int32
    i_cost: np.ndarray  # int64 cost of one block (bytes, or 1 when counting blocks)
    i_blocks: np.ndarray  # int64 SERVING blocks
    i_pending: np.ndarray  # int64 WRITING blocks
    i_head: np.ndarray  # int32 MRU end of the instance's policy list
    i_tail: np.ndarray  # int32 LRU end
    i_minf: np.ndarray  # int32 LFU: lowest non-empty bucket hint
    i_pol: np.ndarray  # int64[I, I_POL] policy state per instance
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
    # ---- policy state beyond the per-row fields (see kvsim/core/policies/_ghost.py)
    g_pol: np.ndarray  # int64[G, G_POL] policy state per group (starts at 0)
    i_polf: np.ndarray  # float64[I, I_POLF] float policy state per instance (starts at 0)
    g_polf: np.ndarray  # float64[G, G_POLF] float policy state per group (starts at 0)
    # blocks per instance and storage slot: [..., 0] WRITING + SERVING, [..., 1] SERVING
    # (kept by the kernels that change a row's state; loc changes go through set_loc)
    i_slots: np.ndarray  # int64[I, STORAGE_SLOTS, 2]
    gh_meta: np.ndarray  # int64[G, GH_META] ghost layout and ring counters per group
    gh_ring: np.ndarray  # uint64 ghost rings (key hashes) of every group, one region each
    gh_skey: np.ndarray  # uint64 ghost sets: key hash (0 = empty slot), one region each
    gh_sval: np.ndarray  # int64 ghost sets: 2 * sequence number + ring


# Row layout: the fields every access touches share one aligned 32-byte record
# (a row never straddles a cache line); the rest live in a 16-byte cold record.
# Kernels see each field as a strided view, so they index ``t.key[r]`` as usual.
HOT_DTYPE = np.dtype([
    ("key", np.int64), ("t_access", np.int64), ("prv", np.int32), ("nxt", np.int32),
    ("inst", np.int32), ("acc", np.int16), ("state", np.int8), ("loc", np.int8),
])
COLD_DTYPE = np.dtype([
    ("t_write", np.int64), ("parent", np.int32), ("nchild", np.int32), ("pbits", np.int8),
])
# per-instance policy state: I_POL int64 columns; 0..5 hold rows (start at -1: list ends,
# hands), 6..7 hold counters (start at 0)
I_POL = 8
I_POL_ROWS = 6
COUNT_MAX = np.iinfo(np.int16).max  # access counts saturate here
# per-group integer policy state and per-instance float policy state (all start at 0)
G_POL = 8
I_POLF = 4
G_POLF = 2
# per-group ghost metadata (kvsim/core/policies/_ghost.py): layout and ring counters
GH_META = 12
STORAGE_SLOTS = 128  # a block's storage slot (``loc``) is an int8

ROW_FIELDS = (
    "key", "inst", "state", "loc", "prv", "nxt", "parent", "nchild", "pbits", "t_write",
    "t_access", "acc",
)
INST_FIELDS = ("i_group", "i_cost", "i_blocks", "i_pending", "i_head", "i_tail", "i_minf")
GROUP_FIELDS = (
    "g_used", "g_cap", "g_quota", "g_policy", "g_mode", "g_batch", "g_rr", "g_rng", "g_evicted",
)

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
    """Index slots for ``rows`` at the maximum load factor (any size: no power of two)."""
    return max(4, int(np.ceil(rows / MAX_LOAD)))


def _views(hot: np.ndarray, cold: np.ndarray) -> dict[str, np.ndarray]:
    out = {name: hot[name] for name in HOT_DTYPE.names or ()}
    out.update({name: cold[name] for name in COLD_DTYPE.names or ()})
    out["hot"] = hot
    out["cold"] = cold
    return out


def _new_pol(instances: int) -> np.ndarray:
    pol = np.zeros((instances, I_POL), dtype=np.int64)
    pol[:, :I_POL_ROWS] = -1
    return pol


def _new_rows(rows: int) -> dict[str, np.ndarray]:
    hot = np.zeros(rows, dtype=HOT_DTYPE)
    cold = np.zeros(rows, dtype=COLD_DTYPE)
    hot["inst"] = -1
    hot["prv"] = -1
    cold["parent"] = -1
    # free list threaded through nxt: 0 -> 1 -> ... -> rows-1 -> -1
    hot["nxt"] = np.arange(1, rows + 1, dtype=np.int32)
    hot["nxt"][-1] = -1
    return _views(hot, cold)


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
        index = np.full(h, EMPTY, dtype=np.uint64)
        meta = np.zeros(M_NMETA, dtype=np.int64)
        meta[M_FREE] = 0
        meta[M_SLOTS] = h
        inst = {n: np.zeros(instances, dtype=dt) for n, dt in _INST_DTYPES.items()}
        inst["i_head"][:] = -1
        inst["i_tail"][:] = -1
        inst["i_group"][:] = -1
        grp = {n: np.zeros(groups, dtype=dt) for n, dt in _GROUP_DTYPES.items()}
        return BlockTable(
            Tables(
                **r,
                scratch=np.zeros(SCRATCH, dtype=np.int32),
                slots=index,
                meta=meta,
                **inst,
                i_pol=_new_pol(instances),
                f_head=np.full((instances, LFU_BUCKETS), -1, dtype=np.int32),
                f_tail=np.full((instances, LFU_BUCKETS), -1, dtype=np.int32),
                **grp,
                g_params=np.zeros((groups, N_PARAMS), dtype=np.float64),
                g_pol=np.zeros((groups, G_POL), dtype=np.int64),
                i_polf=np.zeros((instances, I_POLF), dtype=np.float64),
                g_polf=np.zeros((groups, G_POLF), dtype=np.float64),
                i_slots=np.zeros((instances, STORAGE_SLOTS, 2), dtype=np.int64),
                gh_meta=np.zeros((groups, GH_META), dtype=np.int64),
                gh_ring=np.zeros(1, dtype=np.uint64),
                gh_skey=np.zeros(1, dtype=np.uint64),
                gh_sval=np.zeros(1, dtype=np.int64),
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
        return int(self.t.slots.shape[0])

    @property
    def used_rows(self) -> int:
        """Rows holding a block (WRITING, SERVING or DELETING)."""
        return int(self.t.meta[M_USED])

    def free_rows(self) -> int:
        """Rows available without growing."""
        return self.rows - self.used_rows

    def nbytes(self) -> int:
        """Bytes of per-row state plus the index (the part that scales with blocks)."""
        return self.t.hot.nbytes + self.t.cold.nbytes + self.t.slots.nbytes

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

    def grow_to(self, rows: int) -> None:
        """Grow to ``rows`` rows in one step (no doubling); smaller sizes change nothing."""
        if int(rows) > self.rows:
            self._grow_rows(int(rows))

    def _grow_rows(self, new_rows: int) -> None:
        old = self.rows
        fresh = _new_rows(new_rows)
        fresh["hot"][:old] = self.t.hot
        fresh["cold"][:old] = self.t.cold
        # append the new rows [old, new_rows) to the front of the free list
        nxt = fresh["nxt"]
        nxt[old:new_rows - 1] = np.arange(old + 1, new_rows, dtype=np.int32)
        nxt[new_rows - 1] = int(self.t.meta[M_FREE])
        meta = self.t.meta.copy()
        meta[M_FREE] = old
        h = index_size_for(new_rows)
        index = np.full(h, EMPTY, dtype=np.uint64)
        meta[M_SLOTS] = h
        t = self.t._replace(**fresh, slots=index, meta=meta)
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
        pol = _new_pol(size)
        pol[:cur] = self.t.i_pol
        upd["i_pol"] = pol
        for name in ("f_head", "f_tail"):
            arr = np.full((size, LFU_BUCKETS), -1, dtype=np.int32)
            arr[:cur] = getattr(self.t, name)
            upd[name] = arr
        polf = np.zeros((size, I_POLF), dtype=np.float64)
        polf[:cur] = self.t.i_polf
        upd["i_polf"] = polf
        isl = np.zeros((size, STORAGE_SLOTS, 2), dtype=np.int64)
        isl[:cur] = self.t.i_slots
        upd["i_slots"] = isl
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
        for name, width in (("g_pol", G_POL), ("gh_meta", GH_META)):
            arr2 = np.zeros((size, width), dtype=np.int64)
            arr2[:cur] = getattr(self.t, name)
            upd[name] = arr2
        polf = np.zeros((size, G_POLF), dtype=np.float64)
        polf[:cur] = self.t.g_polf
        upd["g_polf"] = polf
        self.t = self.t._replace(**upd)

    def set_ghost(self, g: int, rings: int, ring_len: int, cap_blocks: int) -> None:
        """Give group ``g`` ghost storage: ``rings`` FIFOs of up to ``ring_len`` live key
        hashes (``2 x ring_len`` ring slots each) and one open-addressing set over them
        (``rings = 0`` or ``ring_len = 0``: none).

        Ghosts are per group and sized from the group's capacity, never per block row,
        so the bytes per cached block do not change. An unchanged layout keeps the
        group's ghosts; a new one starts empty. Other groups' ghosts are kept.
        """
        from kvsim.core.policies._ghost import M_CAP, M_LEN, M_RINGS, M_ROFS, M_SLEN, M_SOFS

        rings = max(0, int(rings))
        ring_len = max(0, int(ring_len)) if rings else 0
        if ring_len == 0:
            rings = 0
        m = self.t.gh_meta
        if int(m[g, M_RINGS]) == rings and int(m[g, M_LEN]) == ring_len:
            m[g, M_CAP] = cap_blocks
            return
        n_groups = m.shape[0]
        want = {gi: (int(m[gi, M_RINGS]), int(m[gi, M_LEN])) for gi in range(n_groups)}
        want[g] = (rings, ring_len)
        sizes = {gi: (2 * r * ln, index_size_for(r * ln) + 1 if r * ln else 0)
                 for gi, (r, ln) in want.items()}
        ring = np.zeros(max(1, sum(a for a, _ in sizes.values())), dtype=np.uint64)
        skey = np.zeros(max(1, sum(b for _, b in sizes.values())), dtype=np.uint64)
        sval = np.zeros(skey.shape[0], dtype=np.int64)
        meta = m.copy()
        ro = so = 0
        for gi in range(n_groups):
            a, b = sizes[gi]
            if gi == g:
                meta[gi, :] = 0
                meta[gi, M_RINGS] = rings
                meta[gi, M_LEN] = ring_len
                meta[gi, M_CAP] = cap_blocks
            elif a:
                ring[ro:ro + a] = self.t.gh_ring[m[gi, M_ROFS]:m[gi, M_ROFS] + a]
                skey[so:so + b] = self.t.gh_skey[m[gi, M_SOFS]:m[gi, M_SOFS] + b]
                sval[so:so + b] = self.t.gh_sval[m[gi, M_SOFS]:m[gi, M_SOFS] + b]
            meta[gi, M_ROFS] = ro
            meta[gi, M_SOFS] = so
            meta[gi, M_SLEN] = b
            ro += a
            so += b
        self.t = self.t._replace(gh_meta=meta, gh_ring=ring, gh_skey=skey, gh_sval=sval)


def bytes_per_row(table: BlockTable) -> float:
    """Bytes of core state per allocated block row (rows plus index)."""
    return table.nbytes() / table.rows


# ---------------------------------------------------------------- kernels
# Index entries carry the key's 32-bit hash beside the row, so probing, insertion
# and backward-shift deletion compare hashes without loading rows, and the home
# slot of an entry is recomputed from the entry alone (fastrange over the size).
EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


@inline_kernel
def _hash(inst: int, key: int) -> np.uint64:
    """32-bit hash of ``(inst, key)`` (splitmix64 finaliser, high half)."""
    x = np.uint64(key) ^ (np.uint64(inst) * np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (x ^ (x >> np.uint64(31))) >> _S32


@inline_kernel
def _home(h: np.uint64, slots: np.uint64) -> np.uint64:
    return (h * slots) >> _S32


@inline_kernel
def stamp(t: Tables, now: int) -> int:
    """``now`` made strictly increasing: ties get +1 ns in the order of the touches.

    Access times double as the order of touches, so policies that compare them
    across instances (``group_precise``) or within a sample (``random_lru``) see an
    exact order even when many touches share one clock reading. (Write times stay
    the plain clock reading.)
    """
    last = t.meta[M_STAMP]
    v = now if now > last else last + 1
    t.meta[M_STAMP] = v
    return v


@kernel
def prefetch_keys(t: Tables, inst: int, keys: np.ndarray, a: int, b: int) -> None:
    """Start loading the index slots, then the rows, of ``keys[a:b]`` (overlapped misses)."""
    slots = np.uint64(t.meta[M_SLOTS])
    for j in range(a, b):
        prefetch(t.slots, _home(_hash(inst, keys[j]), slots))
    # second stage: by now most slots have arrived; start loading the rows they name
    for j in range(a, b):
        h = _hash(inst, keys[j])
        e = t.slots[_home(h, slots)]
        if e != EMPTY and (e >> _S32) == h:
            prefetch(t.hot, np.int64(e & _LOW32))


@inline_kernel
def prefetch_slot(t: Tables, inst: int, key: int) -> None:
    """Start loading the home index slot of ``(inst, key)`` (a lookup or insert soon)."""
    prefetch(t.slots, _home(_hash(inst, key), np.uint64(t.meta[M_SLOTS])))


@kernel
def lookup(t: Tables, inst: int, key: int) -> int:
    """Row of ``(inst, key)`` or -1."""
    slots = np.uint64(t.meta[M_SLOTS])
    h = _hash(inst, key)
    i = _home(h, slots)
    index = t.slots
    while True:
        e = index[i]
        if e == EMPTY:
            return -1
        if (e >> _S32) == h:
            r = np.int64(e & _LOW32)
            if t.key[r] == key and t.inst[r] == inst:
                return int(r)
        i += np.uint64(1)
        if i == slots:
            i = np.uint64(0)


@kernel
def _index_put(t: Tables, row: int) -> None:
    slots = np.uint64(t.meta[M_SLOTS])
    h = _hash(t.inst[row], t.key[row])
    i = _home(h, slots)
    while t.slots[i] != EMPTY:
        i += np.uint64(1)
        if i == slots:
            i = np.uint64(0)
    t.slots[i] = (h << _S32) | np.uint64(row)


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
    t.pbits[r] = 0
    t.t_write[r] = now
    t.t_access[r] = stamp(t, now)
    t.acc[r] = 1
    _index_put(t, r)
    return r


@kernel
def queue_free(t: Tables, row: int) -> None:
    """Free ``row`` soon: its index slot is prefetched now and freed in a batch.

    The row must already be out of every policy structure (state DELETING);
    :func:`flush_frees` frees the batch (and runs by itself when the batch is full).
    """
    prefetch(t.slots, _home(_hash(t.inst[row], t.key[row]), np.uint64(t.meta[M_SLOTS])))
    n = t.meta[M_PENDING]
    t.scratch[n] = row
    t.meta[M_PENDING] = n + 1
    if n + 1 == t.scratch.shape[0]:
        flush_frees(t)


@kernel
def flush_frees(t: Tables) -> None:
    """Free every row queued by :func:`queue_free`."""
    for k in range(t.meta[M_PENDING]):
        free_row(t, t.scratch[k])
    t.meta[M_PENDING] = 0


@kernel
def free_row(t: Tables, row: int) -> None:
    """Drop ``row`` from the index (backward shift) and return it to the free list."""
    slots = np.uint64(t.meta[M_SLOTS])
    index = t.slots
    want = (_hash(t.inst[row], t.key[row]) << _S32) | np.uint64(row)
    i = _home(want >> _S32, slots)
    while index[i] != want:
        i += np.uint64(1)
        if i == slots:
            i = np.uint64(0)
    # backward-shift deletion: pull later entries of the cluster into the hole
    j = i
    while True:
        j += np.uint64(1)
        if j == slots:
            j = np.uint64(0)
        e = index[j]
        if e == EMPTY:
            break
        home = _home(e >> _S32, slots)
        # can the entry at j move into hole i?  (is home cyclically outside (i, j]?)
        if i <= j:
            movable = home <= i or home > j
        else:
            movable = home <= i and home > j
        if movable:
            index[i] = e
            i = j
    index[i] = EMPTY
    t.state[row] = 0
    t.inst[row] = -1
    t.nxt[row] = t.meta[M_FREE]
    t.meta[M_FREE] = row
    t.meta[M_USED] -= 1

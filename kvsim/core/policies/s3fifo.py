"""``s3fifo``: S3-FIFO (Yang et al., SOSP'23): a small FIFO, a main FIFO and a ghost FIFO.

New blocks enter the small queue S, or the main queue M when their key is a ghost. A
hit raises the block's frequency (2 bits, saturating at 3); nothing moves on a hit.
To evict: when S holds at least ``small_frac`` of the cache (``floor(small_frac x
blocks)``) and is not empty, S's oldest block moves to M's head with frequency 0 if
its frequency reached ``move_threshold``, else it is the victim and its key enters
the ghost; otherwise M's oldest block is reinserted at M's head with its frequency
decremented while it is non-zero (a 2-bit CLOCK), and the first one at zero is the
victim. The ghost is an exact FIFO of ``floor(ghost_frac x capacity)`` keys evicted
from S (a key taken from the ghost is forgotten there). With ``fill_main`` set, a new
block that finds S full before the cache has ever evicted enters M (libCacheSim's
current S3FIFO; 0 is the paper's S3FIFOv0, where it always enters S). Commit is tail
first.

The defaults are libCacheSim's S3FIFO defaults (the S3-FIFO authors' implementation):
``small_frac`` 0.1, ``ghost_frac`` 0.9, ``move_threshold`` 2, ``fill_main`` 1. Queue
sizes are read as they were before the blocks awaiting room
(:mod:`kvsim.core.policies._room`), so on a block stream kvsim's S3-FIFO equals
libCacheSim's, hit for hit (``tests/test_reference_libcachesim.py``); below 20 blocks
libCacheSim refuses every insert into its small queue and the two differ.

Queues are per instance (the ghost and the awaiting-room counts are per group), so
across the instances of one group ``group_precise`` takes blocks leaving S before
blocks leaving M, then the oldest write: an approximation of one shared S3-FIFO.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist, _ghost, _qlist, _room
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import Tables

_MH, _MT = 2, 3  # i_pol columns: main queue ends (the small queue is i_head / i_tail)
_SN, _MN = 6, 7  # i_pol columns: small and main queue sizes
_WS, _WM, _WI, _EVICTED = 0, 1, 2, 3  # g_pol: awaiting room in S / M, their instance + 1
_FREQ = 3  # pbits: 2-bit frequency
_MAIN = 4  # pbits: in the main queue


@dataclass(frozen=True)
class S3FIFOParams(PolicyParams):
    """Queue sizing and promotion (defaults: libCacheSim's S3FIFO)."""

    small_frac: float = param_field(
        0.1, help="share of the cache the small FIFO holds before it evicts",
        low=0.01, high=0.5,
    )
    move_threshold: float = param_field(
        2, help="hits while in the small FIFO that move a block to the main FIFO",
        low=1, high=3, integer=True,
    )
    ghost_frac: float = param_field(
        0.9, help="ghost FIFO length as a share of the capacity in blocks",
        low=0.0, high=2.0,
    )
    fill_main: float = param_field(
        1, help="1: before the first eviction, new blocks that find the small FIFO full "
        "enter the main FIFO (libCacheSim's S3FIFO); 0: the paper's S3FIFOv0",
        low=0, high=1, integer=True,
    )


def ghost_rings(params: PolicyParams, cap_blocks: int) -> tuple[int, int]:
    """One ghost FIFO of ``floor(ghost_frac x capacity)`` keys."""
    assert isinstance(params, S3FIFOParams)
    return 1, ghost_len(cap_blocks, params.ghost_frac)


def ghost_len(cap_blocks: int, ghost_frac: float) -> int:
    """Ghost entries for a cache of ``cap_blocks`` (0 = unbounded: no ghost)."""
    if cap_blocks <= 0:
        return 0
    return max(0, int(float(cap_blocks) * ghost_frac))


@kernel
def _waiting(t: Tables, g: int, i: int) -> tuple[int, int]:
    """Blocks of instance ``i`` awaiting room in S and in M."""
    if t.g_pol[g, _WI] != i + 1:
        return 0, 0
    return int(t.g_pol[g, _WS]), int(t.g_pol[g, _WM])


@kernel
def _push_main(t: Tables, i: int, r: int, wm: int) -> None:
    """Link ``r`` into M behind the ``wm`` blocks awaiting room at M's head (they enter
    after the eviction that ``r``'s move belongs to, so they stay the newest)."""
    a = t.i_pol[i, _MH]
    for _ in range(wm - 1):
        if a < 0:
            break
        a = t.nxt[a]
    if wm <= 0 or a < 0:
        _qlist.push_head(t, r, _MH, _MT)
        return
    b = t.nxt[a]
    t.prv[r] = a
    t.nxt[r] = b
    t.nxt[a] = r
    if b >= 0:
        t.prv[b] = r
    else:
        t.i_pol[i, _MT] = r


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """A ghost's key enters M; any other S (or M, see ``fill_main``); frequency 0."""
    i = t.inst[r]
    ex = _room.excess(t, g, i)
    if ex == 0 or t.g_pol[g, _WI] != i + 1:
        t.g_pol[g, _WS] = 0
        t.g_pol[g, _WM] = 0
        t.g_pol[g, _WI] = i + 1
    to_main = _ghost.take(t, g, _ghost.row_hash(t, r)) >= 0
    if not to_main and t.g_params[g, 3] != 0.0 and t.g_pol[g, _EVICTED] == 0 and ex == 0:
        small = int(t.g_params[g, 0] * float(t.gh_meta[g, _ghost.M_CAP]))
        to_main = t.i_pol[i, _SN] >= small
    waits = t.g_pol[g, _WS] + t.g_pol[g, _WM] < ex
    if to_main:
        t.pbits[r] = _MAIN
        _qlist.push_head(t, r, _MH, _MT)
        t.i_pol[i, _MN] += 1
        if waits:
            t.g_pol[g, _WM] += 1
    else:
        t.pbits[r] = 0
        _dlist.push_head(t, r)
        t.i_pol[i, _SN] += 1
        if waits:
            t.g_pol[g, _WS] += 1


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Raise the frequency (saturating at 3); the queues do not change."""
    if t.pbits[r] & _FREQ != _FREQ:
        t.pbits[r] = t.pbits[r] + 1


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """Promote / reinsert per S3-FIFO until a block is due to leave; that block.

    As libCacheSim does, the choice between S and M is made once: S is walked until
    a block leaves or no block older than those awaiting room is left in it; then M.
    Blocks moved or reinserted into M go behind the blocks awaiting room there.
    """
    thr = int(t.g_params[g, 1])
    t.g_pol[g, _EVICTED] = 1
    ws, wm = _waiting(t, g, i)
    sn = t.i_pol[i, _SN]
    mn = t.i_pol[i, _MN]
    if sn + mn == 0:
        return -1
    s_pre = sn - ws
    if s_pre > 0 and s_pre >= int(t.g_params[g, 0] * float(sn + mn - ws - wm)):
        while s_pre > 0:
            r = t.i_tail[i]
            if t.pbits[r] & _FREQ < thr:
                return int(r)
            _dlist.unlink(t, r)
            t.i_pol[i, _SN] -= 1
            t.pbits[r] = _MAIN
            _push_main(t, i, r, wm)
            t.i_pol[i, _MN] += 1
            s_pre -= 1
    if t.i_pol[i, _MN] == 0:  # only blocks awaiting room are left, all in S
        return int(t.i_tail[i])
    while True:
        r = t.i_pol[i, _MT]
        if t.pbits[r] & _FREQ == 0:
            return int(r)
        t.pbits[r] = t.pbits[r] - 1
        _qlist.unlink(t, r, _MH, _MT)
        _push_main(t, i, r, wm)


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink; a block leaving the small queue leaves its key in the ghost."""
    i = t.inst[r]
    if t.pbits[r] & _MAIN:
        _qlist.unlink(t, r, _MH, _MT)
        t.i_pol[i, _MN] -= 1
    else:
        _dlist.unlink(t, r)
        t.i_pol[i, _SN] -= 1
        _ghost.push(t, g, 0, _ghost.row_hash(t, r))
    t.pbits[r] = 0
    if _room.fits_after_removal(t, g, r):
        t.g_pol[g, _WS] = 0
        t.g_pol[g, _WM] = 0
    elif t.g_pol[g, _WS] > 0:
        t.g_pol[g, _WS] -= 1
    elif t.g_pol[g, _WM] > 0:
        t.g_pol[g, _WM] -= 1


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance order: blocks leaving S first, then by write time."""
    return (1 if t.pbits[r] & _MAIN else 0), t.t_write[r]


SPEC = PolicySpec(
    name="s3fifo",
    code=10,
    params_cls=S3FIFOParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="S3-FIFO: small + main FIFO with 2-bit frequency and a ghost FIFO (SOSP'23)",
    ghost_rings=ghost_rings,
)

"""``arc``: Adaptive Replacement Cache (Megiddo & Modha, FAST'03).

T1 holds blocks seen once, T2 blocks hit again (a hit anywhere moves the block to
T2's head). Ghost lists B1 and B2 remember keys evicted from T1 and T2. A new block
whose key is in B1 raises the target size ``p`` of T1 by ``max(1, |B2| / |B1|)``, one
in B2 lowers it by ``max(1, |B1| / |B2|)`` (real division, ``p`` a float in
``[0, c]``, as in the paper and in libCacheSim); either enters T2, any other key T1.
REPLACE takes T1's LRU block when ``|T1| >= 1`` and ``|T1| > p`` (or ``|T1| = p`` and
the new block came from B2), or when T2 is empty; else T2's LRU block. The ghosts are
trimmed to ``|T1| + |B1| <= c`` and ``|B1| + |B2| <= c`` (oldest first), ``c`` the
group's capacity in blocks. Commit is tail first.

The paper runs REPLACE *before* the new block enters T1 or T2; the contract inserts
first and evicts after, so REPLACE reads ``|T1|`` and ``|T2|`` without the blocks that
await room (:mod:`kvsim.core.policies._room`). On a block stream (one key per request)
this makes kvsim's ARC equal to the paper's and to libCacheSim's ARC, hit for hit
(``tests/test_reference_libcachesim.py``). For a request with several new blocks,
the "came from B2" flag is the last committed block's. Ghost hits on a cache below
capacity (after explicit removals) do not evict, unlike the paper's cases II/III.

``p``, ``|T1|``, ``|T2|`` and the ghosts are per group; T1 and T2 are per instance,
so across the instances of one group ``group_precise`` takes the preferred list's LRU
block of the instance with the oldest one: an approximation of one shared ARC.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist, _ghost, _qlist, _room
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables

_2H, _2T = 2, 3  # i_pol columns: T2's ends (T1 is i_head / i_tail)
_N1, _N2, _FROM_B2, _W1, _W2 = 1, 2, 3, 4, 5  # g_pol columns (W: awaiting room in T1/T2)
_P = 0  # g_polf column: the target size of T1
_T2 = 1  # pbits: in T2


@dataclass(frozen=True)
class ARCParams(PolicyParams):
    """No parameters (ARC adapts ``p`` by itself)."""


def ghost_rings(params: PolicyParams, cap_blocks: int) -> tuple[int, int]:
    """Two ghost FIFOs (B1, B2) of up to ``c`` keys each."""
    return 2, max(0, cap_blocks)


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Adapt ``p`` on a ghost hit (then T2), else enter T1."""
    k = _ghost.take(t, g, _ghost.row_hash(t, r))
    c = float(t.gh_meta[g, _ghost.M_CAP])
    if k == 0:
        b1 = float(_ghost.live(t, g, 0) + 1)
        b2 = float(_ghost.live(t, g, 1))
        t.g_polf[g, _P] = min(c, t.g_polf[g, _P] + max(b2 / b1, 1.0))
        t.g_pol[g, _FROM_B2] = 0
    elif k == 1:
        b2 = float(_ghost.live(t, g, 1) + 1)
        b1 = float(_ghost.live(t, g, 0))
        t.g_polf[g, _P] = max(0.0, t.g_polf[g, _P] - max(b1 / b2, 1.0))
        t.g_pol[g, _FROM_B2] = 1
    else:
        t.g_pol[g, _FROM_B2] = 0
    ex = _room.excess(t, g, t.inst[r])
    if ex == 0:
        t.g_pol[g, _W1] = 0
        t.g_pol[g, _W2] = 0
    if k >= 0:
        t.pbits[r] = _T2
        _qlist.push_head(t, r, _2H, _2T)
        t.g_pol[g, _N2] += 1
        if t.g_pol[g, _W1] + t.g_pol[g, _W2] < ex:
            t.g_pol[g, _W2] += 1
    else:
        t.pbits[r] = 0
        _dlist.push_head(t, r)
        t.g_pol[g, _N1] += 1
        if t.g_pol[g, _W1] + t.g_pol[g, _W2] < ex:
            t.g_pol[g, _W1] += 1


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Move to T2's head."""
    if t.pbits[r] & _T2:
        _qlist.unlink(t, r, _2H, _2T)
    else:
        _dlist.unlink(t, r)
        t.g_pol[g, _N1] -= 1
        t.g_pol[g, _N2] += 1
        t.pbits[r] = _T2
    _qlist.push_head(t, r, _2H, _2T)


@kernel
def prefer_t1(t: Tables, g: int) -> bool:
    """ARC's REPLACE rule on the lists as they were before the blocks awaiting room."""
    n1 = t.g_pol[g, _N1] - t.g_pol[g, _W1]
    n2 = t.g_pol[g, _N2] - t.g_pol[g, _W2]
    p = t.g_polf[g, _P]
    if n2 <= 0:
        return True
    return n1 >= 1 and (n1 > p or (t.g_pol[g, _FROM_B2] == 1 and n1 == p))


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """T1's LRU block if REPLACE prefers T1, else T2's (whichever exists)."""
    a = t.i_tail[i]
    b = t.i_pol[i, _2T]
    if prefer_t1(t, g) and a >= 0:
        return int(a)
    if b >= 0:
        return int(b)
    return int(a)


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink; remember the key in B1 or B2 and trim the ghosts."""
    h = _ghost.row_hash(t, r)
    if t.pbits[r] & _T2:
        _qlist.unlink(t, r, _2H, _2T)
        t.g_pol[g, _N2] -= 1
        _ghost.push(t, g, 1, h)
    else:
        _dlist.unlink(t, r)
        t.g_pol[g, _N1] -= 1
        _ghost.push(t, g, 0, h)
    t.pbits[r] = 0
    if _room.fits_after_removal(t, g, r):
        t.g_pol[g, _W1] = 0
        t.g_pol[g, _W2] = 0
    elif t.g_pol[g, _W1] > 0:
        t.g_pol[g, _W1] -= 1
    elif t.g_pol[g, _W2] > 0:
        t.g_pol[g, _W2] -= 1
    c = t.gh_meta[g, _ghost.M_CAP]
    while _ghost.live(t, g, 0) > 0 and t.g_pol[g, _N1] + _ghost.live(t, g, 0) > c:
        _ghost.pop_oldest(t, g, 0)
    while _ghost.live(t, g, 0) + _ghost.live(t, g, 1) > c:
        _ghost.pop_oldest(t, g, 1 if _ghost.live(t, g, 1) > 0 else 0)


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance order: blocks of the list REPLACE prefers first, then least recent."""
    g = t.i_group[t.inst[r]]
    in_t1 = (t.pbits[r] & _T2) == 0
    return (0 if in_t1 == prefer_t1(t, g) else 1), t.t_access[r]


SPEC = PolicySpec(
    name="arc",
    code=11,
    params_cls=ARCParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="ARC: recency and frequency lists with ghosts and an adaptive target (FAST'03)",
    ghost_rings=ghost_rings,
)

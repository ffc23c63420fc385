"""``s3fifo``: S3-FIFO (Yang et al., SOSP'23): a small FIFO, a main FIFO and a ghost FIFO.

New blocks enter the small queue S (or the main queue M when their key is a ghost);
a hit raises the block's 2-bit frequency (saturating at 3); nothing moves on a hit.
To evict: while S holds at least ``small_frac`` of the instance's blocks (or M is
empty), S's oldest block moves to M if its frequency reached ``move_threshold``,
otherwise it is the victim and its key enters the ghost; else M's oldest block is
reinserted at M's head with its frequency decremented while it is non-zero
(CLOCK-like), and the first one at zero is the victim. Commit is tail first.

The ghost remembers the keys evicted from S; it is one ring per group of
``(1 - small_frac) x capacity`` key hashes (the main queue's size), see
:mod:`kvsim.core.policies._ghost`. A key taken from the ghost is forgotten there.

Across the instances of one group, ``group_precise`` takes blocks leaving S before
blocks leaving M, then the oldest write: the queues are per instance (the ghost is
shared), so this approximates one shared S3-FIFO rather than reproducing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist, _ghost, _qlist
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import Tables

_MH, _MT = 2, 3  # i_pol columns: main queue ends (the small queue is i_head / i_tail)
_SN, _MN = 6, 7  # i_pol columns: small and main queue sizes
_FREQ = 3  # pbits: 2-bit frequency
_MAIN = 4  # pbits: in the main queue


@dataclass(frozen=True)
class S3FIFOParams(PolicyParams):
    """Queue sizing and promotion."""

    small_frac: float = param_field(
        0.1, help="share of an instance's blocks the small FIFO may hold before it evicts",
        low=0.01, high=0.5,
    )
    move_threshold: float = param_field(
        1, help="hits while in the small FIFO that move a block to the main FIFO",
        low=1, high=3, integer=True,
    )


def ghost_rings(params: PolicyParams, cap_blocks: int) -> tuple[int, int]:
    """One ghost ring, as long as the main queue: ``(1 - small_frac) x capacity``."""
    assert isinstance(params, S3FIFOParams)
    return 1, ghost_len(cap_blocks, params.small_frac)


def ghost_len(cap_blocks: int, small_frac: float) -> int:
    """Ghost entries for a cache of ``cap_blocks`` (0 = unbounded: no ghost)."""
    if cap_blocks <= 0:
        return 0
    return max(1, int(cap_blocks * (1.0 - small_frac) + 0.5))


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """A ghost's key enters the main queue, any other the small one (frequency 0)."""
    i = t.inst[r]
    if _ghost.take(t, g, _ghost.row_hash(t, r)) >= 0:
        t.pbits[r] = _MAIN
        _qlist.push_head(t, r, _MH, _MT)
        t.i_pol[i, _MN] += 1
    else:
        t.pbits[r] = 0
        _dlist.push_head(t, r)
        t.i_pol[i, _SN] += 1


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Raise the frequency (saturating at 3); the queues do not change."""
    if t.pbits[r] & _FREQ != _FREQ:
        t.pbits[r] = t.pbits[r] + 1


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """Promote / reinsert per S3-FIFO until a block is due to leave; that block."""
    thr = int(t.g_params[g, 1])
    while True:
        sn = t.i_pol[i, _SN]
        mn = t.i_pol[i, _MN]
        if sn + mn == 0:
            return -1
        if sn > 0 and (mn == 0 or sn >= t.g_params[g, 0] * (sn + mn)):
            r = t.i_tail[i]
            if t.pbits[r] & _FREQ >= thr:
                _dlist.unlink(t, r)
                t.i_pol[i, _SN] -= 1
                t.pbits[r] = t.pbits[r] | _MAIN
                _qlist.push_head(t, r, _MH, _MT)
                t.i_pol[i, _MN] += 1
                continue
            return int(r)
        r = t.i_pol[i, _MT]
        if t.pbits[r] & _FREQ > 0:
            t.pbits[r] = t.pbits[r] - 1
            _qlist.unlink(t, r, _MH, _MT)
            _qlist.push_head(t, r, _MH, _MT)
            continue
        return int(r)


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

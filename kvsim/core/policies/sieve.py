"""``sieve``: SIEVE (Zhang et al., NSDI'24): a FIFO queue with a visited bit and a hand.

New blocks enter at the head; a hit only sets the block's visited bit. To evict, the
hand walks from its position toward the head (wrapping to the tail), clearing
visited bits, and stops at the first unvisited block. Commit is tail first.

Across the instances of one group, ``group_precise`` compares each instance's next
victim by insertion time: the hands are per instance, so this approximates one
shared SIEVE queue rather than reproducing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables

_HAND = 0  # i_pol column
_VISITED = 1  # pbits bit


@dataclass(frozen=True)
class SieveParams(PolicyParams):
    """No parameters."""


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Insert at the head, not visited."""
    t.pbits[r] = t.pbits[r] & ~_VISITED
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Mark visited; the queue order does not change."""
    t.pbits[r] = t.pbits[r] | _VISITED


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """Move the hand past visited blocks (clearing them); the first unvisited one."""
    h = t.i_pol[i, _HAND]
    if h < 0:
        h = t.i_tail[i]
    if h < 0:
        return -1
    while t.pbits[h] & _VISITED:
        t.pbits[h] = t.pbits[h] & ~_VISITED
        h = t.prv[h]
        if h < 0:
            h = t.i_tail[i]
    t.i_pol[i, _HAND] = h
    return int(h)


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink; a hand on the row moves to the next newer block."""
    i = t.inst[r]
    if t.i_pol[i, _HAND] == r:
        t.i_pol[i, _HAND] = t.prv[r]
    _dlist.unlink(t, r)


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance eviction rank: oldest write first."""
    return 0, t.t_write[r]


SPEC = PolicySpec(
    name="sieve",
    code=7,
    params_cls=SieveParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="SIEVE: FIFO with a visited bit and a moving hand (NSDI'24)",
)

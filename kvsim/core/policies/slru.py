"""``slru``: segmented LRU: a probationary and a protected LRU segment.

New blocks enter the probationary segment; a hit there promotes the block to the
protected segment, whose size is capped at ``protected_frac`` of the instance's
blocks (its LRU blocks are demoted back to probation). Victims come from the
probationary tail first. Commit is tail first.

Across the instances of one group, ``group_precise`` takes probationary blocks
before protected ones, then the least recent: segments are per instance, so this
approximates one shared SLRU rather than reproducing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist, _qlist
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import Tables

_PH, _PT = 1, 2  # i_pol columns: protected head and tail
_PN = 6  # i_pol column: protected count
_PROTECTED = 2  # pbits bit


@dataclass(frozen=True)
class SLRUParams(PolicyParams):
    """Segment sizing."""

    protected_frac: float = param_field(
        0.8, help="largest share of an instance's blocks in the protected segment",
        low=0.05, high=0.95,
    )


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """New blocks start on probation."""
    t.pbits[r] = t.pbits[r] & ~_PROTECTED
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Protect a block hit on probation; refresh a protected one."""
    i = t.inst[r]
    if t.pbits[r] & _PROTECTED:
        _qlist.unlink(t, r, _PH, _PT)
        _qlist.push_head(t, r, _PH, _PT)
        return
    _dlist.unlink(t, r)
    t.pbits[r] = t.pbits[r] | _PROTECTED
    _qlist.push_head(t, r, _PH, _PT)
    t.i_pol[i, _PN] += 1
    cap = int(t.g_params[g, 0] * t.i_blocks[i])
    while t.i_pol[i, _PN] > max(cap, 1):
        d = t.i_pol[i, _PT]
        _qlist.unlink(t, d, _PH, _PT)
        t.pbits[d] = t.pbits[d] & ~_PROTECTED
        t.i_pol[i, _PN] -= 1
        _dlist.push_head(t, d)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The probationary LRU block, else the protected one."""
    r = t.i_tail[i]
    if r >= 0:
        return int(r)
    return int(t.i_pol[i, _PT])


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink from its segment."""
    if t.pbits[r] & _PROTECTED:
        _qlist.unlink(t, r, _PH, _PT)
        t.i_pol[t.inst[r], _PN] -= 1
        t.pbits[r] = t.pbits[r] & ~_PROTECTED
    else:
        _dlist.unlink(t, r)


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance eviction rank: probationary before protected, then least recent."""
    return (1 if t.pbits[r] & 2 else 0), t.t_access[r]


SPEC = PolicySpec(
    name="slru",
    code=8,
    params_cls=SLRUParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="segmented LRU: probation, then a protected segment (protected_frac)",
)

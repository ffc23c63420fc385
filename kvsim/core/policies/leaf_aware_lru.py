"""``leaf_aware_lru``: LRU that only ever evicts leaves, with head-first commit.

The core tracks each block's cached children; the victim is the least recently
used block with none. With the naive head-first order (where plain LRU strands
tails) this keeps the cache prefix-closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables


@dataclass(frozen=True)
class LeafAwareLRUParams(PolicyParams):
    """No parameters."""


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Link a new row at the MRU end."""
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Move an accessed row to the MRU end."""
    _dlist.move_to_head(t, r)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The least recently used row of instance ``i`` with no cached child."""
    r = t.i_tail[i]
    while r >= 0 and t.nchild[r] > 0:
        r = t.prv[r]
    return r


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink a leaving row."""
    _dlist.unlink(t, r)


SPEC = PolicySpec(
    name="leaf_aware_lru",
    code=4,
    params_cls=LeafAwareLRUParams,
    tail_first=False,
    tracks_leaves=True,
    prefix_closed=True,
    summary="LRU over leaves only (head-first commit, never strands a tail)",
)

"""``lru``: least recently used, tail-first commit (the default policy).

Blocks of a request are touched from the last to the first, so a prefix block is
always more recent than its cached descendants and the LRU victim is always a
leaf: the cache stays prefix-closed (replay contract, step 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables


@dataclass(frozen=True)
class LRUParams(PolicyParams):
    """LRU has no parameters."""


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Link a new SERVING row at the MRU end."""
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Move an accessed row to the MRU end."""
    _dlist.move_to_head(t, r)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The LRU row of instance ``i``."""
    return t.i_tail[i]


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink a leaving row."""
    _dlist.unlink(t, r)


SPEC = PolicySpec(
    name="lru",
    code=1,
    params_cls=LRUParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=True,
    summary="least recently used, tail-first commit (victims are always leaves)",
)

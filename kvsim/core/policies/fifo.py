"""``fifo``: first in, first out; hits do not change the order.

Blocks are committed tail first, so within one request the prefix head is the
newest and leaves the cache last.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables


@dataclass(frozen=True)
class FIFOParams(PolicyParams):
    """No parameters."""


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Link a new row at the newest end."""
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Hits leave FIFO order unchanged."""


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The oldest inserted row of instance ``i``."""
    return t.i_tail[i]


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink a leaving row."""
    _dlist.unlink(t, r)


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance eviction rank: oldest write first."""
    return 0, t.t_write[r]


SPEC = PolicySpec(
    name="fifo",
    code=5,
    params_cls=FIFOParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="first in, first out (insertion order; hits ignored)",
)

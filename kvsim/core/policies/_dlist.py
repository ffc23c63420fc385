"""Per-instance doubly linked lists over block rows (MRU at head, LRU at tail).

Shared by the list-ordered policies; the links live in the table's ``prv``/``nxt``
columns and the ends in ``i_head``/``i_tail``.
"""

from __future__ import annotations

from kvsim.core._jit import inline_kernel
from kvsim.core.table import Tables


@inline_kernel
def push_head(t: Tables, r: int) -> None:
    """Link row ``r`` at the MRU end of its instance's list."""
    i = t.inst[r]
    h = t.i_head[i]
    t.prv[r] = -1
    t.nxt[r] = h
    if h >= 0:
        t.prv[h] = r
    else:
        t.i_tail[i] = r
    t.i_head[i] = r


@inline_kernel
def unlink(t: Tables, r: int) -> None:
    """Remove row ``r`` from its instance's list."""
    i = t.inst[r]
    p = t.prv[r]
    n = t.nxt[r]
    if p >= 0:
        t.nxt[p] = n
    else:
        t.i_head[i] = n
    if n >= 0:
        t.prv[n] = p
    else:
        t.i_tail[i] = p
    t.prv[r] = -1
    t.nxt[r] = -1


@inline_kernel
def move_to_head(t: Tables, r: int) -> None:
    """Make row ``r`` the most recent of its list."""
    if t.i_head[t.inst[r]] != r:
        unlink(t, r)
        push_head(t, r)

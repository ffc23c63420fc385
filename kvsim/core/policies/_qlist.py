"""Per-instance doubly linked lists whose ends live in ``i_pol`` columns.

For policies with more than one list per instance (segments, queues): a row is in
at most one list at a time, so all lists share the rows' ``prv``/``nxt`` links.
"""

from __future__ import annotations

from kvsim.core._jit import inline_kernel
from kvsim.core.table import Tables


@inline_kernel
def push_head(t: Tables, r: int, hc: int, tc: int) -> None:
    """Link row ``r`` at the head of the list whose ends are columns ``hc``/``tc``."""
    i = t.inst[r]
    h = t.i_pol[i, hc]
    t.prv[r] = -1
    t.nxt[r] = h
    if h >= 0:
        t.prv[h] = r
    else:
        t.i_pol[i, tc] = r
    t.i_pol[i, hc] = r


@inline_kernel
def unlink(t: Tables, r: int, hc: int, tc: int) -> None:
    """Remove row ``r`` from the list whose ends are columns ``hc``/``tc``."""
    i = t.inst[r]
    p = t.prv[r]
    n = t.nxt[r]
    if p >= 0:
        t.nxt[p] = n
    else:
        t.i_pol[i, hc] = n
    if n >= 0:
        t.prv[n] = p
    else:
        t.i_pol[i, tc] = p
    t.prv[r] = -1
    t.nxt[r] = -1

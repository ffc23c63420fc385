"""``cost_aware``: GreedyDual over leaves, valuing a block by the prefill it saves.

Value model. The policy only ever evicts leaves (blocks with no cached child), so
evicting a block never strands its descendants and the cache stays prefix-closed;
what one future hit on a leaf at depth ``d`` (``d`` blocks before it in its prefix
chain) saves is the prefill of that one block: its linear part (projections, MLP),
the same for every block, plus attention over the ``d x block_size`` tokens before
it. In units of a depth-0 block: ``value = 1 + depth_weight x d``, where
``depth_weight`` is the attention cost of one block of context relative to a
block's linear cost (about ``4 x block_size x d_model x layers / (2 x params)``:
0.02 for a 7B model at 512-token blocks). So deeper blocks are worth more per hit;
how often they are hit is left to the frequency term.

Priority (GreedyDual-Size-Frequency, aged): ``H = L + value x freq``, ``freq`` the
block's access count, ``L`` the priority of the last victim; the victim is the leaf
of least ``H``, the least recent among equals. A hit recomputes ``H`` from the
current ``L``. ``H - L`` is measured in ticks of ``1 / unit_ticks`` value and kept in a
64-slot wheel per instance (the LFU bucket lists; GD-Wheel, Li & Cox, EuroSys'15), so
it saturates at 63 ticks (16 hits of a depth-0 block at 4 ticks per unit). A block that
still has children when the hand reaches it is not evictable: it moves one tick past
the hand, so it goes as soon as its subtree has gone, unless it is hit first.

Depth is computed at commit from the prefix parent's depth (commit is head first,
so the parent is committed first) and kept in the block's policy byte, saturating
at 127. ``L`` is per group: ``group_precise`` takes the leaf of least ``H`` over the
group's instances (one shared GreedyDual); the rough modes evict from one instance at
a time, so there ``H`` ordering across instances is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import COUNT_MAX, LFU_BUCKETS, Tables

_CAND = 4  # i_pol column: the row victim() last proposed (-1: none)
_CAND_H = 7  # i_pol column: its priority
_L = 0  # g_pol column: priority of the last victim
_MASK = LFU_BUCKETS - 1
_MAX_DEPTH = 127


@dataclass(frozen=True)
class CostAwareParams(PolicyParams):
    """Value model and priority resolution."""

    depth_weight: float = param_field(
        0.02, help="attention cost of one block of context relative to a block's linear "
        "prefill cost (value of a block at depth d = 1 + depth_weight x d)",
        low=0.0, high=1.0,
    )
    unit_ticks: float = param_field(
        4.0, help="priority ticks per unit of value (priorities saturate at 63 ticks)",
        low=1.0, high=16.0,
    )


@kernel
def ticks(t: Tables, g: int, r: int, freq: int) -> int:
    """``value x freq`` in ticks, in [1, 63]."""
    v = 1.0 + t.g_params[g, 0] * t.pbits[r]
    x = int(t.g_params[g, 1] * v * freq + 0.5)
    if x < 1:
        return 1
    return x if x < _MASK else _MASK


@kernel
def _push(t: Tables, r: int, s: int) -> None:
    i = t.inst[r]
    h = t.f_head[i, s]
    t.prv[r] = -1
    t.nxt[r] = h
    if h >= 0:
        t.prv[h] = r
    else:
        t.f_tail[i, s] = r
    t.f_head[i, s] = r


@kernel
def _unlink(t: Tables, r: int) -> None:
    """Unlink from whichever slot list holds ``r`` (ends are found by a scan)."""
    i = t.inst[r]
    p = t.prv[r]
    n = t.nxt[r]
    if p >= 0:
        t.nxt[p] = n
    else:
        for s in range(LFU_BUCKETS):
            if t.f_head[i, s] == r:
                t.f_head[i, s] = n
                break
    if n >= 0:
        t.prv[n] = p
    else:
        for s in range(LFU_BUCKETS):
            if t.f_tail[i, s] == r:
                t.f_tail[i, s] = p
                break
    t.prv[r] = -1
    t.nxt[r] = -1


@kernel
def _forget_candidate(t: Tables, r: int) -> None:
    i = t.inst[r]
    if t.i_pol[i, _CAND] == r:
        t.i_pol[i, _CAND] = -1


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Depth from the parent; enter at ``L + value``."""
    p = t.parent[r]
    d = 0
    if p >= 0:
        d = t.pbits[p] + 1
        if d > _MAX_DEPTH:
            d = _MAX_DEPTH
    t.pbits[r] = d
    _forget_candidate(t, r)
    _push(t, r, (t.g_pol[g, _L] + ticks(t, g, r, t.acc[r])) & _MASK)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Re-queue at ``L + value x freq`` (the core counts this access after the call)."""
    f = t.acc[r] + 1
    if f > COUNT_MAX:
        f = COUNT_MAX
    _unlink(t, r)
    _forget_candidate(t, r)
    _push(t, r, (t.g_pol[g, _L] + ticks(t, g, r, f)) & _MASK)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The least-priority leaf; non-leaves met on the way move one tick on."""
    L = t.g_pol[g, _L]
    budget = 64 * (t.i_blocks[i] + 1)
    for k in range(LFU_BUCKETS):
        s = (L + k) & _MASK
        r = t.f_tail[i, s]
        while r >= 0:
            if t.nchild[r] == 0:
                t.i_pol[i, _CAND] = r
                t.i_pol[i, _CAND_H] = L + k
                return int(r)
            if budget > 0 and k < _MASK:
                budget -= 1
                _unlink(t, r)
                _push(t, r, (L + k + 1) & _MASK)
                r = t.f_tail[i, s]
            else:
                r = t.prv[r]
    return -1


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink; evicting the proposed victim moves ``L`` to its priority."""
    i = t.inst[r]
    if t.i_pol[i, _CAND] == r:
        t.g_pol[g, _L] = t.i_pol[i, _CAND_H]
        t.i_pol[i, _CAND] = -1
    _unlink(t, r)
    t.pbits[r] = 0


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance order: the proposed victim's priority, then least recent."""
    return int(t.i_pol[t.inst[r], _CAND_H]), t.t_access[r]


SPEC = PolicySpec(
    name="cost_aware",
    code=12,
    params_cls=CostAwareParams,
    tail_first=False,
    tracks_leaves=True,
    prefix_closed=True,
    summary="GreedyDual over leaves: priority L + (1 + depth_weight x depth) x freq",
)

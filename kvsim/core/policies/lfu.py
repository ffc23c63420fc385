"""``lfu``: least frequently used, ties to the least recent.

Rows sit in per-instance frequency buckets (doubly linked, MRU at head); a hit
moves a row to the next bucket. Frequencies saturate at ``LFU_BUCKETS - 1`` (63),
like a small saturating counter. The victim is the tail of the lowest non-empty
bucket. Blocks are committed tail first, so a prefix block is never less
frequent or less recent than a descendant committed with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import LFU_BUCKETS, Tables


@dataclass(frozen=True)
class LFUParams(PolicyParams):
    """No parameters."""


@kernel
def _push(t: Tables, r: int, f: int) -> None:
    i = t.inst[r]
    h = t.f_head[i, f]
    t.prv[r] = -1
    t.nxt[r] = h
    if h >= 0:
        t.prv[h] = r
    else:
        t.f_tail[i, f] = r
    t.f_head[i, f] = r
    if f < t.i_minf[i]:
        t.i_minf[i] = f


@kernel
def _unlink(t: Tables, r: int, f: int) -> None:
    i = t.inst[r]
    p = t.prv[r]
    n = t.nxt[r]
    if p >= 0:
        t.nxt[p] = n
    else:
        t.f_head[i, f] = n
    if n >= 0:
        t.prv[n] = p
    else:
        t.f_tail[i, f] = p
    t.prv[r] = -1
    t.nxt[r] = -1


@kernel
def bucket(t: Tables, r: int) -> int:
    c = t.acc[r]
    return c if c < LFU_BUCKETS - 1 else LFU_BUCKETS - 1


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """A new row enters at its access count (1 for a fresh write)."""
    _push(t, r, bucket(t, r))


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Move the row one bucket up (the core then counts the access)."""
    f = bucket(t, r)
    _unlink(t, r, f)
    _push(t, r, f + 1 if f < LFU_BUCKETS - 1 else f)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """Tail of the lowest non-empty frequency bucket."""
    f = t.i_minf[i]
    while f < LFU_BUCKETS:
        r = t.f_tail[i, f]
        if r >= 0:
            t.i_minf[i] = f
            return r
        f += 1
    t.i_minf[i] = LFU_BUCKETS - 1
    return -1


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink a leaving row from its bucket."""
    _unlink(t, r, bucket(t, r))


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance eviction rank: lowest frequency bucket, then least recent."""
    return bucket(t, r), t.t_access[r]


SPEC = PolicySpec(
    name="lfu",
    code=6,
    params_cls=LFUParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="least frequently used (saturating at 63), ties to least recent",
)

"""``workload_aware``: reuse probability per workload category, with recency (ATC'25).

After "KVCache Cache in the Wild" (Alibaba, ATC'25): blocks of different workload
categories are reused with very different probabilities and at different intervals,
so the cache should keep the blocks most likely to be reused soon, and within one
request evict the blocks furthest from the prefix root first.

Here a category is an instance. Per instance the policy keeps two exponentially
weighted estimates (weight ``1 - decay`` per event): ``rho``, the reuse probability
(a hit counts 1; a block that leaves without ever being hit counts 0), and ``tau``,
the mean reuse interval (at each hit, the time since the block was written: the core
does not keep a block's previous access time while a request touches it).
A block's predicted reuse is ``rho x exp(-age / tau)``: it falls with the time since
its last access, at its category's pace. The victim is the block of least predicted
reuse. Within one instance that is the least recently used block (the prediction is
monotone in age), and commit is tail first, so among the blocks of one request the
deepest goes first and the cache stays prefix-closed (victims are always leaves, as
with ``lru``). Across the instances of one group, ``group_precise`` compares each
instance's LRU block by ``log(rho) - age / tau``, with ``age`` taken from the latest
access stamp of the table: so with a single instance the policy is exactly ``lru``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import M_STAMP, Tables

_RHO, _TAU = 0, 1  # i_polf columns


@dataclass(frozen=True)
class WorkloadAwareParams(PolicyParams):
    """Estimator weight."""

    decay: float = param_field(
        0.99, help="weight of the past in the per-instance reuse estimates (per event)",
        low=0.5, high=0.9999,
    )


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Link a new row at the MRU end."""
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """A reuse: update the category's estimates, move the row to the MRU end."""
    i = t.inst[r]
    a = t.g_params[g, 0]
    gap = now - t.t_write[r]  # t_access is already the core's in-request marker here
    if gap < 0:
        gap = 0
    t.i_polf[i, _RHO] = a * t.i_polf[i, _RHO] + (1.0 - a)
    if t.i_polf[i, _TAU] <= 0.0:
        t.i_polf[i, _TAU] = gap + 1.0
    else:
        t.i_polf[i, _TAU] = a * t.i_polf[i, _TAU] + (1.0 - a) * (gap + 1.0)
    _dlist.move_to_head(t, r)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """The instance's least recently used row."""
    return t.i_tail[i]


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink; a block never hit counts as a miss of its category's reuse estimate."""
    if t.acc[r] <= 1:
        i = t.inst[r]
        t.i_polf[i, _RHO] = t.g_params[g, 0] * t.i_polf[i, _RHO]
    _dlist.unlink(t, r)


@kernel
def rank(t: Tables, r: int) -> tuple[int, int]:
    """Cross-instance order: least predicted reuse ``log(rho) - age / tau`` first."""
    i = t.inst[r]
    rho = t.i_polf[i, _RHO]
    if rho < 1e-12:
        rho = 1e-12
    tau = t.i_polf[i, _TAU]
    if tau <= 0.0:
        tau = 1e9
    age = t.meta[M_STAMP] - t.t_access[r]
    if age < 0:
        age = 0
    s = np.log(rho) - age / tau
    if s < -1e9:
        s = -1e9
    return int(s * 1e6), t.t_access[r]


SPEC = PolicySpec(
    name="workload_aware",
    code=13,
    params_cls=WorkloadAwareParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=True,
    summary="per-instance reuse probability x recency decay (ATC'25), deepest first",
)

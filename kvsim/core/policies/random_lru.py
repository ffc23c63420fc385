"""``random_lru``: sampled LRU, seeded.

Each victim is the least recently used of ``ceil(1 / sample_rate)`` blocks drawn
uniformly at random from the instance's cached blocks (as KVCM samples
``batch / sample_rate`` candidates per batch). ``sample_rate = 1`` draws one block:
random eviction; small rates approach exact LRU. Draws come from a per-group
xorshift64 generator seeded by ``seed``, so a replay is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvsim.core._jit import kernel
from kvsim.core.policies import _dlist
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import M_HWM, SERVING, Tables


@dataclass(frozen=True)
class RandomLRUParams(PolicyParams):
    """Sampling parameters."""

    sample_rate: float = param_field(
        0.1, help="fraction sampled: 1/sample_rate candidates per victim", low=0.001, high=1.0,
        log=True,
    )
    seed: float = param_field(0, help="seed of the sampling generator", integer=True)

    def sample_size(self) -> int:
        """Candidates drawn per victim."""
        return max(1, math.ceil(1.0 / self.sample_rate))


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    """Track the row (list kept for the fallback when sampling finds nothing)."""
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    """Recency lives in ``t_access``; keep the list in step too."""
    _dlist.move_to_head(t, r)


@kernel
def _next_rand(t: Tables, g: int) -> np.uint64:
    x = t.g_rng[g]
    if x == 0:
        x = np.uint64(0x2545F4914F6CDD1D)
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    t.g_rng[g] = x
    return x


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    """Oldest of a random sample of instance ``i``'s cached rows."""
    if t.i_blocks[i] <= 0:
        return -1
    rate = t.g_params[g, 0]
    k = int(np.ceil(1.0 / rate)) if rate > 0 else 10
    hwm = np.uint64(t.meta[M_HWM])
    best = np.int64(-1)
    found = 0
    tries = 0
    limit = 64 * k
    while found < k and tries < limit:
        tries += 1
        r = np.int64(_next_rand(t, g) % hwm)
        if t.state[r] == SERVING and t.inst[r] == i:
            found += 1
            if best < 0 or t.t_access[r] < t.t_access[best]:
                best = r
    if best < 0:
        return int(t.i_tail[i])
    return int(best)


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    """Unlink a leaving row."""
    _dlist.unlink(t, r)


SPEC = PolicySpec(
    name="random_lru",
    code=3,
    params_cls=RandomLRUParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=False,
    summary="sampled LRU: oldest of 1/sample_rate random blocks (seeded)",
)

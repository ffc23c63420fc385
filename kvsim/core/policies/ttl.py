"""``ttl``: blocks expire ``ttl_s`` seconds after their last access; LRU under pressure.

Expired blocks are removed whenever the group evicts (each replayed request, each
reclaimer pass), even below capacity; when the cache is still over capacity the
least recently used blocks go (KVCM's ``fallback_on_pressure``). Commit is tail
first, so expiry and eviction only ever take leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core._jit import kernel
from kvsim.core.policies import lru
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field
from kvsim.core.table import Tables

commit = lru.commit
hit = lru.hit
victim = lru.victim
remove = lru.remove


@dataclass(frozen=True)
class TTLParams(PolicyParams):
    """Time to live."""

    ttl_s: float = param_field(
        3600.0, help="seconds after its last access that a block expires", low=0.001,
        high=30 * 86400.0, log=True,
    )


@kernel
def expired_tail(t: Tables, g: int, i: int, now: int) -> int:
    """The instance's LRU block if it has expired at ``now``, else -1."""
    r = t.i_tail[i]
    if r >= 0 and t.t_access[r] + int(t.g_params[g, 0] * 1e9) <= now:
        return int(r)
    return -1


SPEC = PolicySpec(
    name="ttl",
    code=9,
    params_cls=TTLParams,
    tail_first=True,
    tracks_leaves=False,
    prefix_closed=True,
    summary="expire after ttl_s without access; LRU when still over capacity",
)

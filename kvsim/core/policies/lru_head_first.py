"""``lru_head_first``: LRU with the naive head-first commit order.

Kept for comparison (and for equality with block-level simulators such as
libCacheSim on a flattened block stream): prefix heads become older than their
tails, so they are evicted first and strand the tails.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.policies.lru import commit, hit, remove, victim

__all__ = ["SPEC", "commit", "hit", "remove", "victim"]


@dataclass(frozen=True)
class LRUHeadFirstParams(PolicyParams):
    """No parameters."""


SPEC = PolicySpec(
    name="lru_head_first",
    code=2,
    params_cls=LRUHeadFirstParams,
    tail_first=False,
    tracks_leaves=False,
    prefix_closed=False,
    summary="LRU with naive head-first commit (strands tails; for comparison)",
)

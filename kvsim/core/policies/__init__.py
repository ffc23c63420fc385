"""Eviction policies, one module each, registered by name in :data:`POLICIES`.

Example:
    >>> sorted(POLICIES)[:3]
    ['arc', 'cost_aware', 'fifo']
    >>> POLICIES["lru"].tail_first
    True
"""

from __future__ import annotations

from kvsim.core.policies import (
    arc,
    cost_aware,
    fifo,
    leaf_aware_lru,
    lfu,
    lru,
    lru_head_first,
    random_lru,
    s3fifo,
    sieve,
    slru,
    ttl,
    workload_aware,
)
from kvsim.core.policies.base import PolicyParams, PolicySpec, param_field

POLICIES: dict[str, PolicySpec] = {
    m.SPEC.name: m.SPEC
    for m in (lru, lru_head_first, random_lru, leaf_aware_lru, fifo, lfu, sieve, slru, ttl,
              s3fifo, arc, cost_aware, workload_aware)
}
BY_CODE: dict[int, PolicySpec] = {s.code: s for s in POLICIES.values()}

DEFAULT_POLICY = "lru"


def get_policy(name: str) -> PolicySpec:
    """The policy registered as ``name``; ``KeyError`` lists the known names."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


__all__ = ["BY_CODE", "DEFAULT_POLICY", "POLICIES", "PolicyParams", "PolicySpec", "get_policy",
           "param_field"]

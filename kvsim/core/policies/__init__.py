"""Eviction policies, one module each, registered by name in :data:`POLICIES`.

Example:
    >>> sorted(POLICIES)[:3]
    ['arc', 'cost_aware', 'fifo']
    >>> POLICIES["lru"].tail_first
    True
"""

from __future__ import annotations

from types import ModuleType

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

_REGISTERED = (lru, lru_head_first, random_lru, leaf_aware_lru, fifo, lfu, sieve, slru, ttl,
               s3fifo, arc, cost_aware, workload_aware)

POLICIES: dict[str, PolicySpec] = {m.SPEC.name: m.SPEC for m in _REGISTERED}
BY_CODE: dict[int, PolicySpec] = {s.code: s for s in POLICIES.values()}
BUILTIN: tuple[str, ...] = tuple(m.SPEC.name for m in _REGISTERED)
"""The policies that ship with kvsim (:func:`register` adds others)."""
MODULES: dict[str, ModuleType] = {m.SPEC.name: m for m in _REGISTERED}
"""The module implementing each policy's kernels (``commit``, ``hit``, ``victim``,
``remove``; optionally ``rank`` and ``expired_tail``), by name. The kernels'
dispatch is generated from it (:mod:`kvsim.core.specialize`)."""

DEFAULT_POLICY = "lru"


def get_policy(name: str) -> PolicySpec:
    """The policy registered as ``name``; ``KeyError`` lists the known names."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


def register(module: ModuleType) -> PolicySpec:
    """Register the policy implemented by ``module`` (its ``SPEC`` and kernels).

    The built-in policies are listed above; this is for a policy defined elsewhere
    (a plug-in, a test). Its name and code must be new.

    Raises:
        ValueError: the name or code is taken, or a kernel is missing.
    """
    spec = module.SPEC
    if spec.name in POLICIES or spec.code in BY_CODE:
        raise ValueError(f"policy {spec.name!r} (code {spec.code}): name or code already "
                         "registered")
    if not 0 < spec.code < 2**31:
        raise ValueError(f"policy {spec.name!r}: code must be in [1, 2^31), got {spec.code}")
    missing = [f for f in ("commit", "hit", "victim", "remove") if not hasattr(module, f)]
    if missing:
        raise ValueError(f"policy {spec.name!r}: module {module.__name__} lacks {missing}")
    POLICIES[spec.name] = spec
    BY_CODE[spec.code] = spec
    MODULES[spec.name] = module
    return spec


def unregister(name: str) -> None:
    """Forget a policy added by :func:`register` (a built-in one cannot be removed)."""
    if any(m.SPEC.name == name for m in _REGISTERED):
        raise ValueError(f"policy {name!r} is built in")
    spec = POLICIES.pop(name)
    BY_CODE.pop(spec.code, None)
    MODULES.pop(name, None)


__all__ = [
    "BUILTIN",
    "BY_CODE",
    "DEFAULT_POLICY",
    "MODULES",
    "POLICIES",
    "PolicyParams",
    "PolicySpec",
    "get_policy",
    "param_field",
    "register",
    "unregister",
]

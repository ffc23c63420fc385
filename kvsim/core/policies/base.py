"""The eviction-policy protocol and the parameter metadata convention.

A policy is one module under ``kvsim/core/policies`` holding four numba functions
over the core :class:`~kvsim.core.table.Tables` and a :class:`PolicySpec`:

``commit(t, g, r, now)``
    row ``r`` became SERVING (link it into the policy's order);
``hit(t, g, r, now)``
    row ``r`` was read or rewritten (update recency / frequency);
``victim(t, g, i) -> row``
    the row to evict next from instance ``i`` of group ``g``, or -1 (never a
    WRITING row: pending blocks are not linked into any policy structure);
``remove(t, g, r)``
    row ``r`` leaves the cache (unlink it).

Parameters are a frozen dataclass whose fields carry metadata (``help``, ``low``,
``high``, ``log``, ``choices``) from which the CLI builds options and the optimizer
builds Optuna search ranges; :func:`param_field` makes such a field.

Example:
    >>> from kvsim.core.policies import POLICIES
    >>> spec = POLICIES["random_lru"]
    >>> spec.params_cls(sample_rate=0.5).to_vector()[:1].tolist()
    [0.5]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kvsim.core.table import N_PARAMS


def param_field(
    default: float,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    log: bool = False,
    integer: bool = False,
) -> Any:
    """A policy parameter: a dataclass field with search and CLI metadata."""
    return field(
        default=default,
        metadata={"help": help, "low": low, "high": high, "log": log, "integer": integer},
    )


@dataclass(frozen=True)
class PolicyParams:
    """Base of every policy's parameters (none by default)."""

    def to_vector(self) -> np.ndarray:
        """The parameters in field order as the float vector kernels read."""
        vals = [float(getattr(self, f.name)) for f in dataclasses.fields(self)]
        if len(vals) > N_PARAMS:
            raise ValueError(f"{type(self).__name__}: more than {N_PARAMS} parameters")
        out = np.zeros(N_PARAMS, dtype=np.float64)
        out[: len(vals)] = vals
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            lo, hi = f.metadata.get("low"), f.metadata.get("high")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(
                    f"policy parameter {f.name!r}={v} is outside [{lo}, {hi}]"
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> PolicyParams:
        """Build from a mapping; unknown names are an error naming the field."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for {cls.__name__} (known: {sorted(names)})"
            )
        p = cls(**values)
        p.validate()
        return p


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy.

    Attributes:
        name: registry name.
        code: integer the kernels dispatch on.
        params_cls: frozen dataclass of parameters.
        tail_first: commit a request's blocks from the last to the first (so a prefix
            block is more recent than its descendants); False = head first.
        tracks_leaves: the core maintains parent/child counts for this policy.
        prefix_closed: the policy claims a cache that never holds a block without its
            prefix (under combined read+write replay of complete prefixes).
        summary: one line for ``--help`` and reports.
        ghost_rings: for policies that remember evicted keys, ``(params, capacity in
            blocks) -> (rings, ring length)`` of the group's ghost storage (see
            :mod:`kvsim.core.policies._ghost`); None = no ghost.
    """

    name: str
    code: int
    params_cls: type[PolicyParams]
    tail_first: bool
    tracks_leaves: bool
    prefix_closed: bool
    summary: str
    ghost_rings: Callable[[PolicyParams, int], tuple[int, int]] | None = None

    CODES: ClassVar[dict[int, str]] = {}

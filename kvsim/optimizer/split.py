"""The exact split of a total block budget across instance groups.

Every instance group is its own cache (its own quota), so under ``lru`` with
``group_precise`` eviction and ``used_percentage`` 1 a group's hit tokens at quota ``C``
are read off that group's one-pass curve (:func:`~kvsim.optimizer.curve.curve_facts` of
the group's sub-trace), and the trace's hit tokens are the sum over groups. The best
split of a budget ``B`` maximises that sum subject to ``sum(quota) <= B``.

Curves are evaluated on a grid of ``step`` blocks (``quota = k x step``, ``k >= 1``:
a quota of 0 means *unlimited* in the config, so every group gets at least one step).
:func:`dp_split` solves the grid problem exactly by dynamic programming over groups
(``O(groups x K^2)`` for ``K = B // step`` steps). Greedy on marginal gains
(:func:`greedy_split`, one step at a time to the group that gains most) is exact only
when every curve is concave; LRU hit curves are not concave in general (a shared
prefix of ``s`` blocks is worth nothing until the whole of it fits, then a lot), and
greedy can then stop short of the jump. kvsim therefore uses the DP and keeps greedy for
comparison; both are checked against exhaustive search in the tests.

Example:
    >>> import numpy as np
    >>> a = np.array([0, 5, 6, 6, 6])      # hits at 0..4 steps: saturates fast
    >>> b = np.array([0, 0, 0, 9, 9])      # nothing until 3 steps fit (not concave)
    >>> dp_split([a, b], 4)
    ((1, 3), 14)
    >>> greedy_split([a, b], 4)             # greedy never sees b's jump
    ((3, 1), 6)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvsim.config import KVSimConfig
from kvsim.trace.model import Trace

__all__ = [
    "SplitResult",
    "brute_force_split",
    "dp_split",
    "exact_split",
    "greedy_split",
    "group_curves",
    "group_of_instances",
    "group_subtraces",
]


def group_of_instances(trace: Trace, config: KVSimConfig) -> tuple[str, ...]:
    """The group of each trace instance, as :func:`kvsim.sim.replay.build_manager` assigns.

    Example:
        >>> t = Trace.from_lists(ts_ns=[0, 1], keys=[[1], [2]], instance=["a", "b"])
        >>> cfg = KVSimConfig.from_dict({
        ...     "instance_groups": [{"name": "x"}, {"name": "y"}],
        ...     "instances": [{"instance_id": "b", "group": "y"}]})
        >>> group_of_instances(t, cfg)
        ('x', 'y')
    """
    listed = {s.instance_id: s.group for s in config.instances}
    return tuple(listed.get(name, config.replay.default_group) for name in trace.instances)


def group_subtraces(trace: Trace, config: KVSimConfig) -> dict[str, Trace]:
    """The requests of each config group (every group appears; empty when unused)."""
    gi = np.asarray(group_of_instances(trace, config) or ("",), dtype=object)
    req_group = gi[trace.instance] if trace.n_requests else np.zeros(0, dtype=object)
    return {g.name: trace.select(np.flatnonzero(req_group == g.name)) for g in config.groups}


def group_curves(trace: Trace, config: KVSimConfig, capacities: Sequence[int]
                 ) -> dict[str, np.ndarray]:
    """Hit tokens per group at each capacity (blocks > 0), one exact pass per group."""
    from kvsim.optimizer.curve import curve_facts

    caps = [int(c) for c in capacities]
    if any(c <= 0 for c in caps):
        raise ValueError("capacities must be positive (0 would mean unlimited)")
    out = {}
    for name, sub in group_subtraces(trace, config).items():
        if sub.n_requests == 0:
            out[name] = np.zeros(len(caps), dtype=np.int64)
        else:
            out[name] = curve_facts(sub).curve(caps)["hit_tokens"].to_numpy().astype(np.int64)
    return out


def dp_split(values: Sequence[np.ndarray], steps: int) -> tuple[tuple[int, ...], int]:
    """The exact best split of ``steps`` grid steps, at least one per group.

    Args:
        values: per group, value at ``0..steps`` steps (index 0 is never chosen).
        steps: the budget in steps.

    Returns:
        Steps per group and the total value.

    Raises:
        ValueError: fewer steps than groups.
    """
    g = len(values)
    if steps < g:
        raise ValueError(f"a budget of {steps} steps cannot give each of {g} groups one")
    vals = [np.asarray(v, dtype=np.float64)[: steps + 1] for v in values]
    neg = -np.inf
    best = np.full(steps + 1, neg)
    best[0] = 0.0
    choice = np.zeros((g, steps + 1), dtype=np.int64)
    for j, v in enumerate(vals):
        new = np.full(steps + 1, neg)
        arg = np.zeros(steps + 1, dtype=np.int64)
        for k in range(1, min(steps, v.shape[0] - 1) + 1):
            cand = np.full(steps + 1, neg)
            cand[k:] = best[: steps + 1 - k] + v[k]
            better = cand > new  # ties keep the smaller k: deterministic
            new[better] = cand[better]
            arg[better] = k
        best, choice[j] = new, arg
    b = int(np.argmax(best))  # curves are monotone: usually b == steps
    total = best[b]
    ks = []
    for j in range(g - 1, -1, -1):
        k = int(choice[j, b])
        ks.append(k)
        b -= k
    return tuple(reversed(ks)), round(float(total))


def greedy_split(values: Sequence[np.ndarray], steps: int) -> tuple[tuple[int, ...], int]:
    """One step at a time to the group with the largest marginal gain (exact iff concave)."""
    g = len(values)
    if steps < g:
        raise ValueError(f"a budget of {steps} steps cannot give each of {g} groups one")
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    ks = [1] * g
    for _ in range(steps - g):
        gains = [vals[j][ks[j] + 1] - vals[j][ks[j]] if ks[j] + 1 < vals[j].shape[0] else -1.0
                 for j in range(g)]
        j = int(np.argmax(gains))
        ks[j] += 1
    return tuple(ks), round(float(sum(vals[j][ks[j]] for j in range(g))))


def brute_force_split(values: Sequence[np.ndarray], steps: int
                      ) -> tuple[tuple[int, ...], int]:
    """Exhaustive search over every split (small cases only; for tests)."""
    g = len(values)
    best: tuple[tuple[int, ...], float] = ((), -np.inf)
    for ks in itertools.product(range(1, steps + 1), repeat=g):
        if sum(ks) > steps:
            continue
        v = sum(float(values[j][k]) for j, k in enumerate(ks))
        if v > best[1]:
            best = (tuple(ks), v)
    return best[0], round(best[1])


@dataclass(frozen=True)
class SplitResult:
    """The exact split of a budget, and the per-group curves it was read from.

    Attributes:
        groups: group names, in config order.
        quotas: blocks per group.
        hit_tokens: predicted hit tokens per group at its quota.
        input_tokens: tokens read per group (the hit-rate denominators).
        budget: the total budget in blocks.
        step: the grid step in blocks.
        even_quotas: the even split of the same budget (for comparison).
        even_hit_tokens: predicted hit tokens per group at the even split.
        grid: capacities of the curves (blocks).
        curves: hit tokens per group at each ``grid`` capacity.
    """

    groups: tuple[str, ...]
    quotas: tuple[int, ...]
    hit_tokens: tuple[int, ...]
    input_tokens: tuple[int, ...]
    budget: int
    step: int
    even_quotas: tuple[int, ...]
    even_hit_tokens: tuple[int, ...]
    grid: tuple[int, ...] = ()
    curves: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def token_hit_rate(self) -> float:
        """Predicted token hit rate of the whole trace at the split."""
        den = sum(self.input_tokens)
        return sum(self.hit_tokens) / den if den else 0.0

    @property
    def even_token_hit_rate(self) -> float:
        """Predicted token hit rate at the even split."""
        den = sum(self.input_tokens)
        return sum(self.even_hit_tokens) / den if den else 0.0

    def apply(self, config: KVSimConfig) -> KVSimConfig:
        """``config`` with these quotas (blocks), ``lru``, ``group_precise``, watermark 1."""
        return with_quotas(config, dict(zip(self.groups, self.quotas, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (written as ``split.json``)."""
        return {
            "budget": self.budget, "step": self.step, "token_hit_rate": self.token_hit_rate,
            "even_token_hit_rate": self.even_token_hit_rate,
            "groups": [
                {"name": n, "quota_blocks": q, "hit_tokens": h, "input_tokens": i,
                 "even_quota_blocks": eq, "even_hit_tokens": eh}
                for n, q, h, i, eq, eh in zip(self.groups, self.quotas, self.hit_tokens,
                                              self.input_tokens, self.even_quotas,
                                              self.even_hit_tokens, strict=True)
            ],
            "grid": list(self.grid),
            "curves": {k: list(v) for k, v in self.curves.items()},
        }


def with_quotas(config: KVSimConfig, quotas: dict[str, int]) -> KVSimConfig:
    """``config`` with block quotas and exact LRU eviction in the named groups."""
    from dataclasses import replace

    from kvsim.core.spec import EvictionSpec

    groups = tuple(
        replace(g, quota_blocks=int(quotas[g.name]), quota_bytes=0, used_percentage=1.0,
                eviction=EvictionSpec("lru", {}, "group_precise", g.eviction.batch_size))
        if g.name in quotas else g
        for g in config.groups
    )
    return replace(config, groups=groups)


def exact_split(trace: Trace, config: KVSimConfig, budget: int, *, step: int | None = None,
                max_steps: int = 256) -> SplitResult:
    """The best ``lru`` quota split of ``budget`` blocks across ``config``'s groups.

    Args:
        trace: the trace (``KIND_REQUEST``/``KIND_WRITE`` rows).
        config: groups and the instance-to-group map (quotas are ignored).
        budget: total blocks.
        step: grid step in blocks (default: ``ceil(budget / max_steps)``).
        max_steps: grid size when ``step`` is not given.

    Returns:
        The split; exact on the grid (every quota a multiple of ``step``).

    Example:
        >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [9], [1, 2], [8]],
        ...                      instance=["a", "b", "a", "b"], block_size=4)
        >>> cfg = KVSimConfig.from_dict({"instance_groups": [{"name": "x"}, {"name": "y"}],
        ...     "instances": [{"instance_id": "a", "group": "x"},
        ...                   {"instance_id": "b", "group": "y"}]})
        >>> s = exact_split(t, cfg, 3, step=1)
        >>> s.quotas, s.hit_tokens
        ((2, 1), (8, 0))
    """
    names = tuple(g.name for g in config.groups)
    if budget < len(names):
        raise ValueError(f"budget {budget} blocks < {len(names)} groups")
    if step is None:
        step = max(1, -(-budget // max_steps))
    steps = budget // step
    if steps < len(names):
        raise ValueError(f"budget {budget} with step {step} gives fewer steps than groups")
    grid = [k * step for k in range(1, steps + 1)]
    even = [max(1, budget // len(names))] * len(names)
    caps = sorted(set(grid) | set(even))
    at = {c: i for i, c in enumerate(caps)}
    all_curves = group_curves(trace, config, caps)
    curves = {n: all_curves[n][[at[c] for c in grid]] for n in names}
    values = [np.concatenate(([0], curves[n])) for n in names]
    ks, _ = dp_split(values, steps)
    subs = group_subtraces(trace, config)
    inputs = tuple(int(np.where(s.kind != 2, s.input_len, 0).sum()) for s in subs.values())
    return SplitResult(
        groups=names,
        quotas=tuple(k * step for k in ks),
        hit_tokens=tuple(int(values[j][k]) for j, k in enumerate(ks)),
        input_tokens=inputs,
        budget=int(budget),
        step=int(step),
        even_quotas=tuple(even),
        even_hit_tokens=tuple(int(all_curves[n][at[e]]) for n, e in zip(names, even,
                                                                         strict=True)),
        grid=tuple(grid),
        curves={n: tuple(int(x) for x in curves[n]) for n in names},
    )

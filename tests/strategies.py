"""Hypothesis strategies shared by the core tests: prefix-tree traces and cache states.

A *prefix-tree trace* is what the replay contract assumes of real traces: keys are
prefix-chained, so every key names one node of a forest of prompt trees and a
request is the root-to-node path of one node. Several roots model unrelated system
prompts; the same forest may be read by several instances (the same keys under
different instance ids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import strategies as st


def examples(n: int) -> int:
    """``n`` hypothesis examples, times ``KVSIM_TEST_SCALE`` (default 1) for long bug hunts."""
    return max(1, int(n * float(os.environ.get("KVSIM_TEST_SCALE", "1"))))


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

STATES = ("serving", "writing", "deleting")
INSTANCE_NAMES = ("i0", "i1", "i2", "i3")

# keys: small ints (collide in few index slots), int64 extremes and anything in between
any_key = st.one_of(
    st.integers(0, 64),
    st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, INT64_MAX, INT64_MAX - 1]),
    st.integers(INT64_MIN, INT64_MAX),
)


@dataclass(frozen=True)
class Forest:
    """A forest of prompt blocks; node ``j`` has key ``keys[j]`` and parent ``parent[j]``."""

    parent: tuple[int, ...]
    keys: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.keys)

    def path(self, node: int) -> list[int]:
        """Keys from the node's root down to the node (a prefix-chained request)."""
        out = []
        while node >= 0:
            out.append(self.keys[node])
            node = self.parent[node]
        return out[::-1]

    def parent_key(self) -> dict[int, int | None]:
        """Key -> key of its prefix parent (``None`` for a root)."""
        return {
            k: (self.keys[p] if p >= 0 else None)
            for k, p in zip(self.keys, self.parent, strict=True)
        }


@dataclass(frozen=True)
class TreeTrace:
    """Requests (root-to-node paths of ``forest``) and the instance of each."""

    forest: Forest
    requests: tuple[tuple[int, ...], ...]
    instances: tuple[str, ...]

    @property
    def max_len(self) -> int:
        return max((len(r) for r in self.requests), default=0)

    def distinct_keys(self) -> int:
        return len({(i, k) for i, r in zip(self.instances, self.requests, strict=True)
                    for k in r})

    def tagged(self) -> list[list[tuple[str, int]]]:
        """Requests over ``(instance, key)`` pairs: one shared cache of all instances."""
        return [[(i, k) for k in r] for i, r in zip(self.instances, self.requests, strict=True)]


@st.composite
def forests(draw, *, max_nodes: int = 40, max_roots: int = 4) -> Forest:
    """A random forest; ``deep`` forests are mostly chains (requests longer than caches)."""
    n = draw(st.integers(1, max_nodes))
    roots = draw(st.integers(1, min(max_roots, n)))
    deep = draw(st.booleans())
    parent = [-1] * roots
    for j in range(roots, n):
        lo = max(0, j - 2) if deep else 0
        parent.append(draw(st.integers(lo, j - 1)))
    keys = draw(st.lists(any_key, min_size=n, max_size=n, unique=True))
    return Forest(tuple(parent), tuple(keys))


@st.composite
def tree_traces(
    draw,
    *,
    max_nodes: int = 40,
    max_requests: int = 40,
    instances: int = 1,
    forest: Forest | None = None,
) -> TreeTrace:
    """Requests drawn as root-to-node paths; ``instances`` > 1 spreads them over instances
    that read the same keys."""
    f = forest if forest is not None else draw(forests(max_nodes=max_nodes))
    nodes = draw(st.lists(st.integers(0, f.size - 1), min_size=1, max_size=max_requests))
    names = INSTANCE_NAMES[:instances]
    inst = [draw(st.sampled_from(names)) for _ in nodes] if instances > 1 else [names[0]] * len(
        nodes)
    return TreeTrace(f, tuple(tuple(f.path(v)) for v in nodes), tuple(inst))


def multi_instance_traces(**kw) -> st.SearchStrategy[TreeTrace]:
    """Tree traces spread over 2 to 4 instances."""
    return st.integers(2, 4).flatmap(lambda n: tree_traces(instances=n, **kw))


@st.composite
def cache_states(draw, forest: Forest, n_instances: int = 1) -> list[dict[int, str]]:
    """Per instance, some of the forest's keys (and a few others) in a random block state."""
    out = []
    for _ in range(n_instances):
        chosen = draw(st.lists(st.sampled_from(forest.keys), unique=True, max_size=forest.size))
        extra = draw(st.lists(any_key, unique=True, max_size=4))
        state: dict[int, str] = {}
        for k in [*chosen, *extra]:
            state[k] = draw(st.sampled_from((*STATES, "serving", "serving")))
        out.append(state)
    return out


def masks_for(n: int) -> st.SearchStrategy[list[bool] | None]:
    """No mask, or a random bool mask of length ``n``."""
    return st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n))

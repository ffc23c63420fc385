"""Plain-Python twins of the core's kernels, for differential tests.

Written for clarity, not speed: dictionaries and ``OrderedDict`` instead of the
block table, one function per rule of the replay contract. Tests check that the
numba kernels agree with these exactly.

Example:
    >>> cache = {1: "serving", 2: "serving"}
    >>> match_prefix(cache, [1, 2, 3], None)
    2
    >>> ReferenceCache("lru", capacity=2).replay([[1, 2], [1, 2, 3], [1]])
    [0, 2, 1]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

LFU_SATURATION = 63
TAIL_FIRST = {"lru": True, "lru_head_first": False, "fifo": True, "lfu": True,
              "leaf_aware_lru": False, "sieve": True, "slru": True}


# ---------------------------------------------------------------- matching twins
def _available(cache: Mapping[int, str], key: int) -> bool:
    return cache.get(key) == "serving"


def match_prefix(cache: Mapping[int, str], keys: Sequence[int],
                 mask: Sequence[bool] | None) -> int:
    """Length of the longest run from the left of masked-or-serving keys (masked skipped)."""
    n = 0
    for j, k in enumerate(keys):
        if mask is not None and mask[j]:
            n += 1
            continue
        if not _available(cache, k):
            return n
        n += 1
    return n


def match_batch(cache: Mapping[int, str], keys: Sequence[int],
                mask: Sequence[bool] | None) -> list[bool]:
    """Per key: masked or serving."""
    return [bool(mask is not None and mask[j]) or _available(cache, k)
            for j, k in enumerate(keys)]


def match_sliding_window(cache: Mapping[int, str], keys: Sequence[int],
                         mask: Sequence[bool] | None, w: int) -> int:
    """Start of the right-most run of ``w`` available keys, or -1."""
    ok = match_batch(cache, keys, mask)
    for start in range(len(keys) - w, -1, -1):
        if all(ok[start:start + w]):
            return start
    return -1


# ---------------------------------------------------------------- replay twin
class ReferenceCache:
    """One cache (one instance, one group) replayed per the contract.

    Supports ``lru``, ``lru_head_first``, ``fifo``, ``lfu`` and ``leaf_aware_lru``;
    capacity in blocks (0 = unbounded). ``batch=True`` replays each request as its
    flattened block stream in commit order.
    """

    def __init__(self, policy: str, capacity: int, *, batch: bool = False,
                 protected_frac: float = 0.8) -> None:
        if policy not in TAIL_FIRST:
            raise ValueError(f"no reference for policy {policy!r}")
        self.policy = policy
        self.protected_frac = protected_frac
        self.visited: dict[int, bool] = {}
        self.hand: int | None = None
        self.protected: OrderedDict[int, None] = OrderedDict()
        self._total = 0
        self.capacity = capacity
        self.batch = batch
        self.order: OrderedDict[int, None] = OrderedDict()  # first = evicted first
        self.count: dict[int, int] = {}
        self.stamp: dict[int, int] = {}
        self.parent: dict[int, int | None] = {}
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _insert(self, key: int, parent: int | None) -> None:
        self.visited[key] = False
        self.order[key] = None
        self.count[key] = 1
        self.stamp[key] = self._tick()
        self.parent[key] = parent

    def _touch(self, key: int) -> None:
        if self.policy == "sieve":
            self.visited[key] = True
        elif self.policy == "slru":
            self._slru_hit(key)
        elif self.policy != "fifo":
            self.order.move_to_end(key)
        self.count[key] += 1
        self.stamp[key] = self._tick()

    def _slru_hit(self, key: int) -> None:
        if key in self.protected:
            self.protected.move_to_end(key)
            return
        del self.order[key]
        self.protected[key] = None
        cap = max(int(self.protected_frac * self._total), 1)
        while len(self.protected) > cap:
            d, _ = self.protected.popitem(last=False)
            self.order[d] = None

    def _sieve_victim(self) -> int:
        keys = list(self.order)  # oldest first; "newer" = later in the list
        h: int = self.hand if self.hand is not None and self.hand in self.order else keys[0]
        while self.visited[h]:
            self.visited[h] = False
            pos = keys.index(h)
            h = keys[pos + 1] if pos + 1 < len(keys) else keys[0]
        pos = keys.index(h)
        self.hand = keys[pos + 1] if pos + 1 < len(keys) else None
        return h

    def _victim(self) -> int:
        if self.policy == "sieve":
            return self._sieve_victim()
        if self.policy == "slru":
            return next(iter(self.order)) if self.order else next(iter(self.protected))
        if self.policy == "lfu":
            return min(self.order, key=lambda k: (min(self.count[k], LFU_SATURATION),
                                                  self.stamp[k]))
        if self.policy == "leaf_aware_lru":
            children: dict[int, int] = {}
            for k in self.order:
                p = self.parent.get(k)
                if p is not None and p in self.order:
                    children[p] = children.get(p, 0) + 1
            for k in self.order:
                if children.get(k, 0) == 0:
                    return k
        return next(iter(self.order))

    def __len__(self) -> int:
        return len(self.order) + len(self.protected)

    def _evict(self) -> int:
        n = 0
        while self.capacity and len(self) > self.capacity:
            v = self._victim()
            if v in self.order:
                del self.order[v]
            else:
                del self.protected[v]
            n += 1
        return n

    def cached(self) -> set[int]:
        """Keys in the cache."""
        return set(self.order) | set(self.protected)

    def access(self, keys: Sequence[int]) -> int:
        """One combined request; returns its hit blocks."""
        if self.batch:
            return self._access_batch(keys)
        held = self.cached()
        hits = match_prefix({k: "serving" for k in held}, keys, None)
        # resolve (head first), dropping repeats of a key within the request
        seen: set[int] = set()
        items: list[tuple[int, int | None, bool]] = []
        prev: int | None = None
        for k in keys:
            if k in seen:
                continue
            seen.add(k)
            items.append((k, prev, k not in held))
            prev = k
        if TAIL_FIRST[self.policy]:
            items.reverse()
        self._total = len(self) + sum(1 for _, _, new in items if new)
        for k, p, new in items:
            if new:
                self._insert(k, p)
            else:
                self._touch(k)
        self._evict()
        return hits

    def _access_batch(self, keys: Sequence[int]) -> int:
        hits = 0
        seq = list(keys)
        if TAIL_FIRST[self.policy]:
            seq.reverse()
        for k in seq:
            if k in self.order or k in self.protected:
                hits += 1
                self._total = len(self)
                self._touch(k)
            else:
                self._insert(k, None)
            self._evict()
        return hits

    def replay(self, requests: Sequence[Sequence[int]]) -> list[int]:
        """Hit blocks per request."""
        return [self.access(r) for r in requests]


def ordered_dict_lru(requests: Sequence[Sequence[int]], capacity: int) -> list[int]:
    """The plainest LRU of the contract (tail-first commit) over an ``OrderedDict``."""
    od: OrderedDict[int, None] = OrderedDict()
    out = []
    for keys in requests:
        h = 0
        for k in keys:
            if k not in od:
                break
            h += 1
        out.append(h)
        for k in reversed(list(dict.fromkeys(keys))):
            od[k] = None
            od.move_to_end(k)
        while capacity and len(od) > capacity:
            od.popitem(last=False)
    return out

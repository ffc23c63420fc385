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

from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

from kvsim.core.policies.s3fifo import ghost_len as _s3fifo_ghost_len

LFU_SATURATION = 63
TAIL_FIRST = {"lru": True, "lru_head_first": False, "fifo": True, "lfu": True,
              "leaf_aware_lru": False, "sieve": True, "slru": True, "s3fifo": True,
              "arc": True, "cost_aware": False, "workload_aware": True}


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


# ---------------------------------------------------------------- ghost twin
class GhostRings:
    """Twin of ``kvsim.core.policies._ghost``: FIFOs of at most ``length`` live keys.

    A key is a live ghost while ``where`` maps it to its own ``(ring, seq)``; taking it
    leaves a stale entry in its FIFO; pushing into a FIFO holding ``length`` live keys
    drops its oldest live key first.
    """

    def __init__(self, rings: int, length: int) -> None:
        self.length = length
        self.rings: list[deque[tuple[int, object]]] = [deque() for _ in range(rings)]
        self.next = [0] * rings
        self.live = [0] * rings
        self.where: dict[object, tuple[int, int]] = {}

    def _pop_slot(self, k: int) -> bool:
        seq, key = self.rings[k].popleft()
        if self.where.get(key) == (k, seq):
            del self.where[key]
            self.live[k] -= 1
            return True
        return False

    def push(self, k: int, key: object) -> None:
        """Remember ``key`` in FIFO ``k``."""
        if not self.length:
            return
        if key in self.where:
            self.live[self.where.pop(key)[0]] -= 1
        if self.live[k] >= self.length:
            self.pop_oldest(k)
        self.where[key] = (k, self.next[k])
        self.rings[k].append((self.next[k], key))
        self.next[k] += 1
        self.live[k] += 1

    def take(self, key: object) -> int:
        """Forget ``key``; its ring, or -1 when it is no ghost."""
        if key not in self.where:
            return -1
        k = self.where.pop(key)[0]
        self.live[k] -= 1
        return k

    def pop_oldest(self, k: int) -> None:
        """Drop FIFO ``k``'s oldest live key."""
        while self.rings[k]:
            if self._pop_slot(k):
                return


# ---------------------------------------------------------------- replay twin
class ReferenceCache:
    """One cache (one instance, one group) replayed per the contract.

    Supports every policy of :data:`TAIL_FIRST` (``workload_aware`` for one instance,
    where it is LRU); capacity in blocks (0 = unbounded). ``batch=True`` replays each request as its
    flattened block stream in commit order.
    """

    def __init__(self, policy: str, capacity: int, *, batch: bool = False,
                 protected_frac: float = 0.8, small_frac: float = 0.1,
                 move_threshold: int = 2, ghost_frac: float = 0.9, fill_main: bool = True,
                 depth_weight: float = 0.02,
                 unit_ticks: float = 4.0) -> None:
        if policy not in TAIL_FIRST:
            raise ValueError(f"no reference for policy {policy!r}")
        self.policy = policy
        self.protected_frac = protected_frac
        # s3fifo: order = small FIFO, protected = main FIFO; arc: order = T1, protected = T2
        self.small_frac = small_frac
        self.move_threshold = move_threshold
        self.fill_main = fill_main
        self.evicted = False
        self.freq: dict[int, int] = {}
        self.p = 0.0
        self.from_b2 = False
        # arc / s3fifo: blocks awaiting room in the first / second list (kvsim.core.policies._room)
        self.wait = [0, 0]
        if policy == "s3fifo":
            self.ghost = GhostRings(1, _s3fifo_ghost_len(capacity, ghost_frac))
        else:
            self.ghost = GhostRings(2, capacity if policy == "arc" else 0)
        # cost_aware: depth, priority H, push order, the hand L
        self.depth_weight = depth_weight
        self.unit_ticks = unit_ticks
        self.depth: dict[int, int] = {}
        self.prio: dict[int, int] = {}
        self.pushed: dict[int, int] = {}
        self.L = 0
        self._pushes = 0
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
        self.count[key] = 1
        self.stamp[key] = self._tick()
        self.parent[key] = parent
        if self.policy == "s3fifo":
            self._s3fifo_insert(key)
        elif self.policy == "arc":
            self._arc_insert(key)
        else:
            self.order[key] = None
        if self.policy == "cost_aware":
            d = 0
            if parent is not None and parent in self.depth:
                d = min(self.depth[parent] + 1, 127)
            self.depth[key] = d
            self._gd_push(key, self.L + self._ticks(key, 1))

    def _touch(self, key: int) -> None:
        if self.policy == "sieve":
            self.visited[key] = True
        elif self.policy == "slru":
            self._slru_hit(key)
        elif self.policy == "s3fifo":
            self.freq[key] = min(self.freq[key] + 1, 3)
        elif self.policy == "arc":
            if key in self.order:
                del self.order[key]
            self.protected[key] = None
            self.protected.move_to_end(key)
        elif self.policy == "cost_aware":
            self._gd_push(key, self.L + self._ticks(key, self.count[key] + 1))
        elif self.policy != "fifo":
            self.order.move_to_end(key)
        self.count[key] += 1
        self.stamp[key] = self._tick()

    # ---- blocks awaiting room (arc, s3fifo)
    def _excess(self) -> int:
        return max(0, self._total - self.capacity) if self.capacity else 0

    def _note_wait(self, second: bool) -> None:
        ex = self._excess()
        if ex == 0:
            self.wait = [0, 0]
        elif sum(self.wait) < ex:
            self.wait[1 if second else 0] += 1

    def _room_given(self) -> None:
        if not self.capacity or len(self) <= self.capacity:
            self.wait = [0, 0]
        elif self.wait[0]:
            self.wait[0] -= 1
        elif self.wait[1]:
            self.wait[1] -= 1

    # ---- arc
    def _arc_insert(self, key: int) -> None:
        k = self.ghost.take(key)
        c = float(self.capacity)
        if k == 0:
            b1, b2 = self.ghost.live[0] + 1, self.ghost.live[1]
            self.p = min(c, self.p + max(b2 / b1, 1.0))
        elif k == 1:
            b1, b2 = self.ghost.live[0], self.ghost.live[1] + 1
            self.p = max(0.0, self.p - max(b1 / b2, 1.0))
        self.from_b2 = k == 1
        (self.protected if k >= 0 else self.order)[key] = None
        self._note_wait(k >= 0)

    def _arc_victim(self) -> int:
        n1 = len(self.order) - self.wait[0]
        n2 = len(self.protected) - self.wait[1]
        t1 = n2 <= 0 or (n1 >= 1 and (n1 > self.p or (self.from_b2 and n1 == self.p)))
        if t1 and self.order:
            return next(iter(self.order))
        return next(iter(self.protected)) if self.protected else next(iter(self.order))

    def _arc_removed(self, key: int, from_t1: bool) -> None:
        self.ghost.push(0 if from_t1 else 1, key)
        g, c = self.ghost, self.capacity
        while g.live[0] > 0 and len(self.order) + g.live[0] > c:
            g.pop_oldest(0)
        while g.live[0] + g.live[1] > c:
            g.pop_oldest(1 if g.live[1] > 0 else 0)

    # ---- s3fifo
    def _s3fifo_insert(self, key: int) -> None:
        self.freq[key] = 0
        to_main = self.ghost.take(key) >= 0
        if (not to_main and self.fill_main and not self.evicted and self._excess() == 0):
            to_main = len(self.order) >= int(self.small_frac * float(self.capacity))
        (self.protected if to_main else self.order)[key] = None
        self._note_wait(to_main)

    def _s3fifo_push_main(self, key: int) -> None:
        """Into M behind the blocks awaiting room there (the last ``wait[1]`` of M)."""
        main = self.protected
        held = [main.popitem()[0] for _ in range(min(self.wait[1], len(main)))]
        main[key] = None
        for k in reversed(held):
            main[k] = None

    def _s3fifo_victim(self) -> int:
        small, main = self.order, self.protected
        self.evicted = True
        ws, wm = self.wait
        s_pre = len(small) - ws
        if s_pre > 0 and s_pre >= int(self.small_frac * float(len(self) - ws - wm)):
            while s_pre > 0:
                k = next(iter(small))
                if self.freq[k] < self.move_threshold:
                    return k
                del small[k]
                self.freq[k] = 0
                self._s3fifo_push_main(k)
                s_pre -= 1
        if not main:
            return next(iter(small))
        while True:
            k = next(iter(main))
            if self.freq[k] == 0:
                return k
            self.freq[k] -= 1
            del main[k]
            self._s3fifo_push_main(k)

    # ---- cost_aware (GreedyDual on a 64-slot wheel, leaves only)
    def _ticks(self, key: int, freq: int) -> int:
        v = 1.0 + self.depth_weight * self.depth[key]
        return max(1, min(63, int(self.unit_ticks * v * freq + 0.5)))

    def _gd_push(self, key: int, prio: int) -> None:
        self.prio[key] = prio
        self._pushes += 1
        self.pushed[key] = self._pushes

    def _children(self) -> dict[int, int]:
        held = self.cached()
        out: dict[int, int] = {}
        for k in held:
            p = self.parent.get(k)
            if p is not None and p in held:
                out[p] = out.get(p, 0) + 1
        return out

    def _gd_victim(self) -> int:
        children = self._children()
        budget = 64 * (len(self) + 1)
        for k in range(64):
            h = self.L + k
            walked: set[int] = set()
            while True:
                slot = sorted((self.pushed[x], x) for x in self.order
                              if self.prio[x] == h and x not in walked)
                if not slot:
                    break
                key = slot[0][1]
                if children.get(key, 0) == 0:
                    self.L = h
                    return key
                if budget > 0 and k < 63:
                    budget -= 1
                    self._gd_push(key, self.L + k + 1)
                else:
                    walked.add(key)
        raise AssertionError("no leaf")

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
        if self.policy == "s3fifo":
            return self._s3fifo_victim()
        if self.policy == "arc":
            return self._arc_victim()
        if self.policy == "cost_aware":
            return self._gd_victim()
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
            in_first = v in self.order
            if in_first:
                del self.order[v]
            else:
                del self.protected[v]
            if self.policy == "s3fifo" and in_first:
                self.ghost.push(0, v)
            elif self.policy == "arc":
                self._arc_removed(v, in_first)
            if self.policy in ("arc", "s3fifo"):
                self._room_given()
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
                self._total = len(self) + 1
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

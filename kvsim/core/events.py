"""The event buffer the core appends to and callers drain.

Kernels append fixed-width records (kind, instance, key, time, aux) to
preallocated arrays; :class:`EventBuffer` turns them into :class:`Event` objects
or a column dict when drained. The simulator's metrics and the server's event log
consume the same records. ``level`` selects what is recorded: 0 nothing (replay
fast path: counters only), 1 per-call records, 2 also per-block records.

Example:
    >>> buf = EventBuffer(capacity=4, level=2)
    >>> emit(buf.arrays, EV_EVICTED, 0, 42, 1000, 0)
    >>> [(e.kind, e.key) for e in buf.drain()]
    [('evicted', 42)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from kvsim.core._jit import kernel

EV_READ = 1  # per call: key = hit blocks, aux = read blocks
EV_STORED = 2  # per block committed (SERVING)
EV_EVICTED = 3  # per block evicted by the reclaimer / policy
EV_WRITE_FAILED = 4  # per block whose write failed or expired
EV_REMOVED = 5  # per block removed by removeCache / trimCache
EV_WRITE_STARTED = 6  # per call: key = new blocks, aux = session id
EV_EXPIRED = 7  # per call: a write session timed out (aux = session id)

EVENT_NAMES = {
    EV_READ: "read",
    EV_STORED: "stored",
    EV_EVICTED: "evicted",
    EV_WRITE_FAILED: "write_failed",
    EV_REMOVED: "removed",
    EV_WRITE_STARTED: "write_started",
    EV_EXPIRED: "expired",
}
# per-block kinds, recorded only at level >= 2
BLOCK_KINDS = frozenset({EV_STORED, EV_EVICTED, EV_WRITE_FAILED, EV_REMOVED})


class EventArrays(NamedTuple):
    """Raw event columns; ``meta`` = [count, level, dropped]."""

    kind: np.ndarray  # int8
    inst: np.ndarray  # int32
    key: np.ndarray  # int64
    t: np.ndarray  # int64 ns
    aux: np.ndarray  # int64
    meta: np.ndarray  # int64[4]


@dataclass(frozen=True)
class Event:
    """One drained event."""

    kind: str
    instance: int
    key: int
    time_ns: int
    aux: int


def _arrays(capacity: int, level: int) -> EventArrays:
    meta = np.zeros(4, dtype=np.int64)
    meta[1] = level
    return EventArrays(
        np.zeros(capacity, np.int8),
        np.zeros(capacity, np.int32),
        np.zeros(capacity, np.int64),
        np.zeros(capacity, np.int64),
        np.zeros(capacity, np.int64),
        meta,
    )


class EventBuffer:
    """Growable event columns; callers :meth:`reserve` before a kernel call."""

    def __init__(self, capacity: int = 4096, level: int = 1) -> None:
        self.arrays = _arrays(max(1, capacity), level)

    @property
    def level(self) -> int:
        """Recording level (0, 1 or 2)."""
        return int(self.arrays.meta[1])

    @property
    def dropped(self) -> int:
        """Records lost because the buffer was full."""
        return int(self.arrays.meta[2])

    def __len__(self) -> int:
        return int(self.arrays.meta[0])

    def reserve(self, n: int) -> None:
        """Grow so that ``n`` more records fit."""
        a = self.arrays
        used = int(a.meta[0])
        if used + n <= a.kind.shape[0]:
            return
        cap = max(used + n, 2 * a.kind.shape[0])
        new = _arrays(cap, int(a.meta[1]))
        for src, dst in zip(a[:5], new[:5], strict=True):
            dst[:used] = src[:used]
        new.meta[:] = a.meta
        self.arrays = new

    def columns(self) -> dict[str, np.ndarray]:
        """Copies of the recorded columns (without draining)."""
        n = len(self)
        a = self.arrays
        return {"kind": a.kind[:n].copy(), "instance": a.inst[:n].copy(),
                "key": a.key[:n].copy(), "time_ns": a.t[:n].copy(), "aux": a.aux[:n].copy()}

    def clear(self) -> None:
        """Forget every record."""
        self.arrays.meta[0] = 0
        self.arrays.meta[2] = 0

    def drain(self) -> list[Event]:
        """Return the recorded events as objects and clear the buffer."""
        c = self.columns()
        out = [
            Event(EVENT_NAMES[int(k)], int(i), int(key), int(t), int(x))
            for k, i, key, t, x in zip(
                c["kind"], c["instance"], c["key"], c["time_ns"], c["aux"], strict=True
            )
        ]
        self.clear()
        return out


@kernel
def emit(ev: EventArrays, kind: int, inst: int, key: int, now: int, aux: int) -> None:
    """Append one record if the level records ``kind``."""
    level = ev.meta[1]
    if level == 0:
        return
    if level == 1 and (kind == EV_STORED or kind == EV_EVICTED or kind == EV_WRITE_FAILED
                       or kind == EV_REMOVED):
        return
    n = ev.meta[0]
    if n < ev.kind.shape[0]:
        ev.kind[n] = kind
        ev.inst[n] = inst
        ev.key[n] = key
        ev.t[n] = now
        ev.aux[n] = aux
        ev.meta[0] = n + 1
    else:
        ev.meta[2] += 1

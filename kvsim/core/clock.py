"""Clocks are injected: the core never reads the wall clock itself.

Example:
    >>> c = ManualClock(1_000)
    >>> c.advance(500); c.now_ns()
    1500
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Anything with ``now_ns()``: nanoseconds on a monotonic time line."""

    def now_ns(self) -> int:
        """Current time in nanoseconds."""
        ...


class ManualClock:
    """A clock that moves only when told to (simulation and tests)."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = int(start_ns)

    def now_ns(self) -> int:
        """Current virtual time."""
        return self._now

    def set(self, t_ns: int) -> None:
        """Jump to ``t_ns`` (never backwards)."""
        t_ns = int(t_ns)
        if t_ns < self._now:
            raise ValueError(f"clock cannot go back from {self._now} to {t_ns}")
        self._now = t_ns

    def advance(self, d_ns: int) -> None:
        """Move forward by ``d_ns``."""
        self.set(self._now + int(d_ns))

"""The server's clock: monotonic, anchored to the wall clock at start.

The core never reads time; the server injects :class:`MonotonicClock`, whose
readings never go back (``time.monotonic_ns``) yet read as Unix-epoch
nanoseconds (the wall clock sampled once at construction), so write times can be
compared with ``trimCache``'s ``begin_timestamp``/``end_timestamp`` seconds and the
event log's ``trigger_time_us``.

Example:
    >>> c = MonotonicClock()
    >>> a = c.now_ns(); b = c.now_ns()
    >>> b >= a > 1_600_000_000 * 10**9
    True
"""

from __future__ import annotations

import time


class MonotonicClock:
    """Monotonic nanoseconds on the Unix epoch time line (see the module docstring)."""

    def __init__(self) -> None:
        self._wall0 = time.time_ns()
        self._mono0 = time.monotonic_ns()

    def now_ns(self) -> int:
        """Current time in nanoseconds since the epoch, never decreasing."""
        return self._wall0 + (time.monotonic_ns() - self._mono0)

"""The manager's event log: one JSON object per line, buffered.

Event types: ``GetCacheLocation``, ``StartWriteCache``, ``FinishWriteCache`` and
``CacheReclaimSubmit``, each with ``source`` (the instance id; the group name for
reclaims) and ``trigger_time_us`` (server clock, microseconds since the epoch).
``kvsim replay EVENTLOG --format kvcm-events`` replays it as a trace
(:func:`kvsim.trace.readers.read_kvcm_events`).

Example:
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "events.jsonl")
    >>> log = EventLog(p)
    >>> log.append({"type": "GetCacheLocation", "source": "i0", "trigger_time_us": 1})
    >>> log.close(); open(p).read().count("\\n")
    1
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson


class EventLog:
    """Append-only JSONL writer; lines are buffered and flushed by :meth:`flush`.

    Args:
        path: the file (created with its directory; appended to if it exists).
        max_buffered: flush automatically once this many lines are waiting.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_buffered: int = 4096) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")  # noqa: SIM115 - kept open for the log's life
        self._buf: list[bytes] = []
        self._max = max_buffered
        self._lock = threading.Lock()
        self.written = 0

    def append(self, event: dict[str, Any]) -> None:
        """Queue one event (flushes when the buffer is full)."""
        line = orjson.dumps(event) + b"\n"
        with self._lock:
            self._buf.append(line)
            if len(self._buf) >= self._max:
                self._flush_locked()

    def flush(self) -> None:
        """Write the queued lines to the file."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._buf and not self._f.closed:
            self._f.write(b"".join(self._buf))
            self._f.flush()
            self.written += len(self._buf)
            self._buf.clear()

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._flush_locked()
            self._f.close()

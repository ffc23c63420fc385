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

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


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
        self._lock = threading.Lock()  # guards _buf: held only to append or swap it
        self._write_lock = threading.Lock()  # one writer at a time: lines stay in order
        self.written = 0

    def append(self, event: dict[str, Any]) -> None:
        """Queue one event (flushes when the buffer is full); values may be numpy arrays
        (written as JSON lists)."""
        line = orjson.dumps(event, option=_OPTS)
        with self._lock:
            self._buf.append(line)
            full = len(self._buf) >= self._max
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the queued lines to the file.

        The buffer is swapped out under the append lock and written outside it, so a
        flush (a write of up to ``max_buffered`` lines) never makes :meth:`append` wait.
        """
        with self._write_lock:
            with self._lock:
                buf, self._buf = self._buf, []
            if buf and not self._f.closed:
                self._f.write(b"".join(buf))
                self._f.flush()
                self.written += len(buf)

    def close(self) -> None:
        """Flush and close the file."""
        with self._write_lock:
            with self._lock:
                buf, self._buf = self._buf, []
            if not self._f.closed:
                if buf:
                    self._f.write(b"".join(buf))
                    self.written += len(buf)
                self._f.close()

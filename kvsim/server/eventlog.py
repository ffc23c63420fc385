"""The manager's event log: one JSON object per line, buffered.

Event types: ``GetCacheLocation``, ``StartWriteCache``, ``FinishWriteCache`` and
``CacheReclaimSubmit``, each with ``source`` (the instance id; the group name for
reclaims) and ``trigger_time_us`` (server clock, microseconds since the epoch).
``kvsim replay EVENTLOG --format kvcm-events`` replays it as a trace
(:func:`kvsim.trace.readers.read_kvcm_events`).

Rotation: once the file passes ``max_bytes`` it is renamed ``<stem>-NNNNNN<suffix>``
(``events-000001.jsonl``, ``events-000002.jsonl``, ...: the next number after the
largest present, 6 digits, oldest first) and a fresh ``events.jsonl`` is started.
:func:`event_log_files` lists a log's parts in order (rotated ones by number, the live
file last); ``kvsim replay <data-dir> --format kvcm-events`` reads them all.

Durability: lines are buffered; :meth:`EventLog.flush` hands them to the operating
system (the server flushes before acknowledging ``startWriteCache`` and
``finishWriteCache``, and on every tick), so ``kill -9`` of the server loses no
acknowledged write's event, and at most one tick of reads' events (a power loss may
lose what the OS had not written back). The file is created mode 0600.

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
import re
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
        max_bytes: rotate past this size (0 = never; see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_buffered: int = 4096,
                 max_bytes: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._f = self._open()
        self._size = self._f.tell()
        self.rotations = 0
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
                data = b"".join(buf)
                self._f.write(data)
                self._f.flush()
                self.written += len(buf)
                self._size += len(data)
                if self.max_bytes and self._size >= self.max_bytes:
                    self._rotate()

    def _open(self) -> Any:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "ab")

    def _rotate(self) -> None:
        """Rename the full file to the next ``<stem>-NNNNNN<suffix>`` and start anew
        (under the write lock)."""
        self._f.close()
        parts = rotated_parts(self.path)
        n = (parts[-1][0] if parts else 0) + 1
        os.replace(self.path, self.path.with_name(f"{self.path.stem}-{n:06d}{self.path.suffix}"))
        self._f = self._open()
        self._size = 0
        self.rotations += 1

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


def rotated_parts(path: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The rotated parts of the log ``path`` as ``(number, path)``, oldest first."""
    p = Path(path)
    pat = re.compile(re.escape(p.stem) + r"-([0-9]{6,})" + re.escape(p.suffix))
    out = []
    if p.parent.is_dir():
        for q in p.parent.iterdir():
            m = pat.fullmatch(q.name)
            if m:
                out.append((int(m.group(1)), q))
    return sorted(out)


def event_log_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every part of an event log, in write order: for a directory, its
    ``events-NNNNNN.jsonl`` parts by number, then ``events.jsonl``; for a file, that file
    alone.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> log = EventLog(d / "events.jsonl", max_bytes=120)
        >>> for i in range(4):
        ...     log.append({"type": "GetCacheLocation", "source": "i0", "trigger_time_us": i})
        ...     log.flush()
        >>> log.close(); [p.name for p in event_log_files(d)]
        ['events-000001.jsonl', 'events-000002.jsonl', 'events.jsonl']
    """
    p = Path(path)
    if not p.is_dir():
        return [p]
    live = p / "events.jsonl"
    return [q for _, q in rotated_parts(live)] + ([live] if live.exists() else [])

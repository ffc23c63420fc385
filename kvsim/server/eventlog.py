"""The manager's event log: one JSON object per line, buffered.

Event types: ``GetCacheLocation``, ``StartWriteCache``, ``FinishWriteCache`` and
``CacheReclaimSubmit``, each with ``source`` (the instance id; the group name for
reclaims) and ``trigger_time_us`` (server clock, microseconds since the epoch).
``kvsim replay EVENTLOG --format kvcm-events`` replays it as a trace
(:func:`kvsim.trace.readers.read_kvcm_events`).

Rotation: once the file passes ``max_bytes`` it is renamed ``<stem>-NNNNNN<suffix>``
(``events-000001.jsonl``, ``events-000002.jsonl``, ...: the next number after the
largest present, 6 digits, oldest first) and a fresh ``events.jsonl`` is started.
:func:`kvsim.trace.logfiles.event_log_files` lists a log's parts in order (rotated ones
by number, the live file last); ``kvsim replay <data-dir> --format kvcm-events`` reads them all.

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
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kvsim.trace.logfiles import rotated_parts

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
#: an event with a numpy array longer than this is encoded when it is written, not when
#: it is queued (a 100k-key write's event is queued under the service lock)
LAZY_ITEMS = 4096


def _line(x: bytes | dict[str, Any]) -> bytes:
    return x if isinstance(x, bytes) else orjson.dumps(x, option=_OPTS)


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
        self._buf: list[bytes | dict[str, Any]] = []
        self._max = max_buffered
        self._lock = threading.Lock()  # guards _buf: held only to append or swap it
        self._write_lock = threading.Lock()  # one writer at a time: lines stay in order
        self.written = 0

    def append(self, event: dict[str, Any]) -> None:
        """Queue one event (flushes when the buffer is full); values may be numpy arrays
        (written as JSON lists; one longer than :data:`LAZY_ITEMS` is encoded by the
        flush, so it must not change after this)."""
        line: bytes | dict[str, Any] = event
        if not any(isinstance(v, np.ndarray) and v.size > LAZY_ITEMS
                   for v in event.values()):
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
                data = b"".join(map(_line, buf))
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
                    self._f.write(b"".join(map(_line, buf)))
                    self.written += len(buf)
                self._f.close()


#: ``query_type`` as KVCM's publisher writes it
_KVCM_QT = {"QT_PREFIX_MATCH": "prefix_match", "QT_UNSPECIFIED": "prefix_match",
            "QT_BATCH_GET": "batch_get", "QT_REVERSE_ROLL_SW_MATCH": "reverse_roll_sw_match"}
EVENT_FORMATS = ("kvsim", "kvcm")


def to_publisher(event: dict[str, Any]) -> dict[str, Any]:
    """One kvsim event in the shape of KVCM's log event publisher (what its optimizer's
    publisher-log converter reads): ``id``, ``source``, ``component``, ``type``,
    ``trigger_time_us``, then per type ``keys``, ``query_type`` (``prefix_match``, ...),
    ``block_mask`` (an offset or booleans), ``write_session_id``, ``success_block``.

    Example:
        >>> e = to_publisher({"type": "GetCacheLocation", "source": "i0",
        ...                   "trigger_time_us": 7, "query_type": "QT_PREFIX_MATCH",
        ...                   "block_keys": [1, 2], "sw_size": 0})
        >>> e["component"], e["query_type"], e["keys"], e["block_mask"]
        ('cache_manager', 'prefix_match', [1, 2], 0)
    """
    typ = event.get("type")
    out: dict[str, Any] = {"id": uuid.uuid4().hex, "source": event.get("source", ""),
                           "component": "cache_manager", "type": typ,
                           "trigger_time_us": event.get("trigger_time_us", 0)}
    keys = event.get("block_keys", [])
    mask = event.get("block_mask")
    if typ == "GetCacheLocation":
        out |= {"trace_id": event.get("trace_id", ""),
                "query_type": _KVCM_QT.get(event.get("query_type", ""), "prefix_match"),
                "keys": keys, "tokens": [], "block_mask": 0 if mask is None else mask,
                "sw_size": event.get("sw_size", 0), "location_spec_names": [],
                "input_token_len": 0}
    elif typ == "StartWriteCache":
        out |= {"write_session_id": event.get("write_session_id", ""), "keys": keys,
                "tokens": [], "block_mask": 0 if mask is None else mask,
                "location_spec_group_names": [], "write_timeout_seconds": 0}
    elif typ == "FinishWriteCache":
        out |= {"write_session_id": event.get("write_session_id", ""),
                "success_block": int(event.get("success_count", 0))}
    else:  # reclaims, health changes: KVCM's converter skips other types
        out |= {k: v for k, v in event.items() if k not in out}
    return out


class PublisherEventLog(EventLog):
    """An :class:`EventLog` writing KVCM's publisher format (see :func:`to_publisher`);
    ``kvsim replay`` reads it too (format ``kvcm-events``)."""

    def append(self, event: dict[str, Any]) -> None:
        super().append(to_publisher(event))


def open_event_log(path: str | os.PathLike[str], fmt: str = "kvsim", *,
                   max_bytes: int | None = None) -> EventLog:
    """The event log writer for ``fmt``: ``kvsim`` (kvsim's own events) or ``kvcm``
    (KVCM's publisher format), rotated by size past ``max_bytes``."""
    if fmt not in EVENT_FORMATS:
        raise ValueError(f"event format must be one of {', '.join(EVENT_FORMATS)}, got {fmt!r}")
    cls = PublisherEventLog if fmt == "kvcm" else EventLog
    return cls(path) if max_bytes is None else cls(path, max_bytes=max_bytes)



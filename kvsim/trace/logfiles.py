"""Where a kvsim server's event log lives on disk: its parts, in write order.

The server (:mod:`kvsim.server.eventlog`) rotates ``events.jsonl`` into
``events-NNNNNN.jsonl`` past a size; the trace reader (format ``kvcm-events``) reads the
parts of a directory in order. Both name the parts through this module, so the reader
does not depend on the server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["event_log_files", "rotated_parts"]


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
        >>> from kvsim.server.eventlog import EventLog
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

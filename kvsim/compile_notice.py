"""Say so when numba compiles kvsim's kernels, and how long it took.

The core's kernels are compiled on first use and cached on disk (see
:mod:`kvsim._numba_cache`): a fresh install, an upgrade or an edit of ``kvsim/core``
makes the next command compile for a minute or more before it prints anything. Without
a word that looks like a hang. :class:`CompileWatch` listens to numba's own
``numba:compile`` events (fired only for real compiles, never for loads from the disk
cache), prints one line when the first compile starts, with an estimate taken from the
last compile on this machine, and a line with the measured time at the end. It keeps the
compile seconds apart, so a command can report them beside (not inside) its own timing.

Example:
    >>> lines = []
    >>> with CompileWatch(lines.append, command="doctest") as watch:
    ...     pass  # nothing compiles here
    >>> watch.seconds, watch.count, lines
    (0.0, 0, [])
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["DEFAULT_ESTIMATE_S", "CompileWatch"]

#: Estimate of a first compile when this machine has never compiled (2-core machine,
#: everything a ``kvsim replay`` runs).
DEFAULT_ESTIMATE_S = 120.0
_ESTIMATES = "compile_seconds.json"  # in the cache root, beside the keyed directories


def _cache_root() -> Path:
    from kvsim._numba_cache import cache_dir

    return Path(cache_dir()).parent


def _load_estimate(command: str) -> float | None:
    try:
        data = json.loads((_cache_root() / _ESTIMATES).read_text())
        v = data.get(command)
        return float(v) if isinstance(v, int | float) and v > 0 else None
    except (OSError, ValueError, AttributeError):
        return None


def _save_estimate(command: str, seconds: float) -> None:
    path = _cache_root() / _ESTIMATES
    try:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[command] = round(seconds, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:  # a read-only cache only loses the estimate
        pass


class CompileWatch:
    """Context manager: report numba compiles that happen inside it.

    Args:
        say: where the lines go (e.g. ``Console(stderr=True).print`` or a logger).
        command: names the estimate kept for the next first run (``"replay"``).
        heartbeat_s: while compiling, say how long it has taken every this many
            seconds (0: never).

    Attributes:
        seconds: wall seconds spent compiling (outermost compiles only).
        count: kernels compiled (outermost compiles).
    """

    def __init__(self, say: Callable[[str], Any], *, command: str = "kvsim",
                 heartbeat_s: float = 30.0) -> None:
        self._say = say
        self._command = command
        self._heartbeat_s = heartbeat_s
        self.seconds = 0.0
        self.count = 0
        self._depth = 0
        self._t0 = 0.0
        self._first = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Any = None

    # ------------------------------------------------------------ numba's events
    def _on_start(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            self._t0 = time.perf_counter()
            first = self.count == 0 and self.seconds == 0.0
        if first:
            self._first = self._t0
            est = _load_estimate(self._command) or DEFAULT_ESTIMATE_S
            self._say(f"compiling kernels: first run on this machine only (or after an "
                      f"upgrade), ~{est:.0f} s; later runs load them from the cache")
            if self._heartbeat_s > 0:
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="kvsim-compile-heartbeat")
                self._thread.start()

    def _on_end(self) -> None:
        with self._lock:
            self._depth = max(0, self._depth - 1)
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._t0
                self.count += 1

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            with self._lock:
                busy = self._depth > 0
            if busy:
                self._say(f"still compiling kernels: {time.perf_counter() - self._first:.0f} s "
                          f"so far, {self.count} done")

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> CompileWatch:
        from numba.core import event

        watch = self

        class _Listener(event.Listener):
            def on_start(self, ev: Any) -> None:
                watch._on_start()

            def on_end(self, ev: Any) -> None:
                watch._on_end()

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from numba.core import event

        event.unregister("numba:compile", self._listener)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self.count and exc_type is None:
            self._say(f"compiled {self.count} kernels in {self.seconds:.1f} s "
                      "(cached: later runs skip this)")
            _save_estimate(self._command, self.seconds)

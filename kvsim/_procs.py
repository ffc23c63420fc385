"""Child processes that do not outlive their parent.

:func:`die_with_parent` is called first thing in a worker process (``kvsim replay
--jobs N``'s pool initializer): on Linux the kernel sends the worker ``SIGKILL`` when
its parent dies (``prctl(PR_SET_PDEATHSIG)``), and on every system a daemon thread
polls the parent's pid and exits the worker once it changes (the parent died, even by
``kill -9``, and the worker was re-parented).

Example:
    >>> import os
    >>> die_with_parent(os.getppid(), poll_s=3600)  # in a child; harmless here
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, *, poll_s: float = 0.5) -> bool:
    """Make this process exit when ``parent_pid`` (its parent) dies.

    Args:
        parent_pid: the pid of the parent as the parent saw itself (``os.getpid()``
            before starting the child).
        poll_s: period of the parent-watch thread.

    Returns:
        True when the kernel-level hook (Linux ``PR_SET_PDEATHSIG``) is set; the watch
        thread runs either way.
    """
    hooked = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            hooked = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            hooked = False
    if os.getppid() != parent_pid:  # the parent died before the hook was set
        os._exit(1)

    def watch() -> None:
        ev = threading.Event()
        while not ev.wait(poll_s):
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="kvsim-parent-watch", daemon=True).start()
    return hooked

"""Where numba caches kvsim's compiled kernels (set before the core is imported).

numba invalidates a cached function only when its own file changes, not when a
kernel it calls (in another file) does. kvsim therefore keys the cache directory by
a hash of every source file under ``kvsim/core``: any change to the core starts from
a clean cache, and an unchanged core loads its kernels in a fraction of a second.
The root is ``$KVSIM_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else
``$XDG_CACHE_HOME/kvsim/numba`` (``~/.cache/kvsim/numba``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

_TAG = re.compile(r"py\d+-[0-9a-f]{16}")


def cache_dir() -> str:
    """The cache directory for the current core sources and Python version.

    Example:
        >>> "kvsim" in cache_dir() or "KVSIM_CACHE_DIR" in os.environ
        True
    """
    core = Path(__file__).resolve().parent / "core"
    h = hashlib.sha256()
    for p in sorted(core.rglob("*.py")):
        h.update(p.relative_to(core).as_posix().encode())
        h.update(p.read_bytes())
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-{h.hexdigest()[:16]}"
    root = os.environ.get("KVSIM_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvsim" / "numba"
    )
    base = Path(root)
    if _TAG.fullmatch(base.name):  # inherited from a parent kvsim process: already keyed
        base = base.parent
    return str(base / tag)


def configure() -> None:
    """Point numba's cache at :func:`cache_dir` (works before or after numba's import)."""
    path = cache_dir()
    numba = sys.modules.get("numba")
    if numba is None:
        os.environ["NUMBA_CACHE_DIR"] = path  # read by numba when it is imported
    else:
        numba.config.CACHE_DIR = path

"""The default loader of generated kernel modules (installed by ``import kvsim``).

:mod:`kvsim.core.specialize` generates the source of kernel modules specialised to a set
of policies; it does no I/O. This loader gives that text a home: a file under
``generated/`` in numba's cache directory (:mod:`kvsim._numba_cache` keys that directory
by the core's sources), so numba's ``cache=True`` caches the machine code against the
file and a later process loads it instead of compiling. It also reads the one setting
of the kernels: ``KVSIM_KERNELS=all`` (every built-in policy in every kernel set).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["FileKernelLoader", "generated_dir", "install"]


def generated_dir() -> Path:
    """Where generated kernel modules are written: ``generated/`` in numba's cache
    directory (keyed by the core's sources, see :mod:`kvsim._numba_cache`), else a
    per-user temp directory."""
    from numba.core import config

    root = getattr(config, "CACHE_DIR", "") or os.path.join(tempfile.gettempdir(),
                                                            f"kvsim-{os.getuid()}")
    return Path(root) / "generated"


class FileKernelLoader:
    """Writes each generated module to a file and imports it from there.

    Args:
        directory: where the files go; ``None`` = :func:`generated_dir` at each load
            (numba's cache directory may be set after this loader is made).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory

    def source(self, module: ModuleType) -> str:
        """The text of ``module``'s source file."""
        return Path(inspect.getfile(module)).read_text()

    def all_policies(self) -> bool:
        """``KVSIM_KERNELS=all`` in the environment (read at each call)."""
        return os.environ.get("KVSIM_KERNELS") == "all"

    def load(self, modname: str, text: str) -> ModuleType:
        """Write ``text`` to ``<directory>/<modname>.py`` (unless it already holds it) and
        import it as ``modname``."""
        directory = self.directory or generated_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{modname}.py"
        _write(path, text)
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
        return mod


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it, with an mtime derived from the
    content: numba's cache index is stamped with (mtime, size), so processes that
    generate the same file keep each other's cached machine code valid."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    stamp = 1_000_000_000 + int(hashlib.sha256(text.encode()).hexdigest()[:7], 16)
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


def install() -> None:
    """Install a :class:`FileKernelLoader` as the core's process-wide loader."""
    from kvsim.core import loader

    loader.install(FileKernelLoader())

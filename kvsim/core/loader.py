"""How generated kernel modules reach the core: an injected loader (no I/O here).

:mod:`kvsim.core.specialize` turns the policy registry into Python source text; a
:class:`KernelLoader` (outside the core: :mod:`kvsim._kernels_loader`) turns that text
into an importable module. The loader owns every outside concern: where the generated
files live, how they are written (numba keys its on-disk cache on a real file), how a
module's source is read, and configuration such as ``KVSIM_KERNELS=all``.

The process-wide loader is installed once by ``import kvsim``
(:func:`install`); a :class:`~kvsim.core.manager.CacheManager` may be given another.
This module imports nothing heavy, so installing costs nothing at start-up.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol

__all__ = ["KernelLoader", "install", "installed"]


class KernelLoader(Protocol):
    """Loads generated kernel modules for :mod:`kvsim.core.specialize`."""

    def source(self, module: ModuleType) -> str:
        """The source text of ``module`` (a kernel template or a policy module)."""
        ...

    def load(self, modname: str, text: str) -> ModuleType:
        """Make ``text`` importable as module ``modname`` and import it (registered in
        ``sys.modules``). Loading the same name and text again must give a module whose
        compiled code numba can reuse from its disk cache."""
        ...

    def all_policies(self) -> bool:
        """Whether every manager's kernels include every built-in policy (one kernel set
        for a whole process tree, e.g. a test suite), whatever its groups use."""
        ...


_installed: KernelLoader | None = None


def install(loader: KernelLoader) -> None:
    """Make ``loader`` the process-wide default (``import kvsim`` installs
    :class:`kvsim._kernels_loader.FileKernelLoader`)."""
    global _installed
    _installed = loader


def installed() -> KernelLoader:
    """The process-wide loader.

    Raises:
        RuntimeError: none was installed (``import kvsim`` installs one).
    """
    if _installed is None:
        raise RuntimeError("no kernel loader installed (import kvsim installs one)")
    return _installed

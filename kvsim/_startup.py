"""Start-up helpers for the command line (kept out of the library's import path).

numba, the first time a process compiles or loads a kernel, imports its optional
NumPy extensions, and those probe SciPy's BLAS: importing ``scipy.linalg`` costs
about 0.4 s, a quarter of ``kvsim replay``'s start-up. kvsim's kernels use no BLAS,
so the command line runs that one-time numba set-up with ``scipy.linalg`` hidden.
The only effect is that numba code in the same process cannot call BLAS
(``np.dot`` on arrays inside ``@njit``); nothing in kvsim does.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_HIDDEN = ("scipy.linalg",)


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if any(fullname == h or fullname.startswith(h + ".") for h in _HIDDEN):
            raise ImportError(f"{fullname} hidden during numba set-up (kvsim start-up)")
        return None


def prepare_numba() -> None:
    """Run numba's one-time target set-up without SciPy's BLAS probe.

    Example:
        >>> prepare_numba()  # idempotent; later kernel loads skip the set-up
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    from numba.core.registry import cpu_target

    finder = _Hide()
    sys.meta_path.insert(0, finder)
    try:
        cpu_target.target_context.refresh()
    finally:
        sys.meta_path.remove(finder)

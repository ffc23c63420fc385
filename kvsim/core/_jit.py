"""The one JIT decorator of the core's kernels.

Kernels are module-level functions compiled with ``cache=True`` (machine code is
cached on disk, so a second process starts in well under a second) and without
numba's reference counting (``_nrt=False``). The core state is one tuple of ~35
arrays; with reference counting on, every branchy call that passes it costs an
atomic increment and decrement per array (measured: ~300 ns per policy dispatch
against ~2 ns without). Kernels therefore never allocate: callers pass scratch
arrays in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from numba import njit

F = TypeVar("F", bound=Callable[..., Any])


def kernel(fn: F) -> F:
    """Compile ``fn`` as a cached, reference-count-free numba kernel."""
    return njit(cache=True, _nrt=False)(fn)  # type: ignore[no-any-return]


def inline_kernel(fn: F) -> F:
    """Like :func:`kernel`, inlined into its callers at the numba IR level."""
    return njit(cache=True, _nrt=False, inline="always")(fn)  # type: ignore[no-any-return]

"""The one JIT decorator of the core's kernels.

Kernels are module-level functions compiled with ``cache=True`` (machine code is
cached on disk under a directory keyed by the core's sources, see
:mod:`kvsim._numba_cache`, so a second process starts in well under a second) and without
numba's reference counting (``_nrt=False``). The core state is one tuple of ~35
arrays; with reference counting on, every branchy call that passes it costs an
atomic increment and decrement per array (measured: ~300 ns per policy dispatch
against ~2 ns without). Kernels therefore never allocate: callers pass scratch
arrays in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from llvmlite import ir
from numba import njit, types
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])


_njit: Any = njit  # ``_nrt`` is a real numba option missing from its type stubs


class _KernelDispatcher(CPUDispatcher):
    """A kernel as Python calls it (cached on disk, with a CPython wrapper); numba code
    that calls it is typed against :attr:`_inner`, a twin compiled without the
    CPython wrapper.

    Every compiled function gets a wrapper that unboxes its arguments from Python
    objects; for the ~45-array ``Tables`` tuple that wrapper was about half of the
    compile time of a small kernel, paid by every kernel a top-level call reached
    though only the top-level one is ever called from Python. The twin is not cached
    on disk (it would share the cache index of this one, whose key ignores the
    wrapper flag): callees compile only while a top-level kernel compiles.
    """

    _inner: Any = None

    @property
    def _numba_type_(self) -> Any:
        return types.Dispatcher(self._inner)


def kernel(fn: F) -> F:
    """Compile ``fn`` as a cached, reference-count-free numba kernel.

    ``forceinline`` makes LLVM inline kernels into their callers: a call that is not
    inlined passes the whole ``Tables`` tuple as ~350 scalar arguments, and the policy
    dispatch grew past LLVM's own inlining threshold (measured: replay at 5.2 M/s
    without, 9-11 M/s with, on the 20M-access benchmark). Calls from other kernels go
    to a wrapper-less twin (see :class:`_KernelDispatcher`).
    """
    outer = _njit(cache=True, _nrt=False, forceinline=True, no_cfunc_wrapper=True)(fn)
    inner = _njit(_nrt=False, forceinline=True, no_cpython_wrapper=True,
                  no_cfunc_wrapper=True)(fn)
    outer.__class__ = _KernelDispatcher
    outer._inner = inner
    return cast(F, outer)


def inline_kernel(fn: F) -> F:
    """Like :func:`kernel`, inlined into its callers at the numba IR level."""
    return cast(F, _njit(cache=True, _nrt=False, inline="always")(fn))


def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """Hint the CPU to load ``arr[idx]`` into cache (``llvm.prefetch``, read, high locality).

    Lookups in the block table are chains of dependent loads (hash -> index slot ->
    row); prefetching every key of a request first lets those misses overlap.
    """
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


prefetch: Any = intrinsic(_prefetch)

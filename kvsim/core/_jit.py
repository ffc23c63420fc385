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
from numba.core import typing
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import Compiler
from numba.core.compiler_lock import require_global_compiler_lock
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


def _widen(ty: Any) -> Any:
    """The type a kernel-to-kernel call compiles its callee for: literals dropped and
    signed integer scalars as int64 (the call site casts; numba computes in int64
    anyway), so ``f(t, -1)``, ``f(t, r32)`` and ``f(t, r64)`` share one compile."""
    ty = types.unliteral(ty)
    if isinstance(ty, types.Integer) and getattr(ty, "signed", False):
        return types.int64
    return ty


class _InnerDispatcher(CPUDispatcher):
    """The wrapper-less twin: one compile per call shape, not per literal or int width.

    numba compiles a callee once per distinct argument type tuple, and a constant
    argument is a distinct ``Literal`` type: a cold ``kvsim replay`` compiled
    ``slot_add`` five times, ``_evict_from`` four, the policy's ``hit`` three (~30% of
    its compile time). Here the callee compiles for the widened types (:func:`_widen`)
    and numba's overload resolution converts the call's arguments to them. Branches on
    a constant argument are still folded: callers inline their callees (LLVM
    ``alwaysinline``), and LLVM propagates the constant.
    """

    def get_call_template(self, args: Any, kws: Any) -> Any:
        this: Any = self  # numba's private attributes are missing from its stubs
        pysig, args = this._compiler.fold_argument_types(args, kws)
        if this._can_compile:
            self.compile(tuple(_widen(a) for a in args))
        call_template = typing.make_concrete_template(
            f"CallTemplate({self.py_func.__name__})", key=self.py_func.__name__,
            signatures=self.nopython_signatures)
        return call_template, pysig, args, {}


class _LinkOnlyLibrary(JITCodeLibrary):
    """The code of a wrapper-less twin: only ever linked into its callers' code.

    numba finalises every compiled function's library on its own: the callee's whole
    call tree is linked in, optimised at O3 and turned into machine code, then linked
    (as LLVM IR) into the caller, which optimises and compiles it all again, once per
    level of the call tree. A twin is never called from Python (it has no CPython
    wrapper) and its callers inline it (``alwaysinline``), so that work is thrown
    away: here finalising only links the callees in. The top-level kernel (a normal
    library, cached on disk) optimises the whole tree once, so its machine code is the
    same as before. Measured: a cold ``kvsim replay`` compiled ~15% faster.
    """

    def finalize(self) -> None:
        this: Any = self  # numba's private attributes are missing from its stubs
        require_global_compiler_lock()
        this._raise_if_finalized()
        seen: set[Any] = set()
        for library in this._linking_libraries:
            if library not in seen:
                seen.add(library)
                this._reload_init.update(library._reload_init)
                this._final_module.link_in(library._get_module_for_linking(), preserve=True)
        this._finalize_dynamic_globals()
        this._verify_declare_only_symbols()
        this._finalized = True

    def get_pointer_to_function(self, name: str) -> int:
        """No machine code: 0 (numba's answer for a symbol it does not define)."""
        self._ensure_finalized()
        return 0

    @property
    def codegen(self) -> Any:
        """The codegen, except that the twin's environment is never set: it has no
        symbol in the JIT engine (numba sets it on every compiled function)."""
        return _NoEnvCodegen(self._codegen)


class _NoEnvCodegen:
    """A codegen proxy whose ``set_env`` does nothing (see :class:`_LinkOnlyLibrary`)."""

    def __init__(self, codegen: Any) -> None:
        self._codegen = codegen

    def set_env(self, env_name: str, env: Any) -> None:
        """Nothing to set: the twin's code lives only inside its callers'."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codegen, name)


class _LinkOnlyCompiler(Compiler):
    """numba's default pipeline, with the result in a :class:`_LinkOnlyLibrary`."""

    def compile_extra(self, func: Any) -> Any:
        if self.state.library is None:
            codegen = self.state.targetctx.codegen()
            self.state.library = _LinkOnlyLibrary(codegen, func.__qualname__)
        return super().compile_extra(func)


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
                  no_cfunc_wrapper=True, pipeline_class=_LinkOnlyCompiler)(fn)
    outer.__class__ = _KernelDispatcher
    inner.__class__ = _InnerDispatcher
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

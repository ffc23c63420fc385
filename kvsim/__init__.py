"""kvsim: size, tune and run KV caches for LLM inference.

One core (:mod:`kvsim.core`, the KV-cache metadata manager) and three ways in: the
trace-replay simulator (``kvsim replay``), the optimizer and the server.
"""

from kvsim import _kernels_loader, _numba_cache

__version__ = "0.1.0"

_numba_cache.configure()
_kernels_loader.install()

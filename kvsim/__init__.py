"""kvsim: size, tune and run KV caches for LLM inference.

One core (:mod:`kvsim.core`, the KV-cache metadata manager) and three ways in: the
trace-replay simulator (``kvsim replay``), the optimizer and the server.
"""

__version__ = "0.1.0"

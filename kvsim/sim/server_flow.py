"""Replay a trace the way clients of ``kvsim serve`` drive the manager.

Per request, the calls a client makes and the core calls the server's
:class:`~kvsim.server.service.Service` turns them into: ``getCacheLocation`` (a prefix
match that refreshes the hits), ``startWriteCache`` of every key (WRITING blocks for the
new ones; room is made *before* they are written, so blocks being written are never
victims), ``finishWriteCache`` with every new block written (committed tail first), and
the refresh of the keys the write found held. Under ``lru`` this equals the replay
contract's combined request; frequency and reference-bit policies differ (the read's
refresh counts, and eviction happens before the write), and this is what the live server
does. It runs through the manager's Python API, so it is slower than :func:`replay`.

Example:
    >>> from kvsim.config import KVSimConfig
    >>> from kvsim.sim.replay import replay
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2, 3], [4], [1, 2]])
    >>> cfg = KVSimConfig.single_cache(capacity_blocks=3)
    >>> replay_server_flow(t, cfg).hit_blocks.tolist() == replay(t, cfg).hit_blocks.tolist()
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from kvsim.config import KVSimConfig
from kvsim.core.errors import QuotaExceeded
from kvsim.core.manager import QUERY_BATCH, QUERY_PREFIX
from kvsim.sim.replay import ReplayResult, build_manager
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

__all__ = ["replay_server_flow"]


def replay_server_flow(trace: Trace, config: KVSimConfig, steps: int = 1,
                       on_step: Callable[[int, int, int, int], None] | None = None
                       ) -> ReplayResult:
    """Replay ``trace`` as the server sees it (see the module docstring).

    Args:
        trace: requests in timestamp order.
        config: groups, instances and replay options.
        steps: pieces of about equal requests; after each, ``on_step(s, done_requests,
            hit_tokens, input_tokens)`` is called with running totals (it may raise to
            stop, e.g. ``optuna.TrialPruned``).
        on_step: the callback.

    Returns:
        The per-request results (hit blocks and cached blocks; eviction counters are
        not kept).
    """
    n = trace.n_requests
    mgr, core_idx, group_of = build_manager(trace, config, rows=max(16, trace.n_keys))
    clock = mgr.clock
    hit = np.zeros(n, dtype=np.int64)
    cached = np.zeros(n, dtype=np.int64)
    reads = trace.kind != KIND_WRITE
    input_tokens = np.where(reads, trace.input_len, 0)
    names = trace.instances
    ends = set(np.unique(np.linspace(0, n, steps + 1).round().astype(np.int64))[1:].tolist())
    t0 = time.perf_counter()
    step = 0
    for q in range(n):
        clock.set(max(clock.now_ns(), int(trace.ts_ns[q])))  # type: ignore[attr-defined]
        iid = names[int(trace.instance[q])]
        keys = trace.request_keys(q)
        kind = int(trace.kind[q])
        if kind != KIND_WRITE:
            mask = None if trace.mask is None else trace.mask[
                trace.offsets[q]:trace.offsets[q + 1]]
            hit[q] = mgr.match(iid, keys, query=QUERY_PREFIX, mask=mask).hit_blocks
        if kind != KIND_READ and keys.shape[0]:
            try:
                ws = mgr.start_write(iid, keys)
            except QuotaExceeded:  # the server answers REACH_MAX_ENTITY_CAPACITY
                ws = None
            if ws is not None:
                mgr.finish_write(ws.session_id, np.ones(ws.new_keys.shape[0], dtype=bool))
                old = keys[~ws.is_new]
                if old.shape[0]:
                    mgr.match(iid, old, query=QUERY_BATCH, touch=True)
        cached[q] = int(mgr.table.t.i_blocks[core_idx[int(trace.instance[q])]])
        if q + 1 in ends:
            if on_step is not None:
                ht = np.minimum(hit[:q + 1] * trace.block_size, input_tokens[:q + 1])
                on_step(step, q + 1, int(ht.sum()), int(input_tokens[:q + 1].sum()))
            step += 1
    zeros = np.zeros(n, dtype=np.int64)
    g0 = config.groups[0]
    return ReplayResult(
        label=f"{g0.eviction.policy}@{g0.capacity_units() or 'inf'} (server flow)",
        trace=trace, config=config, group_of_instance=group_of, hit_blocks=hit,
        internal_hits=zeros, internal_reads=zeros, cached_blocks=cached, group_used=zeros,
        evicted=zeros, elapsed_s=time.perf_counter() - t0,
        capacity_units={g.name: g.capacity_units() for g in config.groups},
    )

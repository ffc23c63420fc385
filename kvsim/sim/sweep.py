"""Run several replay configurations of one trace, in parallel worker processes.

:func:`run_sweep` replays one :class:`~kvsim.trace.model.Trace` under each of a list
of :class:`~kvsim.config.KVSimConfig` (typically one cache at several capacities) and
returns the :class:`~kvsim.sim.replay.ReplayResult` objects in input order, plus the
ideal (unbounded-cache) figures of :func:`~kvsim.sim.replay.ideal`.

How the trace reaches the workers: it is read **once, in the parent**. Where the
``fork`` start method exists (Linux), the trace is parked in a module global before
the pool starts, so every worker inherits it copy-on-write: no pickling, no copy and
no second parse (re-reading a 20M-key JSONL trace costs seconds per worker; pickling
it costs ~160 MB of copies per worker). Elsewhere the pool initializer receives the
trace once per worker (pickled once per worker, never per task). Workers send back
only the per-request outcome arrays, never the trace; the parent reattaches it.

Progress: each task writes its ``done`` request count into a shared array slot that
the parent polls, so one progress bar covers every worker.

This module also holds the small helpers the CLI and :mod:`kvsim.api` share to turn
flags (a capacity list, ``NAME=VALUE`` policy parameters) into configs.

Example:
    >>> from kvsim.trace.model import Trace
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 2, 3], [4]], block_size=16)
    >>> cfgs = single_cache_configs([2, 3])
    >>> sw = run_sweep(t, cfgs, jobs=1)
    >>> [r.summary()["hit_blocks"] for r in sw.results], sw.ideal["hit_blocks"]
    ([2, 2], 2)
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvsim.config import KVSimConfig
from kvsim.sim.replay import FLOWS, ReplayResult, ideal, replay
from kvsim.trace.model import Trace

__all__ = [
    "SweepResult",
    "default_jobs",
    "ideal_from",
    "is_ideal_cache",
    "parse_params",
    "run_sweep",
    "single_cache_configs",
    "tokens_to_blocks",
]

ProgressFn = Callable[[int, int], None]

IDEAL_KEYS = ("hit_blocks", "hit_tokens", "block_hit_rate", "token_hit_rate",
              "mean_request_token_hit_rate")
_POLL_S = 0.1

# Worker-side state: the trace (inherited on fork, or set by the initializer) and the
# shared progress array (one int64 slot per task).
_TRACE: Trace | None = None
_PROGRESS: Any = None


@dataclass(frozen=True)
class SweepResult:
    """The results of a sweep.

    Attributes:
        results: one :class:`ReplayResult` per config, in input order.
        ideal: the unbounded-cache figures (``hit_blocks``, ``hit_tokens``,
            ``block_hit_rate``, ``token_hit_rate``), or ``None`` if not asked for.
        jobs: worker processes used (1 = in-process).
    """

    results: list[ReplayResult]
    ideal: dict[str, Any] | None
    jobs: int


# ---------------------------------------------------------------------- config helpers
def tokens_to_blocks(tokens: int, block_size: int) -> int:
    """A token capacity in blocks: ``floor(tokens / block_size)``.

    Example:
        >>> tokens_to_blocks(3_000_000, 512), tokens_to_blocks(50_000_000, 512)
        (5859, 97656)
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return tokens // block_size


def parse_params(policy: str, items: Sequence[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings into typed parameters of ``policy``.

    Values are checked against the policy's parameter dataclass: the name must be a
    field, an ``integer`` field takes an integral value, and the ``low``/``high``
    bounds hold.

    Raises:
        ValueError: the message names the parameter (and lists the known ones).

    Example:
        >>> parse_params("random_lru", ["sample_rate=0.5", "seed=3"])
        {'sample_rate': 0.5, 'seed': 3}
    """
    from kvsim.core.policies import POLICIES

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}")
    cls = POLICIES[policy].params_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ValueError(f"policy parameter {item!r}: expected NAME=VALUE")
        f = fields.get(name)
        if f is None:
            known = ", ".join(sorted(fields)) or "none"
            raise ValueError(
                f"policy {policy!r} has no parameter {name!r} (known: {known})"
            )
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"policy parameter {name!r}: expected a number, got {text!r}"
            ) from None
        if f.metadata.get("integer"):
            if not value.is_integer():
                raise ValueError(f"policy parameter {name!r}: expected an integer, got {text!r}")
            out[name] = int(value)
        else:
            out[name] = value
    cls.from_dict(out)  # range checks; the ValueError names the field
    return out


def single_cache_configs(
    capacities: Sequence[int],
    *,
    capacity_bytes: Sequence[int] = (),
    block_bytes: int = 0,
    instances: Sequence[str] = (),
    instance_block_size: int = 16,
    **options: Any,
) -> list[KVSimConfig]:
    """One single-cache config per capacity (blocks), or per byte capacity.

    Args:
        capacities: capacities in blocks (0 = unbounded).
        capacity_bytes: capacities in bytes instead (needs ``block_bytes``).
        block_bytes: bytes of one block, for byte quotas; every instance in
            ``instances`` is registered with one location of this size.
        instances: the trace's instance ids (only used with byte quotas).
        instance_block_size: tokens per block of those instances (the trace's).
        **options: the other :meth:`KVSimConfig.single_cache` keywords (``policy``,
            ``params``, ``mode``, ``batch_size``, ``used_percentage``, ``match``,
            ``tail``, ``block_size``); ``None`` values take the defaults.

    Raises:
        ConfigError: a bad value (the message names the field).
    """
    opts = {k: v for k, v in options.items() if v is not None}
    if not capacity_bytes:
        return [KVSimConfig.single_cache(capacity_blocks=int(c), **opts) for c in capacities]
    if block_bytes <= 0:
        raise ValueError("a byte capacity needs the bytes of one block (--block-bytes)")
    out = []
    for b in capacity_bytes:
        base = KVSimConfig.single_cache(capacity_bytes=int(b), **opts).to_dict()
        base["instances"] = [
            {"instance_id": name, "group": "default",
             "block_size": int(instance_block_size),
             "location_spec_infos": [{"name": "all", "size": int(block_bytes)}]}
            for name in instances
        ]
        out.append(KVSimConfig.from_dict(base, source="<flags>"))
    return out


def is_ideal_cache(config: KVSimConfig) -> bool:
    """True when ``config`` is one unbounded group holding every instance, prefix match."""
    return (
        len(config.groups) == 1
        and not config.instances
        and config.groups[0].quota_units() == 0
        and config.replay.match == "prefix"
    )


def ideal_from(config: KVSimConfig, result: ReplayResult) -> dict[str, Any] | None:
    """The ideal figures read off ``result`` when its config is the ideal cache.

    That is one unbounded group holding every instance, prefix matching: exactly
    what :func:`~kvsim.sim.replay.ideal` replays. Otherwise ``None``.
    """
    if is_ideal_cache(config):
        s = result.summary()
        return {k: s[k] for k in IDEAL_KEYS}
    return None


# Below this many block accesses in all (keys x runs) a pool costs more than it saves
# (worker start-up is ~0.3 s); measured on the shipped sample: 1.9 s pooled, 1.3 s not.
SMALL_SWEEP_KEYS = 5_000_000


def default_jobs(n_tasks: int, total_keys: int | None = None) -> int:
    """``min(n_tasks, os.cpu_count())``, at least 1; 1 for small sweeps."""
    if total_keys is not None and total_keys < SMALL_SWEEP_KEYS:
        return 1
    return max(1, min(n_tasks, os.cpu_count() or 1))


# ---------------------------------------------------------------------- workers
def _init_worker(trace: Trace | None, progress: Any, parent: int = 0) -> None:
    global _TRACE, _PROGRESS
    if parent:
        from kvsim._procs import die_with_parent

        die_with_parent(parent)  # a killed `kvsim replay` leaves no workers behind
    if trace is not None:
        _TRACE = trace
    _PROGRESS = progress


def _strip(r: ReplayResult) -> dict[str, Any]:
    """A result's fields without the trace (what a worker sends back)."""
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "trace"}


def _run_task(slot: int, config: KVSimConfig | None, label: str | None) -> dict[str, Any]:
    """Replay one config (``None`` = the ideal) on the worker's trace."""
    trace = _TRACE
    assert trace is not None, "worker has no trace"
    progress = _PROGRESS
    if config is None:
        out = {"ideal": ideal(trace)}
        if progress is not None:
            progress[slot] = trace.n_requests
        return out

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress[slot] = done

    return _strip(replay(trace, config, label=label, progress=report))


def _warm_kernels(trace: Trace) -> None:
    """Load the replay kernels (from numba's disk cache) with a one-request replay."""
    if trace.n_requests:
        one = trace.head(1)
        replay(one, KVSimConfig.single_cache(capacity_blocks=1))


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork") if "fork" in methods else mp.get_context()


# ---------------------------------------------------------------------- entry
def run_sweep(
    trace: Trace,
    configs: Sequence[KVSimConfig],
    *,
    labels: Sequence[str | None] | None = None,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    with_ideal: bool = True,
    flow: str = "combined",
) -> SweepResult:
    """Replay ``trace`` under every config; results in input order.

    Args:
        trace: the trace (read once by the caller).
        configs: one config per run.
        labels: a label per run (``None`` entries: the replay's default label).
        jobs: worker processes; default ``min(runs, os.cpu_count())``. ``1`` runs
            everything in this process.
        progress: called as ``progress(done, total)`` with request counts summed
            over all runs (the ideal counts as one more run).
        with_ideal: also compute :func:`~kvsim.sim.replay.ideal` (taken from a run
            whose config is the ideal cache when there is one, else one more task).
        flow: ``combined`` or ``client`` (see :func:`~kvsim.sim.replay.replay`; the
            client flow, a Python loop per request, runs in this process).

    Returns:
        A :class:`SweepResult`.
    """
    labels = list(labels) if labels is not None else [None] * len(configs)
    if len(labels) != len(configs):
        raise ValueError(f"{len(labels)} labels for {len(configs)} configs")
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    combined = flow == "combined"
    # the ideal (the contract's) is read off an equivalent combined run when possible;
    # otherwise it is one task
    need_ideal = with_ideal and not (combined and any(is_ideal_cache(c) for c in configs))
    tasks: list[tuple[KVSimConfig | None, str | None]] = list(zip(configs, labels, strict=True))
    if need_ideal:
        tasks.append((None, None))
    n = trace.n_requests
    total = n * len(tasks)
    if not combined:
        jobs = 1
    elif jobs is None:
        jobs = default_jobs(len(tasks), trace.n_keys * len(tasks))
    else:
        jobs = max(1, min(jobs, len(tasks)))

    outs: list[dict[str, Any]] = []
    if jobs == 1:
        done_before = 0
        for cfg, label in tasks:
            if cfg is None:
                outs.append({"ideal": ideal(trace)})
            else:
                def report(done: int, _total: int, base: int = done_before) -> None:
                    if progress is not None:
                        progress(base + done, total)

                outs.append(_strip(replay(trace, cfg, label=label, progress=report,
                                          flow=flow)))
            done_before += n
            if progress is not None:
                progress(done_before, total)
    else:
        outs = _run_pool(trace, tasks, jobs, total, progress)

    results = [ReplayResult(trace=trace, **o) for o in outs if "ideal" not in o]
    ideal_figs: dict[str, Any] | None = None
    if need_ideal:
        ideal_figs = outs[-1]["ideal"]
    elif with_ideal:
        for cfg, r in zip(configs, results, strict=True):
            ideal_figs = ideal_from(cfg, r)
            if ideal_figs is not None:
                break
    return SweepResult(results=results, ideal=ideal_figs, jobs=jobs)


def _run_pool(
    trace: Trace,
    tasks: list[tuple[KVSimConfig | None, str | None]],
    jobs: int,
    total: int,
    progress: ProgressFn | None,
) -> list[dict[str, Any]]:
    global _TRACE
    ctx = _context()
    shared = ctx.RawArray("q", len(tasks))
    forked = ctx.get_start_method() == "fork"
    if forked:
        _TRACE = trace  # inherited copy-on-write by the forked workers
        _warm_kernels(trace)  # forked workers inherit the loaded machine code too
    try:
        with cf.ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(None if forked else trace, shared, os.getpid()),
        ) as ex:
            futures = [ex.submit(_run_task, i, cfg, label)
                       for i, (cfg, label) in enumerate(tasks)]
            pending = set(futures)
            try:
                while pending:
                    _done, pending = cf.wait(pending, timeout=_POLL_S,
                                             return_when=cf.FIRST_EXCEPTION)
                    if progress is not None:
                        progress(int(sum(shared)), total)
                    for f in _done:
                        if f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            return [f.result() for f in futures]
    finally:
        _TRACE = None

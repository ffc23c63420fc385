"""One ``kvsim replay`` sweep shared by many processes (on many machines) through an
Optuna study in an RDB storage (``sqlite:///sweep.db``, ``postgresql://...``).

Every process runs the same command (same trace, same capacities or config) with the
same ``--study-storage`` and ``--study-name``. The first to arrive creates the study
and enqueues one waiting trial per run of the sweep (one per capacity, and one for the
ideal cache when no run is it), then marks the study with the sweep's identity (a
digest of the trace and of every run's config and label: a process with another sweep
is refused). Each process then claims waiting trials one at a time (a claim is the
storage's atomic ``WAITING -> RUNNING`` transition: row-locked in PostgreSQL, and in
SQLite a ``BEGIN IMMEDIATE`` transaction), replays the claimed run and stores its
per-request outcomes in the trial (compressed, ~10-20 bytes per request) with the token
hit rate as its value. When none is left waiting, it waits for the others' runs and
rebuilds every result from the study: each process prints the whole sweep, the same
integers as one process running it alone (a test holds them equal).

A run that fails marks its trial ``FAIL`` and fails the sweep in every process. A
process killed during a run leaves its trial ``RUNNING``: the others wait for it (at
most ``wait_s``); start a new study name to run the sweep again.

Example:
    >>> run_indices(3, ideal=True)
    [0, 1, 2, 3]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsim.config import KVSimConfig
from kvsim.trace.model import Trace

__all__ = ["RUN_ATTR", "SWEEP_ATTR", "SharedSweep", "open_rdb", "run_indices",
           "run_shared_sweep", "sweep_identity"]

SWEEP_ATTR = "kvsim_sweep"  # study user attribute: the sweep's identity
RUN_ATTR = "kvsim_run"  # trial user attribute: the run's index
_RESULT_ATTR = "kvsim_result"
_WORKER_ATTR = "kvsim_worker"
_ARRAYS = ("hit_blocks", "internal_hits", "internal_reads", "cached_blocks", "group_used",
           "evicted")


def run_indices(n_configs: int, *, ideal: bool) -> list[int]:
    """The runs of a sweep: one per config, and the ideal cache's last when asked."""
    return list(range(n_configs + (1 if ideal else 0)))


def sweep_identity(trace: Trace, configs: Sequence[KVSimConfig],
                   labels: Sequence[str | None], flow: str) -> str:
    """A digest of the trace's requests and keys and of every run (config, label, flow):
    processes sharing a study must agree on it."""
    h = hashlib.blake2b(digest_size=16)
    for a in (trace.ts_ns, trace.instance, trace.offsets, trace.keys, trace.input_len,
              trace.kind):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([list(trace.instances), trace.block_size, flow,
                         [c.to_dict() for c in configs], list(labels)],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def open_rdb(url: str) -> Any:
    """An Optuna RDB storage for ``url``; SQLite transactions start ``IMMEDIATE`` (the
    claim of a waiting trial is then atomic across processes) and wait up to 60 s for
    the database lock.

    Raises:
        ValueError: not an RDB URL (``kvsim tune``'s journal files are one machine's).
    """
    import optuna
    import sqlalchemy

    from kvsim.optimizer.tune import open_storage

    if "://" not in url:
        raise ValueError(f"--study-storage needs an RDB URL (sqlite:///x.db, "
                         f"postgresql://...), got {url!r}")
    sqlite = url.startswith("sqlite")
    for attempt in range(10):  # processes creating the tables together may collide
        try:
            if not sqlite:
                return open_storage(url)
            st = optuna.storages.RDBStorage(
                url, heartbeat_interval=None,
                engine_kwargs={"connect_args": {"timeout": 60}})
            break
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))

    @sqlalchemy.event.listens_for(st.engine, "connect")
    def _no_implicit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite: no implicit (deferred) BEGIN

    @sqlalchemy.event.listens_for(st.engine, "begin")
    def _immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    st.engine.dispose()  # connections opened before the listeners are dropped
    return st


@dataclass
class SharedSweep:
    """What :func:`run_shared_sweep` returns: the fields of
    :class:`~kvsim.sim.sweep.SweepResult`, and what this process ran.

    Attributes:
        results: one result per config, rebuilt from the study.
        ideal: the unbounded-cache figures, or None.
        jobs: 1.
        ran: the run indices this process claimed and ran.
        runs: the sweep's runs in all.
    """

    results: list[Any]
    ideal: dict[str, Any] | None
    jobs: int
    ran: list[int]
    runs: int


def _encode(r: Any) -> str:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: getattr(r, k) for k in _ARRAYS})
    return json.dumps({
        "arrays": base64.b64encode(buf.getvalue()).decode(),
        "label": r.label, "group_of_instance": list(r.group_of_instance),
        "elapsed_s": r.elapsed_s, "capacity_units": r.capacity_units,
        "evicted_by_trigger": r.evicted_by_trigger,
    })


def _decode(text: str, trace: Trace, config: KVSimConfig) -> Any:
    from kvsim.sim.replay import ReplayResult

    d = json.loads(text)
    with np.load(io.BytesIO(base64.b64decode(d["arrays"]))) as z:
        arrays = {k: z[k].astype(np.int64, copy=False) for k in _ARRAYS}
    return ReplayResult(label=d["label"], trace=trace, config=config,
                        group_of_instance=tuple(d["group_of_instance"]),
                        elapsed_s=float(d["elapsed_s"]),
                        capacity_units={k: int(v) for k, v in d["capacity_units"].items()},
                        evicted_by_trigger={k: int(v)
                                            for k, v in d["evicted_by_trigger"].items()},
                        **arrays)


def _join(st: Any, name: str, identity: str, labels: list[str], wait_s: float) -> int:
    """Create the study and enqueue its runs, or load it and check its identity.
    Returns the study id."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=st, direction="maximize")
        for i, label in enumerate(labels):
            study.enqueue_trial({}, user_attrs={RUN_ATTR: i, "label": label})
        study.set_user_attr(SWEEP_ATTR, {"identity": identity, "runs": len(labels)})
        return int(st.get_study_id_from_name(name))
    except optuna.exceptions.DuplicatedStudyError:
        pass
    sid = int(st.get_study_id_from_name(name))
    deadline = time.monotonic() + wait_s
    while True:  # the creator marks the study once every run is enqueued
        mark = st.get_study_user_attrs(sid).get(SWEEP_ATTR)
        if mark is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {name!r} exists but holds no kvsim sweep "
                               f"(no {SWEEP_ATTR!r} attribute after {wait_s:.0f} s)")
        time.sleep(0.2)
    if mark.get("identity") != identity:
        raise ValueError(f"study {name!r} holds another sweep (another trace, capacities, "
                         "config or flow): use another --study-name")
    return sid


def run_shared_sweep(trace: Trace, configs: Sequence[KVSimConfig], *,
                     labels: Sequence[str | None] | None = None, storage: str,
                     study_name: str, flow: str = "combined", with_ideal: bool = True,
                     wait_s: float = 24 * 3600.0, poll_s: float = 0.5,
                     on_run: Callable[[int, str], None] | None = None) -> SharedSweep:
    """Run the waiting runs of a sweep's study, then gather every run from it.

    Args:
        trace: the trace (every process reads the same file).
        configs: one config per run.
        labels: a label per run (``None``: the replay's default).
        storage: an RDB URL.
        study_name: the study's name (one per sweep).
        flow: ``combined`` or ``client``.
        with_ideal: also the unbounded cache's figures (a run of their own unless a
            config is the ideal cache).
        wait_s: how long to wait for the study's mark and for other processes' runs.
        poll_s: seconds between looks at the study while waiting.
        on_run: called with (run index, label) before each run this process claims.

    Returns:
        A :class:`SharedSweep`.

    Raises:
        ValueError: not an RDB URL, or the study holds another sweep.
        RuntimeError: a run failed (here or elsewhere), or runs still unfinished after
            ``wait_s``.
    """
    import optuna
    from optuna.trial import TrialState

    from kvsim.sim.replay import default_label, ideal, replay
    from kvsim.sim.sweep import is_ideal_cache

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    labels = list(labels) if labels is not None else [None] * len(configs)
    need_ideal = with_ideal and not (flow == "combined"
                                     and any(is_ideal_cache(c) for c in configs))
    runs = run_indices(len(configs), ideal=need_ideal)
    names = [(labels[i] or default_label(configs[i], flow)) if i < len(configs) else "ideal"
             for i in runs]
    st = open_rdb(storage)
    sid = _join(st, study_name, sweep_identity(trace, configs, labels, flow), names, wait_s)
    me = f"{socket.gethostname()}:{os.getpid()}"
    ran: list[int] = []
    while True:
        waiting = st.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            break
        for t in waiting:
            tid = st.get_trial_id_from_study_id_trial_number(sid, t.number)
            if not st.set_trial_state_values(tid, TrialState.RUNNING):
                continue  # another process claimed it first
            i = int(t.user_attrs[RUN_ATTR])
            st.set_trial_user_attr(tid, _WORKER_ATTR, me)
            if on_run is not None:
                on_run(i, names[i])
            try:
                if i < len(configs):
                    r = replay(trace, configs[i], label=labels[i], flow=flow)
                    payload, value = _encode(r), r.summary()["token_hit_rate"]
                else:
                    best = ideal(trace)
                    payload, value = json.dumps({"ideal": best}), best["token_hit_rate"]
            except BaseException:
                st.set_trial_state_values(tid, TrialState.FAIL)
                raise
            st.set_trial_user_attr(tid, _RESULT_ATTR, payload)
            st.set_trial_state_values(tid, TrialState.COMPLETE, values=[float(value)])
            ran.append(i)
            break  # look again: the list may be stale
    done = _gather(st, sid, study_name, len(runs), wait_s, poll_s)
    results = [_decode(done[i], trace, configs[i]) for i in range(len(configs))]
    figs: dict[str, Any] | None = None
    if need_ideal:
        figs = json.loads(done[len(configs)])["ideal"]
    elif with_ideal:
        from kvsim.sim.sweep import ideal_from

        for cfg, r in zip(configs, results, strict=True):
            figs = ideal_from(cfg, r)
            if figs is not None:
                break
    return SharedSweep(results=results, ideal=figs, jobs=1, ran=ran, runs=len(runs))


def _gather(st: Any, sid: int, name: str, n_runs: int, wait_s: float, poll_s: float
            ) -> dict[int, str]:
    """The stored result of every run, once all are complete."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + wait_s
    while True:
        trials = st.get_all_trials(sid, deepcopy=False)
        done = {int(t.user_attrs[RUN_ATTR]): t.user_attrs[_RESULT_ATTR] for t in trials
                if t.state == TrialState.COMPLETE and RUN_ATTR in t.user_attrs}
        if len(done) >= n_runs:
            return done
        failed = sorted({int(t.user_attrs[RUN_ATTR]) for t in trials
                         if t.state == TrialState.FAIL and RUN_ATTR in t.user_attrs} - set(done))
        if failed:
            raise RuntimeError(f"study {name!r}: run(s) {failed} failed (see the process "
                               "that ran them)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {name!r}: {n_runs - len(done)} run(s) still unfinished "
                               f"after {wait_s:.0f} s")
        time.sleep(poll_s)

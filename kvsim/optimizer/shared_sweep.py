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

A run that fails (an error in the replay) marks its trial ``FAIL`` and fails the sweep
in every process. A process that dies during a run (``kill -9``, a lost machine) stops
the heartbeat it records for its trial every ``heartbeat_s`` (Optuna's trial heartbeat,
timed by the database's clock): once it is ``grace_s`` old, the first process to look
marks the trial ``FAIL`` and enqueues the run again, and whoever is free runs it. A run
whose process dies ``max_retries + 1`` times fails the sweep. A process stopped by
Ctrl-C gives its run back at once.

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
import threading
import time
import warnings
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
_ERROR_ATTR = "kvsim_error"  # set on a run's trial before it is failed by an error
_ATTEMPT_ATTR = "kvsim_attempt"  # 0 for a run's first trial, +1 for each re-enqueue
_GIVEN_BACK_ATTR = "kvsim_given_back"  # a run its process gave back (Ctrl-C)
HEARTBEAT_S = 10
GRACE_S = 60.0
MAX_RETRIES = 3
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


def open_rdb(url: str, **rdb_options: Any) -> Any:
    """An Optuna RDB storage for ``url``; SQLite transactions start ``IMMEDIATE`` (the
    claim of a waiting trial is then atomic across processes) and wait up to 60 s for
    the database lock. ``rdb_options`` go to :class:`optuna.storages.RDBStorage`
    (e.g. ``heartbeat_interval``).

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
            with warnings.catch_warnings():  # heartbeats: experimental in Optuna (pinned)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if not sqlite:
                    return open_storage(url, **rdb_options)
                st = optuna.storages.RDBStorage(
                    url, **{"heartbeat_interval": None, **rdb_options},
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
                     heartbeat_s: int = HEARTBEAT_S, grace_s: float = GRACE_S,
                     max_retries: int = MAX_RETRIES,
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
        heartbeat_s: seconds between the heartbeats of the run this process runs
            (a whole number, >= 1).
        grace_s: how old a running run's last heartbeat may be before the run is taken
            as abandoned (its process died) and enqueued again.
        max_retries: how many times an abandoned run is enqueued again before the
            sweep fails.
        on_run: called with (run index, label) before each run this process claims.

    Returns:
        A :class:`SharedSweep`.

    Raises:
        ValueError: not an RDB URL, or the study holds another sweep.
        RuntimeError: a run failed (here or elsewhere, or was abandoned more than
            ``max_retries`` times), or runs still unfinished after ``wait_s``.
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
    if int(heartbeat_s) != heartbeat_s or heartbeat_s < 1 or grace_s <= heartbeat_s:
        raise ValueError(f"heartbeat_s must be a whole number >= 1 and grace_s above it, "
                         f"got {heartbeat_s!r} and {grace_s!r}")
    st = open_rdb(storage, heartbeat_interval=int(heartbeat_s), grace_period=int(grace_s),
                  heartbeat_stale_trial_callback=_Requeue(max_retries))
    sid = _join(st, study_name, sweep_identity(trace, configs, labels, flow), names, wait_s)
    study = optuna.load_study(study_name=study_name, storage=st)
    me = f"{socket.gethostname()}:{os.getpid()}"
    ran: list[int] = []

    def run(i: int) -> tuple[str, float]:
        if i < len(configs):
            r = replay(trace, configs[i], label=labels[i], flow=flow)
            return _encode(r), float(r.summary()["token_hit_rate"])
        best = ideal(trace)
        return json.dumps({"ideal": best}), float(best["token_hit_rate"])

    deadline = time.monotonic() + wait_s
    while True:
        with warnings.catch_warnings():  # experimental in Optuna (pinned)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # abandoned runs: failed, re-enqueued
        trials = st.get_all_trials(sid, deepcopy=False)
        claimed = next((t for t in trials if t.state == TrialState.WAITING
                        and _claim(st, sid, t.number)), None)
        if claimed is not None:
            i = _run_shared_trial(st, sid, study, claimed, me, names, run, on_run)
            if i is not None:
                ran.append(i)
            deadline = time.monotonic() + wait_s
            continue  # look again: the list may be stale
        found = _done(trials, study_name, len(runs), max_retries)
        if found is not None:
            done = found
            break
        if time.monotonic() > deadline:
            left = len(runs) - sum(t.state == TrialState.COMPLETE for t in trials)
            raise RuntimeError(f"study {study_name!r}: {left} run(s) still unfinished "
                               f"after {wait_s:.0f} s")
        time.sleep(poll_s)
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


def _claim(st: Any, sid: int, number: int) -> bool:
    """Whether this process claimed the (waiting) trial: False if another process
    claimed, or even finished, it since the list was read."""
    import optuna
    from optuna.trial import TrialState

    try:
        return bool(st.set_trial_state_values(
            st.get_trial_id_from_study_id_trial_number(sid, number), TrialState.RUNNING))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


class _Requeue:
    """Optuna's stale-trial callback: a run whose process died is enqueued again (with
    its attempt counted), up to ``max_retries`` times."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def __call__(self, study: Any, trial: Any) -> None:
        attempt = int(trial.user_attrs.get(_ATTEMPT_ATTR, 0)) + 1
        if RUN_ATTR in trial.user_attrs and attempt <= self.max_retries:
            _enqueue_again(study, trial, attempt)


def _enqueue_again(study: Any, trial: Any, attempt: int) -> None:
    study.enqueue_trial({}, user_attrs={
        RUN_ATTR: trial.user_attrs[RUN_ATTR], "label": trial.user_attrs.get("label"),
        _ATTEMPT_ATTR: attempt})


class _Heartbeat:
    """Records a running trial's heartbeat now and then every ``every_s`` seconds from a
    thread, until the ``with`` block ends (the replay releases the GIL between its
    pieces)."""

    def __init__(self, st: Any, trial_id: int, every_s: float) -> None:
        self.st, self.trial_id, self.every_s = st, trial_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kvsim-heartbeat",
                                        daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.st.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.st.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error: try again at the next beat
                continue


def _run_shared_trial(st: Any, sid: int, study: Any, trial: Any, me: str, names: list[str],
                      run: Callable[[int], tuple[str, float]],
                      on_run: Callable[[int, str], None] | None) -> int | None:
    """Run a claimed trial's run under a heartbeat and store its outcome; returns the
    run's index, or None if the trial was taken as abandoned meanwhile (its heartbeat
    was late past the grace period: the run is someone else's now). An error fails
    the trial (and so the sweep); Ctrl-C gives the run back to the study."""
    import optuna
    from optuna.trial import TrialState

    tid = st.get_trial_id_from_study_id_trial_number(sid, trial.number)
    i = int(trial.user_attrs[RUN_ATTR])
    with _Heartbeat(st, tid, st.get_heartbeat_interval()):
        st.set_trial_user_attr(tid, _WORKER_ATTR, me)
        try:
            if on_run is not None:
                on_run(i, names[i])
            payload, value = run(i)
        except Exception as e:
            st.set_trial_user_attr(tid, _ERROR_ATTR, f"{type(e).__name__}: {e}"[:1000])
            st.set_trial_state_values(tid, TrialState.FAIL)
            raise
        except BaseException:  # Ctrl-C, SystemExit: not the run's fault, given back
            st.set_trial_user_attr(tid, _GIVEN_BACK_ATTR, True)
            if st.set_trial_state_values(tid, TrialState.FAIL):
                _enqueue_again(study, trial, int(trial.user_attrs.get(_ATTEMPT_ATTR, 0)))
            raise
        try:
            st.set_trial_user_attr(tid, _RESULT_ATTR, payload)
            st.set_trial_state_values(tid, TrialState.COMPLETE, values=[value])
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
    return i


def _done(trials: Sequence[Any], name: str, n_runs: int, max_retries: int
          ) -> dict[int, str] | None:
    """The stored result of every run once all are complete, else None.

    Raises:
        RuntimeError: a run failed by an error, or was abandoned past ``max_retries``.
    """
    from optuna.trial import TrialState

    done = {int(t.user_attrs[RUN_ATTR]): t.user_attrs[_RESULT_ATTR] for t in trials
            if t.state == TrialState.COMPLETE and RUN_ATTR in t.user_attrs}
    if len(done) >= n_runs:
        return done
    failed = {int(t.user_attrs[RUN_ATTR]) for t in trials
              if t.state == TrialState.FAIL and RUN_ATTR in t.user_attrs
              and t.user_attrs.get(_ERROR_ATTR) is not None} - set(done)
    if failed:
        raise RuntimeError(f"study {name!r}: run(s) {sorted(failed)} failed (see the "
                           "process that ran them)")
    lost = {int(t.user_attrs[RUN_ATTR]) for t in trials
            if t.state == TrialState.FAIL and RUN_ATTR in t.user_attrs
            and int(t.user_attrs.get(_ATTEMPT_ATTR, 0)) >= max_retries
            and not t.user_attrs.get(_GIVEN_BACK_ATTR)} - set(done)
    if lost:
        raise RuntimeError(f"study {name!r}: run(s) {sorted(lost)} abandoned "
                           f"{max_retries + 1} times (their processes died mid-run)")
    return None

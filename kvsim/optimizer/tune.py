"""``kvsim tune``: an Optuna study over quotas, policies, parameters and watermarks.

Search space (built from the config and the policies' parameter metadata):

* ``share.<group>`` in ``[0, 1]`` per group (several groups only): the budget is split
  in proportion to the shares (largest remainders, at least one block per group);
* ``total_frac`` in ``[0.02, 1]`` (``cost`` and ``pareto`` only): the fraction of the
  budget bought at all; ``hit-rate`` always spends the whole budget;
* ``policy`` from ``policies``, and ``<policy>.<param>`` for every parameter field that
  declares ``low`` and ``high`` (``log`` and ``integer`` as declared; fields without a
  range, such as ``random_lru.seed``, keep their defaults);
* ``used_percentage`` in ``[used_low, 1]``; ``mode`` from ``modes``; ``batch_size`` (log
  scale, ``[1, 1024]``) when the mode is a rough one. One policy, watermark and mode
  apply to every group of a trial.

Each trial is a replay through the core (:func:`kvsim.sim.replay.replay` cut into
``steps`` pieces, in the spec's request flow) that reports the running
value after each piece, so a :class:`optuna.pruners.MedianPruner` stops poor trials
(single objectives only). Objectives: ``hit-rate`` (maximise the token hit rate),
``cost`` (minimise :meth:`~kvsim.optimizer.cost.CostModel.net_cost` summed over
groups) and ``pareto`` (maximise hit rate, minimise capacity in blocks, or storage
dollars with a cost model; NSGA-II, no pruning).

The exact ``lru`` split (:func:`kvsim.optimizer.split.exact_split`) is enqueued as the
first trial (warm start). With one worker a study is reproducible: the same seed gives
the same trials. Studies live in an Optuna storage: a journal file in the output
directory by default, or any RDB URL (``postgresql://...``) shared by workers on many
machines.

Example:
    >>> allocate(10, [1.0, 3.0]), allocate(5, [0.0, 0.0, 0.0])
    ((3, 7), (2, 2, 1))
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kvsim.config import KVSimConfig, atomic_write_text
from kvsim.core.spec import EvictionSpec
from kvsim.optimizer.cost import CostModel
from kvsim.trace.model import Trace

if TYPE_CHECKING:
    import optuna


__all__ = [
    "OBJECTIVES",
    "TuneSpec",
    "allocate",
    "chosen_trial",
    "create_study",
    "evaluate",
    "open_storage",
    "run_study",
    "trial_config",
]

OBJECTIVES = ("hit-rate", "cost", "pareto")
ROUGH_MODES = ("group_rough", "instance_rough")
STUDY_FILE = "study.json"
JOURNAL_FILE = "study.journal"


@dataclass(frozen=True)
class TuneSpec:
    """What to search and how.

    Attributes:
        budget: total blocks (for ``cost``/``pareto``: the most that may be bought).
        objective: ``hit-rate``, ``cost`` or ``pareto``.
        policies: policies to choose from.
        modes: eviction modes to choose from.
        used_low: lowest ``used_percentage`` tried (1.0: not searched).
        trials: number of trials (over all workers).
        seed: sampler seed (worker ``i`` uses ``seed + i``).
        steps: intermediate reports per trial (pieces of the trace).
        warm_start: enqueue the exact ``lru`` split as the first trial.
        split_step: grid step of the exact split (None: budget / 256).
        cost: the cost model (required for ``cost``; optional for ``pareto``).
        study_name: the study's name in the storage.
        storage: an RDB URL, or None for a journal file in the output directory.
        workers: local worker processes.
        flow: how requests reach the cache in a trial: ``combined`` (the replay
            contract's read+write request, fast) or ``client`` (the calls a client of
            ``kvsim serve`` makes, through the manager calls the server makes: predicts
            the live server for every policy and limit; ``server`` is an old name for it).
    """

    budget: int
    objective: str = "hit-rate"
    policies: tuple[str, ...] = ("lru",)
    modes: tuple[str, ...] = ("group_precise",)
    used_low: float = 0.8
    trials: int = 20
    seed: int = 0
    steps: int = 4
    warm_start: bool = True
    split_step: int | None = None
    cost: CostModel | None = None
    study_name: str = "kvsim"
    storage: str | None = None
    workers: int = 1
    flow: str = "combined"

    def __post_init__(self) -> None:
        from kvsim.core.policies import POLICIES
        from kvsim.core.spec import EVICTION_MODES

        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "cost" and self.cost is None:
            raise ValueError("objective 'cost' needs a cost model")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ValueError(f"unknown policies {bad}; known: {', '.join(sorted(POLICIES))}")
        badm = [m for m in self.modes if m not in EVICTION_MODES]
        if badm or not self.modes:
            raise ValueError(f"unknown modes {badm}; known: {', '.join(EVICTION_MODES)}")
        if self.flow == "server":  # the old name of the client flow
            object.__setattr__(self, "flow", "client")
        if self.flow not in ("combined", "client"):
            raise ValueError(f"flow must be 'combined' or 'client', got {self.flow!r}")
        if not 0.0 < self.used_low <= 1.0:
            raise ValueError(f"used_low must be in (0, 1], got {self.used_low}")
        if self.budget < 1 or self.trials < 1 or self.steps < 1 or self.workers < 1:
            raise ValueError("budget, trials, steps and workers must be positive")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the study and ``study.json``)."""
        d = dataclasses.asdict(self)
        d["cost"] = self.cost.to_dict() if self.cost else None
        d["policies"], d["modes"] = list(self.policies), list(self.modes)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TuneSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["cost"] = CostModel.from_dict(d["cost"]) if d.get("cost") else None
        d.setdefault("flow", "combined")
        d["policies"], d["modes"] = tuple(d["policies"]), tuple(d["modes"])
        return TuneSpec(**d)

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objective."""
        return {"hit-rate": ["maximize"], "cost": ["minimize"],
                "pareto": ["maximize", "minimize"]}[self.objective]


# ----------------------------------------------------------------------------- space
def allocate(total: int, shares: Sequence[float]) -> tuple[int, ...]:
    """Split ``total`` blocks in proportion to ``shares`` (largest remainders, >= 1 each).

    All-zero shares split evenly. Shares equal to ``quota / total`` give back the quotas.

    Example:
        >>> allocate(100, [0.25, 0.75]), allocate(7, [1, 1, 1])
        ((25, 75), (3, 2, 2))
    """
    g = len(shares)
    if total < g:
        raise ValueError(f"{total} blocks cannot give each of {g} groups one")
    w = np.asarray(shares, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones(g)
    raw = total * w / w.sum()
    q = np.floor(raw + 1e-9).astype(np.int64)
    q = np.maximum(q, 1)
    while q.sum() > total:  # the minimum of one block pushed past the total
        q[int(np.argmax(q))] -= 1
    rest = int(total - q.sum())
    order = np.argsort(-(raw - np.floor(raw + 1e-9)), kind="stable")
    for j in order[:rest]:
        q[j] += 1
    return tuple(int(x) for x in q)


def _suggest_params(trial: optuna.Trial, policy: str) -> dict[str, Any]:
    from kvsim.core.policies import POLICIES

    out: dict[str, Any] = {}
    for f in dataclasses.fields(POLICIES[policy].params_cls):
        md = f.metadata
        lo, hi = md.get("low"), md.get("high")
        if lo is None or hi is None:
            continue
        name = f"{policy}.{f.name}"
        if md.get("integer"):
            out[f.name] = trial.suggest_int(name, int(lo), int(hi), log=bool(md.get("log")))
        else:
            out[f.name] = trial.suggest_float(name, float(lo), float(hi),
                                              log=bool(md.get("log")))
    return out


def trial_config(spec: TuneSpec, base: KVSimConfig, trial: optuna.Trial) -> KVSimConfig:
    """The config a trial's suggested parameters describe."""
    names = [g.name for g in base.groups]
    total = spec.budget
    if spec.objective != "hit-rate":
        frac = trial.suggest_float("total_frac", 0.02, 1.0)
        total = max(len(names), round(float(spec.budget * frac)))
    if len(names) > 1:
        shares = [trial.suggest_float(f"share.{n}", 0.0, 1.0) for n in names]
    else:
        shares = [1.0]
    quotas = allocate(total, shares)
    policy = (trial.suggest_categorical("policy", list(spec.policies))
              if len(spec.policies) > 1 else spec.policies[0])
    params = _suggest_params(trial, policy)
    used = (trial.suggest_float("used_percentage", spec.used_low, 1.0)
            if spec.used_low < 1.0 else 1.0)
    mode = (trial.suggest_categorical("mode", list(spec.modes))
            if len(spec.modes) > 1 else spec.modes[0])
    batch = trial.suggest_int("batch_size", 1, 1024, log=True) if mode in ROUGH_MODES else 100
    groups = tuple(
        replace(g, quota_blocks=q, quota_bytes=0, used_percentage=used,
                eviction=EvictionSpec(policy, dict(params), mode, batch))
        for g, q in zip(base.groups, quotas, strict=True)
    )
    return replace(base, groups=groups)


def warm_start_params(spec: TuneSpec, split_quotas: Sequence[int],
                      names: Sequence[str]) -> dict[str, Any]:
    """Trial parameters that reproduce an exact split (lru, group_precise, watermark 1)."""
    from kvsim.core.policies import POLICIES

    p: dict[str, Any] = {}
    total = sum(split_quotas)
    if spec.objective != "hit-rate":
        p["total_frac"] = min(1.0, max(0.02, total / spec.budget))
    if len(names) > 1:
        for n, q in zip(names, split_quotas, strict=True):
            p[f"share.{n}"] = q / total
    policy = "lru" if "lru" in spec.policies else spec.policies[0]
    if len(spec.policies) > 1:
        p["policy"] = policy
    for f in dataclasses.fields(POLICIES[policy].params_cls):
        if f.metadata.get("low") is not None and f.metadata.get("high") is not None:
            p[f"{policy}.{f.name}"] = f.default
    if spec.used_low < 1.0:
        p["used_percentage"] = 1.0
    mode = "group_precise" if "group_precise" in spec.modes else spec.modes[0]
    if len(spec.modes) > 1:
        p["mode"] = mode
    if mode in ROUGH_MODES:
        p["batch_size"] = 100
    return p


def _duration_s(trace: Trace) -> float:
    return (int(trace.ts_ns[-1]) - int(trace.ts_ns[0])) / 1e9 if trace.n_requests else 0.0


def _tier(config: KVSimConfig, group_index: int) -> str | None:
    g = config.groups[group_index]
    types = {s.name: s.type for s in config.storages}
    return types.get(g.storage_candidates[0]) if g.storage_candidates else None


def storage_dollars(cost: CostModel, trace: Trace, config: KVSimConfig,
                    frac: float = 1.0) -> float:
    """Storage cost of the config's quotas over ``frac`` of the trace's span."""
    bs = config.replay.block_size or trace.block_size
    dur = _duration_s(trace) * frac
    return sum(cost.storage_cost(g.quota_blocks, bs, dur, _tier(config, i))
               for i, g in enumerate(config.groups))


def evaluate(spec: TuneSpec, trace: Trace, config: KVSimConfig,
             trial: optuna.Trial | None = None) -> dict[str, Any]:
    """Replay ``config``, reporting to ``trial`` (and pruning); return the figures."""
    import optuna

    def on_step(s: int, done: int, hits: int, inputs: int) -> None:
        if trial is None or spec.objective == "pareto" or s == spec.steps - 1:
            return
        frac = done / max(1, trace.n_requests)
        if spec.objective == "hit-rate":
            value = hits / inputs if inputs else 0.0
        else:
            assert spec.cost is not None
            value = storage_dollars(spec.cost, trace, config, frac) - spec.cost.savings(hits)
        trial.report(value, s)
        if trial.should_prune():
            raise optuna.TrialPruned()

    from kvsim.sim.replay import replay

    r = replay(trace, config, flow=spec.flow, steps=spec.steps, on_step=on_step)
    s = r.summary()
    out: dict[str, Any] = {
        "token_hit_rate": float(s["token_hit_rate"]), "hit_tokens": int(s["hit_tokens"]),
        "input_tokens": int(s["input_tokens"]),
        "capacity_blocks": int(sum(g.quota_blocks for g in config.groups)),
        "quotas": {g.name: int(g.quota_blocks) for g in config.groups},
        "elapsed_s": float(r.elapsed_s),
    }
    if spec.cost is not None:
        out["storage_cost"] = storage_dollars(spec.cost, trace, config)
        out["savings"] = spec.cost.savings(out["hit_tokens"])
        out["net_cost"] = out["storage_cost"] - out["savings"]
    return out


def _values(spec: TuneSpec, fig: dict[str, Any]) -> float | tuple[float, float]:
    if spec.objective == "hit-rate":
        return float(fig["token_hit_rate"])
    if spec.objective == "cost":
        return float(fig["net_cost"])
    second = fig["storage_cost"] if spec.cost is not None else float(fig["capacity_blocks"])
    return float(fig["token_hit_rate"]), float(second)


def make_objective(spec: TuneSpec, trace: Trace, base: KVSimConfig, worker: int = 0
                   ) -> Callable[[optuna.Trial], Any]:
    """The function a study optimises: build the config, replay, record, return."""

    def objective(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", worker)
        cfg = trial_config(spec, base, trial)
        fig = evaluate(spec, trace, cfg, trial)
        for k, v in fig.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("config", cfg.to_dict())
        return _values(spec, fig)

    return objective


# ----------------------------------------------------------------------------- storage
def open_storage(storage: str, **rdb_options: Any) -> Any:
    """An Optuna storage from an RDB URL or a journal file path.

    ``postgresql://`` URLs use psycopg (v3) when psycopg2 is not installed.
    ``rdb_options`` go to :class:`optuna.storages.RDBStorage` (an RDB URL only;
    ``heartbeat_interval`` defaults to None).
    """
    import optuna

    if "://" in storage:
        url = storage
        if url.startswith("postgresql://"):
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return optuna.storages.RDBStorage(url, **{"heartbeat_interval": None,
                                                  **rdb_options})
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(storage)))


def _sampler(spec: TuneSpec, worker: int = 0) -> Any:
    import optuna

    seed = spec.seed + worker
    if spec.objective == "pareto":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, spec.trials))


def _pruner(spec: TuneSpec) -> Any:
    import optuna

    if spec.objective == "pareto":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


def create_study(spec: TuneSpec, storage: str, *, worker: int = 0,
                 load_only: bool = False) -> optuna.Study:
    """Create (or load) the study ``spec.study_name`` in ``storage``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage)
    if load_only:
        return optuna.load_study(study_name=spec.study_name, storage=st,
                                 sampler=_sampler(spec, worker), pruner=_pruner(spec))
    return optuna.create_study(study_name=spec.study_name, storage=st,
                               directions=list(spec.directions),  # type: ignore[arg-type]
                               sampler=_sampler(spec, worker),
                               pruner=_pruner(spec), load_if_exists=True)


def _worker(spec: TuneSpec, storage: str, trace: Trace, base: KVSimConfig, worker: int,
            n: int) -> None:
    study = create_study(spec, storage, worker=worker, load_only=True)
    study.optimize(make_objective(spec, trace, base, worker), n_trials=n, gc_after_trial=False)


def chosen_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial to export: the best one; for a Pareto study, the front's highest hit
    rate (ties: the least capacity or storage cost)."""
    import optuna

    if len(study.directions) == 1:
        return study.best_trial
    front = [t for t in study.best_trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(front, key=lambda t: (t.values[0], -t.values[1], -t.number))


@dataclass
class StudyOutcome:
    """What :func:`run_study` produced."""

    out_dir: Path
    study: Any
    best: Any
    split: Any
    elapsed_s: float
    files: list[Path] = field(default_factory=list)


def run_study(spec: TuneSpec, trace: Trace, base: KVSimConfig, out_dir: Path, *,
              trace_source: str = "", progress: bool = False,
              console: Any = None) -> StudyOutcome:
    """Run the study and write the study directory.

    A study of the same name already in the storage is resumed (``spec.trials`` more
    trials) when its search is the same, and refused when it differs.

    Writes ``study.json`` (storage, name, spec, chosen trial), ``trials.csv`` and
    ``trials.parquet``, ``best_config.yaml`` (a config ``kvsim replay`` runs as is),
    ``split.json`` (the exact split and the per-group curves) and, without
    ``spec.storage``, the journal ``study.journal``.
    """
    import multiprocessing as mp

    from kvsim.optimizer.split import exact_split
    from kvsim.sim.replay import check_flow

    check_flow(base, spec.flow)  # before any trial (or file) is made
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = spec.storage or str(out_dir / JOURNAL_FILE)
    if not base.groups:
        raise ValueError(f"{base.source}: the config has no instance groups")
    split = exact_split(trace, base, spec.budget, step=spec.split_step)
    atomic_write_text(out_dir / "split.json", json.dumps(split.to_dict(), indent=1))
    study = create_study(spec, storage)
    prev = study.user_attrs.get("spec")
    if prev is not None and study.trials:
        keys = ("budget", "objective", "policies", "modes", "used_low", "cost", "flow")
        changed = [k for k in keys if prev.get(k) != spec.to_dict()[k]]
        if changed or study.user_attrs.get("base_config") != base.to_dict():
            raise ValueError(
                f"study {spec.study_name!r} in {storage} already has {len(study.trials)} "
                f"trials of a different search ({', '.join(changed) or 'config'} differ): use "
                "another --study-name or --out (the same search is resumed)")
    study.set_user_attr("spec", spec.to_dict())
    study.set_user_attr("base_config", base.to_dict())
    study.set_user_attr("trace", trace_source or trace.source)
    study.set_user_attr("block_size", int(base.replay.block_size or trace.block_size))
    study.set_user_attr("split", {"quotas": dict(zip(split.groups, split.quotas, strict=True)),
                                  "token_hit_rate": split.token_hit_rate})
    if spec.warm_start and not study.trials:
        study.enqueue_trial(warm_start_params(spec, split.quotas, split.groups),
                            user_attrs={"warm_start": "exact_split"})
    shares = [spec.trials // spec.workers + (1 if i < spec.trials % spec.workers else 0)
              for i in range(spec.workers)]
    done0 = len(study.trials)
    bar = _progress(console, spec.trials) if progress else None
    try:
        if spec.workers == 1:
            cb = [] if bar is None else [lambda s, t: bar[0].update(bar[1], advance=1)]
            study.optimize(make_objective(spec, trace, base), n_trials=spec.trials,
                           callbacks=cb, gc_after_trial=False)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() \
                else mp.get_context()
            procs = [ctx.Process(target=_worker, args=(spec, storage, trace, base, i, n))
                     for i, n in enumerate(shares) if n > 0]
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                time.sleep(0.5)
                if bar is not None:
                    bar[0].update(bar[1], completed=len(study.get_trials(deepcopy=False))
                                  - done0)
            for p in procs:
                p.join()
            bad = [p.exitcode for p in procs if p.exitcode]
            if bad:
                raise RuntimeError(f"tune worker(s) failed with exit codes {bad}")
    finally:
        if bar is not None:
            bar[0].stop()
    best = chosen_trial(study)
    files = write_study_dir(out_dir, study, spec, storage)
    return StudyOutcome(out_dir, study, best, split, time.perf_counter() - t_start, files)


def _progress(console: Any, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=console, transient=True)
    p.start()
    return p, p.add_task("trials", total=total)


def trials_frame(study: optuna.Study) -> Any:
    """The trials as a pandas frame (nested attributes as JSON text)."""
    df = study.trials_dataframe()
    for col in ("user_attrs_config", "user_attrs_quotas"):
        if col in df.columns:
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, dict) else None)
    for col in df.columns:
        if str(df[col].dtype).startswith("timedelta"):
            df[col] = df[col].dt.total_seconds()
    return df


def write_study_dir(out_dir: Path, study: optuna.Study, spec: TuneSpec,
                    storage: str) -> list[Path]:
    """Write the trials table, the chosen config and ``study.json``; return the paths."""
    best = chosen_trial(study)
    df = trials_frame(study)
    files = []
    tmp = out_dir / ".trials.parquet.tmp"
    df.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "trials.parquet")
    atomic_write_text(out_dir / "trials.csv", df.to_csv(index=False))
    files += [out_dir / "trials.parquet", out_dir / "trials.csv"]
    cfg = KVSimConfig.from_dict(best.user_attrs["config"], source="best_config.yaml")
    cfg.save(out_dir / "best_config.yaml")
    files.append(out_dir / "best_config.yaml")
    local = not spec.storage
    meta = {
        "study_name": spec.study_name,
        "storage": JOURNAL_FILE if local else redact_url(str(spec.storage)),
        "storage_is_local_journal": local,
        "objective": spec.objective,
        "directions": spec.directions,
        "spec": spec.to_dict(),
        "trace": study.user_attrs.get("trace"),
        "n_trials": len(study.trials),
        "chosen_trial": best.number,
        "chosen_values": list(best.values),
        "predicted": {k: best.user_attrs.get(k) for k in (
            "token_hit_rate", "hit_tokens", "input_tokens", "capacity_blocks", "quotas",
            "storage_cost", "savings", "net_cost")},
        "split": study.user_attrs.get("split"),
    }
    atomic_write_text(out_dir / STUDY_FILE, json.dumps(meta, indent=1))
    files.append(out_dir / STUDY_FILE)
    return files


def redact_url(url: str) -> str:
    """``url`` without its password (libpq then reads ``PGPASSWORD`` or ``~/.pgpass``).

    Example:
        >>> redact_url("postgresql://u:secret@db:5432/optuna")
        'postgresql://u@db:5432/optuna'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def load_study_dir(target: str | Path, study_name: str | None = None
                   ) -> tuple[optuna.Study, dict[str, Any]]:
    """The study of a study directory (``study.json``) or of a storage URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = Path(str(target))
    if p.is_dir():
        meta_path = p / STUDY_FILE
        if not meta_path.is_file():
            raise ValueError(f"{p}: not a study directory (no {STUDY_FILE})")
        meta = json.loads(meta_path.read_text())
        storage = (str(p / meta["storage"]) if meta.get("storage_is_local_journal")
                   else meta["storage"])
        name = study_name or meta["study_name"]
    else:
        storage, name, meta = str(target), study_name or "kvsim", {}
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return study, meta

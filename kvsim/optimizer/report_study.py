"""``kvsim report``: a study directory as a Markdown page with charts.

:func:`write_report` writes ``<reports>/<name>/index.md`` and PNGs:

* ``curves.png``: exact ``lru`` token hit rate against quota per group (from the
  study's ``split.json``), with the exact split's and the chosen config's quotas marked;
* ``policies.png``: the best trial value per policy (and per eviction mode);
* ``pareto.png``: every trial and the Pareto front (multi-objective studies only);
* ``importances.png``: Optuna's parameter importances (PED-ANOVA) of the objective;

and the page lists the chosen config, its predicted hit rate and cost, and the exact
split against the even split of the same budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvsim.config import atomic_write_text

__all__ = ["write_report"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)


def _curves_png(split: dict[str, Any], chosen_quotas: dict[str, int], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    grid = split["grid"]
    for i, g in enumerate(split["groups"]):
        name = g["name"]
        den = g["input_tokens"] or 1
        rates = [h / den for h in split["curves"][name]]
        (line,) = ax.plot(grid, rates, label=f"{name} (exact lru)", color=f"C{i}")
        ax.axvline(g["quota_blocks"], color=line.get_color(), ls="--", lw=1)
        if name in chosen_quotas:
            ax.axvline(chosen_quotas[name], color=line.get_color(), ls=":", lw=1.5)
    ax.set_xlabel("group quota (blocks)")
    ax.set_ylabel("token hit rate of the group")
    ax.set_title("capacity curves per group (dashed: exact split, dotted: chosen config)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def _policies_png(df: Any, value_col: str, maximize: bool, path: Path) -> bool:
    plt = _plt()
    done = df[df["state"] == "COMPLETE"]
    if "params_policy" not in done.columns and "user_attrs_config" not in done.columns:
        return False
    pol = done["user_attrs_config"].map(
        lambda c: json.loads(c)["instance_groups"][0]["eviction"]["policy"])
    mode = done["user_attrs_config"].map(
        lambda c: json.loads(c)["instance_groups"][0]["eviction"]["mode"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], pol, "policy"), (axes[1], mode, "eviction mode")):
        agg = done[value_col].groupby(key)
        best = agg.max() if maximize else agg.min()
        counts = agg.count()
        ax.bar(range(len(best)), best.values, color="C0")
        ax.set_xticks(range(len(best)),
                      [f"{k}\n({counts[k]} trials)" for k in best.index], fontsize=8)
        what = "token hit rate" if maximize else "net cost"
        ax.set_title(f"best {what} by {title} (completed trials)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("token hit rate" if maximize else "net cost ($)")
    _save(fig, path)
    return True


def _pareto_png(study: Any, path: Path, second: str) -> None:
    import optuna

    plt = _plt()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = {t.number for t in study.best_trials}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [t.values[1] for t in done if t.number not in front]
    ys = [t.values[0] for t in done if t.number not in front]
    ax.scatter(xs, ys, s=14, color="0.6", label="trials")
    f = sorted((t for t in done if t.number in front), key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in f], [t.values[0] for t in f], "o-", color="C3",
            label="Pareto front")
    ax.set_xlabel(second)
    ax.set_ylabel("token hit rate")
    ax.set_title("hit rate against " + second)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def _importances_png(study: Any, path: Path) -> dict[str, float]:
    import optuna

    plt = _plt()
    import warnings

    # PED-ANOVA (Watanabe et al., 2023) needs no scikit-learn, unlike fANOVA; it ranks
    # parameters by how they reach *low* target values, so a maximised value is negated
    sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = optuna.importance.get_param_importances(
            study, target=lambda t: sign * t.values[0],
            evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="C2")
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    ax.set_title("parameter importances" + (" (hit rate)" if len(study.directions) > 1 else ""))
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return dict(imp)


def write_report(study_dir: str | Path, reports_root: str | Path = "reports",
                 name: str | None = None) -> Path:
    """Write ``<reports_root>/<name>/index.md`` and its PNGs; return the directory.

    Args:
        study_dir: a directory written by ``kvsim tune``.
        reports_root: parent of the report directory.
        name: report name (default: the study directory's name).
    """
    from kvsim.optimizer.tune import chosen_trial, load_study_dir, trials_frame

    study_dir = Path(study_dir)
    study, meta = load_study_dir(study_dir)
    out = Path(reports_root) / (name or study_dir.resolve().name)
    out.mkdir(parents=True, exist_ok=True)
    split = json.loads((study_dir / "split.json").read_text())
    best = chosen_trial(study)
    quotas = best.user_attrs.get("quotas", {})
    lines = [f"# Study report: {meta.get('study_name', study.study_name)}", ""]
    lines += [f"- trace: `{meta.get('trace')}`", f"- objective: `{meta.get('objective')}`, "
              f"{len(study.trials)} trials "
              f"({sum(t.state.name == 'PRUNED' for t in study.trials)} pruned)",
              f"- budget: {split['budget']:,} blocks", ""]
    lines += ["## Chosen configuration", "",
              f"Trial {best.number}: predicted token hit rate "
              f"**{best.user_attrs['token_hit_rate']:.4f}** "
              f"({best.user_attrs['hit_tokens']:,} of {best.user_attrs['input_tokens']:,} "
              f"tokens) at {best.user_attrs['capacity_blocks']:,} blocks."]
    if "net_cost" in best.user_attrs:
        lines += ["", f"Cost over the trace: storage ${best.user_attrs['storage_cost']:.4f}, "
                  f"GPU savings ${best.user_attrs['savings']:.4f}, net "
                  f"**${best.user_attrs['net_cost']:.4f}**."]
    lines += ["", "```yaml", (study_dir / "best_config.yaml").read_text().rstrip(), "```", ""]
    lines += ["## Exact split vs even split", "",
              "| group | exact quota | exact hit tokens | even quota | even hit tokens | "
              "chosen quota |", "|---|---:|---:|---:|---:|---:|"]
    for g in split["groups"]:
        lines.append(f"| {g['name']} | {g['quota_blocks']:,} | {g['hit_tokens']:,} | "
                     f"{g['even_quota_blocks']:,} | {g['even_hit_tokens']:,} | "
                     f"{quotas.get(g['name'], 0):,} |")
    lines += ["", f"Exact lru split: token hit rate {split['token_hit_rate']:.4f}; even split "
              f"{split['even_token_hit_rate']:.4f} (step {split['step']} blocks).", ""]
    lines += ["## Capacity curves", "", "![curves](curves.png)", ""]
    _curves_png(split, quotas, out / "curves.png")
    df = trials_frame(study)
    multi = len(study.directions) > 1
    value_col = "values_0" if multi else "value"
    maximize = study.directions[0].name == "MAXIMIZE"
    if _policies_png(df, value_col, maximize, out / "policies.png"):
        lines += ["## Policy comparison", "", "![policies](policies.png)", ""]
    if multi:
        spec = meta.get("spec") or {}
        second = "storage cost ($)" if spec.get("cost") else "capacity (blocks)"
        _pareto_png(study, out / "pareto.png", second)
        lines += ["## Pareto front", "", "![pareto](pareto.png)", ""]
    else:
        lines += ["## Pareto front", "", "Single-objective study: no Pareto front "
                  "(run `kvsim tune --objective pareto`).", ""]
    try:
        imp = _importances_png(study, out / "importances.png")
        lines += ["## Parameter importances", "", "![importances](importances.png)", "",
                  "| parameter | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
        lines.append("")
    except (RuntimeError, ValueError, ZeroDivisionError, ImportError) as e:
        lines += ["## Parameter importances", "", f"Not available: {e}", ""]
    atomic_write_text(out / "index.md", "\n".join(lines) + "\n")
    (out / "index.md").chmod(0o644)  # the temp file's 0600 would stick
    return out

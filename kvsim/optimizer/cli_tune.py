"""``kvsim tune``, ``kvsim export`` and ``kvsim report``: the optimizer's commands.

Only click is imported at module level (``kvsim.cli`` imports this module to mount the
commands); Optuna, the simulator and plotting load inside the commands.

Example:
    >>> from click.testing import CliRunner
    >>> "--objective" in CliRunner().invoke(tune_cmd, ["--help"]).output
    True
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from kvsim.cli_options import trace_options

__all__ = ["export_cmd", "report_cmd", "tune_cmd"]


def _cost_model(model: str | None, prices: tuple[str, ...], default_tier: str,
                gpu_price: float, prefill_tps: float) -> Any:
    from kvsim.optimizer.cost import CostModel, GpuPrice, ModelShape, StoragePrice

    per: dict[str, float] = {}
    for item in prices:
        tier, sep, value = item.partition("=")
        try:
            per[tier.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected TIER=DOLLARS_PER_GB_HOUR",
                                     param_hint="--storage-price") from None
        if not sep:
            raise click.BadParameter(f"{item!r}: expected TIER=DOLLARS_PER_GB_HOUR",
                                     param_hint="--storage-price")
    try:
        shape = ModelShape.preset(model or "llama3-8b")
    except KeyError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--model") from None
    return CostModel(shape, StoragePrice(per or {default_tier: 0.005}, default_tier),
                     GpuPrice(prefill_tps, gpu_price))


@click.command("tune")
@click.argument("config_path", metavar="CONFIG",
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@trace_options()
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Total blocks over all groups (default: the sum of the config's quotas).")
@click.option("--objective", type=click.Choice(["hit-rate", "cost", "pareto"]),
              default="hit-rate", show_default=True,
              help="Maximise the token hit rate at the budget, minimise the net cost, or "
                   "both hit rate and capacity/cost (NSGA-II).")
@click.option("--policies", default="lru", show_default=True, metavar="P[,P...]",
              help="Policies to choose from.")
@click.option("--modes", default="group_precise", show_default=True, metavar="M[,M...]",
              help="Eviction modes to choose from (rough modes also search batch_size).")
@click.option("--used-low", type=click.FloatRange(0, 1, min_open=True), default=0.8,
              show_default=True, help="Lowest used_percentage tried (1 = not searched).")
@click.option("--trials", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--flow", type=click.Choice(["combined", "client", "server"]),
              default="combined", show_default=True,
              help="combined: the replay contract's read+write request; client (old name: "
                   "server): a read then a write per request, as clients of `kvsim serve` "
                   "do, every server rule applied (predicts the live server).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=4, show_default=True,
              help="Intermediate hit-rate reports per trial (for the pruner).")
@click.option("--split-step", type=click.IntRange(min=1), default=None,
              help="Grid step (blocks) of the exact split (default: budget / 256).")
@click.option("--no-warm-start", is_flag=True, help="Do not enqueue the exact split.")
@click.option("--split-only", is_flag=True,
              help="Only compute and print the exact lru split (no study).")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna RDB storage shared by workers (e.g. postgresql://u@host/db); "
                   "default: a journal file in --out.")
@click.option("--study-name", default="kvsim", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes sharing the study.")
@click.option("--model", default=None, metavar="PRESET",
              help="Model shape of the cost model (llama3-8b, llama3-70b, qwen2.5-7b, "
                   "deepseek-v3; default llama3-8b).")
@click.option("--storage-price", "prices", multiple=True, metavar="TIER=USD",
              help="Dollars per GB-hour of a storage tier (repeatable; default memory=0.005).")
@click.option("--default-tier", default="memory", show_default=True,
              help="Tier of groups without storage candidates.")
@click.option("--gpu-price", type=float, default=2.0, show_default=True,
              help="Dollars per GPU-hour.")
@click.option("--prefill-tps", type=float, default=10000.0, show_default=True,
              help="Prefill tokens per second of one GPU.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kvsim-tune"), show_default=True, help="Study directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON document.")
def tune_cmd(config_path: Path, trace: Path | None, fmt: str, block_size: int | None,
             tail: str, chain: str, strict: bool, instance: str | None, limit: int | None,
             budget: int | None, objective: str, policies: str, modes: str, used_low: float,
             trials: int, flow: str, seed: int, steps: int, split_step: int | None,
             no_warm_start: bool, split_only: bool, storage: str | None, study_name: str,
             workers: int,
             model: str | None, prices: tuple[str, ...], default_tier: str, gpu_price: float,
             prefill_tps: float, out_dir: Path, as_json: bool) -> None:
    """Tune quotas, policy, parameters and watermarks of CONFIG on TRACE (default: the
    shipped sample) with an Optuna study; write the study directory (--out).

    \b
    Examples:
      kvsim tune cfg.yaml t.parquet --budget 20000 --trials 50
      kvsim tune cfg.yaml t.parquet --budget 20000 --split-only
      kvsim tune cfg.yaml t.parquet --objective pareto --policies lru,slru,fifo
      kvsim tune cfg.yaml t.parquet --storage postgresql://u@db/optuna --workers 4
    """
    from kvsim.cli import _clean_errors, _err_console, _read_trace, sample_trace_path

    err = _err_console()
    if trace is None:
        trace = sample_trace_path()
    with _clean_errors(err):
        t_start = time.perf_counter()
        from kvsim._startup import prepare_numba
        from kvsim.config import KVSimConfig

        base = KVSimConfig.load(config_path)
        if budget is None:
            if not base.groups or any(g.quota_blocks <= 0 for g in base.groups):
                raise click.ClickException("--budget is needed: the config's groups do not all "
                                           "have a block quota")
            budget = sum(g.quota_blocks for g in base.groups)
        t, _ = _read_trace(trace, fmt, err=err, block_size=block_size, tail=tail, chain=chain,
                           strict=strict, instance=instance, limit=limit)
        prepare_numba()
        cost = (_cost_model(model, prices, default_tier, gpu_price, prefill_tps)
                if objective == "cost" or model or prices else None)
        if split_only:
            from kvsim.optimizer.split import exact_split

            with err.status("exact split (one curve pass per group)", spinner="dots"):
                s = exact_split(t, base, budget, step=split_step)
            from kvsim.config import atomic_write_text

            atomic_write_text(out_dir / "split.json", json.dumps(s.to_dict(), indent=1))
            s.apply(base).save(out_dir / "split_config.yaml")
            if as_json:
                click.echo(json.dumps(s.to_dict()))
            else:
                _print_split(s)
            err.print(f"wrote {out_dir / 'split.json'}, {out_dir / 'split_config.yaml'}; done "
                      f"in {time.perf_counter() - t_start:.2f}s", highlight=False, style="dim")
            return
        from kvsim.optimizer.tune import TuneSpec, run_study

        spec = TuneSpec(
            budget=budget, objective=objective,
            policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            used_low=used_low, trials=trials, seed=seed, steps=steps,
            warm_start=not no_warm_start, split_step=split_step, cost=cost,
            study_name=study_name, storage=storage, workers=workers, flow=flow,
        )
        o = run_study(spec, t, base, out_dir, trace_source=str(trace), progress=not as_json,
                      console=err)
        b = o.best
        doc = {"out": str(out_dir), "trials": len(o.study.trials),
               "pruned": sum(x.state.name == "PRUNED" for x in o.study.trials),
               "chosen_trial": b.number, "values": list(b.values),
               "token_hit_rate": b.user_attrs["token_hit_rate"],
               "quotas": b.user_attrs["quotas"], "params": b.params,
               "split_token_hit_rate": o.split.token_hit_rate,
               "even_token_hit_rate": o.split.even_token_hit_rate,
               "net_cost": b.user_attrs.get("net_cost"), "elapsed_s": o.elapsed_s}
        if as_json:
            click.echo(json.dumps(doc))
            return
        _print_split(o.split)
        from rich.console import Console

        out = Console()
        out.print(f"study: {doc['trials']} trials ({doc['pruned']} pruned); chosen trial "
                  f"{b.number}: token hit rate {doc['token_hit_rate']:.4f}, quotas "
                  f"{doc['quotas']}" + (f", net cost ${doc['net_cost']:.4f}"
                                        if doc["net_cost"] is not None else ""),
                  highlight=False, soft_wrap=True)
        out.print(f"params: {json.dumps(b.params)}", highlight=False, soft_wrap=True)
        err.print(f"wrote {', '.join(str(p) for p in o.files)}; done in {o.elapsed_s:.2f}s",
                  highlight=False, soft_wrap=True, style="dim")


def _print_split(s: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"exact lru split of {s.budget:,} blocks (step {s.step})")
    for c in ("group", "quota", "hit rate", "even quota", "even hit rate"):
        tab.add_column(c, justify="left" if c == "group" else "right")
    for n, q, h, i, eq, eh in zip(s.groups, s.quotas, s.hit_tokens, s.input_tokens,
                                  s.even_quotas, s.even_hit_tokens, strict=True):
        tab.add_row(n, f"{q:,}", f"{h / i:.4f}" if i else "-", f"{eq:,}",
                    f"{eh / i:.4f}" if i else "-")
    tab.add_row("all", f"{sum(s.quotas):,}", f"{s.token_hit_rate:.4f}",
                f"{sum(s.even_quotas):,}", f"{s.even_token_hit_rate:.4f}", style="bold")
    Console().print(tab)


@click.command("export")
@click.argument("target", metavar="STUDY_DIR_OR_STORAGE")
@click.option("--study-name", default=None, help="Study in a storage URL (default kvsim).")
@click.option("--trial", type=int, default=None,
              help="Export this trial (default: the best; Pareto: the highest hit rate).")
@click.option("--block-bytes", type=click.IntRange(min=1), default=None,
              help="Write block quotas in bytes (blocks x this) for a manager without "
                   "capacity_blocks (stock KVCM); default: capacity_blocks.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output directory (default: STUDY_DIR/export, or "
                                 "kvsim-export for a URL).")
def export_cmd(target: str, study_name: str | None, trial: int | None,
               block_bytes: int | None, out_dir: Path | None) -> None:
    """Write a study's chosen config as a kvsim config (config.yaml) and as admin-API
    updateInstanceGroup bodies (instance_groups.json).

    \b
    Examples:
      kvsim export kvsim-tune
      kvsim export postgresql://u@db/optuna --study-name prod --out exported
    """
    from kvsim.cli import _clean_errors, _err_console

    err = _err_console()
    if out_dir is None:
        out_dir = Path(target) / "export" if Path(target).is_dir() else Path("kvsim-export")
    with _clean_errors(err):
        from kvsim.optimizer.export import export_study

        r = export_study(target, out_dir, study_name=study_name, trial=trial,
                         block_bytes=block_bytes or 0)
        click.echo(json.dumps({"trial": r["trial"], "predicted": r["predicted"],
                               "files": [str(p) for p in r["files"]]}))


@click.command("report")
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--name", default=None, help="Report name (default: the study directory's).")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports"), show_default=True)
def report_cmd(study_dir: Path, name: str | None, reports_dir: Path) -> None:
    """Write reports/<name>/ (index.md and PNGs) for a study directory."""
    from kvsim.cli import _clean_errors, _err_console

    err = _err_console()
    with _clean_errors(err):
        from kvsim.optimizer.report_study import write_report

        out = write_report(study_dir, reports_dir, name)
        click.echo(str(out / "index.md"))

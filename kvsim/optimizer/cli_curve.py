"""``kvsim curve``: an exact LRU hit-rate-vs-capacity curve in one pass over a trace.

Only click and rich are imported here; numpy, numba, polars and matplotlib are
imported inside the command, so ``kvsim --help`` stays fast.

Example:
    >>> from click.testing import CliRunner
    >>> "--capacities" in CliRunner().invoke(curve_cmd, ["--help"]).output
    True
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from kvsim.cli_options import trace_options

if TYPE_CHECKING:
    from collections.abc import Callable

    import polars as pl

__all__ = ["curve_cmd"]

CURVE_NAME = "curve.parquet"
PLOT_NAME = "curve.png"
DEFAULT_POINTS = 40


class _Deferred(click.ParamType):
    """A parameter type built from :mod:`kvsim.cli` at first use.

    ``kvsim.cli`` imports this module at its end (to register the command), so
    this module cannot import ``kvsim.cli`` at its top: whichever of the two is
    imported first, the other would be half-initialised.
    """

    def __init__(self, name: str, factory: Callable[[], click.ParamType]) -> None:
        self.name = name
        self._factory = factory

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        return self._factory().convert(value, param, ctx)


def _int_list() -> click.ParamType:
    from kvsim.cli import _IntList

    return _IntList()


@click.command("curve")
@trace_options()
@click.option("--capacities", type=_Deferred("N[,N...]", _int_list), default=None,
              help="Capacities in blocks, a comma list (0 = unbounded; e.g. 1000,5859,20k).")
@click.option("--auto", "auto_points", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"N log-spaced capacities from 1 block to the unique blocks "
                   f"(default: {DEFAULT_POINTS} when --capacities is not given).")
@click.option("--json", "as_json", is_flag=True,
              help="Print only a JSON list of {capacity, hit_blocks, hit_tokens, "
                   "block_hit_rate, token_hit_rate}.")
@click.option("--from-facts", "from_facts", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Project from a facts file (see --save-facts), not a trace.")
@click.option("--save-facts", "save_facts", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the capacity-independent facts (.npz).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kvsim-out"), show_default=True,
              help=f"Directory for {CURVE_NAME} and {PLOT_NAME}.")
@click.option("--no-out", is_flag=True, help="Write no curve files.")
@click.option("--sample", "sample_rate", type=click.FloatRange(0, 1, min_open=True),
              default=1.0, show_default=True, metavar="RATE",
              help="Spatial key sampling (SHARDS) for big traces: keep this fraction of "
                   "keys (plus every chain root); the curve becomes an estimate.")
@click.option("--sample-seed", type=int, default=0, show_default=True,
              help="Which keys a --sample keeps.")
@click.option("--read-rows", "read_rows", type=click.Choice(["refuse", "peek"]),
              default="refuse", show_default=True,
              help="Read-only rows (a server's event log): refuse them, or peek (measure "
                   "a read on the stack, touch nothing: the write that follows it "
                   "refreshes its keys). The server's capacity advisor uses peek.")
def curve_cmd(
    trace: Path | None, fmt: str, block_size: int | None, tail: str, chain: str, strict: bool,
    instance: str | None, limit: int | None, capacities: list[int] | None,
    auto_points: int | None, as_json: bool, from_facts: Path | None, save_facts: Path | None,
    out_dir: Path, no_out: bool, sample_rate: float, sample_seed: int, read_rows: str,
) -> None:  # fmt: skip
    """Exact LRU hit rates at many capacities from one pass over TRACE.

    Policy lru, prefix match, one cache shared by all instances (the replay
    contract); the numbers equal ``kvsim replay --capacity-blocks C`` to the block.

    \b
    Examples:
      kvsim curve t.jsonl --auto 40
      kvsim curve t.jsonl --capacities 1000,5859,20000 --json --no-out
      kvsim curve t.jsonl --save-facts t.facts.npz --no-out
      kvsim curve --from-facts t.facts.npz --capacities 97656
      kvsim curve big.parquet --sample 0.01 --auto 40
      kvsim curve DATA/events.jsonl --format kvcm-events --read-rows peek --auto 40
    """
    from kvsim.cli import _check_out_dir, _clean_errors, _read_trace

    err = Console(stderr=True)
    if (trace is None) == (from_facts is None):
        raise click.UsageError("give a TRACE or --from-facts FILE (exactly one)")
    if capacities is not None and auto_points is not None:
        raise click.UsageError("give one of --capacities, --auto")
    if not no_out:
        _check_out_dir(out_dir, [CURVE_NAME, PLOT_NAME])
    with _clean_errors(err):
        t_start = time.perf_counter()
        from kvsim._startup import prepare_numba

        prepare_numba()
        from kvsim.optimizer.curve import CurveFacts, auto_capacities, curve_facts

        if from_facts is not None:
            facts = CurveFacts.load(from_facts)
            name = from_facts.name
        else:
            assert trace is not None
            t, _fmt = _read_trace(trace, fmt, err=err, block_size=block_size, tail=tail,
                                  chain=chain, strict=strict, instance=instance, limit=limit)
            with err.status(f"one pass over {t.n_keys:,} block accesses", spinner="dots"):
                facts = curve_facts(t, sample_rate=sample_rate, sample_seed=sample_seed,
                                    read_rows=read_rows)
            name = trace.name
        if save_facts is not None:
            facts.save(save_facts)
            err.print(f"wrote {save_facts}", highlight=False, soft_wrap=True)
        caps = capacities if capacities is not None else auto_capacities(
            facts.unique_blocks, auto_points or DEFAULT_POINTS)
        df = facts.curve(caps)
        kind = (f"LRU curve estimated from a {facts.sample_rate:g} key sample"
                if facts.sampled else "exact LRU curve")
        ideal = facts.curve([0]).row(0, named=True)
        cols = ["capacity", "hit_blocks", "hit_tokens", "block_hit_rate", "token_hit_rate"]
        if as_json:
            click.echo(json.dumps(df.select(cols).to_dicts()))
        else:
            _print_table(df, ideal, f"{name}: {facts.n_requests:,} requests, "
                                    f"{int(facts.read_blocks.sum()):,} block reads, "
                                    f"{facts.unique_blocks:,} unique blocks, "
                                    f"block size {facts.block_size}"
                                    + (f" ({kind})" if facts.sampled else ""))
        if not no_out:
            written = _write_outputs(out_dir, df, ideal, title=f"{name}: {kind}")
            err.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False,
                      soft_wrap=True)
        if not as_json:
            err.print(f"done in {time.perf_counter() - t_start:.2f}s", highlight=False,
                      style="dim")


def _print_table(df: pl.DataFrame, ideal: dict[str, Any], title: str) -> None:
    from rich.table import Table

    out = Console()
    table = Table(title=title, title_justify="left")
    for col in ("capacity (blocks)", "hit_blocks", "hit_tokens", "block_hit_rate",
                "token_hit_rate"):
        table.add_column(col, justify="right")
    for r in df.iter_rows(named=True):
        table.add_row(f"{r['capacity']:,}" if r["capacity"] else "unbounded",
                      f"{r['hit_blocks']:,}", f"{r['hit_tokens']:,}",
                      f"{r['block_hit_rate']:.6f}", f"{r['token_hit_rate']:.6f}")
    table.add_row("ideal", f"{ideal['hit_blocks']:,}", f"{ideal['hit_tokens']:,}",
                  f"{ideal['block_hit_rate']:.6f}", f"{ideal['token_hit_rate']:.6f}",
                  style="dim")
    out.print(table)


def plot_curve(df: pl.DataFrame, path: str | os.PathLike[str], *,
               ideal: dict[str, Any] | None = None, title: str | None = None) -> None:
    """Chart token and block hit rate against capacity (log x) as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    d = df.filter(df["capacity"] > 0).sort("capacity")
    x = d["capacity"].to_numpy()
    ax.plot(x, d["token_hit_rate"].to_numpy(), "o-", ms=3, lw=1.8, label="token hit rate")
    ax.plot(x, d["block_hit_rate"].to_numpy(), "s--", ms=2.5, lw=1.0, label="block hit rate")
    if ideal is not None:
        ax.axhline(ideal["token_hit_rate"], color="0.4", ls=":", lw=1.2,
                   label=f"ideal {ideal['token_hit_rate']:.3f}")
    if x.size:
        ax.set_xscale("log")
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "exact LRU curve", loc="left", fontsize=10)
    fig.savefig(path, format="png")


def _write_outputs(out_dir: Path, df: pl.DataFrame, ideal: dict[str, Any], *,
                   title: str) -> list[Path]:
    """Stage both files in ``out_dir``, then rename them into place (or remove them)."""
    from kvsim.sim.report import staged_outputs

    with staged_outputs(out_dir, [CURVE_NAME, PLOT_NAME]) as tmp:
        df.write_parquet(tmp[CURVE_NAME])
        plot_curve(df, tmp[PLOT_NAME], ideal=ideal, title=title)
    return [out_dir / CURVE_NAME, out_dir / PLOT_NAME]

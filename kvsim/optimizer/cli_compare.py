"""``kvsim compare``: eviction policies side by side at several capacities, with bounds.

The command replays a trace under every (policy, capacity) pair in parallel worker
processes, adds the prefix-cache Belady optimum and the ideal at each capacity, prints
a table of token hit rates (policy rows, capacity columns), and writes
``compare.parquet`` (the long table) and ``compare.png`` into ``--out``.

Only click is imported at module level (``kvsim.cli`` imports this module to mount
the command); the trace readers, the simulator and plotting load inside the command.

Example:
    >>> from click.testing import CliRunner
    >>> "--capacities" in CliRunner().invoke(compare_cmd, ["--help"]).output
    True
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from kvsim.cli_options import trace_options

__all__ = ["compare_cmd"]



class _Capacities(click.ParamType):
    """A comma list of capacities (``k``/``M`` suffixes ok), parsed as ``kvsim replay``
    parses ``--capacity-blocks``."""

    name = "N[,N...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[int]:
        from kvsim.cli import _IntList

        return _IntList().convert(value, param, ctx)


@click.command("compare")
@trace_options()
@click.option("--policies", default=None, metavar="P[,P...]",
              help="Policies to compare (default: every registered policy).")
@click.option("--capacities", type=_Capacities(), required=True,
              help="Capacities in blocks, a comma list (e.g. 1000,5859,20k).")
@click.option("--param", "params", multiple=True, metavar="POLICY.NAME=VALUE",
              help="A policy parameter (repeatable), e.g. random_lru.sample_rate=0.5.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: min(runs, CPUs); 1 = in-process).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the long table as one JSON list on stdout instead of the table.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kvsim-out"), show_default=True,
              help="Directory for compare.parquet and compare.png.")
@click.option("--no-out", is_flag=True, help="Write no files.")
def compare_cmd(
    trace: Path | None, policies: str | None, capacities: list[int], params: tuple[str, ...],
    fmt: str, block_size: int | None, tail: str, chain: str, strict: bool,
    instance: str | None, limit: int | None, jobs: int | None, as_json: bool, out_dir: Path,
    no_out: bool,
) -> None:  # fmt: skip
    """Compare eviction policies on TRACE (default: the shipped sample) at each capacity,
    against the offline Belady optimum and the ideal (unbounded) cache.

    \b
    Examples:
      kvsim compare t.jsonl --policies lru,fifo,lfu --capacities 1000,5859,20000
      kvsim compare --capacities 100,1k,10k --json --no-out
    """
    from kvsim.cli import (
        _check_out_dir,
        _clean_errors,
        _err_console,
        _read_trace,
        sample_trace_path,
    )

    err = _err_console()
    if not no_out:
        _check_out_dir(out_dir, ["compare.parquet", "compare.png"])
    if trace is None:
        trace = sample_trace_path()
        if not trace.is_file():
            raise click.ClickException(
                f"no TRACE given and the shipped sample {trace} is missing; "
                "pass a trace file (see kvsim compare --help)"
            )
    with _clean_errors(err):
        t_start = time.perf_counter()
        from kvsim.core.policies import POLICIES
        from kvsim.optimizer.compare import compare, compare_table, parse_policy_params

        names = ([p.strip() for p in policies.split(",") if p.strip()] if policies
                 else sorted(POLICIES))
        param_values = parse_policy_params(params, names)
        t, _fmt = _read_trace(trace, fmt, err=err, block_size=block_size, tail=tail,
                              chain=chain, strict=strict, instance=instance, limit=limit)

        from kvsim._startup import prepare_numba

        prepare_numba()
        runs = len(names) * len(set(capacities))
        with err.status(f"comparing {len(names)} policies x {len(set(capacities))} "
                        f"capacities ({runs} replays + Belady)", spinner="dots"):
            df = compare(t, names, capacities, params=param_values, jobs=jobs, tail=tail)

        if as_json:
            click.echo(json.dumps(df.to_dicts()))
        else:
            from rich.console import Console

            out = Console()
            if not out.is_terminal:
                out = Console(width=max(out.width, 150))
            out.print(f"{trace}: {t.n_requests:,} requests, {t.n_keys:,} keys, block size "
                      f"{t.block_size}; token hit rate by capacity (blocks)",
                      highlight=False, soft_wrap=True)
            out.print(compare_table(df))
        if not no_out:
            from kvsim.optimizer.compare import write_compare

            written = write_compare(out_dir, df, title=f"{trace.name}: token hit rate "
                                    "vs capacity (dashed: Belady optimum, ideal)")
            err.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False,
                      soft_wrap=True)
        if not as_json:
            err.print(f"done in {time.perf_counter() - t_start:.2f}s", highlight=False,
                      style="dim")

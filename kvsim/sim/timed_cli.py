"""``kvsim simulate``: the time-aware simulator from the command line.

Reads a trace, runs :func:`~kvsim.sim.timed.simulate` with the config's ``timing``,
``tiers`` and ``routing`` sections (flags can set the common ones without a file),
prints rich tables (or ``--json``) and writes ``summary.json``, ``timeseries.csv``,
``ttft.png``, ``tiers.png`` and ``load.png`` atomically into ``--out``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from kvsim.cli_options import trace_options
from kvsim.config import ROUTING_POLICIES

SIM_OUTPUTS = ["summary.json", "timeseries.csv", "ttft.png", "tiers.png", "load.png"]


@click.command("simulate")
@trace_options(tail_default=None, limit_help="Simulate only the first N requests.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Config (YAML or JSON) with timing:, tiers:, routing:.")
@click.option("--capacity-blocks", type=click.IntRange(min=0), default=None,
              help="Without --config: one LRU cache of this many blocks (0 = unbounded).")
@click.option("--prefill-tps", type=click.FloatRange(min=0), default=None,
              help="Prefill tokens per second per instance (overrides the config).")
@click.option("--decode-ms", type=click.FloatRange(min=0), default=None,
              help="Decode milliseconds per output token (overrides the config).")
@click.option("--routing", type=click.Choice(list(ROUTING_POLICIES)),
              default=None, help="Routing policy (overrides the config).")
@click.option("--routing-seed", type=click.IntRange(min=0, max=2**63 - 1), default=None,
              help="Seed of 'random' routing (overrides the config).")
@click.option("--instances", type=click.IntRange(min=1), default=None,
              help="Instances for routing other than 'trace' (overrides the config).")
@click.option("--engine", type=click.Choice(["auto", "python", "compiled"]), default="auto",
              show_default=True, help="Event loop (both give the same results).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kvsim-sim-out"), show_default=True,
              help="Directory for summary.json, timeseries.csv and the charts.")
@click.option("--no-out", is_flag=True, help="Write no files.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Time-series window (default: the trace span / 100).")
def simulate_cmd(
    trace: Path | None, fmt: str, block_size: int | None, tail: str | None, chain: str,
    strict: bool, instance: str | None, limit: int | None, config_path: Path | None,
    capacity_blocks: int | None, prefill_tps: float | None, decode_ms: float | None,
    routing: str | None, routing_seed: int | None, instances: int | None, engine: str,
    as_json: bool, out_dir: Path,
    no_out: bool, window: float | None,
) -> None:  # fmt: skip
    """Simulate TRACE in virtual time: queues, prefill, tiers, routing and TTFT.

    \b
    Examples:
      kvsim simulate t.jsonl --capacity-blocks 20000 --prefill-tps 20000
      kvsim simulate t.jsonl --config tiers.yaml --routing prefix --instances 8
    """
    from kvsim.cli import _clean_errors, _err_console, _read_trace, sample_trace_path
    from kvsim.config import KVSimConfig

    err = _err_console()
    if config_path is not None and capacity_blocks is not None:
        raise click.UsageError("--capacity-blocks cannot be combined with --config")
    if trace is None:
        trace = sample_trace_path()
    with _clean_errors(err):
        t_start = time.perf_counter()
        cfg = (KVSimConfig.load(config_path) if config_path is not None
               else KVSimConfig.single_cache(capacity_blocks=capacity_blocks or 0))
        timing = cfg.timing
        if prefill_tps is not None:
            timing = replace(timing, prefill_tokens_per_s=prefill_tps)
        if decode_ms is not None:
            timing = replace(timing, decode_ms_per_token=decode_ms)
        rt = cfg.routing
        if routing is not None:
            rt = replace(rt, policy=routing)
        if routing_seed is not None:
            rt = replace(rt, seed=routing_seed)
        if instances is not None:
            rt = replace(rt, instances=instances)
        cfg = replace(cfg, timing=timing, routing=rt)
        t, fmt = _read_trace(trace, fmt, err=err, block_size=block_size,
                             tail=tail or cfg.replay.tail, chain=chain, strict=strict,
                             instance=instance, limit=limit)
        from kvsim._startup import prepare_numba
        from kvsim.sim import timed_report as rep
        from kvsim.sim.report import trace_record
        from kvsim.sim.timed import simulate

        prepare_numba()
        r = simulate(t, cfg, engine=engine,
                     label=config_path.stem if config_path is not None else None)
        info: dict[str, Any] = trace_record(t, path=str(trace), fmt=fmt, limit=limit)
        if as_json:
            click.echo(json.dumps(rep.document(r, info), indent=2))
        else:
            out = Console()
            if not out.is_terminal:
                out = Console(width=max(out.width, 150))
            out.print(rep.summary_table(r, title=f"{trace}: {t.n_requests:,} requests, "
                                                 f"{t.n_keys:,} keys"))
            out.print(rep.tier_table(r))
            out.print(rep.instance_table(r))
            out.print(rep.misses_table(r))
        if not no_out:
            window_ns = None if window is None else max(1, round(window * 1e9))
            written = rep.write_timed_outputs(out_dir, r, trace_info=info, window_ns=window_ns)
            err.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False,
                      soft_wrap=True)
        if not as_json:
            err.print(f"done in {time.perf_counter() - t_start:.2f}s", style="dim")

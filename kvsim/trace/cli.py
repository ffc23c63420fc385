"""``kvsim trace``: convert, summarise and generate traces.

The group is :data:`trace_group`; the main CLI mounts it with
``main.add_command(trace_group, "trace")``. It also runs on its own:
``python -m kvsim.trace.cli --help``.

Example:
    >>> from click.testing import CliRunner
    >>> r = CliRunner().invoke(trace_group, ["stats", "--help"])
    >>> r.exit_code
    0
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace, TraceError
from kvsim.trace.readers import FORMATS, detect_format, read_trace
from kvsim.trace.stats import TraceStats, trace_stats
from kvsim.trace.writers import lost_columns, output_format, write_trace

__all__ = ["trace_group"]

T = TypeVar("T")
_err = Console(stderr=True)
_FMT_CHOICE = click.Choice(["auto", *FORMATS])


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn TraceError into a ClickException and TraceWarnings into one-line notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except TraceError as e:
            raise click.ClickException(str(e)) from None
        finally:
            for w in caught:
                _err.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)


def _timed(label: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` under a spinner (on stderr, only when it is a terminal)."""
    with _err.status(label, spinner="dots"):
        return fn()


def _out_format(dst: Path, to: str, src_fmt: str) -> str:
    if to != "auto":
        return to
    if dst.suffix.lower() in (".parquet", ".pq") or src_fmt == "parquet":
        return output_format(dst)
    return src_fmt


def _read(path: Path, fmt: str, **kw: Any) -> tuple[Trace, str]:
    fmt = detect_format(path) if fmt == "auto" else fmt
    trace = _timed(f"reading {path} ({fmt})", lambda: read_trace(path, fmt, **kw))
    return trace, fmt


@click.group("trace")
def trace_group() -> None:
    """Convert, summarise and generate KV-cache request traces."""


@trace_group.command("convert")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "src_fmt",
    type=_FMT_CHOICE,
    default="auto",
    show_default=True,
    help="Input format (default: from the extension / first record).",
)
@click.option(
    "--to",
    "dst_fmt",
    type=_FMT_CHOICE,
    default="auto",
    show_default=True,
    help="Output format (default: parquet for .parquet, else the input's JSONL "
    "format, kvcm for a parquet input).",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens per key (default: the input format's).",
)
@click.option(
    "--tail",
    type=click.Choice(["drop", "keep"]),
    default="drop",
    show_default=True,
    help="Drop or keep the key of a partial last block.",
)
@click.option(
    "--chain",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Chain per-block ids into prefix keys.",
)
@click.option("--strict", is_flag=True, help="Fail on out-of-order timestamps.")
def convert_cmd(
    src: Path, dst: Path, src_fmt: str, dst_fmt: str, block_size: int | None, tail: str,
    chain: str, strict: bool,
) -> None:  # fmt: skip
    """Convert trace SRC to DST (any supported format to any other)."""
    with _clean_errors():
        trace, fmt = _read(
            src, src_fmt, block_size=block_size, tail=tail, chain=chain, strict=strict
        )
        out = _out_format(dst, dst_fmt, fmt)
        lost = lost_columns(trace, out)
        if lost:
            _err.print(f"note: {out} cannot store {', '.join(lost)}; dropped", highlight=False)
        t0 = time.perf_counter()
        _timed(f"writing {dst} ({out})", lambda: write_trace(trace, dst, out))
        _err.print(
            f"wrote {trace.n_requests:,} requests, {trace.n_keys:,} keys to {dst} ({out}, "
            f"block_size {trace.block_size}) in {time.perf_counter() - t0:.1f}s",
            highlight=False,
            soft_wrap=True,
        )


def _stats_table(s: TraceStats, title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("stat", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{s.requests:,}"),
        ("instances", f"{s.instances:,}"),
        ("block size", f"{s.block_size:,} tokens"),
        ("block accesses (keys)", f"{s.keys:,}"),
        ("unique blocks", f"{s.unique_blocks:,}"),
        ("input tokens", f"{s.input_tokens:,}"),
        ("output tokens", f"{s.output_tokens:,}"),
        ("ideal hit blocks", f"{s.ideal_hit_blocks:,}"),
        ("ideal block hit rate", f"{s.ideal_block_hit_rate:.6f}"),
        ("ideal token hit rate", f"{s.ideal_token_hit_rate:.6f}"),
        ("time span", f"{s.duration_s:,.1f} s"),
        ("requests / s", f"{s.requests_per_s:,.3f}"),
        ("keys / request", f"{s.mean_keys_per_request:,.1f}"),
        ("reuse fraction", f"{s.reuse_fraction:.4f}"),
        ("reuse distance p50/p90/p99",
         f"{s.reuse_p50:,.0f} / {s.reuse_p90:,.0f} / {s.reuse_p99:,.0f} accesses"),
        ("top 1% / 10% blocks' share", f"{s.top1pct_share:.3f} / {s.top10pct_share:.3f}"),
        ("max accesses of a block", f"{s.max_access_count:,}"),
    ]  # fmt: skip
    for k, v in rows:
        table.add_row(k, v)
    return table


@trace_group.command("stats")
@click.argument("trace", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=_FMT_CHOICE, default="auto", show_default=True, help="Input format."
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens per key (default: the format's).",
)
@click.option("--tail", type=click.Choice(["drop", "keep"]), default="drop", show_default=True)
@click.option(
    "--chain", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_cmd(
    trace: Path, fmt: str, block_size: int | None, tail: str, chain: str, as_json: bool
) -> None:
    """Print a trace's size, ideal hit rates, reuse and popularity."""
    with _clean_errors():
        t, fmt = _read(trace, fmt, block_size=block_size, tail=tail, chain=chain)
        s = _timed("computing statistics", lambda: trace_stats(t))
    if as_json:
        click.echo(
            orjson.dumps(
                {"trace": str(trace), "format": fmt, **s.to_dict()}, option=orjson.OPT_INDENT_2
            ).decode()
        )
    else:
        Console().print(_stats_table(s, f"{trace} ({fmt})"))


@trace_group.command("gen")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=_FMT_CHOICE,
    default="auto",
    show_default=True,
    help="Output format (auto: parquet for .parquet, else kvcm).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--requests", type=click.IntRange(min=1), default=None, help="Exactly this many requests."
)
@click.option(
    "--target-keys",
    type=click.IntRange(min=1),
    default=None,
    help="About this many block accesses.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds of arrivals (when no size is given; default 600).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Mean requests per second (default 5).",
)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--arrival", type=click.Choice(["poisson", "bursty"]), default="poisson", show_default=True
)
@click.option("--block-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--mix", default=None, metavar="CHAT,AGENT,DOC", help="Session mix fractions, e.g. 0.6,0.1,0.3."
)
@click.option(
    "--zipf-a",
    type=click.FloatRange(min=0),
    default=None,
    help="Zipf exponent of shared-prefix popularity (default 1.1).",
)
@click.option(
    "--token-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Multiply every token length (default 1).",
)
@click.option(
    "--max-context",
    type=click.IntRange(min=1),
    default=None,
    help="Context cap in tokens (default 65536).",
)
def gen_cmd(
    out: Path, fmt: str, seed: int, requests: int | None, target_keys: int | None,
    duration: float | None, rate: float | None, instances: int, arrival: str, block_size: int,
    mix: str | None, zipf_a: float | None, token_scale: float | None, max_context: int | None,
) -> None:  # fmt: skip
    """Generate a synthetic trace into OUT (deterministic for a given seed)."""
    if requests is not None and target_keys is not None:
        raise click.UsageError("give --requests or --target-keys, not both")
    changes: dict[str, Any] = {
        "seed": seed, "requests": requests, "target_keys": target_keys,
        "instances": instances, "arrival": arrival, "block_size": block_size,
    }  # fmt: skip
    optional = {
        "duration_s": duration, "request_rate": rate, "zipf_a": zipf_a,
        "token_scale": token_scale, "max_context_tokens": max_context,
    }  # fmt: skip
    changes.update({k: v for k, v in optional.items() if v is not None})
    if mix is not None:
        try:
            parts = tuple(float(x) for x in mix.split(","))
        except ValueError:
            raise click.BadParameter(f"not three numbers: {mix!r}", param_hint="--mix") from None
        if len(parts) != 3:
            raise click.BadParameter(f"not three numbers: {mix!r}", param_hint="--mix")
        changes["mix"] = parts
    try:
        spec = GenSpec(**changes)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    with _clean_errors():
        t0 = time.perf_counter()
        try:
            trace = _timed("generating", lambda: generate_trace(spec))
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        out_fmt = output_format(out, fmt)
        _timed(f"writing {out} ({out_fmt})", lambda: write_trace(trace, out, out_fmt))
        _err.print(
            f"wrote {trace.n_requests:,} requests, {trace.n_keys:,} keys, "
            f"{len(trace.instances)} instance(s) to {out} ({out_fmt}) "
            f"in {time.perf_counter() - t0:.1f}s",
            highlight=False,
            soft_wrap=True,
        )


if __name__ == "__main__":  # pragma: no cover
    trace_group()

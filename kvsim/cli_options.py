"""Command-line options shared by every command that reads a trace.

Kept in a module of its own (importing only click) so that ``kvsim replay``,
``kvsim curve`` and ``kvsim compare`` declare the trace options once and import
nothing heavy at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

FORMATS = ("auto", "mooncake", "bailian", "kvcm", "kvcm-events", "parquet", "requests",
           "agentic")

F = TypeVar("F", bound=Callable[..., Any])


def trace_options(*, tail_default: str | None = "drop", limit_help: str = "Use only the first N "
                  "requests.") -> Callable[[F], F]:
    """Add TRACE and the trace-reading options (format, block size, tail, chain, strict,
    instance, limit) to a click command.

    Example:
        >>> @click.command()
        ... @trace_options()
        ... def cmd(**kw): pass
        >>> sorted(p.name for p in cmd.params)[:3]
        ['block_size', 'chain', 'fmt']
    """
    tail_help = ("Drop (default) or keep the key of a partial last block." if tail_default is None
                 else "Drop or keep the key of a partial last block.")
    options = [
        click.argument("trace", required=False, type=click.Path(path_type=Path)),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto",
                     show_default=True,
                     help="Trace format (auto: from the extension / first record)."),
        click.option("--block-size", type=click.IntRange(min=1), default=None,
                     help="Tokens per key (default: the format's, or the parquet file's)."),
        click.option("--tail", type=click.Choice(["drop", "keep"]), default=tail_default,
                     show_default=tail_default is not None, help=tail_help),
        click.option("--chain", type=click.Choice(["auto", "on", "off"]), default="auto",
                     show_default=True, help="Chain per-block ids into prefix keys."),
        click.option("--strict", is_flag=True,
                     help="Reject out-of-order timestamps (default: sort them stably, with a "
                          "warning)."),
        click.option("--instance", default=None, metavar="NAME",
                     help="Only this instance (kvcm/parquet), or the instance of "
                          "single-instance formats."),
        click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                     help=limit_help),
    ]

    def apply(fn: F) -> F:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return apply

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

from kvsim.trace.event_stats import NOT_A_HIT_RATE, EventStats, event_stats
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.kv_events import Limits, is_recording, read_recording
from kvsim.trace.model import Trace, TraceError
from kvsim.trace.readers import FORMATS, KEY_SCHEMES, detect_format, read_trace
from kvsim.trace.stats import TraceStats, trace_stats
from kvsim.trace.vllm_hash import HASH_ALGOS
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
    return src_fmt if src_fmt in _WRITABLE else "kvcm"


_WRITABLE = ("mooncake", "bailian", "kvcm", "parquet")


def _request_key_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--keys, --hash-algo, --hash-seed: how a request log's token ids become keys."""
    f = click.option("--hash-seed", default="0", show_default=True,
                     help="requests, --keys vllm: the engine's PYTHONHASHSEED.")(f)
    f = click.option("--hash-algo", type=click.Choice(HASH_ALGOS), default="sha256",
                     show_default=True,
                     help="requests, --keys vllm: the engine's --prefix-caching-hash-algo.")(f)
    return click.option("--keys", "key_scheme", type=click.Choice(KEY_SCHEMES),
                        default="vllm", show_default=True,
                        help="requests: vLLM's prefix-cache block hashes or upstream "
                        "KVCM's token_ids keys.")(f)


def _key_kw(key_scheme: str, hash_algo: str, hash_seed: str) -> dict[str, Any]:
    return {"request_keys": {"keys": key_scheme, "hash_algo": hash_algo,
                             "hash_seed": hash_seed}}


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
@_request_key_options
def convert_cmd(
    src: Path, dst: Path, src_fmt: str, dst_fmt: str, block_size: int | None, tail: str,
    chain: str, strict: bool, key_scheme: str, hash_algo: str, hash_seed: str,
) -> None:  # fmt: skip
    """Convert trace SRC to DST (any supported format to any other)."""
    with _clean_errors():
        trace, fmt = _read(
            src, src_fmt, block_size=block_size, tail=tail, chain=chain, strict=strict,
            **_key_kw(key_scheme, hash_algo, hash_seed),
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


def _event_stats_table(s: EventStats, title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("stat", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("batches / events", f"{s.batches:,} / {s.events:,}"),
        ("sources / caches", f"{s.sources:,} / {s.caches:,}"),
        ("time span", f"{s.duration_s:,.1f} s"),
        ("block stores (+ duplicates)", f"{s.stores:,} (+ {s.duplicate_stores:,})"),
        ("block removals (+ unknown)", f"{s.removals:,} (+ {s.unknown_removals:,})"),
        ("clears / blocks cleared", f"{s.clears:,} / {s.cleared_blocks:,}"),
        ("distinct blocks", f"{s.distinct_blocks:,}"),
        ("re-stores after removal (lower bound on misses a larger cache saves)",
         f"{s.restores_after_removal:,} ({s.restored_tokens_after_removal:,} tokens)"),
        ("re-stores after a clear", f"{s.restores_after_clear:,}"),
        ("removal -> re-store p50/p90",
         f"{s.restore_gap_p50_s:,.3f} / {s.restore_gap_p90_s:,.3f} s"),
        ("block lifetime p50/p90/p99/max",
         f"{s.lifetime_p50_s:,.3f} / {s.lifetime_p90_s:,.3f} / {s.lifetime_p99_s:,.3f} / "
         f"{s.lifetime_max_s:,.3f} s ({s.completed_lifetimes:,} removed)"),
        ("residency per block p50/p90/max",
         f"{s.residency_p50_s:,.3f} / {s.residency_p90_s:,.3f} / {s.residency_max_s:,.3f} s"),
        ("lost batches (gaps)", f"{s.gap_batches:,} ({s.gaps:,} gaps)"),
    ]  # fmt: skip
    for med, m in s.media.items():
        rows.append((f"medium {med}: stores / removals / distinct",
                     f"{m.stores:,} / {m.removals:,} / {m.distinct_blocks:,}"))
        rows.append((f"medium {med}: resident peak / mean / at end",
                     f"{m.peak_resident:,} / {m.mean_resident:,.1f} / {m.resident_at_end:,}"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _recording_stats(path: Path, as_json: bool) -> None:
    batches, meta = read_recording(path)
    s = event_stats(batches, meta.get("gaps", []))
    if as_json:
        click.echo(orjson.dumps({"trace": str(path), "format": "kv-events", **s.to_dict()},
                                option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(_event_stats_table(s, f"{path} (kv-events recording)"))
        click.echo(f"note: {NOT_A_HIT_RATE} Re-stores after removal are a lower bound on the "
                   "misses a larger cache would have saved.")


@trace_group.command("stats")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["auto", *FORMATS, "kv-events"]), default="auto",
    show_default=True, help="Input format (kv-events: a `kvsim trace record` recording).",
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
@_request_key_options
def stats_cmd(
    trace: Path, fmt: str, block_size: int | None, tail: str, chain: str, as_json: bool,
    key_scheme: str, hash_algo: str, hash_seed: str,
) -> None:
    """Print a trace's size, ideal hit rates, reuse and popularity.

    On a KV-event recording (``kvsim trace record``): residency per block and medium,
    block lifetimes and re-stores after removal (it is not a hit-rate trace).
    """
    if fmt == "kv-events" or (fmt == "auto" and is_recording(trace)):
        with _clean_errors():
            _recording_stats(trace, as_json)
        return
    with _clean_errors():
        t, fmt = _read(trace, fmt, block_size=block_size, tail=tail, chain=chain,
                       **_key_kw(key_scheme, hash_algo, hash_seed))
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


@trace_group.command("record")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--zmq", "endpoints", multiple=True, required=True, metavar="ENDPOINT",
              help="A publisher's PUB endpoint (repeat: one per data-parallel rank).")
@click.option("--replay", "replays", multiple=True, metavar="ENDPOINT",
              help="Its replay (ROUTER) endpoint, in the same order as --zmq ('' = none).")
@click.option("--topic", default="", show_default=True, help="Subscription topic prefix.")
@click.option("--rotate-events", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, help="Write a part after this many events.")
@click.option("--rotate-seconds", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Write a part at least this often.")
@click.option("--rotate-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help="Write a part once the buffered payloads reach this size.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds.")
@click.option("--max-batches", type=click.IntRange(min=1), default=None,
              help="Stop after this many batches.")
@click.option("--replay-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for a replay.")
@click.option("--catch-up/--no-catch-up", default=True, show_default=True,
              help="Replay each publisher's buffer when its first batch arrives.")
@click.option("--max-payload-mb", type=click.IntRange(min=1, max=4096), default=64,
              show_default=True, help="Largest accepted batch payload.")
@click.option("-v", "--verbose", is_flag=True, help="Log every batch.")
def record_cmd(
    out: Path, endpoints: tuple[str, ...], replays: tuple[str, ...], topic: str,
    rotate_events: int, rotate_seconds: float, rotate_mb: int, duration: float | None,
    max_batches: int | None, replay_timeout: float, catch_up: bool, max_payload_mb: int,
    verbose: bool,
) -> None:  # fmt: skip
    """Record vLLM/SGLang KV-cache events (ZMQ) into OUT/part-NNNNN.parquet.

    Sequence gaps are repaired from the replay socket; parts are written atomically on
    rotation and when stopped (SIGINT/SIGTERM, --duration, --max-batches).
    """
    import logging
    import signal

    from kvsim.trace.recorder import Recorder

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        rec = Recorder(list(endpoints), out, replay=list(replays) or None, topic=topic,
                       rotate_events=rotate_events, rotate_seconds=rotate_seconds,
                       rotate_bytes=rotate_mb << 20, replay_timeout=replay_timeout,
                       catch_up=catch_up,
                       limits=Limits(max_payload_bytes=max_payload_mb << 20),
                       max_batches=max_batches, duration=duration)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: rec.stop())
    st = rec.run()
    _err.print(f"recorded {st.batches:,} batches, {st.events:,} events into {out} "
               f"({st.parts} parts; {st.replayed:,} replayed, {st.duplicates:,} duplicates, "
               f"{st.gap_batches:,} lost, {st.bad_frames:,} bad frames)",
               highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    trace_group()

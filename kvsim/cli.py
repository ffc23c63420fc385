"""The ``kvsim`` command line: ``kvsim replay``, ``kvsim trace`` and ``kvsim serve``.

``kvsim replay [TRACE]`` replays a trace (default: the shipped sample,
``kvsim/data/sample.parquet``) through one cache, a comma list of capacities (a sweep,
run in parallel worker processes) or a config file, prints a summary table (or one
JSON document with ``--json``) and writes ``summary.json``, the time series and a
hit-rate chart into ``--out`` (default ``kvsim-out/``).

Start-up is kept short: this module imports only click and rich at the top; the
trace readers, the simulator, polars and matplotlib are imported inside the commands
that need them, and ``kvsim trace`` is mounted lazily.

Example:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(main, ["--version"]).output.startswith("kvsim")
    True
"""

from __future__ import annotations

import atexit
import gc
import importlib
import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from rich.console import Console

import kvsim
from kvsim.cli_options import FORMATS, trace_options
from kvsim.data import sample_trace_path

if TYPE_CHECKING:
    from kvsim.config import KVSimConfig
    from kvsim.trace.model import Trace

__all__ = ["main", "sample_trace_path"]

_FORMATS = FORMATS
_CACHE_FLAGS = (
    "capacity_blocks", "capacity_tokens", "capacity_bytes", "block_bytes", "policy", "params",
    "mode", "batch_size", "used_percentage", "match",
)  # fmt: skip


def _err_console() -> Console:
    return Console(stderr=True)


# ---------------------------------------------------------------------- click plumbing
class _LazyGroup(click.Group):
    """A group whose subcommands named in ``lazy`` are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):  # pragma: no cover - wiring error
            raise TypeError(f"{target} is not a click command")
        return cmd


class _LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices are loaded on first use (heavy imports)."""

    def __init__(self, loader: Callable[[], Sequence[str]]) -> None:
        self._loader = loader
        self._loaded: tuple[str, ...] | None = None
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override, unused-ignore]  # click < 8.5 types it as a plain attribute
    def choices(self) -> tuple[str, ...]:
        if self._loaded is None:
            self._loaded = tuple(self._loader())
        return self._loaded

    @choices.setter
    def choices(self, _value: Any) -> None:  # click's __init__ assigns; ignore it
        pass


def _policy_names() -> list[str]:
    from kvsim.core.policies import POLICIES

    return sorted(POLICIES)


def _mode_names() -> list[str]:
    from kvsim.core.spec import EVICTION_MODES

    return list(EVICTION_MODES)


_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
             "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip


class _IntList(click.ParamType):
    """A comma list of positive integers (capacities: 0 is refused, not "unbounded");
    ``k``/``M``/``G`` and ``Ki``/``Mi``/``Gi`` suffixes and ``_`` separators are
    accepted (``3M`` = 3,000,000)."""

    name = "N[,N...]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            text = part.strip().replace("_", "")
            if not text:
                continue
            low = text.lower()
            mult = 1
            for suf in sorted(_SUFFIXES, key=len, reverse=True):
                if low.endswith(suf):
                    mult, low = _SUFFIXES[suf], low[: -len(suf)]
                    break
            try:
                num = float(low) * mult
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number", param, ctx)
            if num < 0 or not num.is_integer():
                self.fail(f"{part.strip()!r} is not a non-negative integer", param, ctx)
            if num == 0:
                self.fail(f"{part.strip()!r}: 0 is not a capacity (omit the option for an "
                          "unbounded cache)", param, ctx)
            out.append(int(num))
        if not out:
            self.fail("expected at least one number", param, ctx)
        return out


@contextmanager
def _clean_errors(err: Console) -> Iterator[None]:
    """Known errors become a one-line ClickException; warnings become yellow lines."""
    from concurrent.futures.process import BrokenProcessPool

    from kvsim.core.errors import KVSimError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (ValueError, KVSimError) as e:  # TraceError, ConfigError are ValueErrors
            raise click.ClickException(str(e)) from None
        except BrokenProcessPool:
            raise click.ClickException(
                "a sweep worker process died (out of memory?); try fewer --jobs"
            ) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None
        finally:
            _show_warnings(err, caught)


def _show_warnings(err: Console, caught: list[warnings.WarningMessage]) -> None:
    """Print caught warnings as yellow one-liners on stderr (and forget them)."""
    for w in caught:
        if not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning):
            err.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    caught.clear()


def _check_out_dir(out: Path, names: Sequence[str]) -> None:
    """Fail early (before any replay) when ``out`` cannot be an output directory."""
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise click.ClickException(f"--out {out}: {p} is not a directory")
    for name in names:
        if (out / name).is_dir():
            raise click.ClickException(f"--out {out}: {out / name} is a directory")


# ---------------------------------------------------------------------- main group
@click.group(cls=_LazyGroup, lazy={"trace": "kvsim.trace.cli:trace_group",
                                   "serve": "kvsim.server.cli:serve_cmd",
                                   "simulate": "kvsim.sim.timed_cli:simulate_cmd",
                                   "config": "kvsim.optimizer.kvcm_config:config_group"})
@click.version_option(getattr(kvsim, "__version__", None), "--version", package_name="kvsim",
                      prog_name="kvsim")
@click.pass_context
def main(ctx: click.Context) -> None:
    """kvsim: size, tune and run KV caches for LLM inference."""
    _fast_exit()
    if ctx.invoked_subcommand not in (None, "serve"):  # serve says it in its own log
        from kvsim.compile_notice import CompileWatch

        err = _err_console()
        ctx.meta[COMPILE_WATCH] = ctx.with_resource(CompileWatch(
            lambda line: err.print(line, style="yellow", highlight=False, soft_wrap=True),
            command=str(ctx.invoked_subcommand)))
    if ctx.invoked_subcommand == "replay" and gc.isenabled():
        # Start-up is ~1,500 module imports; collecting while they load costs ~0.2 s.
        # ``replay`` turns the collector back on once the trace is read (and closing
        # the context does, whatever happens).
        gc.disable()
        ctx.call_on_close(gc.enable)


def _fast_exit() -> None:
    """Make interpreter shutdown cheap: freeze the GC at exit (once per process).

    At shutdown CPython garbage-collects every object; with numba, llvmlite, polars
    and pyarrow loaded that is ~0.35 s of a 2 s command. ``gc.freeze()`` (run as the
    last atexit handler) moves the live objects out of the collector's reach; every
    atexit handler and module finalizer still runs, nothing is skipped.
    """
    global _EXIT_HOOKED
    if not _EXIT_HOOKED:
        _EXIT_HOOKED = True
        atexit.register(gc.freeze)


_EXIT_HOOKED = False
#: ``ctx.meta`` key of the command's :class:`kvsim.compile_notice.CompileWatch`.
COMPILE_WATCH = "kvsim.compile_watch"


def compile_seconds(ctx: click.Context | None = None) -> float:
    """Seconds this command has spent compiling kernels so far (0 when all were cached)."""
    ctx = ctx or click.get_current_context(silent=True)
    watch = None if ctx is None else ctx.meta.get(COMPILE_WATCH)
    return float(watch.seconds) if watch is not None else 0.0


@main.command("replay")
@trace_options(tail_default=None, limit_help="Replay only the first N requests.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Cache config (YAML or JSON); excludes the cache flags below.")
@click.option("--capacity-blocks", type=_IntList(), default=None,
              help="Cache capacity in blocks; a comma list runs a sweep (e.g. 1000,5859,20000).")
@click.option("--capacity-tokens", type=_IntList(), default=None,
              help="Capacity in tokens (floor(tokens / block size) blocks); comma list ok "
                   "(e.g. 3M,50M).")
@click.option("--capacity-bytes", type=_IntList(), default=None,
              help="Capacity in bytes (needs --block-bytes); comma list ok (e.g. 64Gi).")
@click.option("--block-bytes", type=click.IntRange(min=1), default=None,
              help="Bytes of one KV block, for --capacity-bytes.")
@click.option("--policy", type=_LazyChoice(_policy_names), default="lru", show_default=True,
              help="Eviction policy.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A policy parameter (repeatable).")
@click.option("--mode", type=_LazyChoice(_mode_names), default=None,
              help="Eviction mode (default group_precise).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Blocks evicted per instance per round in the rough modes.")
@click.option("--used-percentage", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Evict when usage passes capacity x this fraction (default 1).")
@click.option("--match", type=click.Choice(["prefix", "batch"]), default=None,
              help="prefix (the contract, default) or batch (each block on its own).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes for a sweep (default: min(runs, CPUs); 1 = in-process).")
@click.option("--bound", type=click.Choice(["none", "belady"]), default="none",
              show_default=True,
              help="belady: also the offline optimum's hits per group at its block "
                   "capacity, and its headroom over each run (one extra pass per capacity).")
@click.option("--flow", type=click.Choice(["auto", "combined", "client"]), default="auto",
              show_default=True,
              help="combined: the replay contract's read+write request (the batch kernel); "
                   "client: per request the calls a client of `kvsim serve` makes (read, "
                   "startWriteCache, finishWriteCache), every server rule applied: what the "
                   "live server answers, request by request. auto: client when --config "
                   "sets a storage rule (which the combined flow has no place for, e.g. a "
                   "KVCM optimizer config's storage capacities), else combined.")
@click.option("--chunk-mb", type=click.FloatRange(min=0), default=None, metavar="MB",
              help="Read a JSONL trace (mooncake, bailian, kvcm) this many MiB at a time, "
                   "every capacity fed from one pass, so memory does not grow with the "
                   "file (default: for files over 64 MiB, 4 MiB blocks; 0 = read the "
                   "whole file first, which --jobs and --bound belady need).")
@click.option("--study-storage", default=None, metavar="URL",
              help="Share the sweep's runs with other processes (other machines) running "
                   "the same command: an Optuna RDB storage (sqlite:///sweep.db, "
                   "postgresql://u@host/db); each process claims runs not yet taken, then "
                   "prints the whole sweep gathered from the study.")
@click.option("--study-name", default="kvsim-replay", show_default=True,
              help="The shared sweep's study (one name per sweep).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout instead of tables.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kvsim-out"), show_default=True,
              help="Directory for summary.json, the time series and hitrate.png "
                   "(with --json: only when given).")
@click.option("--no-out", is_flag=True, help="Write no files.")
@click.option("--timeseries-format", type=click.Choice(["parquet", "csv"]), default="parquet",
              show_default=True)
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Time-series window (default: the trace span / 200).")
@click.pass_context
def replay_cmd(
    ctx: click.Context, trace: Path | None, fmt: str, block_size: int | None, tail: str | None,
    chain: str, strict: bool, instance: str | None, limit: int | None, config_path: Path | None,
    capacity_blocks: list[int] | None, capacity_tokens: list[int] | None,
    capacity_bytes: list[int] | None, block_bytes: int | None, policy: str,
    params: tuple[str, ...], mode: str | None, batch_size: int | None,
    used_percentage: float | None, match: str | None, jobs: int | None, bound: str,
    flow: str, chunk_mb: float | None, study_storage: str | None, study_name: str,
    as_json: bool, out_dir: Path, no_out: bool, timeseries_format: str,
    window: float | None,
) -> None:  # fmt: skip
    """Replay TRACE (default: the shipped sample) through a KV cache and report hit rates.

    \b
    Examples:
      kvsim replay                                   # the sample, unbounded (ideal)
      kvsim replay t.jsonl --capacity-tokens 3M,50M  # a sweep, one worker per run
      kvsim replay t.jsonl --config cache.yaml --json --no-out
    """
    err = _err_console()
    explicit = {
        name for name in _CACHE_FLAGS
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)
    }  # fmt: skip
    if config_path is not None and explicit:
        flags = ", ".join("--" + ("param" if n == "params" else n.replace("_", "-"))
                          for n in sorted(explicit))
        raise click.UsageError(f"{flags} cannot be combined with --config "
                               "(set it in the config file)")
    caps_given = [n for n in ("capacity_blocks", "capacity_tokens", "capacity_bytes")
                  if ctx.params.get(n) is not None]
    if len(caps_given) > 1:
        raise click.UsageError("give one of --capacity-blocks, --capacity-tokens, "
                               "--capacity-bytes")
    if capacity_bytes is not None and block_bytes is None:
        raise click.UsageError("--capacity-bytes needs --block-bytes (bytes of one block)")
    if as_json and ctx.get_parameter_source("out_dir") is ParameterSource.DEFAULT:
        no_out = True  # --json is for pipes: files only where asked for
    if not no_out:
        _check_out_dir(out_dir, ["summary.json", f"timeseries.{timeseries_format}",
                                 "hitrate.png"])
    if trace is None:
        trace = sample_trace_path()
        if not trace.is_file():
            raise click.ClickException(
                f"no TRACE given and the shipped sample {trace} is missing; "
                "pass a trace file (see kvsim replay --help)"
            )

    with _clean_errors(err):
        t_start = time.perf_counter()
        config = None
        param_values: dict[str, Any] = {}
        if config_path is not None:
            from kvsim.config import KVSimConfig

            config = KVSimConfig.load(config_path)
            if tail is not None and tail != config.replay.tail:
                raise click.UsageError(
                    f"--tail {tail} conflicts with replay.tail {config.replay.tail!r} in "
                    f"{config_path}"
                )
            tail = config.replay.tail
        elif params:
            from kvsim.sim.sweep import parse_params

            param_values = parse_params(policy, params)
        tail = tail or "drop"
        if fmt == "auto":  # once: the block size, the stream and the reader all need it
            from kvsim.trace.readers import detect_format

            fmt = detect_format(trace)
        if block_size is None and config is not None:
            block_size = _kvcm_block_size(fmt, config)
        opts: dict[str, Any] = {"block_size": block_size, "tail": tail, "chain": chain,
                                "strict": strict, "instance": instance}
        stream_bytes = _stream_bytes(trace, fmt, chunk_mb, jobs=jobs, bound=bound,
                                     by_bytes=capacity_bytes is not None,
                                     study=study_storage is not None)
        chunks = None
        if stream_bytes:  # the first chunk gives the block size; the rest stream in
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                chunks, t, fmt = _open_stream(trace, fmt, opts, stream_bytes, limit=limit)
            _show_warnings(err, caught)
        else:
            t, fmt = _read_trace(trace, fmt, err=err, limit=limit, **opts)
        gc.enable()  # off since start-up (see ``main``)

        from kvsim.sim.sweep import single_cache_configs, tokens_to_blocks

        labels: list[str | None]
        if config is not None:
            configs: list[KVSimConfig] = [config]
            labels = [config_path.stem if config_path is not None else None]
        else:
            if capacity_tokens is not None:
                caps = [tokens_to_blocks(c, t.block_size) for c in capacity_tokens]
            else:
                caps = capacity_blocks or [0]
            configs = single_cache_configs(
                caps, capacity_bytes=capacity_bytes or (), block_bytes=block_bytes or 0,
                instances=t.instances, instance_block_size=t.block_size, policy=policy,
                params=param_values, mode=mode, batch_size=batch_size,
                used_percentage=used_percentage, match=match, tail=tail,
            )
            labels = [None] * len(configs)
        if capacity_bytes is not None:
            labels = [f"{policy}@{b:,}B" for b in capacity_bytes]

        if flow == "auto":
            rules = config.storage_rules() if config is not None else []
            flow = "client" if rules else "combined"
            if rules:
                err.print(f"flow: client ({config_path} sets {', '.join(rules)}: storage "
                          f"rules the combined flow has no place for; --flow combined "
                          f"refuses them)")
        sweep: Any = None
        if chunks is not None:
            sweep = _run_stream(chunks, configs, labels, flow=flow, err=err)
            if sweep is None:  # blocks out of time order: the whole file, sorted
                t, fmt = _read_trace(trace, fmt, err=err, limit=limit, **opts)
            else:
                t = sweep.results[0].trace
        if study_storage is not None:
            sweep = _run_shared(t, configs, labels, storage=study_storage, name=study_name,
                                flow=flow, err=err)
        if sweep is None and flow == "client":
            sweep = _run_client_flow(t, configs, labels)
        elif sweep is None:
            sweep = _run(t, configs, labels, jobs=jobs, err=err,
                         show_progress=err.is_terminal)

        from kvsim.sim import report

        info = report.trace_record(t, path=str(trace), fmt=fmt,
                                   limit=limit)
        misses = _misses(sweep.results, bound, ideal=getattr(sweep, "ideal_hits", None))
        doc = report.build_document(info, sweep.results, sweep.ideal, misses=misses)
        compiled = compile_seconds(ctx)
        doc["compile_s"] = round(compiled, 3)  # kernel compile, apart from each elapsed_s
        if as_json:
            click.echo(report.document_json(doc), nl=False)
        else:
            _print_tables(t, trace, sweep.results, sweep.ideal)
            out = Console()
            if not out.is_terminal:
                out = Console(width=max(out.width, 150))
            out.print(report.misses_table(sweep.results, misses))
        if not no_out:
            window_ns = None if window is None else max(1, round(window * 1e9))
            ts = report.timeseries_frame(sweep.results, window_ns=window_ns)
            written = report.write_outputs(
                out_dir, doc, ts, ts_format=timeseries_format, ideal=sweep.ideal,
                title=f"{trace.name}: token hit rate (thin: per window, thick: cumulative)",
                unit="bytes" if any(g.unit == "bytes" for c in configs for g in c.groups)
                else "blocks",
            )
            err.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False,
                      soft_wrap=True)
        if not as_json:
            err.print(f"done in {time.perf_counter() - t_start:.2f}s"
                      + (f" ({sweep.jobs} workers)" if sweep.jobs > 1 else "")
                      + (f", of which {compiled:.1f}s compiling kernels (first run only)"
                         if compiled else ""),
                      highlight=False, style="dim")


def _misses(results: Sequence[Any], bound: str,
            ideal: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Misses by reason per result; with ``bound == "belady"`` the optimum's headroom."""
    from kvsim.sim.misses import replay_misses

    if bound != "belady":
        return replay_misses(results, ideal_hits=ideal)
    from kvsim.optimizer.bounds import belady

    def optimum(trace: Trace, capacity: int) -> int:
        return int(belady(trace, [capacity], jobs=1)[0]["hit_blocks"])

    return replay_misses(results, optimum=optimum)


def _kvcm_block_size(fmt: str, config: KVSimConfig) -> int | None:
    """Tokens per key of a KVCM trace (its rows carry none) from the config's instances,
    as KVCM's optimizer takes it: when they all agree; else the reader's default."""
    sizes = {i.block_size for i in config.instances}
    return sizes.pop() if fmt in ("kvcm", "kvcm-events") and len(sizes) == 1 else None


#: ``kvsim replay`` reads a JSONL trace in blocks past this size (``--chunk-mb``).
STREAM_FILE_BYTES = 64 << 20
STREAM_BLOCK_BYTES = 4 << 20


def _stream_bytes(path: Path, fmt: str, chunk_mb: float | None, *, jobs: int | None,
                  bound: str, by_bytes: bool, study: bool = False) -> int:
    """Bytes per block of a streamed replay, or 0 to read the whole trace first.

    Raises:
        click.UsageError: ``--chunk-mb`` with an option that needs the whole trace.
    """
    from kvsim.trace.readers import BLOCK_FORMATS, detect_format

    if chunk_mb == 0:
        return 0
    if fmt == "auto":
        fmt = detect_format(path)
    whole = ("--bound belady" if bound == "belady" else "--capacity-bytes" if by_bytes
             else "--study-storage" if study
             else f"--jobs {jobs}" if jobs is not None and jobs > 1 else None)
    if chunk_mb is not None:
        if fmt not in BLOCK_FORMATS:
            raise click.UsageError(f"--chunk-mb reads {', '.join(BLOCK_FORMATS)} JSONL "
                                   f"traces; {path} is {fmt}")
        if whole:
            raise click.UsageError(f"--chunk-mb cannot be combined with {whole} (it needs "
                                   "the whole trace)")
        return max(1, int(chunk_mb * (1 << 20)))
    try:
        big = path.stat().st_size > STREAM_FILE_BYTES
    except OSError:
        return 0
    return STREAM_BLOCK_BYTES if big and fmt in BLOCK_FORMATS and not whole else 0


def _open_stream(path: Path, fmt: str, opts: dict[str, Any], block_bytes: int, *,
                 limit: int | None) -> tuple[Iterator[Trace], Trace, str]:
    """The chunks of a JSONL trace (cut at ``limit`` requests), and the first one."""
    from kvsim.trace.readers import detect_format, iter_jsonl_chunks

    if fmt == "auto":
        fmt = detect_format(path)
    it = iter_jsonl_chunks(path, fmt, block_bytes=block_bytes, **opts)

    def cut() -> Iterator[Trace]:
        left = limit
        for tr in it:
            if left is not None and tr.n_requests >= left:
                yield tr.head(left)
                return
            if left is not None:
                left -= tr.n_requests
            yield tr

    chunks = cut()
    first = next(chunks)
    return itertools.chain([first], chunks), first, fmt


def _run_stream(chunks: Iterator[Trace], configs: list[KVSimConfig],
                labels: list[str | None], *, flow: str, err: Console) -> Any:
    """Every config fed from one pass over ``chunks`` (:func:`kvsim.sim.chunked.
    sweep_chunks`); None when a block starts before the previous one ended (the caller
    reads the whole file, which sorts it)."""
    from kvsim._startup import prepare_numba
    from kvsim.sim.chunked import sweep_chunks
    from kvsim.trace.readers import ChunkOrderError

    prepare_numba()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with err.status("replaying in blocks", spinner="dots"):
                out = sweep_chunks(chunks, configs, labels=labels, flow=flow)
        except ChunkOrderError as e:
            err.print(f"note: {e}; reading the whole file", highlight=False, soft_wrap=True)
            return None
    _show_warnings(err, caught)
    return out


def _run_shared(trace: Trace, configs: list[KVSimConfig], labels: list[str | None], *,
                storage: str, name: str, flow: str, err: Console) -> Any:
    """The sweep's runs shared through an Optuna study
    (:func:`kvsim.optimizer.shared_sweep.run_shared_sweep`); a line on stderr per run
    this process claims."""
    from kvsim._startup import prepare_numba
    from kvsim.optimizer.shared_sweep import run_shared_sweep
    from kvsim.optimizer.tune import redact_url

    prepare_numba()

    def note(i: int, label: str) -> None:
        err.print(f"study {name}: running {label} (run {i})", highlight=False, style="dim")

    try:
        out = run_shared_sweep(trace, configs, labels=labels, storage=storage,
                               study_name=name, flow=flow, on_run=note)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    err.print(f"study {name} in {redact_url(storage)}: ran {len(out.ran)} of {out.runs} "
              "runs here, the rest came from the study", highlight=False, style="dim")
    return out


def _read_trace(path: Path, fmt: str, *, err: Console, limit: int | None,
                **opts: Any) -> tuple[Trace, str]:
    """Read (and cut to ``limit``) the trace; a spinner on a terminal. Returns the format."""
    from kvsim.trace.readers import detect_format, read_trace

    if fmt == "auto":
        fmt = detect_format(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with err.status(f"reading {path} ({fmt})", spinner="dots"):
            t = read_trace(path, fmt, **opts)
    _show_warnings(err, caught)
    if limit is not None and limit < t.n_requests:
        t = t.head(limit)
    return t, fmt


def _run(trace: Trace, configs: list[KVSimConfig], labels: list[str | None], *,
         jobs: int | None, err: Console, show_progress: bool) -> Any:
    """Run the sweep (one config is a sweep of one) under a progress bar on stderr."""
    from kvsim._startup import prepare_numba
    from kvsim.sim.sweep import run_sweep

    prepare_numba()

    if not show_progress:
        return run_sweep(trace, configs, labels=labels, jobs=jobs)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    runs = len(configs)
    with Progress(
        TextColumn(f"replay ({runs} run{'s' if runs > 1 else ''})"), BarColumn(),
        MofNCompleteColumn(), TextColumn("requests"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run_sweep(trace, configs, labels=labels, jobs=jobs, progress=progress)


def _run_client_flow(trace: Trace, configs: list[KVSimConfig],
                     labels: list[str | None]) -> Any:
    """Replay every config in the client flow, in this process (a Python loop per
    request: no worker pool), with the ideal cache's figures."""
    from kvsim._startup import prepare_numba
    from kvsim.sim.sweep import run_sweep

    prepare_numba()
    return run_sweep(trace, configs, labels=labels, flow="client")


def _print_tables(trace: Trace, path: Path, results: Sequence[Any],
                  ideal: dict[str, Any] | None) -> None:
    from kvsim.sim import report

    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 150))
    title = (f"{path}: {trace.n_requests:,} requests, {trace.n_keys:,} keys, "
             f"block size {trace.block_size}")
    out.print(report.summary_table(results, ideal, title=title))
    if len(trace.instances) > 1:
        out.print(report.instance_table(results))
    if any(len(set(r.group_of_instance)) > 1 for r in results):
        out.print(report.group_table(results))


@main.command("drive")
@trace_options(tail_default=None, limit_help="Drive only the first N requests.")
@click.option("--url", required=True,
              help="The meta service's HTTP base URL, or grpc://HOST:PORT for its gRPC API.")
@click.option("--admin-url", default=None,
              help="The admin service's HTTP base URL, or grpc://HOST:PORT (needed for "
                   "--clock trace).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The served config (match rule, instances' groups).")
@click.option("--group", default="default", show_default=True,
              help="Group of trace instances the manager does not know (registered first).")
@click.option("--clock", "clock_kind", type=click.Choice(["trace", "wall"]), default="wall",
              show_default=True,
              help="trace: setClock to each request's trace time first (against `kvsim "
                   "serve --clock manual`: deterministic, equals `kvsim replay --flow "
                   "client`); wall: the server's own clock.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Requests in flight (wall clock only).")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Requests per second to send at (0 = as fast as answered).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (the shape of `kvsim replay --json`) on stdout.")
def drive_cmd(trace: Path | None, fmt: str, block_size: int | None, tail: str | None,
              chain: str, strict: bool, instance: str | None, limit: int | None, url: str,
              admin_url: str | None, config_path: Path | None, group: str, clock_kind: str,
              concurrency: int, rate: float, as_json: bool) -> None:
    """Replay TRACE against a live manager (kvsim's or a stock Tair KVCM) as its clients
    would: per request getCacheLocation, startWriteCache, finishWriteCache.

    The admin credential comes from KVSIM_ADMIN_PASSWORD (user admin), as for `kvsim
    serve`.

    \b
    Examples:
      kvsim serve --config c.yaml --clock manual --http-port 6382 --admin-http-port 6492 &
      kvsim drive t.jsonl --url http://127.0.0.1:6382 \\
          --admin-url http://127.0.0.1:6492 --clock trace --config c.yaml
      kvsim drive t.jsonl --url grpc://127.0.0.1:6381 --admin-url grpc://127.0.0.1:6491
    """
    from kvsim.sim.drive import DriveError, caller_for, drive

    err = _err_console()
    if clock_kind == "trace" and admin_url is None:
        raise click.UsageError("--clock trace needs --admin-url (setClock is an admin call)")
    if trace is None:
        trace = sample_trace_path()
    with _clean_errors(err):
        from kvsim.config import KVSimConfig

        config = KVSimConfig.load(config_path) if config_path is not None else None
        t, fmt = _read_trace(trace, fmt, err=err, block_size=block_size, tail=tail or "drop",
                             chain=chain, strict=strict, instance=instance, limit=limit)
        gc.enable()
        import os

        from kvsim.server.service import DEFAULT_ADMIN_PASSWORD

        pw = os.environ.get("KVSIM_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD)
        try:
            caller = caller_for(url, admin_url, admin_credential=f"admin:{pw}")
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        try:
            d = drive(t, caller, config=config, clock=clock_kind, group=group,
                      concurrency=concurrency, rate=rate)
        except DriveError as e:
            raise click.ClickException(str(e)) from None
        finally:
            close = getattr(caller, "close", None)
            if close is not None:
                close()
        from kvsim.sim import report

        info = report.trace_record(t, path=str(trace), fmt=fmt, limit=limit)
        doc = report.build_document(info, [d.result], None)
        doc["drive"] = {"url": url, "clock": clock_kind, "concurrency": concurrency,
                        "rate": rate, "refused_writes": d.refused_writes,
                        "elapsed_s": d.elapsed_s, "latency": d.latency_table()}
        if as_json:
            click.echo(report.document_json(doc), nl=False)
        else:
            _print_tables(t, trace, [d.result], None)
            from rich.table import Table

            tab = Table(title="call latency (ms)")
            for col in ("call", "count", "mean_ms", "p50_ms", "p99_ms", "max_ms"):
                tab.add_column(col, justify="left" if col == "call" else "right")
            for row in d.latency_table():
                tab.add_row(row["call"], f"{row['count']:,}",
                            *(f"{row[k]:.3f}" for k in ("mean_ms", "p50_ms", "p99_ms",
                                                        "max_ms")))
            Console().print(tab)
            err.print(f"refused writes: {d.refused_writes:,}; done in {d.elapsed_s:.2f}s",
                      highlight=False, style="dim")


from kvsim.optimizer.cli_curve import curve_cmd  # noqa: E402

main.add_command(curve_cmd, "curve")

from kvsim.optimizer.cli_compare import compare_cmd  # noqa: E402

main.add_command(compare_cmd, "compare")

from kvsim.optimizer.cli_tune import export_cmd, report_cmd, tune_cmd  # noqa: E402

main.add_command(tune_cmd, "tune")
main.add_command(export_cmd, "export")
main.add_command(report_cmd, "report")


if __name__ == "__main__":  # pragma: no cover
    main()

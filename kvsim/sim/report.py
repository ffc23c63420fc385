"""Reports of replay runs: rich tables, the JSON document, time series and the chart.

Everything here derives from :class:`~kvsim.sim.replay.ReplayResult` (the per-request
outcome arrays), so tables, ``--json``, ``summary.json``, the time-series file and
the chart all show the same numbers, computed per the replay contract.

Outputs are written atomically as a set (:func:`write_outputs`): every file is first
written to a temp file in the output directory and only renamed into place
(``os.replace``) once all of them were written; on any failure the temp files are
removed and no partial output is left behind.

matplotlib is imported lazily inside :func:`plot_hitrate` (with the Agg canvas and no
pyplot), so commands that do not plot start fast.

Example:
    >>> from kvsim.trace.model import Trace
    >>> from kvsim.config import KVSimConfig
    >>> from kvsim.sim.replay import replay
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2], keys=[[1, 2], [1, 2, 3], [4]], block_size=16)
    >>> r = replay(t, KVSimConfig.single_cache(capacity_blocks=3))
    >>> rec = result_record(r)
    >>> rec["capacity_blocks"], rec["policy"], rec["hit_blocks"]
    (3, 'lru', 2)
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from kvsim.config import KVSimConfig
from kvsim.trace.model import KIND_WRITE, Trace

if TYPE_CHECKING:
    import polars as pl

    from kvsim.sim.replay import ReplayResult

__all__ = [
    "TIMESERIES_FORMATS",
    "attach_misses",
    "build_document",
    "capacity_text",
    "config_record",
    "document_json",
    "group_table",
    "instance_table",
    "misses_table",
    "peak_used",
    "per_instance_frame",
    "plot_hitrate",
    "result_record",
    "summary_table",
    "timeseries_frame",
    "trace_record",
    "write_outputs",
]

TIMESERIES_FORMATS = ("parquet", "csv")
#: What the document's less obvious fields mean (written into every document).
LEGEND: dict[str, str] = {
    "token_hit_rate": "sum of hit tokens / sum of input tokens over all requests "
                      "(the replay contract's aggregate rate)",
    "block_hit_rate": "sum of hit blocks / sum of read blocks",
    "peak_used": "exact peak of the cache's usage after a request, in peak_used_unit "
                 "(the quota's unit: blocks, or bytes), to compare with the capacity",
    "per_group.peak_used": "the group's exact peak usage in its quota's unit",
    "per_instance.peak_cached_blocks": "the instance's exact peak of cached blocks",
    "elapsed_s": "wall seconds of the replay loop, kernel compile excluded",
    "compile_s": "wall seconds spent compiling kernels in this run (0 once cached)",
    "ideal": "an unbounded cache: only the first access of a block misses",
    "misses": "missed blocks by reason, per result and per group (the server advisor's "
              "classes): compulsory = what an unbounded cache misses too (first accesses "
              "and what follows one in a prefix read), capacity = the rest (what a bigger "
              "quota buys); unusable and session_failed are the server's and 0 in a replay",
    "belady": "with --bound belady: the offline optimum's hit blocks per group at the "
              "group's capacity (kvsim.optimizer.bounds), and its headroom over the run",
}
SUMMARY_NAME = "summary.json"
PLOT_NAME = "hitrate.png"


# ---------------------------------------------------------------------- records
def trace_record(trace: Trace, *, path: str | None = None, fmt: str | None = None,
                 limit: int | None = None) -> dict[str, Any]:
    """The ``"trace"`` object of the JSON document."""
    reads = trace.kind != KIND_WRITE
    rec: dict[str, Any] = {
        "path": path if path is not None else trace.source,
        "format": fmt,
        "requests": trace.n_requests,
        "keys": trace.n_keys,
        "input_tokens": int(np.where(reads, trace.input_len, 0).sum()),
        "block_size": int(trace.block_size),
        "instances": list(trace.instances),
    }
    if limit is not None:
        rec["limit"] = limit
    return rec


def config_record(config: KVSimConfig) -> dict[str, Any]:
    """Capacity and policy of a config, flattened for one cache, plus every group.

    ``capacity_blocks`` / ``capacity_bytes`` are the summed group quotas (``None``
    when some group is unbounded or uses the other unit); ``policy``, ``params``,
    ``mode`` and ``batch_size`` are the groups' common value (``None`` if they differ).
    """
    groups = config.groups

    def common(values: list[Any]) -> Any:
        return values[0] if values and all(v == values[0] for v in values) else None

    def total(unit: str, attr: str) -> int | None:
        if not groups or any(g.quota_units() == 0 or g.unit != unit for g in groups):
            return None
        return sum(getattr(g, attr) for g in groups)

    return {
        "capacity_blocks": total("blocks", "quota_blocks"),
        "capacity_bytes": total("bytes", "quota_bytes"),
        "policy": common([g.eviction.policy for g in groups]),
        "params": common([dict(g.eviction.params) for g in groups]),
        "mode": common([g.eviction.mode for g in groups]),
        "batch_size": common([g.eviction.batch_size for g in groups]),
        "used_percentage": common([g.used_percentage for g in groups]),
        "match": config.replay.match,
        "groups": [
            {"name": g.name, "capacity_blocks": g.quota_blocks, "capacity_bytes": g.quota_bytes,
             "used_percentage": g.used_percentage, "policy": g.eviction.policy,
             "params": dict(g.eviction.params), "mode": g.eviction.mode,
             "batch_size": g.eviction.batch_size}
            for g in groups
        ],
    }


def _clean(v: Any) -> Any:
    """JSON-safe Python values (numpy scalars to Python, NaN to None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in df.to_dicts()]


def per_instance_frame(result: ReplayResult) -> pl.DataFrame:
    """``result.by("instance")`` with the instance's group as the second column."""
    import polars as pl

    df = result.by("instance")
    group = dict(zip(result.trace.instances, result.group_of_instance, strict=True))
    df = df.with_columns(
        pl.col("instance").replace_strict(group, return_dtype=pl.Utf8).alias("group")
    )
    return df.select("instance", "group", pl.exclude("instance", "group"))


def peak_used(result: ReplayResult) -> int:
    """Exact peak of the total cache usage (:meth:`ReplayResult.peak_used`)."""
    return result.peak_used()


def result_record(result: ReplayResult) -> dict[str, Any]:
    """One entry of the document's ``"results"``: config, totals, rates, breakdowns."""
    s = result.summary()
    rec: dict[str, Any] = {"label": result.label}
    rec.update(config_record(result.config))
    rec.update({k: _clean(v) for k, v in s.items() if k != "label"})
    if result.evicted_by_trigger:  # the reclaimer's counters (client flow, intervals)
        rec["evicted_by_trigger"] = dict(sorted(result.evicted_by_trigger.items()))
    rec["per_instance"] = _rows(per_instance_frame(result))
    rec["per_group"] = _rows(result.by("group"))
    return rec


def build_document(
    trace_info: dict[str, Any],
    results: Sequence[ReplayResult],
    ideal: dict[str, Any] | None,
    *,
    misses: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``--json`` / ``summary.json`` document: ``trace``, ``ideal``, ``results``.

    ``legend`` says in the document itself what the less obvious fields mean. Every
    result carries ``misses`` (:mod:`kvsim.sim.misses`), as does each of its
    ``per_group`` rows; ``misses`` (from :func:`kvsim.sim.misses.replay_misses`, one
    per result) may carry the offline optimum's headroom (``belady``), otherwise it is
    computed here without it.
    """
    from kvsim.sim.misses import replay_misses

    records = [result_record(r) for r in results]
    found = list(misses) if misses is not None else replay_misses(results)
    for rec, m in zip(records, found, strict=True):
        attach_misses(rec, m)
    return {
        "legend": LEGEND,
        "trace": trace_info,
        "ideal": None if ideal is None else {k: _clean(v) for k, v in ideal.items()},
        "results": records,
    }


def attach_misses(rec: dict[str, Any], m: dict[str, Any]) -> None:
    """Put one :func:`~kvsim.sim.misses.replay_misses` entry into a result record:
    ``misses`` (and ``belady`` when every group has it) on the record, ``misses`` /
    ``belady`` on each ``per_group`` row."""
    rec["misses"] = m["misses"]
    groups = m["per_group"]
    for row in rec["per_group"]:
        g = groups.get(row["group"], {})
        row.update({k: v for k, v in g.items() if k in ("misses", "belady")})
    if groups and all("belady" in g for g in groups.values()):
        best = sum(g["belady"]["hit_blocks"] for g in groups.values())
        rec["belady"] = {
            "hit_blocks": best, "headroom_blocks": best - int(rec["hit_blocks"]),
            "headroom_block_hit_rate": ((best - int(rec["hit_blocks"])) / rec["read_blocks"]
                                        if rec["read_blocks"] else 0.0),
        }


def misses_table(results: Sequence[ReplayResult], misses: Sequence[dict[str, Any]]) -> Table:
    """Why blocks missed, per run and group: compulsory (an unbounded cache misses them
    too), capacity (a bigger quota would hit them), and with ``--bound belady`` the
    offline optimum's hits at the same capacity and its headroom over the run."""
    with_bound = any("belady" in g for m in misses for g in m["per_group"].values())
    t = Table(title="misses by reason (blocks)", title_justify="left",
              caption="compulsory: first accesses (and what follows one in a prefix read); "
                      "capacity: the rest, what a bigger quota buys"
                      + ("; belady: the offline optimum at the same capacity"
                         if with_bound else ""),
              caption_justify="left")
    for col in ("label", "group", "missed", "compulsory", "capacity"):
        t.add_column(col, justify="left" if col in ("label", "group") else "right",
                     style="bold" if col == "label" else None)
    if with_bound:
        t.add_column("belady hits", justify="right")
        t.add_column("headroom", justify="right", style="cyan")
    for r, m in zip(results, misses, strict=True):
        for name, g in m["per_group"].items():
            x = g["misses"]
            cells = [r.label, name, f"{x['total']:,}", f"{x['compulsory']:,}",
                     f"{x['capacity']:,}"]
            if with_bound:
                b = g.get("belady")
                cells += (["–", "–"] if b is None else
                          [f"{b['hit_blocks']:,}",
                           f"{b['headroom_blocks']:,} ({b['headroom_block_hit_rate']:.4f})"])
            t.add_row(*cells)
    return t


def miss_breakdown(read_blocks: int, hit_blocks: int, ideal_hit_blocks: int
                   ) -> dict[str, int]:
    """Why blocks missed, as the server's capacity advisor splits them: ``compulsory``
    (an unbounded cache misses them too: first accesses, and what follows one in a
    prefix read), ``capacity`` (the rest: what a bigger cache buys); a replay has no
    storages or write sessions, so ``unusable`` and ``session_failed`` are 0.

    Example:
        >>> miss_breakdown(100, 60, 90)
        {'total': 40, 'compulsory': 10, 'capacity': 30, 'unusable': 0, 'session_failed': 0}
    """
    total = max(0, read_blocks - hit_blocks)
    compulsory = min(total, max(0, read_blocks - ideal_hit_blocks))
    return {"total": total, "compulsory": compulsory, "capacity": total - compulsory,
            "unusable": 0, "session_failed": 0}


def document_json(doc: dict[str, Any]) -> str:
    """The document as indented JSON text (ends with a newline)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------- tables
def capacity_text(config: KVSimConfig) -> str:
    """Human capacity of a config: ``5,859 blocks``, ``1.2 GB``, ``∞`` or ``3 groups``."""
    groups = config.groups
    if len(groups) != 1:
        return f"{len(groups)} groups"
    g = groups[0]
    if g.quota_units() == 0:
        return "∞"
    pct = "" if g.used_percentage == 1.0 else f" x{g.used_percentage:g}"
    if g.unit == "bytes":
        return f"{g.quota_bytes:,} B{pct}"
    return f"{g.quota_blocks:,} blocks{pct}"


RATE_CAPTION = ("token hit = sum(hit tokens) / sum(input tokens) (aggregate, the contract's); "
                "req-mean tok = mean over requests of hit/input tokens (the Mooncake paper's "
                "\"cache ratio\")")


def _rate(v: Any) -> str:
    return "–" if v is None else f"{v:.6f}"


def summary_table(results: Sequence[ReplayResult], ideal: dict[str, Any] | None, *,
                  title: str | None = None) -> Table:
    """One row per run plus the ideal row.

    ``token hit`` is the contract's aggregate rate (sum of hit tokens / sum of input
    tokens); ``req-mean tok`` is the mean of the per-request ratios
    (``mean_request_token_hit_rate``, the Mooncake paper's "cache ratio").
    ``peak used`` is :func:`peak_used`: the exact peak cache usage after a request, in
    the quota's unit (blocks, or bytes), to hold against ``capacity``.
    """
    t = Table(title=title, title_justify="left", caption=RATE_CAPTION, caption_justify="left")
    t.add_column("label", style="bold")
    t.add_column("capacity", justify="right")
    t.add_column("hit blocks", justify="right")
    t.add_column("block hit", justify="right")
    t.add_column("token hit", justify="right", style="cyan")
    t.add_column("req-mean tok", justify="right")
    t.add_column("internal tok", justify="right")
    t.add_column("external tok", justify="right")
    t.add_column("evicted", justify="right")
    units = {r.used_unit() for r in results}
    t.add_column("peak used" + (f" ({units.pop()})" if len(units) == 1 else ""),
                 justify="right")
    t.add_column("time", justify="right")
    for r in results:
        s = r.summary()
        t.add_row(
            r.label, capacity_text(r.config), f"{s['hit_blocks']:,}",
            _rate(s["block_hit_rate"]), _rate(s["token_hit_rate"]),
            _rate(s["mean_request_token_hit_rate"]),
            _rate(s["internal_token_hit_rate"]), _rate(s["external_token_hit_rate"]),
            f"{s['evicted_blocks']:,}", f"{s['peak_used']:,}", f"{s['elapsed_s']:.2f}s",
        )  # fmt: skip
    if ideal is not None:
        t.add_row(
            "ideal", "∞", f"{ideal['hit_blocks']:,}", _rate(ideal["block_hit_rate"]),
            _rate(ideal["token_hit_rate"]), _rate(ideal.get("mean_request_token_hit_rate")),
            "–", "–", "0", "–", "–", style="dim",
        )  # fmt: skip
    return t


def _breakdown_table(results: Sequence[ReplayResult], column: str, title: str) -> Table:
    t = Table(title=title, title_justify="left", caption=RATE_CAPTION, caption_justify="left")
    if len(results) > 1:
        t.add_column("label", style="bold")
    t.add_column(column, style="bold" if len(results) == 1 else None)
    if column == "instance":
        t.add_column("group")
    peak_col = "peak cached blocks" if column == "instance" else "peak used"
    for name in ("requests", "hit blocks", "block hit", "token hit", "req-mean tok",
                 "internal tok", "external tok", "evicted", peak_col):
        t.add_column(name, justify="right", style="cyan" if name == "token hit" else None)
    for r in results:
        df = per_instance_frame(r) if column == "instance" else r.by("group")
        for row in df.to_dicts():
            cells = [r.label] if len(results) > 1 else []
            cells.append(str(row[column]))
            if column == "instance":
                cells.append(str(row["group"]))
            cells += [
                f"{row['requests']:,}", f"{row['hit_blocks']:,}",
                _rate(_clean(row["block_hit_rate"])), _rate(_clean(row["token_hit_rate"])),
                _rate(_clean(row["mean_request_token_hit_rate"])),
                _rate(_clean(row["internal_token_hit_rate"])),
                _rate(_clean(row["external_token_hit_rate"])),
                f"{row['evicted_blocks']:,}",
                f"{row['peak_cached_blocks' if column == 'instance' else 'peak_used']:,}",
            ]  # fmt: skip
            t.add_row(*cells)
    return t


def instance_table(results: Sequence[ReplayResult]) -> Table:
    """Totals and rates per instance (one block of rows per run)."""
    return _breakdown_table(results, "instance", "per instance")


def group_table(results: Sequence[ReplayResult]) -> Table:
    """Totals and rates per instance group (one block of rows per run)."""
    return _breakdown_table(results, "group", "per group")


# ---------------------------------------------------------------------- time series
def timeseries_frame(results: Sequence[ReplayResult], *, window_ns: int | None = None,
                     points: int = 200) -> pl.DataFrame:
    """Every run's :meth:`~ReplayResult.timeseries`, stacked, with ``label`` and ``t_s``.

    ``t_s`` is the window's end in seconds from the trace's first request.
    """
    import polars as pl

    frames = []
    for r in results:
        ts = r.timeseries(window_ns, points=points)
        if ts.is_empty():
            continue
        t0 = int(r.trace.ts_ns[0])
        ts = ts.join(_usage_by_window(r, window_ns, points), on="window", how="left")
        frames.append(ts.with_columns(
            pl.lit(r.label, dtype=pl.Utf8).alias("label"),
            ((pl.col("end_ns") - t0) / 1e9).alias("t_s"),
        ).select("label", "window", "t_s", pl.exclude("label", "window", "t_s")))
    if not frames:
        return pl.DataFrame({"label": [], "window": [], "t_s": []},
                            schema={"label": pl.Utf8, "window": pl.Int64, "t_s": pl.Float64})
    return pl.concat(frames, how="diagonal_relaxed")


def _usage_by_window(r: ReplayResult, window_ns: int | None, points: int) -> pl.DataFrame:
    """``group_used``: the summed group usage at each window's end (exact).

    Unlike the per-instance ``cached_blocks`` columns (each instance's count as of its
    own last request, so stale when another instance's writes evicted its blocks),
    a group's usage is recorded by every request of the group, so the last value
    per window is the usage at that moment.
    """
    import polars as pl

    t = r.trace
    t0 = int(t.ts_ns[0])
    if window_ns is None:  # the same default as ReplayResult.timeseries
        span = max(1, int(t.ts_ns[-1]) - t0)
        window_ns = max(1, -(-span // points))
    group_names = np.asarray(r.group_of_instance, dtype=object)[t.instance]
    per = (
        pl.DataFrame({
            "window": (t.ts_ns - t0) // window_ns,
            "group": pl.Series(group_names, dtype=pl.Utf8),
            "used": r.group_used,
        })
        .group_by(["window", "group"], maintain_order=True)
        .agg(pl.col("used").last())
        .pivot(on="group", index="window", values="used")
        .sort("window")
    )
    cols = [c for c in per.columns if c != "window"]
    per = per.with_columns(pl.col(c).forward_fill().fill_null(0) for c in cols)
    return per.select("window", pl.sum_horizontal(cols).alias("group_used"))


def plot_hitrate(ts: pl.DataFrame, path: str | os.PathLike[str], *,
                 ideal: dict[str, Any] | None = None, title: str | None = None,
                 unit: str = "blocks") -> None:
    """Chart per-window and cumulative token hit rate, and cached blocks, over time.

    One colour per label; per-window rates are thin translucent lines, cumulative
    rates thick ones; the ideal (unbounded) rate is a dashed grey line. The lower
    panel is the cache usage (``group_used``, in ``unit``). Written as PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_hit, ax_use = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    labels = list(dict.fromkeys(ts["label"].to_list())) if ts.height else []
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for label, color in zip(labels, colors, strict=True):
        d = ts.filter(ts["label"] == label)
        x = d["t_s"].to_numpy()
        ax_hit.plot(x, d["token_hit_rate"].to_numpy(), color=color, lw=0.8, alpha=0.35)
        ax_hit.plot(x, d["cum_token_hit_rate"].to_numpy(), color=color, lw=2.0, label=label)
        ax_use.plot(x, d["group_used"].to_numpy(), color=color, lw=1.5, label=label)
    if ideal is not None:
        ax_hit.axhline(ideal["token_hit_rate"], color="0.4", ls="--", lw=1.2,
                       label=f"ideal {ideal['token_hit_rate']:.3f}")
    ax_hit.set_ylabel("token hit rate")
    ax_hit.set_ylim(0, 1)
    ax_hit.grid(alpha=0.3)
    ax_hit.set_title(title or "token hit rate (thin: per window, thick: cumulative)",
                     loc="left", fontsize=10)
    if labels or ideal is not None:
        fig.legend(*ax_hit.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    ax_use.set_ylabel(f"cache usage ({unit})")
    ax_use.set_xlabel("time since first request (s)")
    ax_use.grid(alpha=0.3)
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------- files
@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike[str], names: Sequence[str]
                   ) -> Iterator[dict[str, Path]]:
    """Temp files for ``names`` in ``out_dir``, renamed into place together on success.

    Nothing is written under the final names unless every file was produced; on any
    error the temp files are removed and the error propagates.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with staged_outputs(d, ["a.txt"]) as tmp:
        ...     _ = tmp["a.txt"].write_text("hi")
        >>> (d / "a.txt").read_text()
        'hi'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:  # fail before writing anything rather than half-way through
        if (out / name).is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(out / name))
    for name in names:
        _clean_stale(out, name)
    staged: list[tuple[Path, Path]] = []
    try:
        tmps = {name: _stage(out, name, staged) for name in names}
        yield tmps
        for tmp, dst in staged:
            os.replace(tmp, dst)
    except BaseException:
        for tmp, _dst in staged:
            tmp.unlink(missing_ok=True)
        raise


def _clean_stale(out_dir: Path, name: str) -> None:
    """Remove temp files of ``name`` left by a run that was killed (``kill -9``) while
    staging: ``.<name>.<pid>.*.tmp`` whose process no longer exists."""
    for p in out_dir.glob(f".{glob.escape(name)}.*.tmp"):
        pid = p.name[len(name) + 2:].split(".", 1)[0]
        if not pid.isascii() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass


def _stage(out_dir: Path, name: str, staged: list[tuple[Path, Path]]) -> Path:
    """A new temp file in ``out_dir`` for ``name``, recorded in ``staged`` (named
    ``.<name>.<pid>.<random>.tmp``: a later run removes it if this process died)."""
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.{os.getpid()}.", suffix=".tmp")
    staged.append((Path(tmp), out_dir / name))
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
    finally:
        os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_outputs(
    out_dir: str | os.PathLike[str],
    doc: dict[str, Any],
    ts: pl.DataFrame,
    *,
    ts_format: str = "parquet",
    ideal: dict[str, Any] | None = None,
    plot: bool = True,
    title: str | None = None,
    unit: str = "blocks",
) -> list[Path]:
    """Write ``summary.json``, ``timeseries.<fmt>`` and ``hitrate.png`` into ``out_dir``.

    All files are written to temp files in ``out_dir`` first and renamed into place
    only when every one of them succeeded; on failure the temp files are removed.

    Returns:
        The paths written, in order.

    Raises:
        OSError: the directory cannot be created or a file cannot be written.
        ValueError: unknown ``ts_format``.
    """
    if ts_format not in TIMESERIES_FORMATS:
        raise ValueError(f"timeseries format must be one of {TIMESERIES_FORMATS}, got "
                         f"{ts_format!r}")
    out = Path(out_dir)
    ts_name = f"timeseries.{ts_format}"
    names = [SUMMARY_NAME, ts_name, *([PLOT_NAME] if plot else [])]
    with staged_outputs(out, names) as tmp:
        tmp[SUMMARY_NAME].write_text(document_json(doc))
        if ts_format == "parquet":
            ts.write_parquet(tmp[ts_name])
        else:
            ts.write_csv(tmp[ts_name])
        if plot:
            plot_hitrate(ts, tmp[PLOT_NAME], ideal=ideal, title=title, unit=unit)
    return [out / name for name in names]

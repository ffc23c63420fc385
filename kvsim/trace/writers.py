"""Trace writers for every format :mod:`kvsim.trace.readers` reads.

Every writer is atomic: it writes a temporary file in the target's directory and
``os.replace``-s it into place, so an error never leaves a half-written trace.

What each format holds (the rest is lost, and a round trip compares only this):

* ``parquet``: everything (instances, kinds, query types, masks, sessions, turns,
  types, block size and ``meta`` in the file metadata).
* ``kvcm``: instances, times (``timestamp_ns``), keys, kinds, query types, masks
  (an int offset when a row's mask is a prefix, else booleans), ``sw_size``,
  input/output lengths. No sessions, turns or types.
* ``bailian``: times (float seconds), keys, lengths, sessions (as chat/parent links),
  turns and types. One instance.
* ``mooncake``: times (ms: an int when exact, else a float), keys, lengths.

Example:
    >>> import os, tempfile
    >>> from kvsim.trace.model import Trace
    >>> from kvsim.trace.readers import read_trace
    >>> t = Trace.from_lists(ts_ns=[0, 1000], keys=[[1, 2], [1, 3]], block_size=16)
    >>> p = os.path.join(tempfile.mkdtemp(), "t.parquet")
    >>> write_trace(t, p)
    >>> read_trace(p).keys.tolist()
    [1, 2, 1, 3]
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kvsim.trace.model import (
    KIND_READ,
    KIND_REQUEST,
    KIND_WRITE,
    QT_BATCH,
    QT_PREFIX,
    QT_SW,
    Trace,
    TraceError,
)
from kvsim.trace.readers import FORMATS, PathLike

__all__ = [
    "bailian_chat_ids",
    "lost_columns",
    "output_format",
    "trace_to_arrow",
    "write_bailian",
    "write_kvcm",
    "write_mooncake",
    "write_parquet",
    "write_trace",
]

_KIND_OUT = {KIND_REQUEST: "request", KIND_READ: "get", KIND_WRITE: "write"}
_QT_OUT = {QT_PREFIX: "prefix_match", QT_BATCH: "batch_get", QT_SW: "reverse_roll_sw_match"}
_LINES_PER_WRITE = 8192


def write_trace(trace: Trace, path: PathLike, fmt: str = "auto") -> None:
    """Write ``trace`` to ``path`` atomically.

    Args:
        trace: the trace.
        path: the destination; ``.gz`` compresses the JSONL formats.
        fmt: ``"parquet"``, ``"kvcm"``, ``"bailian"``, ``"mooncake"`` or ``"auto"``
            (parquet for ``.parquet``/``.pq``, else kvcm: the JSONL format that holds
            the most).

    Raises:
        TraceError: unknown format, or the directory cannot be written.

    Example:
        >>> import os, tempfile
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0], keys=[[7]], block_size=512)
        >>> p = os.path.join(tempfile.mkdtemp(), "t.jsonl")
        >>> write_trace(t, p, "mooncake")
        >>> open(p).read()
        '{"timestamp":0,"input_length":512,"output_length":0,"hash_ids":[7]}\\n'
    """
    fmt = output_format(path, fmt)
    writers: dict[str, Callable[[Trace, PathLike], None]] = {
        "parquet": write_parquet,
        "kvcm": write_kvcm,
        "bailian": write_bailian,
        "mooncake": write_mooncake,
    }
    if fmt not in writers:
        raise TraceError(f"{path}: unknown trace format {fmt!r} (choose from {', '.join(FORMATS)})")
    writers[fmt](trace, path)


_HOLDS = {
    "mooncake": set(),
    "bailian": {"session", "turn", "type_code"},
    "kvcm": {"instance", "kind", "query_type", "sw_size", "mask"},
    "parquet": {"instance", "kind", "query_type", "sw_size", "mask", "session", "turn",
                "type_code"},
}  # fmt: skip


def lost_columns(trace: Trace, fmt: str) -> list[str]:
    """The columns of ``trace`` that carry information ``fmt`` cannot store.

    Example:
        >>> from kvsim.trace.model import Trace
        >>> t = Trace.from_lists(ts_ns=[0, 1], keys=[[1], [2]], instance=["a", "b"])
        >>> lost_columns(t, "mooncake"), lost_columns(t, "kvcm")
        (['instance'], [])
    """
    used = {
        "instance": len(trace.instances) > 1,
        "kind": bool(trace.kind.any()),
        "query_type": bool(trace.query_type.any()),
        "sw_size": bool(trace.sw_size.any()),
        "mask": trace.mask is not None,
        "session": trace.session is not None,
        "turn": trace.turn is not None,
        "type_code": trace.type_code is not None,
    }
    return [c for c, u in used.items() if u and c not in _HOLDS[fmt]]


def output_format(path: PathLike, fmt: str = "auto") -> str:
    """The format :func:`write_trace` uses: ``fmt``, or for ``"auto"`` parquet for
    ``.parquet``/``.pq`` and kvcm otherwise."""
    if fmt != "auto":
        return fmt
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "kvcm"


@contextlib.contextmanager
def _atomic(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; move it into place only on success."""
    dst = Path(path)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:  # O_EXCL: never clobber; mode 0o666 minus the umask, like a plain open()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise TraceError(f"{dst}: cannot write: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_jsonl(path: PathLike, records: Iterator[bytes]) -> None:
    with _atomic(path) as tmp:
        opener = gzip.open if Path(path).suffix == ".gz" else open
        with opener(tmp, "wb") as f:
            buf: list[bytes] = []
            for rec in records:
                buf.append(rec)
                if len(buf) >= _LINES_PER_WRITE:
                    f.write(b"\n".join(buf) + b"\n")
                    buf.clear()
            if buf:
                f.write(b"\n".join(buf) + b"\n")


def _time_values(ts_ns: np.ndarray, per_unit: int) -> list[Any]:
    """Times in units of ``per_unit`` ns: ints where exact, floats otherwise."""
    q, r = np.divmod(ts_ns, per_unit)
    if not r.any():
        return q.tolist()
    return [int(a) if b == 0 else float(t) / per_unit for a, b, t in zip(q, r, ts_ns, strict=True)]


def _rows(trace: Trace) -> Iterator[tuple[int, np.ndarray]]:
    off = trace.offsets
    for i in range(trace.n_requests):
        yield i, trace.keys[off[i] : off[i + 1]]


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def write_mooncake(trace: Trace, path: PathLike) -> None:
    """Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``."""
    ts = _time_values(trace.ts_ns, 1_000_000)
    il, ol = trace.input_len.tolist(), trace.output_len.tolist()
    dumps = orjson.dumps
    _write_jsonl(
        path,
        (
            dumps(
                {"timestamp": ts[i], "input_length": il[i], "output_length": ol[i], "hash_ids": k},
                option=_NUMPY,
            )
            for i, k in _rows(trace)
        ),
    )


def bailian_chat_ids(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(chat_id, parent_chat_id) per row, encoding ``trace.session``.

    The first row of each session gets ``chat_id = session`` (so reading it back
    gives the same session ids) and parent -1; every later row gets a fresh id above
    all session ids and the previous row of its session as parent. Without sessions,
    every row is its own root with ``chat_id`` = its row number.
    """
    n = trace.n_requests
    if trace.session is None:
        return np.arange(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    sess = trace.session
    order = np.lexsort((np.arange(n), sess))  # by session, then row (time) order
    s_sorted = sess[order]
    first = np.ones(n, dtype=bool)
    first[1:] = s_sorted[1:] != s_sorted[:-1]
    base = int(sess.max()) + 1 if n else 0
    chat_sorted = np.where(first, s_sorted, base + np.arange(n, dtype=np.int64))
    parent_sorted = np.full(n, -1, dtype=np.int64)
    parent_sorted[1:] = np.where(first[1:], -1, chat_sorted[:-1])
    chat = np.empty(n, dtype=np.int64)
    parent = np.empty(n, dtype=np.int64)
    chat[order] = chat_sorted
    parent[order] = parent_sorted
    return chat, parent


def write_bailian(trace: Trace, path: PathLike) -> None:
    """Qwen-Bailian JSONL (see :func:`bailian_chat_ids` for how sessions are encoded).

    ``turn`` defaults to 1 and ``type`` to ``"text"`` when the trace has none.
    """
    n = trace.n_requests
    chat, parent = (a.tolist() for a in bailian_chat_ids(trace))
    ts = (trace.ts_ns / 1e9).tolist()
    il, ol = trace.input_len.tolist(), trace.output_len.tolist()
    turn = trace.turn.tolist() if trace.turn is not None else [1] * n
    if trace.type_code is not None:
        names = np.asarray(trace.type_names, dtype=object)
        types = names[trace.type_code].tolist()
    else:
        types = ["text"] * n
    dumps = orjson.dumps
    _write_jsonl(
        path,
        (
            dumps(
                {
                    "chat_id": chat[i],
                    "parent_chat_id": parent[i],
                    "timestamp": ts[i],
                    "input_length": il[i],
                    "output_length": ol[i],
                    "type": types[i],
                    "turn": turn[i],
                    "hash_ids": k,
                },
                option=_NUMPY,
            )
            for i, k in _rows(trace)
        ),
    )


def _mask_offsets(trace: Trace) -> np.ndarray:
    """Per row: n if the row's mask is exactly its first n keys, else -1."""
    assert trace.mask is not None
    off = trace.offsets
    lens = np.diff(off)
    csum = np.zeros(trace.n_keys + 1, dtype=np.int64)
    np.cumsum(trace.mask, out=csum[1:])
    n_true = csum[off[1:]] - csum[off[:-1]]
    pos = np.arange(trace.n_keys, dtype=np.int64) - np.repeat(off[:-1], lens)
    wrong = trace.mask != (pos < np.repeat(n_true, lens))
    row_of = np.repeat(np.arange(trace.n_requests), lens)
    out = n_true.copy()
    out[np.unique(row_of[wrong])] = -1
    return out


def write_kvcm(trace: Trace, path: PathLike) -> None:
    """Tair KVCM optimizer-schema JSONL (``timestamp_ns``, one record per request)."""
    names = trace.instances
    inst = trace.instance.tolist()
    ts, il, ol = trace.ts_ns.tolist(), trace.input_len.tolist(), trace.output_len.tolist()
    kind, qt, sw = trace.kind.tolist(), trace.query_type.tolist(), trace.sw_size.tolist()
    moff = _mask_offsets(trace).tolist() if trace.mask is not None else None
    off = trace.offsets
    dumps = orjson.dumps

    def records() -> Iterator[bytes]:
        for i, k in _rows(trace):
            rec: dict[str, Any] = {
                "instance_id": names[inst[i]],
                "trace_id": str(i),
                "timestamp_ns": ts[i],
                "type": _KIND_OUT[kind[i]],
                "query_type": _QT_OUT[qt[i]],
                "keys": k,
                "sw_size": sw[i],
                "input_len": il[i],
                "output_len": ol[i],
                "total_keys": int(k.shape[0]),
            }
            if moff is not None:
                m = moff[i]
                rec["block_mask"] = m if m >= 0 else trace.mask[off[i] : off[i + 1]]  # type: ignore[index]
            yield dumps(rec, option=_NUMPY)

    _write_jsonl(path, records())


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """A string column from codes into ``names``."""
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int32)), pa.array(list(names), pa.string())
    ).cast(pa.string())


def trace_to_arrow(trace: Trace) -> pa.Table:
    """The kvsim native parquet table of ``trace`` (with its schema metadata)."""
    large = trace.n_keys >= 2**31 - 1
    list_cls = pa.LargeListArray if large else pa.ListArray
    off = pa.array(trace.offsets.astype(np.int64 if large else np.int32))
    cols: dict[str, pa.Array] = {
        "ts_ns": pa.array(trace.ts_ns, pa.int64()),
        "instance": _strings(trace.instance, trace.instances),
        "keys": list_cls.from_arrays(off, pa.array(trace.keys, pa.int64())),
        "input_len": pa.array(trace.input_len, pa.int64()),
        "output_len": pa.array(trace.output_len, pa.int64()),
        "kind": pa.array(trace.kind, pa.int8()),
        "query_type": pa.array(trace.query_type, pa.int8()),
        "sw_size": pa.array(trace.sw_size, pa.int32()),
    }
    if trace.session is not None:
        cols["session"] = pa.array(trace.session, pa.int64())
    if trace.turn is not None:
        cols["turn"] = pa.array(trace.turn, pa.int32())
    if trace.type_code is not None:
        cols["type"] = pa.DictionaryArray.from_arrays(
            pa.array(trace.type_code.astype(np.int32)),
            pa.array(list(trace.type_names), pa.string()),
        ).cast(pa.string())
    if trace.mask is not None:
        cols["mask"] = list_cls.from_arrays(off, pa.array(trace.mask, pa.bool_()))
    meta = {
        "kvsim.format_version": "1",
        "kvsim.block_size": str(trace.block_size),
        "kvsim.instances": orjson.dumps(list(trace.instances)).decode(),
        "kvsim.meta": orjson.dumps(trace.meta).decode(),
    }
    if trace.type_code is not None:
        meta["kvsim.type_names"] = orjson.dumps(list(trace.type_names)).decode()
    return pa.table(cols).replace_schema_metadata(meta)


def write_parquet(trace: Trace, path: PathLike) -> None:
    """kvsim native parquet (zstd, one row per request; see :func:`read_parquet`)."""
    table = trace_to_arrow(trace)
    with _atomic(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)

"""Trace readers: Mooncake, Qwen-Bailian, Tair KVCM optimizer schema, kvsim parquet.

Every reader returns a :class:`~kvsim.trace.model.Trace` whose requests are sorted
by time (stably: ties keep file order) and whose keys follow the replay contract:

* ``tail="drop"`` (default) keeps only full blocks of formats that list a key for a
  partial last block (Mooncake, Bailian): ``keys = hash_ids[: input_length // block_size]``.
* ``chain="auto"`` checks the prefix property on the first
  :data:`CHAIN_CHECK_ROWS` requests of ``hash_ids`` formats and chains the ids with
  :func:`~kvsim.trace.hashing.chain_ids` only when it fails; ``"on"`` always chains,
  ``"off"`` never. The keys of the kvcm and parquet formats are block keys already,
  so for them ``"auto"`` means ``"off"``.

JSONL is parsed one line at a time with orjson; a bad line raises
:class:`~kvsim.trace.model.TraceError` naming the file, the 1-based line number and
the field. Out-of-order timestamps are sorted with a :class:`TraceWarning`, or
rejected with ``strict=True``.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "t.jsonl")
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"timestamp": 0, "input_length": 1100, "output_length": 5, '
    ...                 '"hash_ids": [1, 2, 3]}\\n')
    >>> t = read_trace(p)
    >>> t.block_size, t.request_keys(0).tolist()
    (512, [1, 2])
"""

from __future__ import annotations

import array
import gzip
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kvsim.trace.fastids import MIN_LIST_BYTES, split_ids
from kvsim.trace.hashing import MASK64, as_uint64, chain_ids, is_prefix_chained
from kvsim.trace.model import (
    KIND_READ,
    KIND_REQUEST,
    KIND_WRITE,
    QT_BATCH,
    QT_PREFIX,
    QT_SW,
    Trace,
    TraceError,
    _gather_index,
)

__all__ = [
    "BLOCK_FORMATS",
    "CHAIN_CHECK_ROWS",
    "DEFAULT_BLOCK_SIZE",
    "FORMATS",
    "ChunkOrderError",
    "TraceWarning",
    "detect_format",
    "iter_jsonl_chunks",
    "parse_query_type",
    "read_agentic",
    "read_bailian",
    "read_kvcm",
    "read_kvcm_events",
    "read_mooncake",
    "read_parquet",
    "read_requests",
    "read_trace",
]

FORMATS = ("mooncake", "bailian", "kvcm", "kvcm-events", "parquet", "requests", "agentic")
DEFAULT_BLOCK_SIZE = {"mooncake": 512, "bailian": 16, "kvcm": 16, "kvcm-events": 16,
                      "parquet": 16, "requests": 16, "agentic": 512}
CHAIN_CHECK_ROWS = 1000
_CHUNK = 1 << 20  # flush collected keys to numpy every ~1M ids (bounded memory)

Tail = Literal["drop", "keep"]
Chain = Literal["auto", "on", "off"]
PathLike = str | Path

_QT_NAMES: dict[Any, int] = {
    "prefix": QT_PREFIX,
    "prefix_match": QT_PREFIX,
    "qt_prefix_match": QT_PREFIX,
    "batch": QT_BATCH,
    "batch_get": QT_BATCH,
    "qt_batch_get": QT_BATCH,
    "sw": QT_SW,
    "sw_match": QT_SW,
    "reverse_roll_sw_match": QT_SW,
    "qt_reverse_roll_sw_match": QT_SW,
    QT_PREFIX: QT_PREFIX,
    QT_BATCH: QT_BATCH,
    QT_SW: QT_SW,
}
_KIND_NAMES = {
    "request": KIND_REQUEST,
    "get": KIND_READ,
    "read": KIND_READ,
    "write": KIND_WRITE,
}


class TraceWarning(UserWarning):
    """Something in a trace was repaired while reading it (e.g. unsorted timestamps)."""


def parse_query_type(value: Any) -> int:
    """The ``QT_*`` code of a query type given as a name (any case) or an int.

    Raises:
        ValueError: unknown query type.

    Example:
        >>> parse_query_type("QT_BATCH_GET"), parse_query_type("prefix_match")
        (1, 0)
    """
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in _QT_NAMES:
        raise ValueError(f"unknown query type {value!r}")
    return _QT_NAMES[key]


# ---------------------------------------------------------------------- entry
def read_trace(
    path: PathLike,
    fmt: str = "auto",
    *,
    block_size: int | None = None,
    tail: Tail = "drop",
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
    request_keys: dict[str, str] | None = None,
) -> Trace:
    """Read a trace file in any supported format.

    Args:
        path: the file (``.jsonl``, ``.jsonl.gz`` or ``.parquet``).
        fmt: ``"auto"`` (by extension, then by the fields of the first record),
            ``"mooncake"``, ``"bailian"``, ``"kvcm"`` or ``"parquet"``.
        block_size: tokens per key; ``None`` = the format's default
            (:data:`DEFAULT_BLOCK_SIZE`; parquet: the file's metadata).
        tail: ``"drop"`` keeps full blocks only (the contract); ``"keep"`` keeps every id.
        chain: ``"auto"``, ``"on"`` or ``"off"`` (see the module docstring).
        strict: raise on out-of-order timestamps instead of sorting with a warning.
        instance: formats without instance ids put every request on this instance
            (default ``"default"``); kvcm and parquet keep only this instance's requests.
        request_keys: for ``"requests"``: ``keys``, ``hash_algo``, ``hash_seed`` of
            :func:`read_requests`.

    Returns:
        The trace, sorted by time.

    Raises:
        TraceError: unreadable, empty, unrecognised or malformed trace.

    Example:
        >>> t = read_trace("../shared/traces/mooncake_conversation.jsonl")  # doctest: +SKIP
        >>> t.n_requests, t.n_keys  # doctest: +SKIP
        (12031, 276491)
    """
    if tail not in ("drop", "keep"):
        raise ValueError(f"tail must be 'drop' or 'keep', got {tail!r}")
    if chain not in ("auto", "on", "off"):
        raise ValueError(f"chain must be 'auto', 'on' or 'off', got {chain!r}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "mooncake":
        return read_mooncake(
            path, block_size=block_size, tail=tail, chain=chain, strict=strict, instance=instance
        )
    if fmt == "bailian":
        return read_bailian(
            path, block_size=block_size, tail=tail, chain=chain, strict=strict, instance=instance
        )
    if fmt == "kvcm":
        return read_kvcm(path, block_size=block_size, chain=chain, strict=strict, instance=instance)
    if fmt == "kvcm-events":
        return read_kvcm_events(path, block_size=block_size, strict=strict, instance=instance)
    if fmt == "parquet":
        return read_parquet(
            path, block_size=block_size, chain=chain, strict=strict, instance=instance
        )
    if fmt == "requests":
        return read_requests(path, block_size=block_size, strict=strict, instance=instance,
                             **(request_keys or {}))
    if fmt == "agentic":
        return read_agentic(path, block_size=block_size, tail=tail, chain=chain,
                            instance=instance)
    raise TraceError(f"{path}: unknown trace format {fmt!r} (choose from {', '.join(FORMATS)})")


def detect_format(path: PathLike) -> str:
    """Guess a trace's format from its extension and first record.

    ``.parquet``/``.pq`` (or the parquet magic bytes) is parquet. For JSONL, the first
    non-blank record decides: ``chat_id``/``parent_chat_id`` -> bailian,
    ``hash_ids`` + ``input_length`` -> mooncake, ``instance_id``/``keys`` -> kvcm.

    Raises:
        TraceError: missing, empty or unrecognised file.
    """
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    try:
        with _open(p) as f:
            if f.read(4) == b"PAR1":
                return "parquet"
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    for lineno, obj in _iter_objects(p):
        if "chat_id" in obj or "parent_chat_id" in obj:
            return "bailian"
        if "trigger_time_us" in obj and "type" in obj:
            return "kvcm-events"
        if "token_ids" in obj:
            return "requests"
        if "hash_ids" in obj and ("wait_for" in obj or "request_id" in obj):
            return "agentic"
        if "hash_ids" in obj and ("input_length" in obj or "output_length" in obj):
            return "mooncake"
        if "instance_id" in obj or "keys" in obj:
            return "kvcm"
        fields = ", ".join(sorted(obj)) or "none"
        raise TraceError(
            f"{path}:{lineno}: unrecognised trace format (fields: {fields}); expected "
            "mooncake (hash_ids, input_length), bailian (chat_id, parent_chat_id, ...), "
            "kvcm (instance_id, keys, ...), requests (token_ids) or agentic (request_id, "
            "wait_for, hash_ids)"
        )
    raise TraceError(f"{path}: empty trace (no records)")


# ---------------------------------------------------------------------- JSONL plumbing
def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _block_size(block_size: int | None, fmt: str) -> int:
    if block_size is None:
        return DEFAULT_BLOCK_SIZE[fmt]
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return block_size


def _iter_objects(path: Path, *, fast_ids: bool = False
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line (``fast_ids``: a long
    ``hash_ids`` list is an int64 array, see :mod:`kvsim.trace.fastids`).

    Blank lines between records are skipped with one warning naming their count and the
    first one (blank lines at the end of the file are not worth a word).
    """
    try:
        f = _open(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    lines = _Lines(path, fast_ids=fast_ids)
    with f:
        yield from lines.objects(1, f)
    if lines.mid_count:
        warnings.warn(lines.blank_message(), stacklevel=2)


class _Lines:
    """The objects of JSONL lines given in one piece or block by block (line numbers go
    on from block to block), and the blank lines between records over all of them."""

    def __init__(self, path: Path, *, fast_ids: bool = False) -> None:
        self.path = path
        self.fast_ids = fast_ids  # hash_ids lists may come as int64 arrays (fastids.py)
        self.blank_first = self.blank_count = 0  # blank lines seen since the last record
        self.mid_first = self.mid_count = 0  # blank lines followed by a record

    def objects(self, first: int, lines: Iterable[bytes]
                ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, object) of each non-blank line; ``first`` is the first's. With
        ``fast_ids``, a long ``hash_ids`` list is an int64 array (the same values)."""
        loads, path = orjson.loads, self.path
        fast = self.fast_ids
        for lineno, line in enumerate(lines, first):
            obj = _fast_object(line) if fast and len(line) > MIN_LIST_BYTES else None
            if obj is None:
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError as e:
                    if not line.strip():
                        self.blank_first = self.blank_first or lineno
                        self.blank_count += 1
                        continue
                    raise TraceError(f"{path}:{lineno}: invalid JSON {_line_error(line, e)}"
                                     ) from None
            if self.blank_count:
                self.mid_first = self.mid_first or self.blank_first
                self.mid_count += self.blank_count
                self.blank_first = self.blank_count = 0
            if type(obj) is not dict:
                raise TraceError(f"{path}:{lineno}: expected a JSON object, got {_show(obj)}")
            yield lineno, obj

    def blank_message(self) -> str:
        return (f"{self.path}: skipped {self.mid_count:,} blank line(s) between records "
                f"(the first at line {self.mid_first})")


def _fast_object(line: bytes) -> dict[str, Any] | None:
    """The line's object with its ``hash_ids`` list parsed by
    :func:`kvsim.trace.fastids.split_ids`, or None for the plain path (the fast path is
    not sure of the line, or the key it cut was not the object's own)."""
    cut = split_ids(line)
    if cut is None:
        return None
    try:
        obj = orjson.loads(cut[0])
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("hash_ids") != []:
        return None
    obj["hash_ids"] = cut[1]
    return obj


def _line_blocks(path: Path, block_bytes: int) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines without their newline) of about ``block_bytes`` bytes
    of the file at a time, cut at line ends (a line longer than a block is read whole).
    """
    try:
        f = _open(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    lineno, rest = 1, b""
    with f:
        while True:
            try:
                buf = f.read(block_bytes)
            except (OSError, EOFError) as e:
                raise TraceError(f"{path}: cannot read (after line {lineno - 1}): {e}"
                                 ) from None
            if not buf:
                break
            data = rest + buf if rest else buf
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line end yet
                rest = data
                continue
            lines = data[:cut].split(b"\n")
            lines.pop()  # the empty piece after the last line end
            rest = data[cut:]
            del data, buf
            yield lineno, lines
            lineno += len(lines)
    if rest:
        yield lineno, [rest]


def _line_error(line: bytes, e: Any) -> str:
    """:func:`_json_where` of a line as a file gives it (a line cut from a block has no
    newline: the error is the one of the line with it)."""
    if not line.endswith(b"\n"):
        line += b"\n"
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as e2:
            return _json_where(line, e2)
    return _json_where(line, e)


def _json_where(line: str | bytes, e: Any) -> str:
    """``at column N: <reason>`` for a decode error of one line (orjson counts the line's
    own newline as a second line: an error there is at the end of the line)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    reason = getattr(e, "msg", None) or str(e)
    if getattr(e, "lineno", 1) > 1:
        return f"at the end of the line (column {len(text.rstrip(chr(13) + chr(10))) + 1}): " \
               f"{reason}"
    return f"at column {getattr(e, 'colno', 0)}: {reason}"


def _show(v: Any) -> str:
    s = orjson.dumps(v).decode()
    return s if len(s) <= 60 else s[:57] + "..."


def _field_error(path: Path, line: int, field: str, expected: str, got: Any) -> TraceError:
    return TraceError(f"{path}:{line}: field {field!r}: expected {expected}, got {_show(got)}")


def _missing(path: Path, line: int, field: str) -> TraceError:
    return TraceError(f"{path}:{line}: missing field {field!r}")


class _Rows:
    """Line numbers and per-row id lists, flushed to numpy in chunks."""

    def __init__(self, path: Path, field: str) -> None:
        self.path = path
        self.field = field
        self.lines: list[int] = []
        self.lens: list[int] = []
        self._flat: list[Any] = []
        self._chunks: list[np.ndarray] = []
        self._flushed = 0  # ids already in _chunks

    def add(self, lineno: int, ids: Any) -> None:
        if type(ids) is np.ndarray:  # parsed to int64 already (kvsim.trace.fastids)
            self._flush()
            self.lines.append(lineno)
            self.lens.append(len(ids))
            self._chunks.append(ids)
            self._flushed += len(ids)
            return
        if type(ids) is not list:
            raise _field_error(self.path, lineno, self.field, "a list of integers", ids)
        self.lines.append(lineno)
        self.lens.append(len(ids))
        self._flat.extend(ids)
        if len(self._flat) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._flat:
            return
        self._chunks.append(self._to_int64(self._flat, self._flushed))
        self._flushed += len(self._flat)
        self._flat = []

    def _to_int64(self, flat: list[Any], base: int) -> np.ndarray:
        try:  # ints only (bools are ints to both): C longs without numpy's type inference
            return np.frombuffer(array.array("q", flat), dtype=np.int64)
        except (TypeError, OverflowError):
            pass  # ids past int64, or not ints at all: find out below
        try:
            arr = np.array(flat)
        except (ValueError, TypeError):  # a nested list, or worse: named below
            arr = np.zeros(0, dtype=object)
        if arr.dtype.kind == "i":
            return arr.astype(np.int64, copy=False)
        if arr.dtype == np.uint64:
            return arr.view(np.int64)
        for i, v in enumerate(flat):
            if type(v) is not int or not -(1 << 63) <= v <= MASK64:
                row = int(np.searchsorted(np.cumsum(self.lens), base + i, side="right"))
                raise _field_error(
                    self.path, self.lines[row], self.field, "integer ids in [-2**63, 2**64)", v
                )
        # All ints, some beyond int64 (numpy may have promoted them to float64).
        return as_uint64(np.array(flat, dtype=object)).view(np.int64)

    def offsets(self) -> np.ndarray:
        return _csr_offsets(np.asarray(self.lens, dtype=np.int64))

    def keys(self) -> np.ndarray:
        self._flush()
        if not self._chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]


def _int_array(
    values: list[Any], lines: list[int], path: Path, field: str, *, nonneg: bool = True
) -> np.ndarray:
    """int64 column from JSON values; the first bad value raises, naming its line."""
    arr = np.array(values) if values else np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "i" and (not nonneg or arr.size == 0 or arr.min() >= 0):
        return arr.astype(np.int64, copy=False)
    expected = "a non-negative integer" if nonneg else "an integer"
    for i, v in enumerate(values):
        if type(v) is not int or not ((0 if nonneg else -(1 << 63)) <= v < (1 << 63)):
            raise _field_error(path, lines[i], field, expected, v)
    raise AssertionError("unreachable")  # pragma: no cover


def _time_ns(values: list[Any], lines: list[int], path: Path, field: str, scale: int) -> np.ndarray:
    """Timestamps in units of ``scale`` ns to int64 ns (ints exact, floats rounded)."""
    arr = np.array(values) if values else np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64, copy=False) * np.int64(scale)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)):
        return np.rint(arr * scale).astype(np.int64)
    for i, v in enumerate(values):
        if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
            raise _field_error(path, lines[i], field, "a number", v)
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------- JSONL in blocks
#: The JSONL formats :func:`iter_jsonl_chunks` reads block by block.
BLOCK_FORMATS = ("mooncake", "bailian", "kvcm")
DEFAULT_BLOCK_BYTES = 4 << 20


class ChunkOrderError(TraceError):
    """A block of a JSONL trace starts before the previous block's last request: the
    whole-file reader would sort the file; a reader of blocks cannot."""


def iter_jsonl_chunks(
    path: PathLike,
    fmt: str = "auto",
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    block_size: int | None = None,
    tail: Tail = "drop",
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Iterator[Trace]:
    """A JSONL trace read ``block_bytes`` of the file at a time: one trace per block
    (cut at line ends), parsed with orjson as :func:`read_trace` parses the whole file.

    Memory is one block's text and objects and its keys, whatever the file's size.
    Replayed one after the other (:func:`kvsim.sim.chunked.replay_chunks`), the chunks
    give the integers of the whole file's trace: the chaining of ``chain="auto"`` is
    decided on the first :data:`CHAIN_CHECK_ROWS` records (the first chunk holds them
    all), the requests of a block are sorted by time as the whole file's would be, and
    errors name the file and line (line numbers go on across blocks). What a chunk does
    not have: a Bailian chat whose parent is in an earlier block is its own session
    root; mooncake closed-loop sessions carry over.

    Args:
        path: a ``.jsonl`` or ``.jsonl.gz`` file.
        fmt: ``"auto"`` or one of :data:`BLOCK_FORMATS`.
        block_bytes: bytes of the file per chunk (a line longer than this is one chunk).
        block_size, tail, chain, strict, instance: as in :func:`read_trace`.

    Raises:
        TraceError: as :func:`read_trace`; :class:`ChunkOrderError` when a block starts
            before the previous block's last request (read the whole file to sort it).
    """
    p = Path(path)
    if tail not in ("drop", "keep"):
        raise ValueError(f"tail must be 'drop' or 'keep', got {tail!r}")
    if chain not in ("auto", "on", "off"):
        raise ValueError(f"chain must be 'auto', 'on' or 'off', got {chain!r}")
    if block_bytes <= 0:
        raise ValueError(f"block_bytes must be positive, got {block_bytes}")
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt not in BLOCK_FORMATS:
        raise TraceError(f"{p}: a {fmt} trace is not read in blocks (formats: "
                         f"{', '.join(BLOCK_FORMATS)})")
    bs = _block_size(block_size, fmt)
    lines = _Lines(p, fast_ids=True)
    sessions = _Sessions(p)
    decide = chain == "auto" and fmt != "kvcm"  # kvcm keys are block keys: auto = off
    held: list[tuple[int, list[bytes]]] = []  # blocks kept until they hold the check's rows
    held_rows = 0
    last_ts: int | None = None
    names: dict[str, None] = {}
    found = False

    def records(ls: list[bytes]) -> int:
        return sum(1 for x in ls if x and not x.isspace())

    def parse(blocks: list[tuple[int, list[bytes]]]) -> Trace:
        nonlocal decide, chain
        objs = (o for first, ls in blocks for o in lines.objects(first, ls))
        out: list[bool] = []
        if fmt == "mooncake":
            sessions.next_block()
            tr = _parse_mooncake(p, objs, bs=bs, tail=tail, chain=chain, strict=strict,
                                 instance=instance, sessions=sessions, chain_out=out)
        elif fmt == "bailian":
            tr = _parse_bailian(p, objs, bs=bs, tail=tail, chain=chain, strict=strict,
                                instance=instance, chain_out=out)
        else:
            tr = _parse_kvcm(p, objs, bs=bs, chain=chain, strict=strict)
        if decide:  # the first chunk decided for the whole file
            chain = "on" if out and out[0] else "off"
            decide = False
        return tr

    def emit(blocks: list[tuple[int, list[bytes]]]) -> Iterator[Trace]:
        nonlocal last_ts, found
        tr = parse(blocks)
        if last_ts is not None and int(tr.ts_ns[0]) < last_ts:
            raise ChunkOrderError(
                f"{p}:{blocks[0][0]}: the block from this line starts at "
                f"{int(tr.ts_ns[0])} ns, before the previous block's last request "
                f"({last_ts} ns); read the whole file to sort it")
        last_ts = int(tr.ts_ns[-1])
        if instance is not None and fmt == "kvcm":
            names.update(dict.fromkeys(tr.instances))
            if instance not in tr.instances:
                return
            tr = _only_instance(tr, instance)
        found = True
        yield tr

    for first, ls in _line_blocks(p, block_bytes):
        n = records(ls)
        if not n:
            list(lines.objects(first, ls))  # blank lines only: counted, nothing to parse
            continue
        held.append((first, ls))
        held_rows += n
        if decide and held_rows < CHAIN_CHECK_ROWS:
            continue
        yield from emit(held)
        held, held_rows = [], 0
    if held:
        yield from emit(held)
    if not found:
        if names:
            raise TraceError(f"{p}: no requests of instance {instance!r} "
                             f"(instances: {', '.join(names)})")
        raise TraceError(f"{p}: empty trace (no records)")
    if lines.mid_count:
        warnings.warn(lines.blank_message(), stacklevel=2)


# ---------------------------------------------------------------------- Mooncake
def read_mooncake(
    path: PathLike,
    *,
    block_size: int | None = None,
    tail: Tail = "drop",
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read a Mooncake JSONL trace (``timestamp`` ms, ``input_length``,
    ``output_length``, ``hash_ids``; 512-token blocks by default).

    Args:
        path: the JSONL file.
        block_size: tokens per hash id (default 512).
        tail: ``"drop"``: ``keys = hash_ids[: input_length // block_size]``; ``"keep"``.
        chain: ``"auto"``, ``"on"`` or ``"off"``.
        strict: raise on out-of-order timestamps.
        instance: the instance name (default ``"default"``).

    Returns:
        The trace.

    Raises:
        TraceError: malformed or empty file.
    """
    p = Path(path)
    return _parse_mooncake(p, _iter_objects(p, fast_ids=True),
                           bs=_block_size(block_size, "mooncake"), tail=tail, chain=chain,
                           strict=strict, instance=instance, sessions=_Sessions(p))


def _parse_mooncake(p: Path, objects: Iterable[tuple[int, dict[str, Any]]], *, bs: int,
                    tail: Tail, chain: Chain, strict: bool, instance: str | None,
                    sessions: _Sessions, chain_out: list[bool] | None = None) -> Trace:
    """:func:`read_mooncake` of ``objects`` (a whole file, or one block of it: the
    sessions' state carries over from the blocks before)."""
    ts: list[Any] = []
    il: list[Any] = []
    ol: list[Any] = []
    rows = _Rows(p, "hash_ids")
    get = dict.get
    for lineno, obj in objects:
        if "hash_ids" not in obj:
            raise _missing(p, lineno, "hash_ids")
        if "output_length" not in obj:
            raise _missing(p, lineno, "output_length")
        h = obj["hash_ids"]
        rows.add(lineno, h)
        a = get(obj, "input_length")
        il.append(len(h) * bs if a is None else a)
        ol.append(obj["output_length"])
        t = get(obj, "timestamp", get(obj, "created_time"))
        sid = get(obj, "session_id")
        delay = get(obj, "delay", get(obj, "delay_ms"))
        if t is None and sid is None and delay is None:
            raise _missing(p, lineno, "timestamp")
        ts.append(sessions.time_ms(lineno, sid, t, delay))
    lines = rows.lines
    with warnings.catch_warnings():
        if sessions.delays:  # closed-loop times are derived: their order is not the file's
            warnings.simplefilter("ignore", TraceWarning)
        return _mooncake_finish(p, rows, ts, il, ol, lines, bs, tail, chain, strict,
                                instance, sessions, chain_out)


def _mooncake_finish(p: Path, rows: _Rows, ts: list[Any], il: list[Any], ol: list[Any],
                     lines: list[int], bs: int, tail: Tail, chain: Chain, strict: bool,
                     instance: str | None, sessions: _Sessions,
                     chain_out: list[bool] | None = None) -> Trace:
    return _finish(
        p,
        rows,
        ts_ns=_time_ns(ts, lines, p, "timestamp", 1_000_000),
        input_len=_int_array(il, lines, p, "input_length"),
        output_len=_int_array(ol, lines, p, "output_length"),
        block_size=bs,
        tail=tail,
        chain=chain,
        check_chain=True,
        strict=strict,
        instance_name=instance or "default",
        session=sessions.codes() if sessions.any else None,
        turn=sessions.turns() if sessions.any else None,
        chain_out=chain_out,
    )


class _Sessions:
    """Session ids -> dense codes (a row without one is its own session), turn numbers,
    and the closed-loop times of rows given by ``delay`` after their session's previous
    row (ms; zero service time: a turn's delay counts from the previous turn's arrival).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.code: dict[Any, int] = {}
        self.last: dict[int, float] = {}  # session code -> last row's time (ms)
        self.rows: list[int] = []
        self.turn: list[int] = []
        self.count: dict[int, int] = {}
        self.any = False
        self.delays = False  # some time came from a delay (derived, not file order)

    def add(self, lineno: int, sid: Any) -> int:
        if sid is None:
            c = -1 - len(self.rows)  # a session of its own (renumbered in codes())
            self.rows.append(c)
            self.turn.append(0)
            return c
        else:
            if type(sid) not in (str, int) or (type(sid) is str and len(sid) > 4096):
                raise _field_error(self.path, lineno, "session_id", "a string or an integer",
                                   sid)
            self.any = True
            c = self.code.setdefault(sid, len(self.code))
        self.rows.append(c)
        self.turn.append(self.count.get(c, 0))
        self.count[c] = self.count.get(c, 0) + 1
        return c

    def time_ms(self, lineno: int, sid: Any, t: Any, delay: Any) -> Any:
        c = self.add(lineno, sid)
        if t is None:
            if type(delay) not in (int, float) or not 0 <= delay < 1e15:
                raise _field_error(self.path, lineno, "delay", "non-negative milliseconds",
                                   delay)
            t = self.last.get(c, 0.0) + delay
            self.delays = True
        self.last[c] = t if type(t) in (int, float) else 0.0
        return t

    def next_block(self) -> None:
        """Forget the rows so far (a new block of the file follows); the sessions' codes,
        turns and times carry over."""
        self.rows = []
        self.turn = []

    def codes(self) -> np.ndarray:
        n_named = len(self.code)
        out = np.asarray(self.rows, dtype=np.int64)
        own = out < 0
        out[own] = n_named + np.arange(int(own.sum()), dtype=np.int64)
        return out

    def turns(self) -> np.ndarray:
        return np.asarray(self.turn, dtype=np.int32)


# ---------------------------------------------------------------------- Bailian
def read_bailian(
    path: PathLike,
    *,
    block_size: int | None = None,
    tail: Tail = "drop",
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read a Qwen-Bailian JSONL trace.

    Fields: ``chat_id``, ``parent_chat_id`` (-1 = root), ``timestamp`` (float
    seconds), ``input_length``, ``output_length``, ``type``, ``turn``, ``hash_ids``
    (16-token blocks by default). ``session`` is the root chat id of each chat's
    parent chain (a parent missing from the file makes the chat its own root).

    Args:
        path: the JSONL file.
        block_size: tokens per hash id (default 16).
        tail: ``"drop"`` (full blocks only) or ``"keep"``.
        chain: ``"auto"`` (chain when the ids are not prefix-chained), ``"on"``, ``"off"``.
        strict: raise on out-of-order timestamps.
        instance: the instance name (default ``"default"``).

    Returns:
        The trace, with ``session``, ``turn`` and ``type_code``/``type_names``.

    Raises:
        TraceError: malformed or empty file.
    """
    p = Path(path)
    return _parse_bailian(p, _iter_objects(p, fast_ids=True), bs=_block_size(block_size, "bailian"),
                          tail=tail, chain=chain, strict=strict, instance=instance)


def _parse_bailian(p: Path, objects: Iterable[tuple[int, dict[str, Any]]], *, bs: int,
                   tail: Tail, chain: Chain, strict: bool, instance: str | None,
                   chain_out: list[bool] | None = None) -> Trace:
    """:func:`read_bailian` of ``objects`` (a whole file or one block of it; in a block,
    a chat whose parent is in an earlier block is its own session root)."""
    chat: list[Any] = []
    parent: list[Any] = []
    ts: list[Any] = []
    il: list[Any] = []
    ol: list[Any] = []
    turn: list[Any] = []
    tcode: list[int] = []
    tnames: dict[str, int] = {}
    rows = _Rows(p, "hash_ids")
    for lineno, obj in objects:
        try:
            c, pa_, t = obj["chat_id"], obj["parent_chat_id"], obj["timestamp"]
            a, b, ty, tu, h = (
                obj["input_length"],
                obj["output_length"],
                obj["type"],
                obj["turn"],
                obj["hash_ids"],
            )
        except KeyError as e:
            raise _missing(p, lineno, e.args[0]) from None
        if type(ty) is not str:
            raise _field_error(p, lineno, "type", "a string", ty)
        rows.add(lineno, h)
        chat.append(c)
        parent.append(pa_)
        ts.append(t)
        il.append(a)
        ol.append(b)
        turn.append(tu)
        tcode.append(tnames.setdefault(ty, len(tnames)))
    lines = rows.lines
    chat_ids = _int_array(chat, lines, p, "chat_id", nonneg=False)
    parents = _int_array(parent, lines, p, "parent_chat_id", nonneg=False)
    turns = _int_array(turn, lines, p, "turn")
    if turns.size and turns.max() > np.iinfo(np.int32).max:
        i = int(np.argmax(turns))
        raise _field_error(p, lines[i], "turn", "a 32-bit integer", turn[i])
    return _finish(
        p,
        rows,
        ts_ns=_time_ns(ts, lines, p, "timestamp", 1_000_000_000),
        input_len=_int_array(il, lines, p, "input_length"),
        output_len=_int_array(ol, lines, p, "output_length"),
        block_size=bs,
        tail=tail,
        chain=chain,
        check_chain=True,
        strict=strict,
        instance_name=instance or "default",
        session=session_roots(chat_ids, parents),
        turn=turns.astype(np.int32),
        type_code=np.asarray(tcode, dtype=np.int16),
        type_names=tuple(tnames),
        chain_out=chain_out,
    )


def session_roots(chat_ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """The root chat id of every chat (follow ``parent`` links; -1 or unknown = root).

    Vectorised pointer jumping: O(n log depth). A duplicated chat id resolves to its
    first row; a cycle resolves to some member of the cycle.

    Example:
        >>> session_roots(np.array([5, 6, 7, 9]), np.array([-1, 5, 6, 42])).tolist()
        [5, 5, 5, 9]
    """
    n = chat_ids.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, first = np.unique(chat_ids, return_index=True)
    pos = np.clip(np.searchsorted(uniq, parent_ids), 0, uniq.shape[0] - 1)
    found = (uniq[pos] == parent_ids) & (parent_ids != -1)
    up = np.where(found, first[pos], np.arange(n))
    for _ in range(64):
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    return chat_ids[up].astype(np.int64)


# ---------------------------------------------------------------------- KVCM
_BIG = 1 << 62  # a write row's token counts past this are malformed: ignored


_NO_MASK_FORM = object()


def _mask_inner(m: dict[str, Any]) -> Any:
    """The value inside ``block_mask``'s object forms, ``{"offset": n}`` or
    ``{"bool_masks": {"values": [...]}}``; ``_NO_MASK_FORM`` for any other object."""
    if "offset" in m:
        return m["offset"]
    if type(m.get("bool_masks")) is dict and "values" in m["bool_masks"]:
        return m["bool_masks"]["values"]
    return _NO_MASK_FORM


def _mask_form_ok(m: Any, n_keys: int) -> bool:
    """Whether ``block_mask`` has one of the forms :func:`read_kvcm` reads."""
    if m is None or (type(m) is list and not m):
        return True
    if type(m) is dict:
        m = _mask_inner(m)
    if type(m) is list:
        return len(m) == n_keys and all(type(v) is bool for v in m)
    return type(m) is int and m >= 0


def read_kvcm(
    path: PathLike,
    *,
    block_size: int | None = None,
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read a Tair KVCM optimizer-schema JSONL trace.

    Fields: ``instance_id``, ``trace_id`` (ignored), ``timestamp_us`` or
    ``timestamp_ns``, ``keys`` (full blocks; unsigned values above ``2**63 - 1`` map
    to int64 by two's complement), ``query_type`` (a name such as ``prefix_match``,
    ``QT_BATCH_GET`` or ``QT_REVERSE_ROLL_SW_MATCH``, or an int; default prefix),
    ``block_mask`` (a bool list, an int offset, ``{"offset": n}`` or
    ``{"bool_masks": {"values": [...]}}``; ``[]`` is no mask), ``sw_size``, ``input_len``
    (default ``len(keys) * block_size``), ``output_len`` (default 0), ``total_keys``
    (KVCM's dialog-turn rows: the keys after the turn; a row without ``type`` that has
    them reads ``keys`` and then writes ``total_keys``; a count is ignored)
    and ``type`` (``"get"`` -> read, ``"write"`` -> write, ``"request"`` or absent ->
    combined request). A write row's read fields (``input_len``, ``query_type``,
    ``sw_size``, ...) are kept when well formed and ignored otherwise (KVCM's own loader
    ignores them whatever they hold); ``ttl_us`` and ``location_spec_names`` are
    accepted and not modelled.

    Args:
        path: the JSONL file.
        block_size: tokens per key (default 16).
        chain: ``"on"`` re-chains the keys; ``"auto"``/``"off"`` keep them.
        strict: raise on out-of-order timestamps.
        instance: keep only this instance's requests.

    Returns:
        The trace; ``mask`` is ``None`` when no record has a block mask.

    Raises:
        TraceError: malformed or empty file, or no request of ``instance``.
    """
    p = Path(path)
    trace = _parse_kvcm(p, _iter_objects(p), bs=_block_size(block_size, "kvcm"), chain=chain,
                        strict=strict)
    return _only_instance(trace, instance)


def _parse_kvcm(p: Path, objects: Iterable[tuple[int, dict[str, Any]]], *, bs: int,
                chain: Chain, strict: bool) -> Trace:
    """:func:`read_kvcm` of ``objects`` (a whole file or one block of it), every
    instance."""
    inst_codes: list[int] = []
    inst_names: dict[str, int] = {}
    ts: list[int] = []
    il: list[Any] = []
    ol: list[Any] = []
    sw: list[Any] = []
    qt: list[int] = []
    kind: list[int] = []
    # masks: moff[i] = n (first n masked), -1 = a bool list, collected in mbool.
    moff: list[Any] = []
    mbool_rows: list[int] = []
    mbool: list[Any] = []
    any_mask = False
    rows = _Rows(p, "keys")
    get = dict.get
    pending: tuple[int, list[Any]] | None = None  # a dialog turn's write row

    def add_write_row() -> None:
        wl, wkeys = pending  # type: ignore[misc]
        rows.add(wl, wkeys)
        inst_codes.append(inst_codes[-1])
        ts.append(ts[-1])
        il.append(len(wkeys) * bs)
        ol.append(0)
        sw.append(0)
        qt.append(QT_PREFIX)
        kind.append(KIND_WRITE)
        moff.append(0)

    for lineno, obj in objects:
        if pending is not None:
            add_write_row()
            pending = None
        if "keys" not in obj:
            raise _missing(p, lineno, "keys")
        keys = obj["keys"]
        rows.add(lineno, keys)
        n_keys = len(keys)
        name = get(obj, "instance_id", "")
        if type(name) is not str:
            raise _field_error(p, lineno, "instance_id", "a string", name)
        inst_codes.append(inst_names.setdefault(name, len(inst_names)))
        ts_field, scale = ("timestamp_ns", 1) if "timestamp_ns" in obj else ("timestamp_us", 1000)
        t = get(obj, ts_field)
        if type(t) is not int or not -(1 << 63) <= t * scale < (1 << 63):
            if t is None:
                raise _missing(p, lineno, ts_field)
            raise _field_error(p, lineno, ts_field, "an integer", t)
        ts.append(t * scale)
        k = get(obj, "type", "request")
        kcode = _KIND_NAMES.get(k.lower()) if type(k) is str else None
        if kcode is None:
            raise _field_error(p, lineno, "type", '"request", "get" or "write"', k)
        if kcode == KIND_WRITE:
            # KVCM's loader reads only type, instance, time, keys and ttl_us of a write
            # row and ignores its read fields whatever they hold; kvsim keeps them when
            # well formed (its own writer's round trip) and ignores them otherwise
            v = obj.get("input_len")
            il.append(v if type(v) is int and 0 <= v < _BIG else n_keys * bs)
            v = obj.get("output_len")
            ol.append(v if type(v) is int and 0 <= v < _BIG else 0)
            v = obj.get("sw_size")
            sw.append(v if type(v) is int and 0 <= v < (1 << 31) else 0)
            try:
                qt.append(parse_query_type(obj.get("query_type", QT_PREFIX)))
            except (ValueError, TypeError, KeyError, AttributeError):
                qt.append(QT_PREFIX)
        else:
            il.append(get(obj, "input_len", n_keys * bs))
            ol.append(get(obj, "output_len", 0))
            sw.append(get(obj, "sw_size", 0))
            q = get(obj, "query_type", QT_PREFIX)
            try:
                qt.append(parse_query_type(q))
            except (ValueError, TypeError):
                raise _field_error(
                    p, lineno, "query_type", "prefix_match, batch_get, sw_match or 0..2", q
                ) from None
            tk = get(obj, "total_keys")
            if tk is not None and type(tk) is not list and type(tk) is not int:
                raise _field_error(p, lineno, "total_keys", "a list of keys (or a count)", tk)
            if type(tk) is int:  # a count only (older traces): nothing to write
                tk = None
            if type(tk) is list and tk and kcode == KIND_REQUEST:
                # KVCM's dialog-turn rows: read ``keys`` (the prompt), then write
                # ``total_keys`` (prompt + answer): two rows at the same time
                kcode = KIND_READ
                pending = (lineno, tk)
        kind.append(kcode)
        m = get(obj, "block_mask")
        if kcode == KIND_WRITE and not _mask_form_ok(m, n_keys):
            m = None  # a write's malformed mask: ignored, as its other read fields
        if m is None or (type(m) is list and not m):  # [] (KVCM's optimizer): no mask
            moff.append(0)
            continue
        any_mask = True
        if type(m) is dict:
            m0, m = m, _mask_inner(m)
            if m is _NO_MASK_FORM:
                raise _field_error(p, lineno, "block_mask",
                                   '{"offset": n} or {"bool_masks": {"values": [...]}}', m0)
        if type(m) is list:
            if len(m) != n_keys or any(type(v) is not bool for v in m):
                raise _field_error(p, lineno, "block_mask", f"{n_keys} booleans (one per key)", m)
            moff.append(-1)
            mbool_rows.append(len(moff) - 1)
            mbool.extend(m)
        elif type(m) is int and m >= 0:
            moff.append(min(m, n_keys))
        else:
            raise _field_error(p, lineno, "block_mask", "a non-negative offset or booleans", m)
    if pending is not None:
        add_write_row()
    lines = rows.lines
    ts_ns = np.asarray(ts, dtype=np.int64)
    offsets = rows.offsets()
    mask = None
    if any_mask:
        mask = _prefix_mask(offsets, np.asarray(moff, dtype=np.int64))
        if mbool_rows:
            idx = _gather_index(offsets, np.asarray(mbool_rows, dtype=np.int64), len(mbool))
            mask[idx] = np.asarray(mbool, dtype=bool)
    sw_arr = _int_array(sw, lines, p, "sw_size")
    if sw_arr.size and sw_arr.max() > np.iinfo(np.int32).max:
        i = int(np.argmax(sw_arr))
        raise _field_error(p, lines[i], "sw_size", "a 32-bit integer", sw[i])
    return _finish(
        p,
        rows,
        ts_ns=ts_ns,
        input_len=_int_array(il, lines, p, "input_len"),
        output_len=_int_array(ol, lines, p, "output_len"),
        block_size=bs,
        tail="keep",
        chain=chain,
        check_chain=False,
        strict=strict,
        instance_codes=np.asarray(inst_codes, dtype=np.int32),
        instances=tuple(inst_names),
        kind=np.asarray(kind, dtype=np.int8),
        query_type=np.asarray(qt, dtype=np.int8),
        sw_size=sw_arr.astype(np.int32),
        mask=mask,
        offsets=offsets,
    )


_EVENT_QT = {"QT_UNSPECIFIED": QT_PREFIX, "QT_PREFIX_MATCH": QT_PREFIX, "QT_BATCH_GET": QT_BATCH,
             "QT_REVERSE_ROLL_SW_MATCH": QT_SW}  # fmt: skip


def read_kvcm_events(
    path: PathLike,
    *,
    block_size: int | None = None,
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read the event log of ``kvsim serve`` (``<data-dir>/events.jsonl``) as a trace.

    One JSON object per line with ``type``, ``source`` (the instance id) and
    ``trigger_time_us``. ``GetCacheLocation`` events become ``KIND_READ`` rows (their
    ``block_keys``, ``query_type``, ``sw_size`` and ``block_mask`` as bools) at their
    time; ``FinishWriteCache`` events become ``KIND_WRITE`` rows with ``block_keys``
    (the keys the write left held: the ones it skipped as present and the ones it
    committed). Other events (``StartWriteCache``, ``CacheReclaimSubmit``) and
    finished writes with no keys are skipped. Replaying the rows follows the replay
    contract for read/write-separated traces.

    Args:
        path: the JSONL event log.
        block_size: tokens per key (default 16), for ``input_len = keys x block_size``.
        strict: raise on out-of-order times instead of sorting them stably.
        instance: keep only this instance's events.

    Returns:
        The trace.

    Raises:
        TraceError: malformed line or no read/write events.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "events.jsonl")
        >>> with open(p, "w") as f:
        ...     _ = f.write('{"type": "GetCacheLocation", "source": "i0", '
        ...                 '"trigger_time_us": 5, "block_keys": [1, 2]}\\n')
        ...     _ = f.write('{"type": "FinishWriteCache", "source": "i0", '
        ...                 '"trigger_time_us": 6, "block_keys": [1, 2]}\\n')
        >>> t = read_kvcm_events(p)
        >>> t.kind.tolist(), t.ts_ns.tolist()
        ([1, 2], [5000, 6000])
    """
    p = Path(path)
    bs = _block_size(block_size, "kvcm-events")
    rows = _Rows(p, "block_keys")
    inst_names: dict[str, int] = {}
    inst_codes: list[int] = []
    ts: list[int] = []
    kind: list[int] = []
    qt: list[int] = []
    sw: list[int] = []
    masks: list[Any] = []
    any_mask = False
    # KVCM's publisher log: StartWriteCache carries the keys, FinishWriteCache only
    # the session id; a session never finished is written 100 ms after its start
    started: dict[str, tuple[int, str, list[Any], int]] = {}
    for lineno, obj in _iter_event_log(p):
        typ = obj.get("type")
        if "block_keys" not in obj and ("keys" in obj or typ == "FinishWriteCache"):
            ev = _publisher_event(p, lineno, obj, started)
            if ev is None:
                continue
            obj, typ = ev, ev["type"]
        if typ == "GetCacheLocation":
            k = KIND_READ
        elif typ == "FinishWriteCache":
            k = KIND_WRITE
        else:
            continue
        keys = obj.get("block_keys")
        if not isinstance(keys, list):
            raise _field_error(p, lineno, "block_keys", "a list of keys", keys)
        if k == KIND_WRITE and not keys:
            continue
        src = obj.get("source", "")
        if type(src) is not str:
            raise _field_error(p, lineno, "source", "a string", src)
        t = obj.get("trigger_time_us")
        if type(t) is not int or not -(1 << 53) <= t < (1 << 53):
            if t is None:
                raise _missing(p, lineno, "trigger_time_us")
            raise _field_error(p, lineno, "trigger_time_us", "an integer", t)
        q = obj.get("query_type", "QT_PREFIX_MATCH")
        if k == KIND_READ and q not in _EVENT_QT:
            try:  # KVCM's publisher log: prefix_match, batch_get, ...
                q = next(n for n, c in _EVENT_QT.items() if c == parse_query_type(q))
            except (ValueError, TypeError):
                raise _field_error(p, lineno, "query_type", "a QueryType name", q) from None
        m = obj.get("block_mask")
        if type(m) is int and m >= 0:  # KVCM's publisher log: an offset
            m = [i < m for i in range(len(keys))]
        elif isinstance(m, list) and not m:
            m = None
        if m is not None:
            if not isinstance(m, list) or len(m) != len(keys) or any(
                    type(v) is not bool for v in m):
                raise _field_error(p, lineno, "block_mask", f"{len(keys)} booleans", m)
            any_mask = True
        s_ = obj.get("sw_size", 0)
        if type(s_) is not int or not 0 <= s_ < (1 << 31):
            s_ = 0
        rows.add(lineno, keys)
        inst_codes.append(inst_names.setdefault(src, len(inst_names)))
        ts.append(t * 1000)
        kind.append(k)
        qt.append(_EVENT_QT[q] if k == KIND_READ else QT_PREFIX)
        sw.append(s_ if k == KIND_READ else 0)
        masks.append(m)
    for lineno, src, keys, t in started.values():  # never finished
        rows.add(lineno, keys)
        inst_codes.append(inst_names.setdefault(src, len(inst_names)))
        ts.append((t + 100_000) * 1000)
        kind.append(KIND_WRITE)
        qt.append(QT_PREFIX)
        sw.append(0)
        masks.append(None)
    if not ts:
        raise TraceError(f"{p}: no GetCacheLocation or FinishWriteCache events")
    offsets = rows.offsets()
    mask = None
    if any_mask:
        mask = np.zeros(int(offsets[-1]), dtype=bool)
        for i, m in enumerate(masks):
            if m is not None:
                mask[offsets[i]:offsets[i + 1]] = m
    counts = np.diff(offsets)
    trace = _finish(
        p, rows, ts_ns=np.asarray(ts, dtype=np.int64), input_len=counts * bs,
        output_len=np.zeros(len(ts), dtype=np.int64), block_size=bs, tail="keep",
        chain="off", check_chain=False, strict=strict,
        instance_codes=np.asarray(inst_codes, dtype=np.int32), instances=tuple(inst_names),
        kind=np.asarray(kind, dtype=np.int8), query_type=np.asarray(qt, dtype=np.int8),
        sw_size=np.asarray(sw, dtype=np.int32), mask=mask, offsets=offsets,
    )
    return _only_instance(trace, instance)


def _publisher_event(p: Path, lineno: int, obj: dict[str, Any],
                     started: dict[str, tuple[int, str, list[Any], int]]
                     ) -> dict[str, Any] | None:
    """One event of KVCM's publisher log in kvsim's event shape, or None (nothing to
    replay yet): reads keep their ``keys``; ``StartWriteCache`` is remembered by its
    ``write_session_id``; ``FinishWriteCache`` becomes a write of the session's keys."""
    typ = obj.get("type")
    if typ == "GetCacheLocation":
        return obj | {"block_keys": obj.get("keys")}
    sid = obj.get("write_session_id")
    if typ == "StartWriteCache":
        keys, t, src = obj.get("keys"), obj.get("trigger_time_us"), obj.get("source", "")
        if not isinstance(keys, list):
            raise _field_error(p, lineno, "keys", "a list of keys", keys)
        if type(t) is not int:
            raise _field_error(p, lineno, "trigger_time_us", "an integer", t)
        if isinstance(sid, str) and sid and keys:
            started[sid] = (lineno, str(src), keys, t)
        return None
    if typ == "FinishWriteCache":
        got = started.pop(sid, None) if isinstance(sid, str) else None
        if got is None:
            return None  # KVCM's converter skips a finish it has no start for
        return {"type": "FinishWriteCache", "source": got[1], "block_keys": got[2],
                "trigger_time_us": obj.get("trigger_time_us")}
    return None


def _iter_event_log(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of an event log; a directory is read as its rotated parts in order,
    then ``events.jsonl`` (:func:`kvsim.trace.logfiles.event_log_files`)."""
    from kvsim.trace.logfiles import event_log_files

    parts = event_log_files(path)
    if not parts:
        raise TraceError(f"{path}: no events.jsonl or events-NNNNNN.jsonl in the directory")
    for part in parts:
        yield from _iter_objects(part)


def _prefix_mask(offsets: np.ndarray, first_n: np.ndarray) -> np.ndarray:
    """bool[total]: True on the first ``first_n[i]`` keys of each row."""
    lens = np.diff(offsets)
    pos = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lens)
    return pos < np.repeat(first_n, lens)


# ---------------------------------------------------------------------- parquet
def read_parquet(
    path: PathLike,
    *,
    block_size: int | None = None,
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read a kvsim native parquet trace (see :func:`kvsim.trace.writers.write_parquet`).

    Columns: ``ts_ns`` int64, ``instance`` string, ``keys`` list<int64>, ``input_len``,
    ``output_len`` int64; optional ``session`` int64, ``turn`` int32, ``type`` string,
    ``mask`` list<bool>, ``query_type`` int8, ``kind`` int8, ``sw_size`` int32.
    File metadata ``kvsim.block_size`` gives the block size. CSR arrays come straight
    from the list columns' lengths and values (no per-row Python loop).

    Args:
        path: the parquet file.
        block_size: overrides the file's block size (default: metadata, else 16).
        chain: ``"on"`` re-chains the keys; ``"auto"``/``"off"`` keep them.
        strict: raise on out-of-order timestamps.
        instance: keep only this instance's requests.

    Returns:
        The trace.

    Raises:
        TraceError: unreadable file, missing column, nulls, or empty trace.
    """
    p = Path(path)
    try:
        table = pq.ParquetFile(p).read()  # (read_table imports pandas via pyarrow.dataset)
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{p}: cannot read parquet: {e}") from None
    return parquet_table_trace(p, table, block_size=block_size, chain=chain, strict=strict,
                               instance=instance)


def parquet_table_trace(
    p: Path,
    table: pa.Table,
    *,
    block_size: int | None = None,
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
    row0: int = 0,
) -> Trace:
    """The trace of an Arrow table in kvsim's parquet layout (all of a file, or one
    chunk of it: ``row0`` is the chunk's first row in the file, for error messages)."""
    md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    for required in ("ts_ns", "instance", "keys", "input_len", "output_len"):
        if required not in table.column_names:
            raise TraceError(f"{p}: missing column {required!r}")
    n = table.num_rows
    if n == 0:
        raise TraceError(f"{p}: empty trace (no records)")
    key_lens, keys = _list_column(p, table, "keys", pa.int64())
    offsets = _csr_offsets(key_lens)

    def col(name: str, dtype: Any, default: int = 0) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n, default, dtype=dtype)
        c = table.column(name)
        if c.null_count:
            raise TraceError(f"{p}: column {name!r} has {c.null_count} null values")
        try:
            return _np(c).astype(dtype, copy=False)
        except (TypeError, ValueError, pa.ArrowException) as e:
            raise TraceError(f"{p}: column {name!r}: {e}") from None

    inst, names = _categorical(p, table, "instance", md.get("kvsim.instances"))
    type_code: np.ndarray | None = None
    type_names: tuple[str, ...] = ()
    if "type" in table.column_names:
        type_code, type_names = _categorical(p, table, "type", md.get("kvsim.type_names"))
    mask = None
    if "mask" in table.column_names:
        moff, mvals = _list_column(p, table, "mask", pa.bool_(), allow_null_rows=True)
        mask = _expand_mask(p, offsets, moff, mvals)
    if block_size is None:
        try:
            block_size = int(md.get("kvsim.block_size", DEFAULT_BLOCK_SIZE["parquet"]))
        except ValueError:
            raise TraceError(f"{p}: bad metadata kvsim.block_size") from None
    block_size = _block_size(block_size, "parquet")
    meta = orjson.loads(md["kvsim.meta"]) if "kvsim.meta" in md else {}
    trace = Trace(
        ts_ns=col("ts_ns", np.int64),
        instance=inst.astype(np.int32),
        instances=names,
        offsets=offsets,
        keys=keys,
        input_len=col("input_len", np.int64),
        output_len=col("output_len", np.int64),
        block_size=block_size,
        kind=col("kind", np.int8, KIND_REQUEST),
        query_type=col("query_type", np.int8, QT_PREFIX),
        sw_size=col("sw_size", np.int32, 0),
        mask=mask,
        session=col("session", np.int64) if "session" in table.column_names else None,
        turn=col("turn", np.int32) if "turn" in table.column_names else None,
        type_code=None if type_code is None else type_code.astype(np.int16),
        type_names=type_names,
        source=str(p),
        meta={str(k): str(v) for k, v in meta.items()},
    )
    if chain == "on":
        trace = replace(trace, keys=chain_ids(trace.keys, trace.offsets))
    trace = _sort_by_time(trace, lambda i: f"{p}: row {row0 + i + 1}", strict)
    return _only_instance(trace, instance)


def _categorical(
    p: Path, table: pa.Table, name: str, known_json: str | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(codes, names) of a string column; names listed in the metadata come first."""
    column = table.column(name).cast(pa.string())
    if column.null_count:
        raise TraceError(f"{p}: column {name!r} has {column.null_count} null values")
    names = [str(s) for s in orjson.loads(known_json)] if known_json else []
    enc = column.combine_chunks().dictionary_encode()  # (pa.array() would import pandas)
    values = enc.dictionary.to_pylist()
    names += [s for s in values if s not in names]
    where = {s: i for i, s in enumerate(names)}
    remap = np.array([where[s] for s in values], dtype=np.int32)
    codes = remap[_np(enc.indices)] if values else np.zeros(len(enc), dtype=np.int32)
    return codes, tuple(names)


def _list_column(
    p: Path, table: pa.Table, name: str, value_type: pa.DataType, allow_null_rows: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(row lengths, flat values) of a list column; null rows get length -1 if allowed."""
    lens_parts, val_parts = [], []
    for ch in table.column(name).chunks:
        if not (pa.types.is_list(ch.type) or pa.types.is_large_list(ch.type)):
            raise TraceError(f"{p}: column {name!r} is {ch.type}, not a list")
        lens = pc.list_value_length(ch)
        if lens.null_count:
            if not allow_null_rows:
                raise TraceError(f"{p}: column {name!r} has null rows")
            lens = pc.fill_null(lens, -1)
        vals = ch.flatten()
        if vals.null_count:
            raise TraceError(f"{p}: column {name!r} has null values")
        lens_parts.append(_np(lens))
        val_parts.append(_np(vals.cast(value_type)))
    return (
        np.concatenate(lens_parts).astype(np.int64),
        np.concatenate(val_parts).astype(_NUMPY_DTYPES[str(value_type)], copy=False),
    )


def _np(arr: Any) -> np.ndarray:
    """A null-free arrow array (or chunked array) as numpy, without importing pandas.

    (pyarrow's ``to_numpy`` loads pandas, a quarter second of start-up.)
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_boolean(t):
        bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        out = np.unpackbits(bits, bitorder="little")
        return out[arr.offset : arr.offset + len(arr)].astype(np.bool_)
    dt = np.dtype(_NUMPY_DTYPES[str(t)])
    buf = np.frombuffer(arr.buffers()[1], dtype=dt)
    return buf[arr.offset : arr.offset + len(arr)]


_NUMPY_DTYPES = {"int64": np.int64, "bool": np.bool_, "int32": np.int32, "int8": np.int8,
                 "int16": np.int16, "double": np.float64, "uint64": np.uint64,
                 "float": np.float32, "uint32": np.uint32, "uint8": np.uint8}


def _csr_offsets(lens: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return offsets


def _expand_mask(p: Path, offsets: np.ndarray, lens: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool[total] from a list<bool> column (null rows = nothing masked)."""
    key_lens = np.diff(offsets)
    bad = np.flatnonzero((lens >= 0) & (lens != key_lens))
    if bad.size:
        i = int(bad[0])
        raise TraceError(f"{p}: row {i + 1}: mask has {lens[i]} entries for {key_lens[i]} keys")
    mask = np.zeros(int(offsets[-1]), dtype=bool)
    rows = np.flatnonzero(lens >= 0)
    mask[_gather_index(offsets, rows, values.shape[0])] = values.astype(bool)
    return mask


# ---------------------------------------------------------------------- shared finish
def _finish(
    p: Path,
    rows: _Rows,
    *,
    ts_ns: np.ndarray,
    input_len: np.ndarray,
    output_len: np.ndarray,
    block_size: int,
    tail: Tail,
    chain: Chain,
    check_chain: bool,
    strict: bool,
    instance_name: str = "default",
    instance_codes: np.ndarray | None = None,
    instances: tuple[str, ...] | None = None,
    kind: np.ndarray | None = None,
    query_type: np.ndarray | None = None,
    sw_size: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    session: np.ndarray | None = None,
    turn: np.ndarray | None = None,
    type_code: np.ndarray | None = None,
    type_names: tuple[str, ...] = (),
    chain_out: list[bool] | None = None,
) -> Trace:
    """Assemble a Trace: tail drop, chaining, then the stable time sort (``chain_out``
    gets whether the ids were chained)."""
    n = len(rows.lens)
    if n == 0:
        raise TraceError(f"{p}: empty trace (no records)")
    keys = rows.keys()
    if offsets is None:
        offsets = rows.offsets()
    if tail == "drop":
        keep = np.minimum(np.diff(offsets), input_len // block_size)
        if np.any(keep != np.diff(offsets)):
            sel = _prefix_mask(offsets, keep)
            keys = keys[sel]
            mask = None if mask is None else mask[sel]
            offsets = _csr_offsets(keep)
    chained = chain == "on" or (
        chain == "auto"
        and check_chain
        and not is_prefix_chained(
            keys[: offsets[min(n, CHAIN_CHECK_ROWS)]], offsets[: min(n, CHAIN_CHECK_ROWS) + 1]
        )
    )
    if chained:
        keys = chain_ids(keys, offsets)
    if chain_out is not None:
        chain_out.append(bool(chained))
    if instance_codes is None or instances is None:
        instance_codes = np.zeros(n, dtype=np.int32)
        instances = (instance_name,)
    trace = Trace(
        ts_ns=ts_ns,
        instance=instance_codes,
        instances=instances,
        offsets=offsets,
        keys=keys,
        input_len=input_len,
        output_len=output_len,
        block_size=block_size,
        kind=np.zeros(n, dtype=np.int8) if kind is None else kind,
        query_type=np.zeros(n, dtype=np.int8) if query_type is None else query_type,
        sw_size=np.zeros(n, dtype=np.int32) if sw_size is None else sw_size,
        mask=mask,
        session=session,
        turn=turn,
        type_code=type_code,
        type_names=type_names,
        source=str(p),
    )
    lines = rows.lines
    return _sort_by_time(trace, lambda i: f"{p}:{lines[i]}", strict)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside kvsim.trace."""
    frame = sys._getframe(2)  # the caller of the function that warns
    level = 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "kvsim.trace"
    ):
        frame = frame.f_back
        level += 1
    return level


def _sort_by_time(trace: Trace, where: Any, strict: bool) -> Trace:
    """Stable sort by ``ts_ns``: warn (or raise if strict) when rows were out of order."""
    ts = trace.ts_ns
    if ts.shape[0] < 2:
        return trace
    late = ts[1:] < np.maximum.accumulate(ts)[:-1]  # earlier than some previous row
    if not late.any():
        return trace
    first = int(np.argmax(late)) + 1
    n_late = int(late.sum())
    if strict:
        raise TraceError(
            f"{where(first)}: timestamp out of order ({n_late} rows earlier than a previous row)"
        )
    warnings.warn(
        f"{trace.source}: {n_late} rows out of timestamp order (first at {where(first)}); "
        "sorted stably by time",
        TraceWarning,
        stacklevel=_caller_stacklevel(),
    )
    return trace.select(np.argsort(ts, kind="stable"))


def _only_instance(trace: Trace, instance: str | None) -> Trace:
    if instance is None:
        return trace
    if instance not in trace.instances:
        raise TraceError(
            f"{trace.source}: no requests of instance {instance!r} "
            f"(instances: {', '.join(trace.instances)})"
        )
    code = trace.instances.index(instance)
    sub = trace.select(np.flatnonzero(trace.instance == code))
    return replace(sub, instance=np.zeros(sub.n_requests, dtype=np.int32), instances=(instance,))


# ---------------------------------------------------------------------- request logs
KEY_SCHEMES = ("vllm", "kvcm")


def read_requests(
    path: PathLike,
    *,
    block_size: int | None = None,
    keys: str = "vllm",
    hash_algo: str = "sha256",
    hash_seed: str = "0",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read a JSONL request log with token ids; block keys are the engine's own.

    One request per line: ``token_ids`` (the prompt's token ids, required); optional
    ``timestamp`` (seconds; or ``timestamp_ms`` / ``timestamp_us`` / ``timestamp_ns``;
    a row without one keeps the previous row's time), ``session_id`` (string or int),
    ``lora_name`` (or ``lora``), ``cache_salt``, ``output_length`` (default 0) and
    ``instance_id`` (default ``"default"``).

    Keys (full blocks only; ``input_len`` is the token count):

    * ``keys="vllm"``: vLLM's prefix-cache block hashes
      (:class:`~kvsim.trace.vllm_hash.VllmBlockHasher`: ``hash_algo`` as the engine's
      ``--prefix-caching-hash-algo``, ``hash_seed`` as its ``PYTHONHASHSEED``, LoRA name
      and cache salt as extra keys), reduced to 64 bits as vLLM publishes them in its
      KV events; default block size 16.
    * ``keys="kvcm"``: upstream Tair KVCM's ``token_ids`` keys
      (:func:`~kvsim.trace.hashing.kvcm_token_keys`; they depend on the tokens only).

    Args:
        path: the JSONL file.
        block_size: tokens per block (default 16, vLLM's).
        keys: ``"vllm"`` or ``"kvcm"``.
        hash_algo: vLLM's hash algorithm (``sha256``, ``sha256_cbor``, ``xxhash``,
            ``xxhash_cbor``).
        hash_seed: the vLLM engine's ``PYTHONHASHSEED``.
        strict: raise on out-of-order timestamps.
        instance: keep only this instance's requests.

    Returns:
        The trace (``session``/``turn`` when any row has a ``session_id``).

    Raises:
        TraceError: malformed line (file, line and field named) or empty file.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "req.jsonl")
        >>> with open(p, "w") as f:
        ...     _ = f.write('{"token_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\\n')
        >>> read_requests(p, block_size=4, keys="kvcm").keys.tolist()
        [455111481605203084, 6902853672176602142]
    """
    from kvsim.trace.hashing import kvcm_token_keys
    from kvsim.trace.vllm_hash import VllmBlockHasher

    if keys not in KEY_SCHEMES:
        raise ValueError(f"keys must be one of {', '.join(KEY_SCHEMES)}, got {keys!r}")
    p = Path(path)
    bs = _block_size(block_size, "requests")
    hasher = VllmBlockHasher(bs, hash_algo, hash_seed) if keys == "vllm" else None
    rows = _Rows(p, "keys")
    toks = _Rows(p, "token_ids")
    sessions = _Sessions(p)
    inst_names: dict[str, int] = {}
    inst_codes: list[int] = []
    ts: list[int] = []
    ol: list[Any] = []
    ntok: list[int] = []
    t_prev = 0
    get = dict.get
    for lineno, obj in _iter_objects(p):
        t = get(obj, "token_ids")
        if t is None:
            raise _missing(p, lineno, "token_ids")
        if type(t) is not list or any(type(v) is not int or not 0 <= v < (1 << 63) for v in t):
            raise _field_error(p, lineno, "token_ids", "a list of non-negative integers",
                               t if type(t) is not list else next(
                                   v for v in t if type(v) is not int or not 0 <= v < 1 << 63))
        t_ns = t_prev
        for name, scale in (("timestamp", 10**9), ("timestamp_ms", 10**6),
                            ("timestamp_us", 10**3), ("timestamp_ns", 1)):
            v = get(obj, name)
            if v is not None:
                if type(v) not in (int, float) or v != v or not -1e18 < v * scale < 9e18:
                    raise _field_error(p, lineno, name, "a number", v)
                t_ns = int(v * scale) if type(v) is int else round(v * scale)
                break
        t_prev = t_ns
        ts.append(t_ns)
        ntok.append(len(t))
        sessions.add(lineno, get(obj, "session_id"))
        lora = get(obj, "lora_name", get(obj, "lora"))
        salt = get(obj, "cache_salt")
        for name, v in (("lora_name", lora), ("cache_salt", salt)):
            if v is not None and (type(v) is not str or len(v) > 4096):
                raise _field_error(p, lineno, name, "a string", v)
        name = get(obj, "instance_id", get(obj, "instance", "default"))
        if type(name) is not str:
            raise _field_error(p, lineno, "instance_id", "a string", name)
        inst_codes.append(inst_names.setdefault(name, len(inst_names)))
        ol.append(get(obj, "output_length", 0))
        if hasher is not None:
            rows.add(lineno, hasher.keys(t, lora_name=lora, cache_salt=salt))
        else:
            toks.add(lineno, t)
            rows.lines.append(lineno)
            rows.lens.append(len(t) // bs)
    if keys == "kvcm" and toks.lens:
        flat = kvcm_token_keys(toks.keys(), bs, offsets=toks.offsets())
        rows._flat = []
        rows._chunks = [flat]
    lines = rows.lines
    trace = _finish(
        p, rows, ts_ns=np.asarray(ts, dtype=np.int64),
        input_len=np.asarray(ntok, dtype=np.int64),
        output_len=_int_array(ol, lines, p, "output_length"), block_size=bs, tail="keep",
        chain="off", check_chain=False, strict=strict,
        instance_codes=np.asarray(inst_codes, dtype=np.int32), instances=tuple(inst_names),
        session=sessions.codes() if sessions.any else None,
        turn=sessions.turns() if sessions.any else None,
    )
    trace = replace(trace, meta={"keys": keys, **({"hash_algo": hash_algo} if hasher else {})})
    return _only_instance(trace, instance)


# ---------------------------------------------------------------------- Dynamo agentic
_MAX_DEPS = 1 << 12


def read_agentic(
    path: PathLike,
    *,
    block_size: int | None = None,
    tail: Tail = "drop",
    chain: Chain = "auto",
    strict: bool = False,
    instance: str | None = None,
) -> Trace:
    """Read NVIDIA Dynamo's *Agentic Mooncake* JSONL (a request DAG) as a trace.

    Rows are Mooncake rows (``hash_ids``, ``input_length`` (default ``len(hash_ids) x
    block_size``), ``output_length`` (default 0)) plus ``request_id`` (required, unique),
    ``session_id``, ``wait_for`` (request ids that must finish first), ``delay`` and
    ``tool_wait_ms`` (ms after the dependencies finish), and ``timestamp`` (ms; the
    start of a row without dependencies). ``branches``, ``prefix_reset`` and
    ``tool_events`` are metadata and ignored, as Dynamo's replay ignores them for
    scheduling.

    kvsim has no engine model here, so a request *finishes when it starts* (zero service
    time): a dependent row starts at ``max(start of its dependencies) + delay +
    tool_wait_ms``. The edges thus order the trace and space it in time; the requests
    themselves then replay as usual (``session`` = the session's code, ``turn`` = the
    row's position in its session in file order).

    ``strict`` is accepted for symmetry and ignored: times come from the DAG.

    Raises:
        TraceError: missing/duplicate ``request_id``, an unknown id or a cycle in
            ``wait_for`` (file, line and field named), or a malformed field.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.jsonl")
        >>> with open(p, "w") as f:
        ...     _ = f.write('{"request_id": "b", "wait_for": ["a"], "delay": 5, '
        ...                 '"tool_wait_ms": 20, "hash_ids": [1, 2], "output_length": 3}\\n')
        ...     _ = f.write('{"request_id": "a", "timestamp": 100, "hash_ids": [1], '
        ...                 '"output_length": 3}\\n')
        >>> t = read_agentic(p, block_size=16)
        >>> (t.ts_ns // 10**6).tolist(), t.key_counts().tolist()
        ([100, 125], [1, 2])
    """
    p = Path(path)
    bs = _block_size(block_size, "agentic")
    rows = _Rows(p, "hash_ids")
    sessions = _Sessions(p)
    il: list[Any] = []
    ol: list[Any] = []
    ids: dict[Any, int] = {}
    start: list[float | None] = []
    wait: list[list[Any]] = []
    after: list[float] = []
    get = dict.get
    for lineno, obj in _iter_objects(p, fast_ids=True):
        rid = get(obj, "request_id")
        if rid is None:
            raise _missing(p, lineno, "request_id")
        if type(rid) not in (str, int) or (type(rid) is str and len(rid) > 4096):
            raise _field_error(p, lineno, "request_id", "a string or an integer", rid)
        if rid in ids:
            raise _field_error(p, lineno, "request_id", "a unique id (already on line "
                               f"{rows.lines[ids[rid]]})", rid)
        if "hash_ids" not in obj:
            raise _missing(p, lineno, "hash_ids")
        h = obj["hash_ids"]
        ids[rid] = len(start)
        rows.add(lineno, h)
        sessions.add(lineno, get(obj, "session_id"))
        a = get(obj, "input_length")
        il.append(len(h) * bs if a is None else a)
        ol.append(get(obj, "output_length", 0))
        deps = get(obj, "wait_for") or []
        if type(deps) is not list or len(deps) > _MAX_DEPS:
            raise _field_error(p, lineno, "wait_for", f"a list of at most {_MAX_DEPS} ids", deps)
        wait.append(deps)
        gap = 0.0
        for name in ("delay", "tool_wait_ms"):
            v = get(obj, name, 0) or 0
            if type(v) not in (int, float) or not 0 <= v < 1e15:
                raise _field_error(p, lineno, name, "non-negative milliseconds", v)
            gap += v
        after.append(gap)
        t = get(obj, "timestamp", get(obj, "created_time"))
        if not deps:
            if t is None:
                raise _missing(p, lineno, "timestamp")
            if type(t) not in (int, float) or t != t or abs(t) > 1e15:
                raise _field_error(p, lineno, "timestamp", "milliseconds", t)
        start.append(float(t) if (t is not None and not deps) else None)
    lines = rows.lines
    # dependencies by row index; unknown ids are errors
    dep_rows: list[list[int]] = []
    for i, deps in enumerate(wait):
        out = []
        for j, d in enumerate(deps):
            k = ids.get(d) if type(d) in (str, int) else None
            if k is None:
                raise _field_error(p, lines[i], f"wait_for[{j}]", "a request_id of this file", d)
            out.append(k)
        dep_rows.append(out)
    # start times in dependency order (iterative DFS; a cycle is an error)
    state = [0] * len(start)  # 0 new, 1 on the stack, 2 done
    for root in range(len(start)):
        if state[root]:
            continue
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 0:
                state[i] = 1
                for k in dep_rows[i]:
                    if state[k] == 1:
                        raise TraceError(f"{p}:{lines[i]}: field 'wait_for': dependency cycle "
                                         f"through the request on line {lines[k]}")
                    if state[k] == 0:
                        stack.append(k)
            else:
                stack.pop()
                if state[i] == 1:
                    state[i] = 2
                    if dep_rows[i]:
                        start[i] = max(start[k] or 0.0 for k in dep_rows[i]) + after[i]
    with warnings.catch_warnings():  # the DAG's times are not a file order to warn about
        warnings.simplefilter("ignore", TraceWarning)
        trace = _finish(
            p, rows,
            ts_ns=np.rint(np.asarray(start, dtype=np.float64) * 1e6).astype(np.int64),
            input_len=_int_array(il, lines, p, "input_length"),
            output_len=_int_array(ol, lines, p, "output_length"),
            block_size=bs, tail=tail, chain=chain, check_chain=True, strict=False,
            instance_name=instance or "default",
            session=sessions.codes(), turn=sessions.turns(),
        )
    return trace

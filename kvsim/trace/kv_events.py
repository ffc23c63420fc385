"""vLLM / SGLang KV-cache events: the msgpack decoder and the recording's Parquet form.

Both engines publish an ``EventBatch`` (``ts`` float seconds, ``events``, and in newer
versions the publisher's data-parallel rank: ``data_parallel_rank`` in vLLM,
``attn_dp_rank`` in SGLang) of ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``
events, msgpack-encoded by msgspec. Two encodings are in use and both are accepted, for
the batch envelope and for each event independently:

* positional (msgspec ``array_like=True``; SGLang, vLLM before 2026): the batch is
  ``[ts, events, dp_rank?]`` and an event is ``[tag, field, field, ...]`` in declaration
  order, trailing fields that hold their default omitted;
* by name (vLLM since 2026): the batch is ``{"ts": ..., "events": [...], ...}`` and an
  event is ``{"type": tag, "block_hashes": ..., ...}`` (defaults omitted).

Field order (positional form), from the engines' ``kv_events.py``:
``BlockStored``: ``block_hashes, parent_block_hash, token_ids, block_size, lora_id,
medium, lora_name, extra_keys, group_idx, kv_cache_spec_kind,
kv_cache_spec_sliding_window``; ``BlockRemoved``: ``block_hashes, medium, group_idx``;
``AllBlocksCleared``: none. Only ``block_hashes`` is required; missing fields are
``None``. Hashes are ints (up to 2**64 - 1) or bytes; both become int64 keys by
:func:`~kvsim.trace.vllm_hash.external_key` (bytes: their low 64 bits, big-endian, the
rule vLLM itself uses to publish int hashes). One ``BlockStored`` may carry several
blocks: block ``i`` has parent ``block_hashes[i - 1]`` and block 0 has
``parent_block_hash``. Unknown event tags are skipped (and counted); unknown fields
are ignored.

Everything decoded is bounded (:class:`Limits`): payload bytes, events per batch,
hashes and tokens per event, string lengths. A bad payload raises
:class:`EventDecodeError` naming where (the frame) and the field path.

Example:
    >>> import msgpack
    >>> raw = msgpack.packb([1.5, [["BlockStored", [1, 2**64 - 1], None, [7] * 32, 16,
    ...                             None, "GPU"], {"type": "BlockRemoved",
    ...                                            "block_hashes": [b"\\x00" * 31 + b"\\x01"]}]])
    >>> b = decode_batch(raw)
    >>> [e.type for e in b.events], b.events[0].block_hashes, b.events[1].block_hashes
    (['BlockStored', 'BlockRemoved'], (1, -1), (1,))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kvsim.trace.model import TraceError
from kvsim.trace.vllm_hash import external_key

__all__ = [
    "ALL_BLOCKS_CLEARED",
    "BLOCK_REMOVED",
    "BLOCK_STORED",
    "EventBatch",
    "EventDecodeError",
    "KVEvent",
    "Limits",
    "RecordedBatch",
    "decode_batch",
    "is_recording",
    "read_recording",
    "recording_parts",
    "write_recording_part",
]

BLOCK_STORED = "BlockStored"
BLOCK_REMOVED = "BlockRemoved"
ALL_BLOCKS_CLEARED = "AllBlocksCleared"
EVENT_TYPES = (BLOCK_STORED, BLOCK_REMOVED, ALL_BLOCKS_CLEARED)

_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                  "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
                  "kv_cache_spec_sliding_window")
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
_FIELDS = {BLOCK_STORED: _STORED_FIELDS, BLOCK_REMOVED: _REMOVED_FIELDS,
           ALL_BLOCKS_CLEARED: ()}
_I64 = (-(1 << 63), 1 << 63)
_I32 = (-(1 << 31), 1 << 31)
_INT_ONLY = {int}


@dataclass(frozen=True)
class Limits:
    """Bounds on what one payload may hold (everything from the network is hostile)."""

    max_payload_bytes: int = 64 << 20
    max_events: int = 1 << 20
    max_hashes: int = 1 << 16
    max_tokens: int = 1 << 22
    max_str: int = 256
    max_hash_bytes: int = 64


class EventDecodeError(ValueError):
    """A payload is not a valid event batch; the message names where and the field."""


@dataclass(frozen=True)
class KVEvent:
    """One decoded event (hashes as int64 keys; absent fields ``None``)."""

    type: str
    block_hashes: tuple[int, ...] = ()
    parent_block_hash: int | None = None
    token_ids: tuple[int, ...] = ()
    block_size: int | None = None
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None

    def parents(self) -> list[int | None]:
        """The parent of each block: ``parent_block_hash``, then the previous block."""
        return [self.parent_block_hash, *self.block_hashes[:-1]][: len(self.block_hashes)]


@dataclass(frozen=True)
class EventBatch:
    """A decoded batch: engine time (seconds), events, the publisher's DP rank."""

    ts: float
    events: tuple[KVEvent, ...]
    dp_rank: int | None = None
    skipped: int = 0  # events of unknown type


@dataclass(frozen=True)
class RecordedBatch:
    """A batch as recorded: where it came from, its sequence number, when it arrived."""

    source: str
    seq: int
    batch: EventBatch
    recv_ns: int = 0
    replayed: bool = False


# ---------------------------------------------------------------------- decoding
def decode_batch(payload: bytes, where: str = "payload", limits: Limits | None = None
                 ) -> EventBatch:
    """Decode one msgpack ``EventBatch`` (either encoding; see the module docstring).

    Args:
        payload: the third frame of a published message (or a replayed one).
        where: names the frame in errors (e.g. ``"tcp://host:5557 seq 17"``).
        limits: bounds (default :class:`Limits`).

    Returns:
        The batch.

    Raises:
        EventDecodeError: invalid msgpack, wrong shape or a field out of bounds.
    """
    lim = limits or Limits()
    if len(payload) > lim.max_payload_bytes:
        raise EventDecodeError(f"{where}: payload of {len(payload)} bytes exceeds "
                               f"{lim.max_payload_bytes}")
    try:
        obj = msgpack.unpackb(
            payload, raw=False, strict_map_key=False, use_list=True,
            max_str_len=max(lim.max_str, 1 << 16), max_bin_len=max(lim.max_hash_bytes, 1 << 16),
            max_array_len=max(lim.max_events, lim.max_tokens, lim.max_hashes),
            max_map_len=1 << 10, max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError, UnicodeDecodeError) as e:
        raise EventDecodeError(f"{where}: not a msgpack EventBatch: {e}") from None
    return _batch(obj, where, lim)


def _err(where: str, path: str, expected: str, got: Any) -> EventDecodeError:
    s = repr(got)
    if len(s) > 60:
        s = s[:57] + "..."
    return EventDecodeError(f"{where}: {path}: expected {expected}, got {s}")


def _batch(obj: Any, where: str, lim: Limits) -> EventBatch:
    dp: Any = None
    if isinstance(obj, list):
        if not 2 <= len(obj) <= 8:
            raise _err(where, "batch", "[ts, events, dp_rank?]", obj)
        ts, events = obj[0], obj[1]
        dp = obj[2] if len(obj) > 2 else None
    elif isinstance(obj, dict):
        if "ts" not in obj or "events" not in obj:
            raise _err(where, "batch", "a map with ts and events", sorted(map(str, obj))[:6])
        ts, events = obj["ts"], obj["events"]
        dp = obj.get("data_parallel_rank", obj.get("attn_dp_rank"))
    else:
        raise _err(where, "batch", "an array or a map", obj)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != ts \
            or abs(ts) > 1e12:
        raise _err(where, "ts", "seconds as a finite number", ts)
    if not isinstance(events, list):
        raise _err(where, "events", "an array", events)
    if len(events) > lim.max_events:
        raise _err(where, "events", f"at most {lim.max_events} events", f"{len(events)} events")
    if dp is not None:
        dp = _int(dp, where, "data_parallel_rank", _I32)
    out = []
    skipped = 0
    for i, ev in enumerate(events):
        e = _event(ev, where, f"events[{i}]", lim)
        if e is None:
            skipped += 1
        else:
            out.append(e)
    return EventBatch(ts=float(ts), events=tuple(out), dp_rank=dp, skipped=skipped)


def _event(ev: Any, where: str, path: str, lim: Limits) -> KVEvent | None:
    if isinstance(ev, list):
        if not ev:
            raise _err(where, path, "[tag, fields...]", ev)
        tag = ev[0]
        if not isinstance(tag, str):
            raise _err(where, f"{path}[0]", "an event tag", tag)
        names = _FIELDS.get(tag)
        if names is None:
            return None
        if len(ev) - 1 > len(names) + 8:
            raise _err(where, path, f"at most {len(names)} fields", f"{len(ev) - 1} fields")
        vals = dict(zip(names, ev[1:], strict=False))
        fpath = _Paths(path, names)
    elif isinstance(ev, dict):
        tag = ev.get("type")
        if not isinstance(tag, str):
            raise _err(where, f"{path}.type", "an event tag", tag)
        if tag not in _FIELDS:
            return None
        vals = ev
        fpath = _Paths(path, None)
    else:
        raise _err(where, path, "an event (array or map)", ev)
    if tag == ALL_BLOCKS_CLEARED:
        return KVEvent(type=tag)
    hashes = vals.get("block_hashes")
    hp = fpath["block_hashes"]
    if not isinstance(hashes, list):
        raise _err(where, hp, "a list of block hashes", hashes)
    if len(hashes) > lim.max_hashes:
        raise _err(where, hp, f"at most {lim.max_hashes} hashes", f"{len(hashes)} hashes")
    keys = tuple(_hash(h, where, hp, lim, j) for j, h in enumerate(hashes))
    medium = _str(vals.get("medium"), where, fpath["medium"], lim)
    group = vals.get("group_idx")
    group = None if group is None else _int(group, where, fpath["group_idx"], _I32)
    if tag == BLOCK_REMOVED:
        return KVEvent(type=tag, block_hashes=keys, medium=medium, group_idx=group)
    parent = vals.get("parent_block_hash")
    parent = None if parent is None else _hash(parent, where, fpath["parent_block_hash"], lim)
    toks = vals.get("token_ids")
    tp = fpath["token_ids"]
    if toks is None:
        toks = []
    if not isinstance(toks, list):
        raise _err(where, tp, "a list of token ids", toks)
    if len(toks) > lim.max_tokens:
        raise _err(where, tp, f"at most {lim.max_tokens} tokens", f"{len(toks)} tokens")
    if toks and (not set(map(type, toks)) <= _INT_ONLY or min(toks) < _I64[0]
                 or max(toks) >= _I64[1]):  # one C-speed pass; find the culprit if bad
        for j, t in enumerate(toks):
            if type(t) is not int or not _I64[0] <= t < _I64[1]:
                raise _err(where, f"{tp}[{j}]", "an int64 token id", t)
    bs = vals.get("block_size")
    bs = None if bs is None else _int(bs, where, fpath["block_size"], (1, 1 << 31))
    lora = vals.get("lora_id")
    lora = None if lora is None else _int(lora, where, fpath["lora_id"], _I64)
    return KVEvent(type=tag, block_hashes=keys, parent_block_hash=parent,
                   token_ids=tuple(toks), block_size=bs, lora_id=lora, medium=medium,
                   lora_name=_str(vals.get("lora_name"), where, fpath["lora_name"], lim),
                   group_idx=group)


class _Paths:
    """Field paths for error messages, built only when one is needed."""

    __slots__ = ("names", "path")

    def __init__(self, path: str, names: tuple[str, ...] | None) -> None:
        self.path, self.names = path, names

    def __getitem__(self, name: str) -> str:
        if self.names is None:
            return f"{self.path}.{name}"
        return f"{self.path}[{self.names.index(name) + 1}]"


def _hash(h: Any, where: str, path: str, lim: Limits, j: int | None = None) -> int:
    if type(h) is int:
        if -(1 << 63) <= h < (1 << 64):
            return external_key(h)
        expected = "a hash in [-2**63, 2**64)"
    elif isinstance(h, bytes):
        if 0 < len(h) <= lim.max_hash_bytes:
            return external_key(h)
        expected, h = f"1..{lim.max_hash_bytes} hash bytes", f"{len(h)} bytes"
    else:
        expected = "an int or bytes block hash"
    raise _err(where, path if j is None else f"{path}[{j}]", expected, h)


def _int(v: Any, where: str, path: str, bounds: tuple[int, int]) -> int:
    if type(v) is not int or not bounds[0] <= v < bounds[1]:
        raise _err(where, path, f"an integer in [{bounds[0]}, {bounds[1]})", v)
    return v


def _str(v: Any, where: str, path: str, lim: Limits) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > lim.max_str:
        raise _err(where, path, f"a string of at most {lim.max_str} characters", v)
    return v


# ---------------------------------------------------------------------- the recording
_SCHEMA = pa.schema([
    ("source", pa.string()), ("seq", pa.int64()), ("ts", pa.float64()),
    ("dp_rank", pa.int32()), ("idx", pa.int32()), ("type", pa.string()),
    ("block_hashes", pa.list_(pa.int64())), ("parent_block_hash", pa.int64()),
    ("token_ids", pa.list_(pa.int64())), ("block_size", pa.int32()), ("lora_id", pa.int64()),
    ("lora_name", pa.string()), ("medium", pa.string()), ("group_idx", pa.int32()),
    ("recv_ns", pa.int64()), ("replayed", pa.bool_()),
])
KIND = "kv-events"


@dataclass
class _Columns:
    cols: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in _SCHEMA.names})

    def add(self, rb: RecordedBatch) -> None:
        c = self.cols
        b = rb.batch
        for i, e in enumerate(b.events):
            c["source"].append(rb.source)
            c["seq"].append(rb.seq)
            c["ts"].append(b.ts)
            c["dp_rank"].append(b.dp_rank)
            c["idx"].append(i)
            c["type"].append(e.type)
            c["block_hashes"].append(list(e.block_hashes))
            c["parent_block_hash"].append(e.parent_block_hash)
            c["token_ids"].append(list(e.token_ids))
            c["block_size"].append(e.block_size)
            c["lora_id"].append(e.lora_id)
            c["lora_name"].append(e.lora_name)
            c["medium"].append(e.medium)
            c["group_idx"].append(e.group_idx)
            c["recv_ns"].append(rb.recv_ns)
            c["replayed"].append(rb.replayed)


def write_recording_part(path: str | os.PathLike[str], batches: Iterable[RecordedBatch],
                         meta: dict[str, Any] | None = None) -> int:
    """Write batches as one Parquet part (temp file + rename); returns the rows written.

    One row per event (``AllBlocksCleared`` has no hashes); columns ``source``, ``seq``,
    ``ts``, ``dp_rank``, ``idx`` (the event's index in its batch), ``type``,
    ``block_hashes``, ``parent_block_hash``, ``token_ids``, ``block_size``, ``lora_id``,
    ``lora_name``, ``medium``, ``group_idx``, ``recv_ns``, ``replayed``. File metadata
    ``kvsim.kind = kv-events`` and ``kvsim.meta`` (JSON: gaps, counters).
    """
    cols = _Columns()
    for rb in batches:
        cols.add(rb)
    md = {b"kvsim.kind": KIND.encode(), b"kvsim.meta": orjson.dumps(meta or {})}
    table = pa.Table.from_pydict(cols.cols, schema=_SCHEMA.with_metadata(md))
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return table.num_rows


def recording_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of a recording: a directory's ``part-*.parquet`` or one file."""
    p = Path(path)
    if p.is_dir():
        parts = sorted(p.glob("part-*.parquet"))
        if not parts:
            raise TraceError(f"{p}: no part-*.parquet files (not a kv-events recording)")
        return parts
    return [p]


def is_recording(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a kv-events recording (a directory of parts or one part).

    Example:
        >>> is_recording("/nonexistent.parquet")
        False
    """
    p = Path(path)
    try:
        if p.is_dir():
            parts = sorted(p.glob("part-*.parquet"))
            p = parts[0] if parts else p
        if not p.is_file():
            return False
        md = pq.read_schema(p).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return md.get(b"kvsim.kind") == KIND.encode()


def read_recording(path: str | os.PathLike[str]) -> tuple[list[RecordedBatch], dict[str, Any]]:
    """Read a recording back as batches (in file order) and the merged part metadata.

    Raises:
        TraceError: a part is unreadable or not a kv-events recording.
    """
    batches: list[RecordedBatch] = []
    meta: dict[str, Any] = {"gaps": [], "parts": 0}
    for part in recording_parts(path):
        try:
            table = pq.ParquetFile(part).read()
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{part}: cannot read parquet: {e}") from None
        md = table.schema.metadata or {}
        if md.get(b"kvsim.kind") != KIND.encode():
            raise TraceError(f"{part}: not a kv-events recording (no kvsim.kind metadata)")
        for name in _SCHEMA.names:
            if name not in table.column_names:
                raise TraceError(f"{part}: missing column {name!r}")
        pm = orjson.loads(md.get(b"kvsim.meta", b"{}"))
        meta["gaps"].extend(pm.get("gaps", []))
        for k, v in pm.items():
            if k != "gaps" and isinstance(v, int):
                meta[k] = meta.get(k, 0) + v
        meta["parts"] += 1
        batches.extend(_batches(table.to_pylist()))
    return batches, meta


def _batches(rows: Sequence[dict[str, Any]]) -> Iterator[RecordedBatch]:
    i = 0
    while i < len(rows):
        r = rows[i]
        j = i
        events = []
        while j < len(rows) and rows[j]["source"] == r["source"] and rows[j]["seq"] == r["seq"]:
            x = rows[j]
            events.append(KVEvent(
                type=x["type"], block_hashes=tuple(x["block_hashes"] or ()),
                parent_block_hash=x["parent_block_hash"], token_ids=tuple(x["token_ids"] or ()),
                block_size=x["block_size"], lora_id=x["lora_id"], medium=x["medium"],
                lora_name=x["lora_name"], group_idx=x["group_idx"]))
            j += 1
        yield RecordedBatch(source=r["source"], seq=r["seq"], recv_ns=r["recv_ns"],
                            replayed=r["replayed"],
                            batch=EventBatch(ts=r["ts"], events=tuple(events),
                                             dp_rank=r["dp_rank"]))
        i = j

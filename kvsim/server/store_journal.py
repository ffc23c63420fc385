"""The journal store: an append-only log of batches plus snapshots (the embedded default).

Layout of the store directory (``journal:///PATH`` or ``<data_dir>/kvsim-journal``):

* ``journal-NNNNNNNN.log``: segments of records. A record is one
  :class:`~kvsim.server.store.StoreBatch` (or one recency flush): an 8-byte header
  (payload length, CRC-32 of the payload) and a binary payload (block columns as raw
  little-endian int64, registry records and session extras as JSON). Each call's batch
  is **one** ``write()`` to a segment opened ``O_APPEND``; a process only ever appends
  to segments it created itself (it starts a new one when it first writes).
* ``snapshot-NNNNNNNN.kvs``: the whole state as of the start of segment ``N`` (every
  segment below ``N`` folded in): a JSON header (registry records, unfinished
  sessions, per-instance block counts) and the block columns raw. Written to a temp
  file, fsynced and renamed; then the segments it covers are deleted.
* ``FENCE``: the highest leader epoch that wrote (8 bytes), see *Fencing*.

Start-up reads the newest snapshot (``numpy.fromfile``: a 10M-block state loads in
about a second) and replays the segments after it. A torn record at the end of a
segment (the writer was killed inside ``write()``) ends that segment: it was never
acknowledged.

**Durability** (``fsync=`` option, URL ``?fsync=``):

* ``none`` (default): a batch reaches the operating system (``write()``) before the
  call is acknowledged: it survives ``kill -9`` of the server, as SQLite in WAL mode
  with ``synchronous=NORMAL`` does; an operating-system crash or power loss may lose
  the last writes.
* ``always``: ``fsync`` before the acknowledgement, with **group commit**: one
  ``fsync`` covers every batch written before it, so concurrent calls share it
  (:meth:`JournalStore.wait_durable`, called by the service after it lets go of its
  store lock).
* ``interval``: a background thread fsyncs every ``fsync_ms`` (default 100 ms): an
  operating-system crash loses at most that window.

**Compaction**: when the segments since the last snapshot pass ``compact_bytes``
(default: the larger of 64 MiB and the snapshot's size, so a restart replays at most
about a snapshot's worth of journal) the writer starts a new segment and a background
thread folds the old snapshot and the sealed segments into a new snapshot. It takes no
lock of the server's: calls go on meanwhile.

**Fencing**: :meth:`JournalStore.fence` (called when this process becomes leader, with
its lease epoch) raises ``FENCE`` to that epoch; from then on every write checks,
under an exclusive ``flock`` of ``FENCE``, that no later leader has fenced, and is
refused (:class:`~kvsim.server.store.StoreFenced`) otherwise. A deposed leader
therefore cannot append once its successor has fenced, and its successor fences before
it loads the state.

Example:
    >>> import tempfile, numpy as np
    >>> from kvsim.server.store import StoreBatch
    >>> d = tempfile.mkdtemp()
    >>> s = JournalStore(d)
    >>> b = StoreBatch()
    >>> b.put_blocks("i0", np.array([7, 8]), t_write=np.array([1, 2]), t_access=np.array([3, 4]))
    >>> s.apply(b)
    >>> s.close()
    >>> s = JournalStore(d)
    >>> [(r.instance_id, r.keys.tolist()) for r in s.load_blocks()]
    [('i0', [7, 8])]
    >>> s.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kvsim.server.store import (
    BlockRecords,
    SessionRecord,
    StoreBatch,
    StoreError,
    StoreFenced,
)

FSYNC_POLICIES = ("none", "always", "interval")
DEFAULT_COMPACT_BYTES = 64 << 20
_HDR = struct.Struct("<II")  # payload length, crc32
_SNAP_MAGIC = b"KVSIMSNP"
_SEG_RE = re.compile(r"^journal-(\d{8})\.log$")
_SNAP_RE = re.compile(r"^snapshot-(\d{8})\.kvs$")
_I64 = np.dtype("<i8")

# op codes (a record's payload is a sequence of ops, applied in order)
_PUT, _DEL, _OPEN, _CLOSE, _REC, _DROP_INST, _REPLACE, _DROP_ALL, _TOUCH = range(1, 10)
_K_PUT, _K_DEL, _K_TOUCH = 0, 1, 2  # kinds of block events at resolve time


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def encode_batch(batch: StoreBatch) -> bytes:
    """The journal payload of one batch (ops in :class:`SqliteStore`'s apply order)."""
    out: list[bytes] = []
    if batch.replace_records:
        out.append(bytes((_REPLACE,)))
    if batch.drop_all:
        out.append(bytes((_DROP_ALL,)))
    for op, payload in batch.records:
        js = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        out += [bytes((_REC,)), _str(op), struct.pack("<I", len(js)), js]
    for inst in batch.drop_instances:
        out += [bytes((_DROP_INST,)), _str(inst)]
    for inst, keys in batch.deletes:
        if len(keys):
            out += [bytes((_DEL,)), _str(inst), struct.pack("<I", len(keys)),
                    np.ascontiguousarray(keys, _I64).tobytes()]
    for inst, keys, tw, ta, acc, loc in batch.puts:
        if len(keys):
            out += [bytes((_PUT,)), _str(inst), struct.pack("<I", len(keys)),
                    np.concatenate([keys, tw, ta, acc, loc]).astype(_I64, copy=False).tobytes()]
    for sid in batch.closed:
        out += [bytes((_CLOSE,)), struct.pack("<q", sid)]
    for s in batch.opened:
        js = orjson.dumps(s.extra, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        keys = np.ascontiguousarray(s.keys, _I64)
        out += [bytes((_OPEN,)), struct.pack("<qqqI", s.session_id, s.deadline_ns, s.loc,
                                             len(keys)),
                _str(s.instance_id), keys.tobytes(), struct.pack("<I", len(js)), js]
    return b"".join(out)


def encode_touch(instance_id: str, keys: np.ndarray, t_access: np.ndarray,
                 access_count: np.ndarray) -> bytes:
    """The journal payload of one recency update."""
    return b"".join([bytes((_TOUCH,)), _str(instance_id), struct.pack("<I", len(keys)),
                     np.concatenate([np.asarray(keys, _I64), np.asarray(t_access, _I64),
                                     np.asarray(access_count, _I64)]).tobytes()])


@dataclass
class _State:
    """The state being rebuilt from a snapshot and segments."""

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # a session opened in a segment stays (instance, keys view, deadline, loc, raw extra
    # JSON) until the scan ends: most are closed a few records later, so their extras
    # are never parsed (:meth:`session_records` builds the survivors)
    sessions: dict[int, SessionRecord | tuple[str, np.ndarray, int, int, bytes]] = field(
        default_factory=dict)
    # per instance: chronological chunks (kind, keys, tw, ta, acc, loc); tw/loc None for
    # deletes, tw None for touches
    chunks: dict[str, list[tuple[int, np.ndarray, Any, Any, Any, Any]]] = field(
        default_factory=dict)

    def apply(self, payload: bytes) -> None:
        mv = memoryview(payload)
        p, n = 0, len(payload)

        def s_at(q: int) -> tuple[str, int]:
            (ln,) = struct.unpack_from("<H", mv, q)
            return bytes(mv[q + 2:q + 2 + ln]).decode(), q + 2 + ln

        while p < n:
            op = mv[p]
            p += 1
            if op == _PUT or op == _DEL or op == _TOUCH:
                inst, p = s_at(p)
                (k,) = struct.unpack_from("<I", mv, p)
                p += 4
                cols = 5 if op == _PUT else 3 if op == _TOUCH else 1
                a = np.frombuffer(mv, _I64, k * cols, p)
                p += 8 * k * cols
                lst = self.chunks.setdefault(inst, [])
                if op == _PUT:
                    lst.append((_K_PUT, a[:k], a[k:2 * k], a[2 * k:3 * k], a[3 * k:4 * k],
                                a[4 * k:]))
                elif op == _DEL:
                    lst.append((_K_DEL, a, None, None, None, None))
                else:
                    lst.append((_K_TOUCH, a[:k], None, a[k:2 * k], a[2 * k:], None))
            elif op == _CLOSE:
                (sid,) = struct.unpack_from("<q", mv, p)
                p += 8
                self.sessions.pop(sid, None)
            elif op == _OPEN:
                sid, deadline, loc, k = struct.unpack_from("<qqqI", mv, p)
                p += 28
                inst, p = s_at(p)
                keys = np.frombuffer(mv, _I64, k, p)
                p += 8 * k
                (ln,) = struct.unpack_from("<I", mv, p)
                self.sessions[sid] = (inst, keys, deadline, loc, payload[p + 4:p + 4 + ln])
                p += 4 + ln
            elif op == _REC:
                name, p = s_at(p)
                (ln,) = struct.unpack_from("<I", mv, p)
                self.records.append((name, orjson.loads(bytes(mv[p + 4:p + 4 + ln]))))
                p += 4 + ln
            elif op == _DROP_INST:
                inst, p = s_at(p)
                self.chunks.pop(inst, None)
                for sid in [x for x, s in self.sessions.items()
                            if (s.instance_id if isinstance(s, SessionRecord) else s[0])
                            == inst]:
                    del self.sessions[sid]
            elif op == _REPLACE:
                self.records.clear()
            elif op == _DROP_ALL:
                self.chunks.clear()
                self.sessions.clear()
            else:
                raise StoreError(f"journal: unknown op {op} at byte {p - 1} of a record")

    def session_records(self) -> list[SessionRecord]:
        """The open sessions, by id (extras parsed now)."""
        out = []
        for sid in sorted(self.sessions):
            s = self.sessions[sid]
            if not isinstance(s, SessionRecord):
                inst, keys, deadline, loc, raw = s
                s = SessionRecord(sid, inst, keys.copy(), deadline, loc, orjson.loads(raw))
            out.append(s)
        return out

    def blocks(self) -> Iterator[BlockRecords]:
        for inst, chunks in self.chunks.items():
            rec = resolve(inst, chunks)
            if rec is not None and len(rec.keys):
                yield rec


_Chunk = tuple[int, np.ndarray, Any, Any, Any, Any]


def resolve(inst: str, chunks: list[_Chunk]) -> BlockRecords | None:
    """Fold an instance's chronological put/delete/touch chunks into its blocks.

    A key's last put or delete decides whether it exists; touches after its last put
    raise its last access (never lower it) and set its access count (last one wins);
    touches of a key that does not exist are ignored. Vectorised: one stable sort.
    """
    if not chunks:
        return None
    if len(chunks) == 1 and chunks[0][0] == _K_PUT:
        _, k, tw, ta, acc, loc = chunks[0]
        return BlockRecords(inst, k, tw, ta, acc, loc)
    base = chunks[0]
    if base[0] == _K_PUT and base[1].shape[0] > 4 * sum(len(c[1]) for c in chunks[1:]):
        # a large first chunk (a snapshot's blocks: sorted unique keys) and a short tail:
        # only the snapshot rows whose key the tail names take part in the fold
        bk = base[1]
        if bk.shape[0] > 1 and bool(np.all(bk[1:] > bk[:-1])):
            tail = np.concatenate([c[1] for c in chunks[1:]])
            pos = np.minimum(np.searchsorted(bk, tail), bk.shape[0] - 1)
            named = np.zeros(bk.shape[0], bool)
            named[pos[bk[pos] == tail]] = True
            keep = ~named
            _, bk_, btw, bta, bacc, bloc = base
            head: _Chunk = (_K_PUT, bk_[named], btw[named], bta[named], bacc[named],
                            bloc[named])
            part = resolve(inst, [head, *chunks[1:]])
            whole = not bool(named.any())  # the tail names no snapshot key: no copy
            cols = [a if whole else a[keep] for a in (bk_, btw, bta, bacc, bloc)]
            if part is not None:
                cols = [np.concatenate([c, x]) for c, x in zip(cols, (
                    part.keys, part.t_write, part.t_access, part.access_count, part.loc),
                    strict=True)]
            return BlockRecords(inst, *cols)  # not sorted: snapshot() sorts what it writes
    sizes = [len(c[1]) for c in chunks]
    kind = np.repeat(np.array([c[0] for c in chunks], np.int8), sizes)
    key = np.concatenate([c[1] for c in chunks])

    def col(i: int) -> np.ndarray:
        return np.concatenate([c[i] if c[i] is not None else np.zeros(len(c[1]), _I64)
                               for c in chunks])

    tw, ta, acc, loc = col(2), col(3), col(4), col(5)
    n = key.shape[0]
    if n == 0:
        return None
    o = np.argsort(key, kind="stable")  # by key, chronological within a key
    k, kd = key[o], kind[o]
    ar = np.arange(n)
    start = np.ones(n, bool)
    start[1:] = k[1:] != k[:-1]
    end = np.ones(n, bool)
    end[:-1] = start[1:]
    last_pd = np.maximum.accumulate(np.where(kd != _K_TOUCH, ar, -1))
    gstart = np.maximum.accumulate(np.where(start, ar, 0))
    ends = np.flatnonzero(end)
    b = last_pd[ends]
    ok = (b >= gstart[ends]) & (kd[np.maximum(b, 0)] == _K_PUT)
    b, ends = b[ok], ends[ok]
    src = o[b]
    ta_s = ta[o]
    # the last access: the max over the put and every touch after it
    idx = np.empty(2 * b.shape[0], np.int64)
    idx[0::2], idx[1::2] = b, ends + 1
    padded = np.append(ta_s, 0)
    t_access = np.maximum.reduceat(padded, idx)[0::2] if b.shape[0] else ta_s[:0]
    return BlockRecords(inst, key[src], tw[src], t_access, acc[o[ends]], loc[src])


def _read_records(path: Path) -> Iterator[bytes]:
    """The records of one segment; a torn or corrupt record ends it (a torn tail is what
    a writer killed inside ``write()`` leaves)."""
    data = path.read_bytes()
    p, n = 0, len(data)
    while p + _HDR.size <= n:
        ln, crc = _HDR.unpack_from(data, p)
        q = p + _HDR.size
        if q + ln > n:
            break
        payload = data[q:q + ln]
        if zlib.crc32(payload) != crc:
            break
        yield payload
        p = q + ln


class JournalStore:
    """The append-only journal store (see the module docstring).

    Args:
        path: the store directory (created 0700).
        fsync: ``none``, ``always`` or ``interval`` (module docstring).
        fsync_ms: the ``interval`` period.
        compact_bytes: compact when the segments since the snapshot pass this many
            bytes (0: the larger of 64 MiB and the snapshot's size).
        segment_bytes: start a new segment past this size.
    """

    def __init__(self, path: str | Path, *, fsync: str = "none", fsync_ms: int = 100,
                 compact_bytes: int = 0, segment_bytes: int = 16 << 20) -> None:
        if fsync not in FSYNC_POLICIES:
            raise StoreError(f"journal: fsync must be one of {', '.join(FSYNC_POLICIES)}, "
                             f"got {fsync!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.url = f"journal:///{self.path}" + (f"?fsync={fsync}" if fsync != "none" else "")
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fence_fd = os.open(self.path / "FENCE", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open the journal directory ({e})") from None
        self._compact_bytes = int(compact_bytes)
        self._segment_bytes = int(segment_bytes)
        self._lock = threading.Lock()  # appends, rotation
        self._sync_lock = threading.Lock()  # group commit
        self._local = threading.local()
        self._fd = -1  # the segment this process appends to (-1: none yet)
        self._seg = 0
        self._seg_size = 0
        self._written = 0  # bytes this process wrote (all segments)
        self._synced = 0  # bytes known fsynced
        self._since_snapshot = 0  # journal bytes after the newest snapshot
        self._snapshot_bytes = 0
        self._epoch = 0  # this writer's leader epoch (0: unfenced, single writer)
        self._cached: _State | None = None
        self._compactor: threading.Thread | None = None
        self._closed = False
        self.compactions = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._fsync_s = max(1, int(fsync_ms)) / 1000.0
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                            name="kvsim-journal-fsync")
            self._syncer.start()
        snap, segs = self._files()
        self._snapshot_bytes = snap[1].stat().st_size if snap is not None else 0
        self._since_snapshot = sum(p.stat().st_size for _, p in segs)

    # ------------------------------------------------------------ files
    def _files(self) -> tuple[tuple[int, Path] | None, list[tuple[int, Path]]]:
        """The newest snapshot and the segments after it, in order."""
        snaps, segs = [], []
        for p in self.path.iterdir():
            if m := _SNAP_RE.match(p.name):
                snaps.append((int(m.group(1)), p))
            elif m := _SEG_RE.match(p.name):
                segs.append((int(m.group(1)), p))
        snap = max(snaps) if snaps else None
        first = snap[0] if snap is not None else 0
        return snap, sorted(s for s in segs if s[0] >= first)

    def _new_segment(self) -> None:
        """Start a segment numbered after every existing one (under ``_lock``)."""
        if self._fd >= 0:
            if self.fsync != "none":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        nums = [int(m.group(1)) for p in self.path.iterdir()
                if (m := _SEG_RE.match(p.name) or _SNAP_RE.match(p.name))]
        self._seg = max(nums, default=0) + 1
        self._fd = os.open(self.path / f"journal-{self._seg:08d}.log",
                           os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._seg_size = 0
        with contextlib.suppress(OSError):
            dfd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    # ------------------------------------------------------------ fencing
    def _read_fence(self) -> int:
        raw = os.pread(self._fence_fd, 8, 0)
        return struct.unpack("<q", raw)[0] if len(raw) == 8 else 0

    def fence(self, epoch: int) -> None:
        """Write as leader ``epoch`` from now on: raise the store's fence to it and
        start a new segment.

        Raises:
            StoreFenced: a later epoch has fenced already.
        """
        with self._lock:
            fcntl.flock(self._fence_fd, fcntl.LOCK_EX)
            try:
                cur = self._read_fence()
                if epoch < cur:
                    raise StoreFenced(f"{self.path}: leader epoch {epoch} is older than the "
                                      f"store's fence {cur}")
                os.pwrite(self._fence_fd, struct.pack("<q", epoch), 0)
                os.fsync(self._fence_fd)
                self._epoch = int(epoch)
                self._new_segment()
            finally:
                fcntl.flock(self._fence_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------ writes
    def _append(self, payload: bytes) -> None:
        rec = _HDR.pack(len(payload), zlib.crc32(payload)) + payload
        self._cached = None  # a start-up scan no longer describes the store
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: the journal is closed")
            if self._fd < 0 or self._seg_size >= self._segment_bytes:
                self._new_segment()
            if self._epoch:
                fcntl.flock(self._fence_fd, fcntl.LOCK_EX)
                try:
                    cur = self._read_fence()
                    if cur > self._epoch:
                        raise StoreFenced(f"{self.path}: a newer leader (epoch {cur}) fenced "
                                          f"this one (epoch {self._epoch}) off")
                    os.write(self._fd, rec)
                finally:
                    fcntl.flock(self._fence_fd, fcntl.LOCK_UN)
            else:
                os.write(self._fd, rec)  # one write() per batch, O_APPEND
            self._seg_size += len(rec)
            self._written += len(rec)
            self._local.end = self._written
            self._since_snapshot += len(rec)
            limit = self._compact_bytes or max(DEFAULT_COMPACT_BYTES, self._snapshot_bytes)
            if self._since_snapshot >= limit and self._compactor is None:
                self._start_compaction()

    def apply(self, batch: StoreBatch) -> None:
        """Append ``batch`` as one record (one ``write()``); with ``fsync=always`` the
        caller then waits in :meth:`wait_durable` (or this does, when called alone)."""
        if not batch:
            return
        self._append(encode_batch(batch))

    def wait_durable(self) -> None:
        """Return once this thread's last write is on disk (``fsync=always``; group
        commit: one fsync covers every write before it). No-op for other policies."""
        if self.fsync != "always":
            return
        target = getattr(self._local, "end", 0)
        if target <= self._synced:
            return
        with self._sync_lock:
            if target <= self._synced:
                return
            with self._lock:
                upto, fd = self._written, self._fd
            if fd >= 0:
                os.fsync(fd)  # earlier segments were fsynced when they were sealed
            self._synced = max(self._synced, upto)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self._fsync_s):
            with self._lock:
                fd, upto = self._fd, self._written
                if fd >= 0 and upto > self._synced:
                    os.fsync(fd)
                    self._synced = upto

    def write_recency(self, instance_id: str, keys: np.ndarray, t_access: np.ndarray,
                      access_count: np.ndarray) -> None:
        """Append a recency update (applies to blocks that exist at that point)."""
        if not len(keys):
            return
        self._append(encode_touch(instance_id, keys, t_access, access_count))
        self.wait_durable()

    def compact(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Replace the registry journal by ``records``."""
        b = StoreBatch()
        b.records = list(records)
        b.replace_records = True
        self._append(encode_batch(b))
        self.wait_durable()

    # ------------------------------------------------------------ snapshots
    def _start_compaction(self) -> None:
        """Seal the segment and fold everything before it into a snapshot on a
        background thread (under ``_lock``)."""
        self._new_segment()
        upto = self._seg
        self._since_snapshot = 0
        th = threading.Thread(target=self._compact_upto, args=(upto,), daemon=True,
                              name="kvsim-journal-compact")
        self._compactor = th
        th.start()

    def _compact_upto(self, upto: int) -> None:
        try:
            self.snapshot(upto)
        except Exception:  # pragma: no cover - logged; the journal stays valid
            import logging

            logging.getLogger("kvsim.server").exception("journal compaction failed")
        finally:
            with self._lock:
                self._compactor = None

    def snapshot(self, upto: int | None = None) -> Path | None:
        """Write ``snapshot-<upto>`` (the state of every segment below ``upto``; default:
        seal the current segment first) and delete what it covers. Returns its path
        (None if fenced off meanwhile)."""
        if upto is None:
            with self._lock:
                self._new_segment()
                upto = self._seg
                self._since_snapshot = 0
        st = self._scan(below=upto)
        blocks = []
        for b in st.blocks():  # sorted by key: a later start-up folds a short tail fast
            if b.keys.shape[0] > 1 and not bool(np.all(b.keys[1:] > b.keys[:-1])):
                o = np.argsort(b.keys, kind="stable")
                b = BlockRecords(b.instance_id, b.keys[o], b.t_write[o], b.t_access[o],
                                 b.access_count[o], b.loc[o])
            blocks.append(b)
        head = orjson.dumps({
            "version": 1, "records": st.records,
            "sessions": [{"sid": s.session_id, "inst": s.instance_id, "keys": s.keys,
                          "deadline": s.deadline_ns, "loc": s.loc, "extra": s.extra}
                         for s in st.session_records()],
            "instances": [[b.instance_id, int(b.keys.shape[0])] for b in blocks],
        }, option=orjson.OPT_SERIALIZE_NUMPY)
        final = self.path / f"snapshot-{upto:08d}.kvs"
        tmp = self.path / f".snapshot-{upto:08d}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(_SNAP_MAGIC + struct.pack("<Q", len(head)) + head)
            for b in blocks:
                for a in (b.keys, b.t_write, b.t_access, b.access_count, b.loc):
                    f.write(np.ascontiguousarray(a, _I64).data)
            f.flush()
            os.fsync(f.fileno())
        with self._lock:
            if self._epoch:
                fcntl.flock(self._fence_fd, fcntl.LOCK_EX)
            try:
                if self._epoch and self._read_fence() > self._epoch:
                    tmp.unlink()
                    return None
                os.replace(tmp, final)
                dfd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                for p in self.path.iterdir():
                    m = _SEG_RE.match(p.name) or _SNAP_RE.match(p.name)
                    if m and int(m.group(1)) < upto:
                        p.unlink(missing_ok=True)
                self._snapshot_bytes = final.stat().st_size
                self.compactions += 1
            finally:
                if self._epoch:
                    fcntl.flock(self._fence_fd, fcntl.LOCK_UN)
        return final

    def _load_snapshot(self, path: Path, st: _State) -> None:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic != _SNAP_MAGIC:
                raise StoreError(f"{path}: not a kvsim journal snapshot")
            (ln,) = struct.unpack("<Q", f.read(8))
            head = orjson.loads(f.read(ln))
            for inst, n in head["instances"]:
                a = np.fromfile(f, dtype=_I64, count=5 * n)
                if a.shape[0] != 5 * n:
                    raise StoreError(f"{path}: truncated at instance {inst!r}")
                st.chunks[inst] = [(_K_PUT, a[:n], a[n:2 * n], a[2 * n:3 * n],
                                    a[3 * n:4 * n], a[4 * n:])]
        st.records = [(op, p) for op, p in head["records"]]
        for s in head["sessions"]:
            st.sessions[int(s["sid"])] = SessionRecord(
                int(s["sid"]), s["inst"], np.asarray(s["keys"], _I64), int(s["deadline"]),
                int(s["loc"]), s["extra"])

    def _scan(self, below: int | None = None) -> _State:
        """Rebuild the state from the newest snapshot and the segments after it (only
        those numbered below ``below``). A compaction running meanwhile may delete a
        segment between the listing and its read: the scan then starts over."""
        for _attempt in range(5):
            st = _State()
            snap, segs = self._files()
            try:
                if snap is not None:
                    self._load_snapshot(snap[1], st)
                for num, p in segs:
                    if below is not None and num >= below:
                        break
                    for payload in _read_records(p):
                        st.apply(payload)
                return st
            except FileNotFoundError:
                continue
        raise StoreError(f"{self.path}: the journal kept changing while being read")

    # ------------------------------------------------------------ reads (start-up)
    def load_records(self) -> list[tuple[str, dict[str, Any]]]:
        """The registry journal, in order (scans the store; :meth:`load_blocks` and
        :meth:`load_sessions` right after reuse that scan)."""
        self._cached = self._scan()
        return list(self._cached.records)

    def load_blocks(self) -> Iterator[BlockRecords]:
        """Every persisted block, one instance at a time."""
        st = self._cached if self._cached is not None else self._scan()
        self._cached = st
        yield from st.blocks()

    def load_sessions(self) -> list[SessionRecord]:
        """Every unfinished session (ends the start-up scan)."""
        st = self._cached if self._cached is not None else self._scan()
        self._cached = None
        return st.session_records()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            for p in self.path.iterdir():
                if _SEG_RE.match(p.name) or _SNAP_RE.match(p.name) or p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
            self._since_snapshot = self._snapshot_bytes = 0
            self._cached = None

    def close(self) -> None:
        """Flush and close (again: no-op)."""
        if self._closed:
            return
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        th = self._compactor
        if th is not None:
            th.join(timeout=60)
        with self._lock:
            if self._fd >= 0:
                if self.fsync != "none":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            os.close(self._fence_fd)
            self._closed = True


def open_journal(url: str, data_dir: str | Path) -> JournalStore:
    """``journal``, ``journal:///ABS/DIR`` or ``journal://REL/DIR`` (relative to
    ``data_dir``), with optional ``?fsync=none|always|interval&fsync_ms=N&compact_mb=N``."""
    from urllib.parse import parse_qs, urlparse

    if url == "journal":
        return JournalStore(Path(data_dir) / "kvsim-journal")
    u = urlparse(url)
    raw = url[len("journal://"):].split("?", 1)[0]
    p = Path(raw) if raw.startswith("/") else Path(data_dir) / raw
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    unknown = set(q) - {"fsync", "fsync_ms", "compact_mb"}
    if unknown:
        raise StoreError(f"{url}: unknown journal option(s) {', '.join(sorted(unknown))}")
    try:
        return JournalStore(p, fsync=q.get("fsync", "none"),
                            fsync_ms=int(q.get("fsync_ms", "100")),
                            compact_bytes=int(q.get("compact_mb", "0")) << 20)
    except ValueError as e:
        raise StoreError(f"{url}: {e}") from None


def remove_journal(path: str | Path) -> None:
    """Delete a journal directory (tests)."""
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["JournalStore", "encode_batch", "open_journal", "resolve"]

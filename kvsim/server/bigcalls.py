"""Big calls beside small ones: the service lock that a long call lets go between its
steps, and the parts of a 100k-key call done outside that lock.

A ``startWriteCache`` (its ``finishWriteCache``, a ``removeCache``, a ``trimCache``) of
more than :data:`STEP_KEYS` keys runs the core's kernels in slices
(:attr:`kvsim.core.manager.CacheManager.step_keys`) and calls the service's pause
between two (:meth:`StepLock.pause`): when calls wait for the lock, it is released until
they are through, so a 1-key read is answered in the middle of the big call. Its key
list is converted before the lock (:func:`preparse`) and its HTTP reply is built from a
template after it (:func:`locations_json`), both in slices that let the GIL go.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from kvsim.server.store import SessionRecord, StoreBatch

if TYPE_CHECKING:
    from kvsim.core.manager import SessionInfo
    from kvsim.server.service import Service

#: keys per step of a long call (the core's ``step_keys``): one step holds the service
#: lock for ~1 ms on a loaded 2-CPU machine (8192 keys: ~4 ms)
STEP_KEYS = 2048
#: a key list longer than this is converted before the lock, in slices of this many
PREPARSE_KEYS = 4096
# a pause polls every PAUSE_POLL_S and takes the lock back once no call has waited for
# PAUSE_IDLE_S, or after PAUSE_MAX_S (the long call keeps about half of the lock under a
# stream of short calls)
PAUSE_POLL_S = 0.0001
PAUSE_IDLE_S = 0.0005
PAUSE_MAX_S = 0.004
#: a pause with no call waiting still lets the lock and the GIL go for this long (0: a
#: bare yield, which lets a thread waiting for the GIL in; negative: none)
PAUSE_YIELD_S = 0.0


class StepLock:
    """A mutex that counts the threads blocked on it, so the holder of a long call can
    let them in between two steps (:meth:`pause`).

    Example:
        >>> lk = StepLock()
        >>> with lk:
        ...     lk.pause(None), lk.waiting
        (False, 0)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.waiting = 0  # threads blocked in acquire()

    def acquire(self) -> None:
        """Take the lock (counted as waiting while another thread holds it)."""
        if self._lock.acquire(blocking=False):
            return
        with self._count_lock:
            self.waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count_lock:
                self.waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> StepLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def pause(self, hook: Callable[[], None] | None) -> bool:
        """Between two steps of the holder's long call: when threads wait (or ``hook``
        is given), release the lock, run ``hook``, wait until none has waited for
        :data:`PAUSE_IDLE_S` (at most :data:`PAUSE_MAX_S`), take it back. Returns
        whether the lock was let go."""
        if not self.waiting and hook is None:
            if PAUSE_YIELD_S >= 0:
                # no call waits for the lock, but a thread may wait for the GIL (the
                # event loop with a read that has not reached the lock yet): let both
                # go for a moment, so it runs now rather than after the interpreter's
                # switch interval (5 ms; the server may have one CPU); a call that takes
                # the lock meanwhile is answered, the long call goes on after it
                self._lock.release()
                try:
                    time.sleep(PAUSE_YIELD_S)
                finally:
                    self.acquire()
            return False
        self._lock.release()
        try:
            if hook is not None:
                hook()
            t0 = idle = time.perf_counter()
            while True:
                time.sleep(PAUSE_POLL_S)
                now = time.perf_counter()
                if self.waiting:
                    idle = now
                if now - idle >= PAUSE_IDLE_S or now - t0 >= PAUSE_MAX_S:
                    break
        finally:
            self.acquire()
        return True


def long_call(svc: Service, method: str, raw: bytes) -> bool:
    """Whether the meta call ``method`` with JSON body ``raw`` may run in steps (more
    than ``step_keys`` keys, the finish of such a session, a trim): a transport
    answering on an event loop then runs it on a worker thread (see
    :func:`kvsim.server.http.offload`). A hint read without the service lock."""
    step = svc.mgr.step_keys
    if method == "trimCache":
        return True
    if method == "finishWriteCache":
        try:
            token = orjson.loads(raw).get("write_session_id")
            ses = svc.mgr.find_session(str(token)) if token is not None else None
        except (orjson.JSONDecodeError, AttributeError):
            return False
        except (KeyError, RuntimeError):  # pragma: no cover - changed meanwhile
            return True
        return ses is not None and ses.keys.shape[0] > step
    return raw.count(b",") > step


def preparse(body: dict[str, Any], cap: int) -> dict[str, Any]:
    """``body`` with a long ``block_keys`` list (over :data:`PREPARSE_KEYS`, at most
    ``cap``) already an int64 array: converted before the call takes the service lock,
    in slices (the GIL is let go between two, so the event loop keeps serving). A list
    with anything but int64 values is left as it is (the call names the bad field).

    Example:
        >>> preparse({"block_keys": list(range(5000))}, 10**6)["block_keys"][-2:]
        array([4998, 4999])
        >>> preparse({"block_keys": [1, "2"] * 3000}, 10**6)["block_keys"][:2]
        [1, '2']
    """
    v = body.get("block_keys")
    if not isinstance(v, list) or not PREPARSE_KEYS < len(v) <= cap:
        return body
    parts = []
    for a in range(0, len(v), PREPARSE_KEYS):
        part = v[a:a + PREPARSE_KEYS]
        if not set(map(type, part)) <= {int}:
            return body
        try:
            parts.append(np.array(part, dtype=np.int64))
        except OverflowError:
            return body
    return body | {"block_keys": np.concatenate(parts)}


_KEYS_AT = re.compile(rb'"block_keys"\s*:\s*\[')
#: bytes of a long key list parsed per slice by :func:`loads` (~5k keys)
PARSE_BYTES = 64 << 10


def loads(raw: bytes, cap: int) -> Any:
    """``orjson.loads(raw)``, except that a long ``block_keys`` list of plain integers
    (over :data:`PREPARSE_KEYS`, at most ``cap``) is parsed in slices of
    :data:`PARSE_BYTES` straight into an int64 array (as :func:`preparse` gives it): a
    100k-key body is not one 5-12 ms C call holding the GIL, and the event loop keeps
    serving between two slices. Anything else is left to ``orjson.loads`` (which names
    the error of a malformed body).

    Example:
        >>> raw = orjson.dumps({"instance_id": "i", "block_keys": list(range(10**9, 10**9 + 9000))})
        >>> b = loads(raw, 10**6)
        >>> b["instance_id"], b["block_keys"][-1:]
        ('i', array([1000008999]))
        >>> loads(b'{"block_keys": [1, 2.5]}', 10**6)
        {'block_keys': [1, 2.5]}
    """
    m = _KEYS_AT.search(raw) if len(raw) > PARSE_BYTES else None
    end = raw.find(b"]", m.end()) if m is not None else -1
    if m is None or end < 0 or raw.count(b'"block_keys"') != 1:
        return orjson.loads(raw)
    inner = raw[m.end():end]
    if inner.translate(None, b"0123456789-, \t\r\n"):
        return orjson.loads(raw)  # not a list of integers
    try:
        body = orjson.loads(raw[:m.end()] + raw[end:])  # the body, its key list empty
        if not isinstance(body, dict) or body.get("block_keys") != []:
            return orjson.loads(raw)  # the list was not the body's own field
        parts = []
        p, n = 0, len(inner)
        while p < n:
            q = inner.find(b",", p + PARSE_BYTES)
            q = n if q < 0 else q
            part = orjson.loads(b"[" + inner[p:q] + b"]")
            if not set(map(type, part)) <= {int}:
                return orjson.loads(raw)  # pragma: no cover - digits are integers
            parts.append(np.array(part, dtype=np.int64))
            p = q + 1
    except (orjson.JSONDecodeError, OverflowError):
        return orjson.loads(raw)
    keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if not PREPARSE_KEYS < keys.shape[0] <= cap:
        return orjson.loads(raw)
    body["block_keys"] = keys
    return body


def locations_json(location: Callable[[int], dict[str, Any]], keys: np.ndarray,
                   avoid: tuple[str, ...]) -> Any:
    """The locations of ``keys`` (``location(key)`` gives one, its URIs holding the key
    as 16 hex digits) as one pre-encoded JSON array (an ``orjson.Fragment``: the bytes
    ``orjson.dumps`` gives for the dicts), built from the location of one random key
    used as a template (no dict per key; the GIL is let go between slices of
    :data:`PREPARSE_KEYS`). ``avoid``: the strings a template key's hex must not be in.

    Example:
        >>> def loc(k: int) -> dict[str, Any]:
        ...     return {"type": "ST_NFS", "uri": f"file://x/{k & (2**64 - 1):016x}.tp0"}
        >>> ks = np.array([1, -1], dtype=np.int64)
        >>> orjson.dumps(locations_json(loc, ks, ())) == orjson.dumps([loc(1), loc(-1)])
        True
    """
    n = keys.shape[0]
    if n == 0:
        return orjson.Fragment(b"[]")
    k0 = secrets.randbits(63)
    while any(f"{k0:016x}" in x for x in avoid):
        k0 = secrets.randbits(63)  # pragma: no cover - 63 random bits
    parts = orjson.dumps(location(k0)).split(f"{k0:016x}".encode())
    hexes = np.frombuffer(np.ascontiguousarray(keys, dtype=np.int64).astype(">i8")
                          .tobytes().hex().encode(), dtype="S16").tolist()
    out: list[bytes] = []
    step = PREPARSE_KEYS
    if len(parts) == 2:  # one location spec: one join per slice
        sep = parts[1] + b"," + parts[0]
        for a in range(0, n, step):
            out.append(parts[0] + sep.join(hexes[a:a + step]) + parts[1])
    else:
        for a in range(0, n, step):
            out.append(b",".join(h.join(parts) for h in hexes[a:a + step]))
    out[0] = b"[" + out[0]
    out[-1] += b"]"
    return orjson.Fragment(b",".join(out))


def save_finish(svc: Service, ses: SessionInfo, ok: np.ndarray, held: np.ndarray) -> None:
    """Queue a finish's blocks (``held``: the request's keys held now; ``ok``: per key
    of ``ses.keys``, committed) and the end of its session for the store, in slices of
    ``step_keys`` with a pause between two.

    The slices so far wait in a carry (``Service._carries``, see :func:`take_carries`)
    that a call in a pause writes before its own changes, only when it has some (a
    removal made there reaches the store after these puts: no removed block is put
    back; a read writes nothing). The carry holds, beside its blocks, the session record
    rewritten as what is still pending (the request's rest; ``done``: the new keys made
    final so far), so a crash leaves the store exact: a restart re-opens only the rest,
    and a retried finish (with the start's mask) commits it
    (:meth:`kvsim.core.manager.CacheManager.restore_session`).
    """
    mgr, iid, sid = svc.mgr, ses.instance_id, ses.session_id
    step = mgr.step_keys
    carries = svc._carries
    carries[sid] = StoreBatch()
    try:
        if held.shape[0] > step:
            keep = ~ses.is_new
            keep[np.flatnonzero(ses.is_new)[ok]] = True
            pos = np.flatnonzero(keep)  # request index of each held key
            new_before = np.cumsum(ses.is_new)  # new keys up to each request index
        for a in range(0, held.shape[0], step):
            if a:
                svc._pause()
                svc._same_manager(mgr)
            b = min(held.shape[0], a + step)
            d = mgr.block_records(iid, held[a:b])
            c = carries[sid]  # a call in the pause may have written the last one
            c.put_blocks(iid, d.key, t_write=d.t_write, t_access=d.t_access,
                         access_count=d.access_count, loc=d.loc)
            if b < held.shape[0]:  # what a restart re-opens if the rest never comes
                p = int(pos[b - 1]) + 1
                q = int(new_before[p - 1])
                c.opened[:] = [SessionRecord(
                    sid, iid, ses.keys[q:], ses.deadline_ns, ses.slot,
                    {"keys": ses.request_keys[p:], "is_new": ses.is_new[p:],
                     "token": ses.tag, "done": ses.done + q})]
    except BaseException:
        carries.pop(sid, None)  # the state was replaced or the instance removed
        raise
    c = carries[sid]
    c.opened.clear()
    c.close_session(sid)  # written first by this call's own _collect


_READS = frozenset({"getCacheLocation", "getCacheLocationLen", "getCacheMeta"})
#: events a read leaves in the core's buffer before it collects them after all
READ_EVENTS_MAX = 1 << 16


def read_saves_nothing(svc: Service, method: str) -> bool:
    """Whether the call ``method`` that just ran (under the service lock) can skip
    collecting the store's changes: a read changes nothing to save, and the per-block
    events of a long call it ran in the pause of (a removal's deletes) are left to that
    call or the next writer, up to :data:`READ_EVENTS_MAX` events."""
    return (method in _READS and not svc._batch
            and len(svc.mgr.events) < READ_EVENTS_MAX)


def take_carries(carries: dict[int, StoreBatch], own: bool) -> list[StoreBatch]:
    """The carries (:func:`save_finish`) a call writes before its own batch: all of them
    when it has changes of its own (``own``), else only those of finished sessions;
    ``carries`` keeps fresh ones for the finishes still running."""
    out = []
    for sid, c in list(carries.items()):
        if c and (own or c.closed):
            out.append(c)
            if c.closed:
                del carries[sid]
            else:
                carries[sid] = StoreBatch()
    return out

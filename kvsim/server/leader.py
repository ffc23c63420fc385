"""Leader election for manager servers that share one state store.

Exactly one server is the leader and serves; the others answer
``SERVER_NOT_LEADER`` until the leader's lease lapses, then one of them takes over
(and reloads the state from the shared store). Two leases:

* :class:`FileLease`: a lease record (owner, epoch, expiry) in a file, for servers on
  one machine; a holder that dies, or is stopped (``SIGSTOP``), is replaced once its
  lease expires (``ttl_ms`` after its last renewal);
* :class:`RedisLease`: ``SET key owner NX PX ttl``, renewed by the holder with a
  compare-and-extend script; a dead holder's lease expires after ``ttl_ms``.

:class:`LeaderElector` runs the lease on a background thread: the holder renews
every ``ttl/3``, the others try to acquire at the same pace, so failover takes at
most ``ttl_ms`` plus one period.

Fencing: a leader counts as one only while its last successful renewal is less than
``ttl_ms`` old on its own monotonic clock (:attr:`LeaderElector.is_leader`), which is
checked before every call and every write to the shared state. A leader that was
stopped past its lease therefore stops leading the moment it resumes, before its
elector thread even runs; its next renewal finds the new owner (or a new epoch) and it
stays a follower. (A takeover needs the lease expired on the wall clock, and the
old leader's own validity ends no later, as long as the wall clock does not jump.)

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "leader.lock")
    >>> a, b = FileLease(p), FileLease(p)
    >>> a.try_acquire(), b.try_acquire()
    (True, False)
    >>> a.release(); b.try_acquire()
    True
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol


class Lease(Protocol):
    """An exclusive, renewable right to lead."""

    owner: str
    ttl_ms: int

    def try_acquire(self) -> bool:
        """Take the lease if it is free (True when held after the call)."""
        ...

    def renew(self) -> bool:
        """Extend a held lease; False when it was lost."""
        ...

    def release(self) -> None:
        """Give the lease up (no-op when not held)."""
        ...

    def holder(self) -> str | None:
        """Who holds it now (None: nobody), as far as this process can tell."""
        ...

    def holder_info(self) -> dict[str, Any]:
        """What the current holder published with the lease (its ``info``: where it
        listens), ``{}`` when nobody holds it or it published nothing."""
        ...


#: the file lease's record size (JSON padded with spaces, written in one ``pwrite``)
_RECORD_BYTES = 4096


class FileLease:
    """A lease recorded in a local file, with an expiry (see the module docstring).

    The file holds one JSON object ``{"owner", "epoch", "expires_ms", "info"}``
    (wall-clock milliseconds; ``info``: what the holder publishes, e.g. its endpoint).
    Every read-modify-write happens under a short exclusive ``flock`` (never held
    between calls, so a stopped process cannot keep it). A holder renews
    by moving ``expires_ms`` forward; anyone may take a lease whose ``expires_ms`` has
    passed, with ``epoch`` + 1. A holder that was stopped (``SIGSTOP``) or starved past
    its expiry finds another owner or epoch when it resumes: :meth:`renew` is False.

    Args:
        path: the lease file (created 0600).
        ttl_ms: lease length: a stopped or dead holder is replaced this long after its
            last renewal.
        owner: this server's id (default: pid and a random suffix).
    """

    def __init__(self, path: str | os.PathLike[str], *, ttl_ms: int = 3000,
                 owner: str | None = None) -> None:
        self.path = os.fspath(path)
        self.ttl_ms = int(ttl_ms)
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.epoch = 0  # the epoch this process holds (0: none)
        #: published with the lease while held (JSON-able; e.g. the holder's endpoint)
        self.info: dict[str, Any] = {}

    def _update(self, fn: Callable[[dict[str, Any], int], dict[str, Any] | None]
                ) -> dict[str, Any] | None:
        """Run ``fn(record, now_ms)`` under the file lock; write back what it returns
        (None: leave the file). Returns the record as it is afterwards, or None when
        the lock is busy."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return None
            raw = os.pread(fd, _RECORD_BYTES, 0)
            try:
                rec = json.loads(raw) if raw.strip() else {}
                if not isinstance(rec, dict):
                    rec = {}
            except ValueError:
                rec = {}
            out = fn(rec, int(time.time() * 1000))
            if out is not None:
                # one pwrite of a fixed-size, space-padded record, never a truncate
                # first: a holder killed mid-write leaves the old record or the new one,
                # not an empty file that would restart the epochs at 1
                data = json.dumps(out).encode()
                if len(data) > _RECORD_BYTES:
                    raise ValueError(f"lease record over {_RECORD_BYTES} bytes")
                os.pwrite(fd, data.ljust(_RECORD_BYTES), 0)
                os.fsync(fd)
                rec = out
            return rec
        finally:
            os.close(fd)  # also drops the flock

    def _mine(self, rec: dict[str, Any]) -> bool:
        return rec.get("owner") == self.owner and rec.get("epoch") == self.epoch > 0

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired (renew it if this owner holds it)."""
        def take(rec: dict[str, Any], now: int) -> dict[str, Any] | None:
            if self._mine(rec) or int(rec.get("expires_ms", 0)) <= now:
                epoch = self.epoch if self._mine(rec) else int(rec.get("epoch", 0)) + 1
                return {"owner": self.owner, "epoch": epoch, "expires_ms": now + self.ttl_ms,
                        "info": self.info}
            return None

        rec = self._update(take)
        if rec is not None and rec.get("owner") == self.owner:
            self.epoch = int(rec["epoch"])
            return True
        return False

    def renew(self) -> bool:
        """Extend the lease if this owner still holds it (same epoch, not expired)."""
        if self.epoch == 0:
            return False

        # The record still naming this owner and epoch means nobody took the lease
        # since (a taker writes its own owner and the next epoch under the same flock),
        # so a late renewal - this process stalled past the ttl, say in a long kernel
        # compile holding the GIL - extends it rather than dropping a lease no one else
        # holds. The service refused calls meanwhile (``is_leader`` is monotonic-bounded).
        def extend(rec: dict[str, Any], now: int) -> dict[str, Any] | None:
            if self._mine(rec):
                return rec | {"expires_ms": now + self.ttl_ms, "info": self.info}
            return None

        rec = self._update(extend)
        if rec is None:  # the lock is busy this instant: still ours until it expires
            return True
        if self._mine(rec):
            return True
        self.epoch = 0
        return False

    def release(self) -> None:
        """Give the lease up (expire it now) if this owner holds it."""
        if self.epoch == 0:
            return

        def drop(rec: dict[str, Any], now: int) -> dict[str, Any] | None:
            return rec | {"expires_ms": 0} if self._mine(rec) else None

        self._update(drop)
        self.epoch = 0

    def _current(self) -> dict[str, Any] | None:
        """The record of an unexpired lease (None: nobody holds it)."""
        try:
            with open(self.path, "rb") as f:
                rec = json.loads(f.read(4096) or b"{}")
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or int(rec.get("expires_ms", 0)) <= time.time() * 1000:
            return None
        return rec

    def holder(self) -> str | None:
        """The owner of an unexpired lease (None: nobody)."""
        rec = self._current()
        return None if rec is None else str(rec.get("owner") or "?")

    def holder_info(self) -> dict[str, Any]:
        """The unexpired holder's ``info`` (``{}``: nobody, or nothing published)."""
        rec = self._current()
        info = rec.get("info") if rec is not None else None
        return dict(info) if isinstance(info, dict) else {}


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A lease held as a Redis key with a time to live (see the module docstring).

    Args:
        client: a redis-py client.
        key: the lease key (e.g. ``kvsim:leader``).
        ttl_ms: lease length; failover takes at most this plus one renewal period.
        owner: this server's id (default: pid and a random suffix).
    """

    def __init__(self, client: Any, key: str, *, ttl_ms: int = 3000,
                 owner: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.epoch = 0  # the epoch of this owner's last acquisition (0: none)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        #: published beside the lease (key ``<key>:info``, same expiry) while held
        self.info: dict[str, Any] = {}

    def _publish(self) -> None:
        self.client.set(f"{self.key}:info", json.dumps({"owner": self.owner,
                                                        "info": self.info}),
                        px=self.ttl_ms)

    def try_acquire(self) -> bool:
        """``SET NX PX``; True also when this owner already holds it. Each acquisition
        takes a new epoch (``INCR <key>:epoch``: the store's fencing token)."""
        if self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            self.epoch = int(self.client.incr(f"{self.key}:epoch"))
            self._publish()
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease if this owner still holds it."""
        ok = bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))
        if ok:
            self._publish()
        return ok

    def release(self) -> None:
        """Delete the lease if this owner holds it."""
        self._release(keys=[self.key], args=[self.owner])

    def holder(self) -> str | None:
        """The current holder's owner id."""
        v = self.client.get(self.key)
        return v.decode() if isinstance(v, bytes) else v

    def holder_info(self) -> dict[str, Any]:
        """The current holder's published ``info`` (``{}``: none, or another owner's
        stale record)."""
        owner = self.holder()
        raw = self.client.get(f"{self.key}:info")
        try:
            rec = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        if not isinstance(rec, dict) or owner is None or rec.get("owner") != owner:
            return {}
        info = rec.get("info")
        return dict(info) if isinstance(info, dict) else {}


class LeaderElector:
    """Keeps trying to lead on a daemon thread; calls ``on_change(is_leader)`` on changes.

    Args:
        lease: the lease to hold.
        on_change: called from the elector's thread after each change of role.
        period_s: how often to renew or retry (default: a third of the lease).
    """

    def __init__(self, lease: Lease, on_change: Callable[[bool], None] | None = None,
                 *, period_s: float | None = None) -> None:
        self.lease = lease
        self.on_change = on_change
        self.period_s = period_s if period_s is not None else lease.ttl_ms / 3000.0
        self._leader = False
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._demoted_until = 0.0
        self.renewed_at_ms = 0
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this server leads now: it holds the lease and renewed it less than
        ``ttl_ms`` ago (monotonic clock; see the module docstring on fencing)."""
        return self._leader and time.monotonic() < self._valid_until

    def step(self) -> bool:
        """One round: renew or try to acquire; returns the role after it."""
        was = self._leader
        t0 = time.monotonic()
        try:
            if was:
                now = self.lease.renew()
            elif t0 < self._demoted_until:
                now = False
            else:
                now = self.lease.try_acquire()
        except Exception:  # the backend is unreachable: do not claim to lead
            now = False
        if now:
            self._valid_until = t0 + 0.9 * self.lease.ttl_ms / 1000.0
        self._leader = now
        if now:  # the lease runs until renewed_at_ms + ttl (getManagerClusterInfo)
            self.renewed_at_ms = int(time.time() * 1000)
        if now != was and self.on_change is not None:
            self.on_change(now)
        return now

    def start(self) -> LeaderElector:
        """Run :meth:`step` now and then every ``period_s`` until :meth:`stop`."""
        self.step()

        def loop() -> None:
            while not self._stop.wait(self.period_s):
                self.step()

        self._thread = threading.Thread(target=loop, name="kvsim-leader", daemon=True)
        self._thread.start()
        return self

    def demote(self, hold_off_s: float | None = None) -> None:
        """Give up leadership and stay a follower for ``hold_off_s`` (default: 2 leases)."""
        self._demoted_until = time.monotonic() + (
            hold_off_s if hold_off_s is not None else 2 * self.lease.ttl_ms / 1000.0)
        if self._leader:
            self.lease.release()
            self._leader = False
            if self.on_change is not None:
                self.on_change(False)

    def stop(self) -> None:
        """Stop the thread and release the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._leader:
            self.lease.release()
            self._leader = False

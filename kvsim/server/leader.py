"""Leader election for manager servers that share one state store.

Exactly one server is the leader and serves; the others answer
``SERVER_NOT_LEADER`` until the leader's lease lapses, then one of them takes over
(and reloads the state from the shared store). Two leases:

* :class:`FileLease`: an exclusive ``flock`` on a file, for servers on one machine
  (the operating system drops it when the holder dies, even by ``kill -9``);
* :class:`RedisLease`: ``SET key owner NX PX ttl``, renewed by the holder with a
  compare-and-extend script; a dead holder's lease expires after ``ttl_ms``.

:class:`LeaderElector` runs the lease on a background thread: the holder renews
every ``ttl/3``, the others try to acquire at the same pace, so failover takes at
most ``ttl_ms`` plus one period.

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
import os
import threading
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


class FileLease:
    """A lease on a local lock file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, ttl_ms: int = 3000,
                 owner: str | None = None) -> None:
        self.path = os.fspath(path)
        self.ttl_ms = int(ttl_ms)
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Lock the file without blocking."""
        if self._fd is not None:
            return True
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, self.owner.encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def renew(self) -> bool:
        """A held flock cannot be lost while the process lives."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str | None:
        """The owner written by the current holder (None when unlocked)."""
        if self._fd is not None:
            return self.owner
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return os.read(fd, 256).decode() or "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


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
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def try_acquire(self) -> bool:
        """``SET NX PX``; True also when this owner already holds it."""
        if self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease if this owner still holds it."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        """Delete the lease if this owner holds it."""
        self._release(keys=[self.key], args=[self.owner])

    def holder(self) -> str | None:
        """The current holder's owner id."""
        v = self.client.get(self.key)
        return v.decode() if isinstance(v, bytes) else v


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
        self._stop = threading.Event()
        self._demoted_until = 0.0
        self.renewed_at_ms = 0
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this server leads now."""
        return self._leader

    def step(self) -> bool:
        """One round: renew or try to acquire; returns the role after it."""
        import time

        was = self._leader
        try:
            if was:
                now = self.lease.renew()
            elif time.monotonic() < self._demoted_until:
                now = False
            else:
                now = self.lease.try_acquire()
        except Exception:  # the backend is unreachable: do not claim to lead
            now = False
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
        import time

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

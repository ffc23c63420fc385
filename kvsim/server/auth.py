"""Accounts with salted, scrypt-hashed passwords; credentials are ``"user:password"``.

HTTP sends the credential as ``Authorization: Basic base64(user:password)``, gRPC
as metadata ``authorization`` with the same value; both reach
:meth:`Accounts.check` as the decoded ``"user:password"`` string. A verified
credential is remembered (keyed by an HMAC with a per-process secret, never the
password itself) so that scrypt's deliberate cost is paid once per credential, not
once per call.

Example:
    >>> a = Accounts()
    >>> a.add("admin", "s3cret", "ROLE_ADMIN")
    >>> a.check("admin:s3cret"), a.check("admin:nope"), a.check(None)
    ('ROLE_ADMIN', None, None)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROLES = ("ROLE_USER", "ROLE_ADMIN")
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True)
class Account:
    """One account: name, role and the scrypt hash of its password."""

    user_name: str
    role: str
    salt: bytes
    digest: bytes

    def to_json(self) -> dict[str, str]:
        """The account for a config snapshot (hash and salt, never the password)."""
        return {"user_name": self.user_name, "role": self.role,
                "salt": self.salt.hex(), "scrypt": self.digest.hex()}


def hash_password(password: str, salt: bytes) -> bytes:
    """scrypt(password, salt) with n=2**14, r=8, p=1, 32 bytes."""
    return hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)


def decode_basic(header: str | None) -> str | None:
    """``"Basic <base64>"`` -> ``"user:password"`` (None when absent or malformed).

    Example:
        >>> decode_basic("Basic " + base64.b64encode(b"a:b").decode())
        'a:b'
    """
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class Accounts:
    """The account table (not thread-safe: the service calls it under its lock)."""

    def __init__(self) -> None:
        self._acc: dict[str, Account] = {}
        self._secret = os.urandom(32)
        self._verified: dict[bytes, str] = {}
        # an unknown user is checked against this (same cost as a known one: user
        # names cannot be told apart by the answer's time)
        self._dummy = Account("", "", os.urandom(16), os.urandom(32))

    def add(self, user_name: str, password: str, role: str = "ROLE_USER") -> None:
        """Add (or replace) an account."""
        salt = os.urandom(16)
        self._acc[user_name] = Account(user_name, role, salt, hash_password(password, salt))
        self._verified.clear()

    def add_hashed(self, acc: Account) -> None:
        """Add an account restored from a snapshot."""
        self._acc[acc.user_name] = acc
        self._verified.clear()

    def delete(self, user_name: str) -> bool:
        """Remove an account; False if there was none."""
        self._verified.clear()
        return self._acc.pop(user_name, None) is not None

    def list(self) -> list[Account]:
        """All accounts, by name."""
        return [self._acc[n] for n in sorted(self._acc)]

    def __contains__(self, user_name: object) -> bool:
        return user_name in self._acc

    def cached(self, credential: str | None) -> str | None:
        """The role of a credential verified before (a dictionary look-up), else None."""
        if not credential or ":" not in credential:
            return None
        return self._verified.get(self._tag(credential))

    def _tag(self, credential: str) -> bytes:
        return hmac.new(self._secret, credential.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def check(self, credential: str | None) -> str | None:
        """The role of a valid ``"user:password"`` credential, else None (one scrypt
        unless verified before, for known and unknown users alike)."""
        if not credential or ":" not in credential or len(credential) > 4096:
            return None
        tag = self._tag(credential)
        role = self._verified.get(tag)
        if role is not None:
            return role
        user, _, password = credential.partition(":")
        acc = self._acc.get(user)
        ok = hmac.compare_digest(hash_password(password, (acc or self._dummy).salt),
                                 (acc or self._dummy).digest)
        if acc is None or not ok:
            return None
        if len(self._verified) > 1024:
            self._verified.clear()
        self._verified[tag] = acc.role
        return acc.role


def _lower_priority() -> None:
    """Run the calling thread at nice +10 (Linux threads have their own nice value), so
    password checks (scrypt, deliberately CPU-heavy) yield the CPU to the threads that
    answer calls: a flood of wrong passwords then slows itself, not the admins. A no-op
    where threads cannot be reniced."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class AuthGuard:
    """Checks admin credentials without letting a flood of wrong ones starve the rest.

    * A credential verified before answers from the cache (no scrypt).
    * Each client address may fail ``failures_per_second`` times per second (a token
      bucket holding that many); past that its new credentials are refused at once,
      without a scrypt.
    * scrypt runs on ``workers`` threads at a lower CPU priority (nice +10); the caller
      waits for its own result (an event loop hands the whole call to a thread, see
      :mod:`kvsim.server.http`).

    Example:
        >>> a = Accounts(); a.add("admin", "pw", "ROLE_ADMIN")
        >>> g = AuthGuard(failures_per_second=1, workers=1)
        >>> g.check(a, "admin:no", "10.0.0.1"), g.check(a, "admin:pw", "10.0.0.1")
        (None, None)
        >>> g.check(a, "admin:pw", "10.0.0.2")
        'ROLE_ADMIN'
        >>> g.close()
    """

    def __init__(self, failures_per_second: float = 5.0, workers: int = 2) -> None:
        self.rate = float(failures_per_second)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="kvsim-auth",
                                        initializer=_lower_priority)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, time)
        self.refused = 0  # credentials refused unchecked (rate limit)

    def _tokens(self, peer: str, now: float) -> float:
        tokens, t = self._buckets.get(peer, (self.rate, now))
        return min(self.rate, tokens + (now - t) * self.rate)

    def refuses(self, accounts: Accounts, credential: str | None, peer: str | None) -> bool:
        """Whether :meth:`check` would refuse ``credential`` without a scrypt (malformed,
        or not verified before while ``peer`` is over its failure rate): such a request
        can be answered at once, without a worker thread."""
        if not credential or ":" not in credential or len(credential) > 4096:
            return True
        if accounts.cached(credential) is not None:
            return False
        with self._lock:
            return self._tokens(peer or "-", time.monotonic()) < 1.0

    def over_budget(self, accounts: Accounts, credential: str | None,
                    peer: str | None) -> bool:
        """Whether ``peer`` is past its failure rate and ``credential`` (well formed)
        was never verified: the flood case, which a listener answers late (see
        :data:`kvsim.server.http.FLOOD_REPLY_DELAY_S`) so that a client looping on wrong
        passwords slows down to its own pace. A missing or malformed credential is not
        a flood: it is refused at once."""
        if not credential or ":" not in credential or len(credential) > 4096:
            return False
        if accounts.cached(credential) is not None:
            return False
        with self._lock:
            return self._tokens(peer or "-", time.monotonic()) < 1.0

    def check(self, accounts: Accounts, credential: str | None,
              peer: str | None = None) -> str | None:
        """The credential's role, or None (wrong, missing, or the peer is over its
        failure rate)."""
        if not credential or ":" not in credential or len(credential) > 4096:
            return None  # malformed: refused without a scrypt, no budget spent
        role = accounts.cached(credential)
        if role is not None:
            return role
        key = peer or "-"
        now = time.monotonic()
        with self._lock:  # reserve one failure up front (concurrent attempts count)
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                self.refused += 1
                return None
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 65536:  # forget the quiet ones
                self._buckets = {p: v for p, v in self._buckets.items()
                                 if self._tokens(p, now) < self.rate}
        role = self._pool.submit(accounts.check, credential).result()
        if role is not None:  # not a failure: give the reservation back
            now = time.monotonic()
            with self._lock:
                self._buckets[key] = (self._tokens(key, now) + 1.0, now)
        return role

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

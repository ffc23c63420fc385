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
import hashlib
import hmac
import os
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

    def check(self, credential: str | None) -> str | None:
        """The role of a valid ``"user:password"`` credential, else None."""
        if not credential or ":" not in credential:
            return None
        tag = hmac.new(self._secret, credential.encode(), hashlib.sha256).digest()
        role = self._verified.get(tag)
        if role is not None:
            return role
        user, _, password = credential.partition(":")
        acc = self._acc.get(user)
        if acc is None or not hmac.compare_digest(hash_password(password, acc.salt), acc.digest):
            return None
        if len(self._verified) > 1024:
            self._verified.clear()
        self._verified[tag] = acc.role
        return acc.role

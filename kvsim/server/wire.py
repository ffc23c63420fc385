"""Wire-format helpers: enums of the manager API and lenient, checked field parsing.

Requests are decoded JSON (snake_case). int64 fields accept JSON numbers or
decimal strings, enums accept names or integers, unknown fields are ignored. Every
problem raises :class:`WireError` (status ``INVALID_ARGUMENT``) with a message that
names the field.

Example:
    >>> get_int({"n": "42"}, "n"), enum_name(QUERY_TYPES, 2, "query_type")
    (42, 'QT_PREFIX_MATCH')
    >>> get_int({"n": True}, "n")
    Traceback (most recent call last):
    ...
    kvsim.server.wire.WireError: n: expected an integer, got True
"""

from __future__ import annotations

import re
from typing import Any

from kvsim.core.errors import InvalidArgument

ERROR_CODES = {
    "UNSPECIFIED": 0, "OK": 1, "UNSUPPORTED": 2, "INTERNAL_ERROR": 3, "SERVICE_NOT_READY": 4,
    "INVALID_ARGUMENT": 5, "DUPLICATE_ENTITY": 6, "REACH_MAX_ENTITY_CAPACITY": 7,
    "INSTANCE_NOT_EXIST": 8, "SERVER_NOT_LEADER": 9, "IO_ERROR": 20, "UNKNOWN_ERROR": 100,
}  # fmt: skip
STORAGE_TYPES = {
    "ST_UNSPECIFIED": 0, "ST_3FS": 1, "ST_MOONCAKE": 2, "ST_TAIRMEMPOOL": 3, "ST_NFS": 4,
    "ST_VCNS_3FS": 5, "ST_DUMMY": 6,
}  # fmt: skip
QUERY_TYPES = {
    "QT_UNSPECIFIED": 0, "QT_BATCH_GET": 1, "QT_PREFIX_MATCH": 2, "QT_REVERSE_ROLL_SW_MATCH": 3,
}  # fmt: skip
TRIM_STRATEGIES = {
    "TS_UNSPECIFIED": 0, "TS_REMOVE_ALL_CACHE": 1, "TS_REMOVE_ALL_META": 2, "TS_TIMESTAMP": 3,
}  # fmt: skip
RECLAIM_POLICIES = {"POLICY_UNSPECIFIED": 0, "POLICY_LRU": 1, "POLICY_LFU": 2, "POLICY_TTL": 3}
ROLES = {"ROLE_USER": 0, "ROLE_ADMIN": 1}
PREFER_STRATEGIES = {
    "CPS_UNSPECIFIED": 0, "CPS_ALWAYS_3FS": 1, "CPS_PREFER_3FS": 2, "CPS_ALWAYS_MOONCAKE": 3,
    "CPS_PREFER_MOONCAKE": 4, "CPS_ALWAYS_TAIR_MEMPOOL": 5, "CPS_PREFER_TAIR_MEMPOOL": 6,
    "CPS_ALWAYS_VCNS_3FS": 7, "CPS_PREFER_VCNS_3FS": 8,
}  # fmt: skip

# core storage type <-> wire StorageConfig oneof field and StorageType enum
SPEC_FIELD_TYPE = {"nfs": "file", "threefs": "hf3fs", "vcnsthreefs": "hf3fs",
                   "mooncake": "mooncake", "tair_mem_pool": "pace", "local": "memory",
                   "dummy": "memory"}  # fmt: skip
TYPE_SPEC_FIELD = {"file": "nfs", "hf3fs": "threefs", "mooncake": "mooncake",
                   "pace": "tair_mem_pool", "memory": "local"}  # fmt: skip
TYPE_ENUM = {"file": "ST_NFS", "hf3fs": "ST_3FS", "mooncake": "ST_MOONCAKE",
             "pace": "ST_TAIRMEMPOOL", "memory": "ST_DUMMY"}  # fmt: skip
ENUM_TYPE = {v: k for k, v in TYPE_ENUM.items()} | {"ST_VCNS_3FS": "hf3fs"}
POLICY_OF = {"POLICY_UNSPECIFIED": "lru", "POLICY_LRU": "lru", "POLICY_LFU": "lfu",
             "POLICY_TTL": "ttl"}  # fmt: skip

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT32_MAX = (1 << 31) - 1


class WireError(InvalidArgument):
    """A malformed request field (``INVALID_ARGUMENT``)."""


# an int64 as text: optional sign, 1-19 ASCII digits (str.isdigit() accepts "²" and
# other Unicode digits that int() refuses or reads differently)
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
# names that may become path components or URI segments (instance ids, storage names)
_NAME = re.compile(r"[A-Za-z0-9_.:@+=-]{1,128}")


def check_name(v: str, field: str) -> str:
    """A name that may become a path component: 1-128 of ``A-Z a-z 0-9 _ . : @ + = -``,
    without ``..`` (so never ``.``-only, never ``/``).

    Example:
        >>> check_name("qwen-a.tp0", "instance_id")
        'qwen-a.tp0'
        >>> check_name("../../etc", "instance_id")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kvsim.server.wire.WireError: instance_id: '../../etc' is not a valid name (...)
    """
    if not _NAME.fullmatch(v) or ".." in v or v == ".":
        raise WireError(f"{field}: {v[:40]!r} is not a valid name (1-128 of "
                        "A-Z a-z 0-9 _ . : @ + = -, no '..')")
    return v


def over_limit(field: str, got: int, limit_name: str, limit: float) -> WireError:
    """The error of a request over one of the server's limits (names the limit).

    Example:
        >>> str(over_limit("block_keys", 9, "max_keys_per_request", 8))
        'block_keys: 9 is over the limit max_keys_per_request (8)'
    """
    return WireError(f"{field}: {got} is over the limit {limit_name} ({limit:g})")


def get_int(body: dict[str, Any], name: str, default: int = 0, *, low: int = INT64_MIN,
            high: int = INT64_MAX, where: str = "") -> int:
    """An int64 field given as a JSON number or a decimal string."""
    v = body.get(name)
    if v is None:
        return default
    return to_int(v, f"{where}{name}", low=low, high=high)


def to_int(v: Any, field: str, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """One int64 value (number or decimal string) checked against ``[low, high]``."""
    if isinstance(v, bool):
        raise WireError(f"{field}: expected an integer, got {v!r}")
    if isinstance(v, float):
        if not v.is_integer():
            raise WireError(f"{field}: expected an integer, got {v!r}")
        v = int(v)
    elif isinstance(v, str):
        t = v.strip()
        if not _INT_TEXT.fullmatch(t):
            raise WireError(f"{field}: expected an integer, got {v[:40]!r}")
        v = int(t, 10)
    elif not isinstance(v, int):
        raise WireError(f"{field}: expected an integer, got {_show(v)}")
    if not low <= v <= high:
        raise WireError(f"{field}: {v} is outside [{low}, {high}]")
    return v


def get_float(body: dict[str, Any], name: str, default: float, *, low: float, high: float,
              where: str = "") -> float:
    """A number field (int, float or numeric string) within ``[low, high]``."""
    v = body.get(name, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise WireError(f"{where}{name}: expected a number, got {_show(v)}")
    try:
        f = float(v)
    except ValueError:
        raise WireError(f"{where}{name}: expected a number, got {v!r}") from None
    if not low <= f <= high:
        raise WireError(f"{where}{name}: {f} is outside [{low}, {high}]")
    return f


def get_str(body: dict[str, Any], name: str, default: str = "", *, required: bool = False,
            where: str = "") -> str:
    """A string field; ``required`` rejects a missing or empty one."""
    v = body.get(name, default)
    if v is None:
        v = default
    if not isinstance(v, str):
        raise WireError(f"{where}{name}: expected a string, got {_show(v)}")
    if required and not v:
        raise WireError(f"{where}{name}: required (a non-empty string)")
    return v


def get_bool(body: dict[str, Any], name: str, default: bool = False, *, where: str = "") -> bool:
    """A boolean field (true/false; 0/1 accepted)."""
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise WireError(f"{where}{name}: expected a boolean, got {_show(v)}")


def get_dict(body: dict[str, Any], name: str, *, where: str = "") -> dict[str, Any]:
    """An object field ({} when missing or null)."""
    v = body.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise WireError(f"{where}{name}: expected an object, got {_show(v)}")
    return v


def get_list(body: dict[str, Any], name: str, *, where: str = "") -> list[Any]:
    """A list field ([] when missing or null)."""
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list):
        raise WireError(f"{where}{name}: expected a list, got {_show(v)}")
    return v


def get_str_list(body: dict[str, Any], name: str, *, where: str = "") -> list[str]:
    """A list of strings."""
    out = get_list(body, name, where=where)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise WireError(f"{where}{name}[{i}]: expected a string, got {_show(s)}")
    return out


def get_enum(body: dict[str, Any], name: str, enum: dict[str, int], default: str, *,
             where: str = "") -> str:
    """An enum field given by name or number; returns the name."""
    v = body.get(name)
    if v is None:
        return default
    return enum_name(enum, v, f"{where}{name}")


def enum_name(enum: dict[str, int], v: Any, field: str) -> str:
    """The enum name of ``v`` (a name, or its number)."""
    if isinstance(v, str):
        if v in enum:
            return v
        if _INT_TEXT.fullmatch(v.strip()):
            v = int(v.strip(), 10)
        else:
            raise WireError(f"{field}: unknown value {v[:40]!r} (one of {', '.join(enum)})")
    if isinstance(v, int) and not isinstance(v, bool):
        for k, n in enum.items():
            if n == v:
                return k
        raise WireError(f"{field}: unknown value {v} (one of {', '.join(enum)})")
    raise WireError(f"{field}: expected an enum name or number, got {_show(v)}")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."

"""A JSONL line's long ``hash_ids`` list parsed straight into int64, without a Python int
per id.

Most of a Mooncake or Bailian trace's bytes are its ``hash_ids`` lists: parsed by orjson,
each id becomes a Python int that :class:`~kvsim.trace.readers._Rows` then packs into
int64 again. :func:`split_ids` cuts the list's text out of the line, parses it with a
small numba kernel and returns the line with an empty list in its place (orjson then
parses a few dozen bytes) and the ids as an int64 array. It parses only what it is
sure of: a list of plain JSON integers that fit int64, under a single top-level-looking
``"hash_ids"`` key; anything else (floats, ids past int64, strings, nested lists, a key
written twice, a backslash anywhere in the line) returns None and the caller parses the
line as before, so the values and the error messages are those of the plain path.

Example:
    >>> line, ids = split_ids(b'{"timestamp": 0, "hash_ids": [' + b", ".join(
    ...     str(i).encode() for i in range(100)) + b"]}")
    >>> line, ids[:3].tolist(), len(ids)
    (b'{"timestamp": 0, "hash_ids": []}', [0, 1, 2], 100)
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["MIN_LIST_BYTES", "parse_int_list", "split_ids"]

#: Lists shorter than this (in bytes of text) are left to orjson: the cut costs more
#: than it saves on a few ids.
MIN_LIST_BYTES = 128

_KEY = b'"hash_ids"'
_I64_MAX = np.uint64((1 << 63) - 1)


@njit(cache=True, nogil=True)
def parse_int_list(buf: np.ndarray, start: int, end: int,
                   out: np.ndarray) -> int:  # pragma: no cover - jit
    """Parse ``buf[start:end]`` (the bytes between a JSON list's brackets) as
    comma-separated JSON integers into ``out``; returns how many, or -1 if it is anything
    else (an empty item, a float, a leading zero, a number outside int64, another token).

    ``out`` must hold at least the text's comma count + 1 values.
    """
    n = 0
    i = start
    while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
        i += 1
    if i == end:
        return 0
    while True:
        neg = False
        if buf[i] == 45:  # '-'
            neg = True
            i += 1
            if i == end:
                return -1
        first = i
        while i < end and 48 <= buf[i] <= 57:
            i += 1
        digits = i - first
        if digits == 0 or (digits > 1 and buf[first] == 48):
            return -1  # no digit, or a leading zero: not JSON
        if digits <= 18:  # fits int64 without a check
            v = np.int64(0)
            for j in range(first, i):
                v = v * 10 + np.int64(buf[j] - 48)
        elif digits == 19:  # may pass int64 (and -2**63 itself): the plain path decides
            u = np.uint64(0)
            for j in range(first, i):
                u = u * np.uint64(10) + np.uint64(buf[j] - 48)
            if u > _I64_MAX:
                return -1
            v = np.int64(u)
        else:
            return -1
        out[n] = -v if neg else v
        n += 1
        while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
            i += 1
        if i == end:
            return n
        if buf[i] != 44:  # ','
            return -1
        i += 1
        while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
            i += 1
        if i == end:
            return -1  # a trailing comma


def split_ids(line: bytes) -> tuple[bytes, np.ndarray] | None:
    """``line`` with its ``"hash_ids"`` list emptied, and the list's ids; None when the
    line is not one this fast path is sure of (see the module's docstring).

    The caller must check that the shortened line parses to an object whose
    ``hash_ids`` is ``[]`` (else the key found was not the object's own).
    """
    at = line.find(_KEY)
    if at <= 0 or line.find(_KEY, at + 1) >= 0 or line.find(b"\\") >= 0:
        return None  # no key, or twice, or an escape (a key may be spelled with one)
    open_ = line.find(b"[", at + len(_KEY))
    if open_ < 0 or line[at + len(_KEY):open_].strip(b" \t\r\n") != b":":
        return None
    close = line.find(b"]", open_)
    if close < 0 or close - open_ - 1 < MIN_LIST_BYTES:
        return None
    out = np.empty(line.count(b",", open_, close) + 1, dtype=np.int64)
    n = parse_int_list(np.frombuffer(line, dtype=np.uint8), open_ + 1, close, out)
    if n < 0:
        return None
    return line[:open_ + 1] + line[close:], out[:n]  # n == commas + 1, but for []

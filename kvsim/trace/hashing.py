"""Stable 64-bit hashes that turn ids and tokens into prefix-chained block keys.

Everything here is defined on unsigned 64-bit integers (arithmetic modulo 2**64) and
returned as ``int64`` by two's complement, so the values are the same on every
platform and in every language that reimplements them.

Definitions:

* ``mix64(x)`` is the SplitMix64 output function::

      z = x + 0x9E3779B97F4A7C15
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
      z = (z ^ (z >> 27)) * 0x94D049BB133111EB
      return z ^ (z >> 31)

* ``chain_step(parent, x) = mix64(parent ^ mix64(x))``.
* A sequence of ids ``x_0 .. x_{m-1}`` is *chained* from a root ``r`` (default
  :data:`CHAIN_ROOT` = 0) as ``k_0 = chain_step(r, x_0)``,
  ``k_j = chain_step(k_{j-1}, x_j)``: key ``j`` depends on the whole prefix.
* A block of tokens ``t_0 .. t_{B-1}`` has content id ``c`` = the last element of the
  chain of its tokens from root 0; the keys of a token sequence are the chain of the
  content ids of its *full* blocks (a partial last block has no key).

The chain is sequential along a row but independent across rows, so
:func:`chain_ids` walks positions and updates every row that is long enough at
once (numpy ``uint64`` arithmetic); the few longest rows finish in a scalar loop.

Example:
    >>> chain_ids(np.array([1, 2, 3])).tolist() == [
    ...     chain_ids(np.array([1]))[0], chain_ids(np.array([1, 2]))[1],
    ...     chain_ids(np.array([1, 2, 3]))[2]]
    True
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
from numba import njit

MASK64 = (1 << 64) - 1
CHAIN_ROOT = 0
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
# Below this many active rows, the scalar loop beats one numpy pass per position.
_SCALAR_ROWS = 24


def as_uint64(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """View integers as ``uint64`` (two's complement for negatives).

    Python integers must lie in ``[-2**63, 2**64)``.
    """
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False).view(np.uint64)
    if not isinstance(values, np.ndarray) and arr.dtype.kind == "f":
        arr = np.array(values, dtype=object)  # numpy promotes int64 + uint64 ints to float
    if arr.dtype == object:
        return np.fromiter((operator.index(v) & MASK64 for v in arr.ravel()), np.uint64, arr.size)
    raise TypeError(f"expected integers, got dtype {arr.dtype}")


def as_int64(values: np.ndarray) -> np.ndarray:
    """View ``uint64`` values as ``int64`` (two's complement)."""
    return np.ascontiguousarray(values, dtype=np.uint64).view(np.int64)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function on a ``uint64`` array (returns a new array)."""
    z = x + np.uint64(_GOLDEN)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def _mix64_int(z: int) -> int:
    z = (z + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def chain_step(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mix64(parent ^ mix64(x))`` element-wise, on ``uint64`` arrays."""
    return mix64(parent ^ mix64(x))


def _to_signed(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


def chain_ids(
    ids: np.ndarray | Sequence[int],
    offsets: np.ndarray | None = None,
    init: np.ndarray | int | None = None,
) -> np.ndarray:
    """Chain per-block ids into prefix keys, row by row.

    Args:
        ids: the ids, flat (int64 or uint64; negative values by two's complement).
        offsets: CSR offsets (``n_rows + 1``); ``None`` means one row holding all ids.
        init: the parent of each row's first key: one value per row, or one value for
            all rows. Defaults to :data:`CHAIN_ROOT`.

    Returns:
        int64 keys, same shape as ``ids``: ``k_j = chain_step(k_{j-1}, ids_j)``
        restarting from ``init`` at each row.

    Example:
        >>> keys = chain_ids(np.array([7, 8, 7, 9]), offsets=np.array([0, 2, 4]))
        >>> bool(keys[0] == keys[2]), bool(keys[1] == keys[3])
        (True, False)
    """
    u = as_uint64(ids).ravel()
    n = u.shape[0]
    if offsets is None:
        offsets = np.array([0, n], dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_rows = offsets.shape[0] - 1
    if init is None:
        init = CHAIN_ROOT
    parents = np.broadcast_to(as_uint64(np.atleast_1d(np.asarray(init))), (n_rows,))
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out.view(np.int64)
    y = mix64(u)  # the part of chain_step that does not depend on the parent
    lens = np.diff(offsets)
    order = np.argsort(-lens, kind="stable")  # longest rows first
    lens_sorted = lens[order]
    starts = offsets[:-1][order]
    prev = parents[order].copy()
    # active[j] = number of rows with length > j (rows are sorted by length).
    max_len = int(lens_sorted[0])
    j = 0
    while j < max_len:
        active = int(np.searchsorted(-lens_sorted, -j, side="left"))  # lens > j
        if active <= _SCALAR_ROWS:
            break
        idx = starts[:active] + j
        h = mix64(prev[:active] ^ y[idx])
        out[idx] = h
        prev[:active] = h
        j += 1
    # Finish the few long rows with Python integers (cheaper than tiny numpy ops).
    if j < max_len:
        yl = y.tolist()
        for r in range(int(np.searchsorted(-lens_sorted, -j, side="left"))):
            s, ln = int(starts[r]), int(lens_sorted[r])
            p = int(prev[r])
            row = []
            for v in yl[s + j : s + ln]:
                p = _mix64_int(p ^ v)
                row.append(p)
            out[s + j : s + ln] = np.array(row, dtype=np.uint64)
    return out.view(np.int64)


def chain_ids_reference(ids: Sequence[int], init: int = CHAIN_ROOT) -> list[int]:
    """Pure-Python chain of one row (the specification; slow, for tests and docs)."""
    p = init & MASK64
    out = []
    for x in ids:
        p = _mix64_int(p ^ _mix64_int(int(x) & MASK64))
        out.append(_to_signed(p))
    return out


def block_content_ids(token_ids: np.ndarray | Sequence[int], block_size: int) -> np.ndarray:
    """Content id (uint64) of every full block of ``token_ids``; the tail is ignored."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    t = as_uint64(token_ids).ravel()
    n_blocks = t.shape[0] // block_size
    blocks = t[: n_blocks * block_size].reshape(n_blocks, block_size)
    c = np.full(n_blocks, CHAIN_ROOT, dtype=np.uint64)
    for col in range(block_size):  # vectorised over blocks
        c = chain_step(c, blocks[:, col])
    return c


def token_block_keys(
    token_ids: np.ndarray | Sequence[int], block_size: int, init: int = CHAIN_ROOT
) -> np.ndarray:
    """Prefix-chained int64 keys of the full blocks of a token sequence.

    Args:
        token_ids: the prompt's token ids.
        block_size: tokens per block; a partial last block gets no key.
        init: the parent of the first block (default :data:`CHAIN_ROOT`).

    Returns:
        int64[len(token_ids) // block_size].

    Example:
        >>> a = token_block_keys(list(range(40)), 16)
        >>> b = token_block_keys(list(range(32)) + [0] * 16, 16)
        >>> len(a), a.tolist() == b[:2].tolist(), bool(a[1] != b[2])
        (2, True, True)
    """
    return chain_ids(block_content_ids(token_ids, block_size), init=init)


def is_prefix_chained(ids: np.ndarray, offsets: np.ndarray) -> bool:
    """Whether ``ids`` behave like prefix keys on these rows.

    True iff every id always appears at the same position after the same parent id
    (position 0 has no parent): then two rows sharing the id at position ``j`` share
    all ids before ``j``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.shape[0]
    if n == 0:
        return True
    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    pos = np.arange(n, dtype=np.int64) - np.repeat(offsets[:-1], lens)
    parent = np.empty(n, dtype=np.int64)
    parent[1:] = ids[:-1]
    parent[pos == 0] = 0
    order = np.lexsort((parent, pos, ids))
    s_ids, s_pos, s_par = ids[order], pos[order], parent[order]
    same = s_ids[1:] == s_ids[:-1]
    return not bool(np.any(same & ((s_pos[1:] != s_pos[:-1]) | (s_par[1:] != s_par[:-1]))))


# ---------------------------------------------------------------------- KVCM token_ids keys
_KVCM_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _kvcm_keys_kernel(
    tokens: np.ndarray, offsets: np.ndarray, block_size: int, key_offsets: np.ndarray
) -> np.ndarray:  # pragma: no cover - numba
    """One pass per row: the running hash over every token, emitted at block ends."""
    out = np.empty(key_offsets[-1], dtype=np.uint64)
    s12 = np.uint64(12)
    s32 = np.uint64(32)
    s63 = np.uint64(63)
    high = np.uint64(0xFFFFFFFF00000000)
    for r in range(offsets.shape[0] - 1):
        h = np.uint64(0)
        start = offsets[r]
        j = key_offsets[r]
        for b in range(key_offsets[r + 1] - key_offsets[r]):
            base = start + b * block_size
            for i in range(base, base + block_size):
                sar = h >> s32  # the C++ state is signed: its >> 32 extends the sign bit
                if (h >> s63) != np.uint64(0):
                    sar |= high
                h ^= tokens[i] + _KVCM_GOLDEN + (h << s12) + sar
            out[j + b] = h
    return out


def kvcm_token_keys(
    token_ids: np.ndarray | Sequence[int],
    block_size: int,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Upstream KVCM's block keys of token ids (``GenKeyVector``), as int64.

    Tair KVCM (from RTP-LLM's ``HashUtil.h``) turns ``token_ids`` into keys with one
    running 64-bit state ``h`` (signed ``int64_t``, starting at 0) over the tokens of the
    *full* blocks: for every token ``v``, ``h ^= v + 0x9E3779B97F4A7C15 + (h << 12) +
    (h >> 32)`` (``std::hash<int64_t>`` is the identity; arithmetic modulo 2**64, and
    ``>>`` on the signed state is an arithmetic shift); the key of block ``b`` is ``h``
    after its last token. The state is *not* reset between blocks, so every key depends
    on the whole prefix. A partial last block gets no key.

    Args:
        token_ids: the tokens (flat; int64 or uint64 values).
        block_size: tokens per block.
        offsets: CSR row offsets for many sequences at once; ``None`` = one sequence.

    Returns:
        int64 keys: ``len // block_size`` per row, rows concatenated.

    Raises:
        ValueError: ``block_size`` is not positive.

    Example:
        >>> kvcm_token_keys(list(range(1, 11)), 4).tolist()
        [455111481605203084, 6902853672176602142]
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    t = np.ascontiguousarray(as_uint64(token_ids).ravel())
    if offsets is None:
        offsets = np.array([0, t.shape[0]], dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    counts = np.diff(offsets) // block_size
    key_offsets = np.zeros(offsets.shape[0], dtype=np.int64)
    np.cumsum(counts, out=key_offsets[1:])
    return _kvcm_keys_kernel(t, offsets, int(block_size), key_offsets).view(np.int64)

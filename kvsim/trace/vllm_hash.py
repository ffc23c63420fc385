"""vLLM's prefix-cache block hashes, as vLLM (v1) computes them, and their 64-bit keys.

vLLM keys a full block of ``block_size`` tokens (default 16) by
``hash_fn((parent, tuple(block_tokens), extra_keys))`` where ``parent`` is the previous
block's hash (bytes) or, for the first block, ``NONE_HASH = hash_fn(PYTHONHASHSEED)``
(the seed as a string; with no ``PYTHONHASHSEED`` vLLM draws ``NONE_HASH`` at random and
its hashes cannot be reproduced). ``extra_keys`` is ``None`` or a tuple of, in order,
the LoRA name (every block), multimodal identifiers (not modelled here), the cache salt
(first block only) and prompt-embedding hashes (not modelled here).

``hash_fn`` is the engine's ``--prefix-caching-hash-algo``: ``sha256`` (the default:
SHA-256 of ``pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)``), ``sha256_cbor``
(SHA-256 of ``cbor2.dumps(obj, canonical=True)``), ``xxhash`` / ``xxhash_cbor``
(xxh3-128 of the same serialisations; needs the ``xxhash`` package).

The 64-bit key of a block is what vLLM publishes in its KV events by default
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``): ``int.from_bytes(hash, "big") & (2**64 - 1)``,
i.e. the digest's last 8 bytes read big-endian; kvsim stores it as int64 (two's
complement). :func:`external_key` applies the same rule to hashes published as bytes.

Example:
    >>> h = VllmBlockHasher(block_size=4, hash_seed="0")
    >>> keys = h.keys(list(range(10)))
    >>> len(keys), keys == h.keys(list(range(8)))
    (2, True)
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from kvsim.trace.hashing import MASK64

__all__ = ["HASH_ALGOS", "VLLM_DEFAULT_BLOCK_SIZE", "VllmBlockHasher", "external_key",
           "hash_function"]

HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
VLLM_DEFAULT_BLOCK_SIZE = 16
_SIGN = 1 << 63
_INT_ONLY = {int}
_MEMO_MAX = 1 << 17  # memoised blocks (~400 bytes each: ~50 MB) before it starts over


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _cbor(obj: Any) -> bytes:
    try:
        import cbor2
    except ImportError as e:  # pragma: no cover - cbor2 is a dependency
        raise RuntimeError("the *_cbor hash algorithms need the cbor2 package") from e
    return bytes(cbor2.dumps(obj, canonical=True))


def _xxh128(data: bytes) -> bytes:
    try:
        import xxhash
    except ImportError as e:
        raise RuntimeError("the xxhash algorithms need the xxhash package "
                           "(pip install xxhash)") from e
    return bytes(xxhash.xxh3_128_digest(data))


def hash_function(algo: str) -> Callable[[Any], bytes]:
    """vLLM's hash function named ``algo`` (one of :data:`HASH_ALGOS`).

    Raises:
        ValueError: unknown name.

    Example:
        >>> hash_function("sha256")("0").hex()[:16]
        '1973e23848344dc4'
    """
    if algo == "sha256":
        return lambda obj: hashlib.sha256(_pickle(obj)).digest()
    if algo == "sha256_cbor":
        return lambda obj: hashlib.sha256(_cbor(obj)).digest()
    if algo == "xxhash":
        return lambda obj: _xxh128(_pickle(obj))
    if algo == "xxhash_cbor":
        return lambda obj: _xxh128(_cbor(obj))
    raise ValueError(f"unknown vLLM hash algorithm {algo!r} (choose from {', '.join(HASH_ALGOS)})")


def external_key(block_hash: bytes | int) -> int:
    """The int64 key of a vLLM block hash (bytes: low 64 bits, big-endian; int: itself).

    Example:
        >>> external_key(bytes(24) + (2**64 - 1).to_bytes(8, "big")), external_key(5)
        (-1, 5)
    """
    v = (int.from_bytes(block_hash, "big") if isinstance(block_hash, bytes | bytearray)
         else int(block_hash)) & MASK64
    return v - (1 << 64) if v & _SIGN else v


class VllmBlockHasher:
    """Block hashes and 64-bit keys of token sequences, as a vLLM engine computes them.

    Args:
        block_size: tokens per block (vLLM's default 16).
        algo: the engine's ``--prefix-caching-hash-algo`` (default ``sha256``).
        hash_seed: the engine's ``PYTHONHASHSEED`` (a string, as in the environment).

    Example:
        >>> h = VllmBlockHasher(block_size=2, hash_seed="0")
        >>> a = h.keys([1, 2, 3, 4]); b = h.keys([1, 2, 3, 4], lora_name="x")
        >>> a[0] != b[0], h.keys([1, 2, 3, 4], cache_salt="s")[1] != a[1]
        (True, True)
    """

    def __init__(self, block_size: int = VLLM_DEFAULT_BLOCK_SIZE, algo: str = "sha256",
                 hash_seed: str = "0") -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = int(block_size)
        self.algo = algo
        self.hash_fn = hash_function(algo)
        self.none_hash = self.hash_fn(str(hash_seed))
        # shared prefixes (turns of a chat, common system prompts) hash once
        self._memo: dict[tuple[Any, ...], bytes] = {}

    def block_hashes(self, token_ids: Sequence[int], *, lora_name: str | None = None,
                     cache_salt: str | None = None) -> list[bytes]:
        """The hash (bytes) of every full block of ``token_ids``, chained from ``NONE_HASH``."""
        bs = self.block_size
        toks = tuple(token_ids)
        if not set(map(type, toks)) <= _INT_ONLY:
            toks = tuple(int(t) for t in toks)  # python ints: numpy scalars pickle differently
        parent = self.none_hash
        out = []
        fn = self.hash_fn
        rest = (lora_name,) if lora_name else None  # extra keys of blocks after the first
        first = (*(rest or ()), cache_salt) if cache_salt else rest
        memo = self._memo
        for b in range(len(toks) // bs):
            arg = (parent, toks[b * bs:(b + 1) * bs], first if b == 0 else rest)
            h = memo.get(arg)
            if h is None:
                h = fn(arg)
                if len(memo) >= _MEMO_MAX:
                    memo.clear()
                memo[arg] = h
            parent = h
            out.append(parent)
        return out

    def keys(self, token_ids: Sequence[int], *, lora_name: str | None = None,
             cache_salt: str | None = None) -> list[int]:
        """The int64 keys (:func:`external_key`) of every full block of ``token_ids``."""
        return [external_key(h) for h in
                self.block_hashes(token_ids, lora_name=lora_name, cache_salt=cache_salt)]

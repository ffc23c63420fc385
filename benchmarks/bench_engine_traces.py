"""Throughput of the engine-trace paths, each against a baseline measured in the same run.

* KV-event decoding (:func:`~kvsim.trace.kv_events.decode_batch`) of a batch of
  ``--events`` ``BlockStored`` events (4 blocks of 16 tokens each), positional and by
  name, against plain ``msgpack.unpackb`` of the same payload (the ratio is what
  validation and normalisation cost on top of parsing);
* event statistics (:func:`~kvsim.trace.event_stats.event_stats`): blocks per second;
* vLLM block keys (:class:`~kvsim.trace.vllm_hash.VllmBlockHasher`, ``sha256``) against
  the bare ``hashlib.sha256(pickle.dumps(...))`` calls vLLM itself makes per block;
* KVCM ``token_ids`` keys (:func:`~kvsim.trace.hashing.kvcm_token_keys`, numba) against
  a pure-Python loop of the same recurrence.

No targets: the numbers size what a recording or a request log costs to process.

Usage:
    python benchmarks/bench_engine_traces.py [--events 2000] [--tokens 2000000]
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import time
from collections.abc import Callable

import msgpack
import numpy as np

from kvsim.trace.event_stats import event_stats
from kvsim.trace.hashing import MASK64, kvcm_token_keys
from kvsim.trace.kv_events import EventBatch, KVEvent, RecordedBatch, decode_batch
from kvsim.trace.vllm_hash import VllmBlockHasher


def best(fn: Callable[[], object], reps: int = 5) -> float:
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def payloads(n: int) -> tuple[bytes, bytes]:
    pos, named = [], []
    for i in range(n):
        hashes = [(i * 4 + j) * 0x9E3779B97F4A7C15 & MASK64 for j in range(4)]
        toks = list(range(i, i + 64))
        pos.append(["BlockStored", hashes, None, toks, 16, None, "GPU"])
        named.append({"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": None,
                      "token_ids": toks, "block_size": 16, "lora_id": None, "medium": "GPU",
                      "lora_name": None})
    return (msgpack.packb([1.0, pos, 0]),
            msgpack.packb({"ts": 1.0, "events": named, "data_parallel_rank": 0}))


def kvcm_python(tokens: list[int], bs: int) -> list[int]:
    h, out = 0, []
    for b in range(len(tokens) // bs):
        for v in tokens[b * bs:(b + 1) * bs]:
            sar = (h >> 32) | (0xFFFFFFFF00000000 if h >> 63 else 0)
            h ^= (v + 0x9E3779B97F4A7C15 + (h << 12) + sar) & MASK64
            h &= MASK64
        out.append(h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=2_000_000)
    a = ap.parse_args()
    pos, named = payloads(a.events)
    base = best(lambda: msgpack.unpackb(pos))
    t_pos = best(lambda: decode_batch(pos))
    t_named = best(lambda: decode_batch(named))
    print(f"decode positional: {a.events / t_pos:,.0f} events/s  "
          f"({t_pos / base:.1f}x plain msgpack.unpackb)")
    print(f"decode by name:    {a.events / t_named:,.0f} events/s  "
          f"({t_named / best(lambda: msgpack.unpackb(named)):.1f}x plain msgpack.unpackb)")

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50_000, size=(200_000, 2)).tolist()
    recs = []
    for i, (k1, k2) in enumerate(keys):
        ev = KVEvent("BlockStored" if i % 3 else "BlockRemoved", block_hashes=(k1, k2),
                     block_size=16, medium="GPU")
        recs.append(RecordedBatch("e", i, EventBatch(float(i), (ev,))))
    t_st = best(lambda: event_stats(recs), 1)
    print(f"event stats:       {2 * len(recs) / t_st:,.0f} blocks/s")

    toks = rng.integers(0, 150_000, size=16 * 20_000).tolist()
    h = VllmBlockHasher(16)
    t_v = best(lambda: h.keys(toks), 1)
    nh = h.none_hash

    def bare() -> None:
        p = nh
        for b in range(len(toks) // 16):
            p = hashlib.sha256(pickle.dumps((p, tuple(toks[b * 16:(b + 1) * 16]), None),
                                            protocol=pickle.HIGHEST_PROTOCOL)).digest()

    t_bare = best(bare, 1)
    print(f"vLLM sha256 keys:  {len(toks) // 16 / t_v:,.0f} blocks/s  "
          f"({t_v / t_bare:.2f}x the bare hashlib + pickle calls)")

    big = rng.integers(0, 150_000, size=a.tokens)
    kvcm_token_keys(big[:64], 16)  # compile / load the kernel
    t_k = best(lambda: kvcm_token_keys(big, 16))
    small = big[:200_000].tolist()
    t_py = best(lambda: kvcm_python(small, 16), 1) * (a.tokens / len(small))
    assert kvcm_python(small[:4096], 16) == [int(x) & MASK64
                                             for x in kvcm_token_keys(small[:4096], 16)]
    print(f"KVCM token keys:   {a.tokens / t_k:,.0f} tokens/s  "
          f"({t_py / t_k:,.0f}x a pure-Python loop)")


if __name__ == "__main__":
    main()

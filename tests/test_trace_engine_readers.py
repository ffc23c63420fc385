"""Traces from engines' request logs and Dynamo's formats: keys, golden fixtures, errors.

How the expected vLLM keys were obtained: with Python's ``hashlib``, ``pickle`` and
``cbor2`` called exactly as vLLM's ``vllm/utils/hashing.py`` and
``vllm/v1/core/kv_cache_utils.py`` call them (``sha256``: SHA-256 of
``pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)``; ``sha256_cbor``: SHA-256 of
``cbor2.dumps(obj, canonical=True)``; ``NONE_HASH = hash_fn(PYTHONHASHSEED)``; a block's
hash is ``hash_fn((parent, tuple(tokens), extra_keys))``; the published 64-bit key is
``int.from_bytes(hash, "big") & (2**64 - 1)``), run once by hand and pasted here as
literals; ``vllm_reference`` below recomputes them the same way at test time.
The KVCM keys were printed by the C++ program in ``tests/server/test_token_keys.py``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from kvsim.trace.cli import trace_group
from kvsim.trace.model import TraceError
from kvsim.trace.readers import detect_format, read_agentic, read_requests, read_trace
from kvsim.trace.vllm_hash import VllmBlockHasher

TOKENS = [*range(1, 33), 99, 98, 97]  # two full 16-token blocks and a 3-token tail
# NONE_HASH for PYTHONHASHSEED="0" and the two block hashes, from hashlib + pickle:
SHA256_NONE = "1973e23848344dc43a988a9b478663803cfffe1243480253f9a3cf004b14aa7c"
SHA256_BLOCKS = ["bea72b7d33de03c1aa715efbb492d0e0d3801f00c1f985756896072ae8b31325",
                 "2744667f6645310ff670b0c5d7c64987ffa5940de5a549f17d92dcbb5b559e31"]
SHA256_KEYS = [7536218907325174565, 9048537298590080561]
SHA256_KEYS_LORA_SALT = [-6725724294516320764, -57387474668743013]  # lora "lora-a", salt
CBOR_KEYS = [3236607068019569386, 2758186210834249151]  # hashlib + cbor2 (canonical)
CBOR_KEYS_LORA_SALT = [-3544795671616750359, -4835364805813881484]
KVCM_KEYS_4 = [455111481605203084, 6902853672176602142]  # tokens 1..10, block size 4


def vllm_reference(tokens: list[int], algo: str, seed: str, lora: str | None = None,
                   salt: str | None = None, bs: int = 16) -> list[int]:
    ser = ((lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL)) if algo == "sha256"
           else (lambda o: cbor2.dumps(o, canonical=True)))
    parent = hashlib.sha256(ser(seed)).digest()
    keys = []
    for b in range(len(tokens) // bs):
        extra = ([lora] if lora else []) + ([salt] if b == 0 and salt else [])
        parent = hashlib.sha256(ser((parent, tuple(tokens[b * bs:(b + 1) * bs]),
                                     tuple(extra) if extra else None))).digest()
        v = int.from_bytes(parent, "big") & (2**64 - 1)
        keys.append(v - 2**64 if v >> 63 else v)
    return keys


def test_vllm_keys_match_the_engines_algorithm() -> None:
    h = VllmBlockHasher(16, "sha256", "0")
    assert h.none_hash.hex() == SHA256_NONE
    assert [b.hex() for b in h.block_hashes(TOKENS)] == SHA256_BLOCKS
    assert h.keys(TOKENS) == SHA256_KEYS == vllm_reference(TOKENS, "sha256", "0")
    assert h.keys(TOKENS, lora_name="lora-a", cache_salt="salt") == SHA256_KEYS_LORA_SALT \
        == vllm_reference(TOKENS, "sha256", "0", "lora-a", "salt")
    c = VllmBlockHasher(16, "sha256_cbor", "0")
    assert c.keys(TOKENS) == CBOR_KEYS == vllm_reference(TOKENS, "sha256_cbor", "0")
    assert c.keys(TOKENS, lora_name="lora-a", cache_salt="salt") == CBOR_KEYS_LORA_SALT
    # numpy token ids hash like python ints (vLLM hashes python ints)
    assert h.keys(np.array(TOKENS)) == SHA256_KEYS
    other_seed = VllmBlockHasher(16, "sha256", "1")
    assert other_seed.keys(TOKENS) == vllm_reference(TOKENS, "sha256", "1") != SHA256_KEYS


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else orjson.dumps(r).decode()) + "\n"
                            for r in rows))
    return path


@pytest.mark.filterwarnings("ignore:.*out of timestamp order")
def test_request_log_golden(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "req.jsonl", [
        {"timestamp": 2.5, "token_ids": TOKENS, "session_id": "s1", "output_length": 7},
        {"timestamp": 1.0, "token_ids": TOKENS, "lora_name": "lora-a", "cache_salt": "salt",
         "session_id": "s2"},
        {"token_ids": TOKENS[:20], "session_id": "s1"},  # no timestamp: the previous row's
        {"timestamp_ms": 3000, "token_ids": TOKENS[:15], "instance_id": "b"},
    ])
    assert detect_format(p) == "requests"
    with pytest.warns(UserWarning, match="out of timestamp order"):
        t = read_trace(p)
    assert (t.block_size, t.n_requests) == (16, 4)
    assert t.ts_ns.tolist() == [1_000_000_000, 1_000_000_000, 2_500_000_000, 3_000_000_000]
    # sorted by time: row 2 (salted), row 3 (t = previous row's 1.0 s), row 1, row 4
    assert [t.request_keys(i).tolist() for i in range(4)] == [
        SHA256_KEYS_LORA_SALT, SHA256_KEYS[:1], SHA256_KEYS, []]
    assert t.input_len.tolist() == [35, 20, 35, 15]
    assert t.output_len.tolist() == [0, 0, 7, 0]
    assert t.session is not None and t.turn is not None
    assert t.session.tolist() == [1, 0, 0, 2] and t.turn.tolist() == [0, 1, 0, 0]
    assert [t.instances[i] for i in t.instance] == ["default", "default", "default", "b"]
    k = read_requests(p, keys="kvcm", block_size=4, strict=False)
    assert k.request_keys(3).tolist()[:2] == KVCM_KEYS_4  # tokens 1..15 start with 1..10
    p2 = write_jsonl(tmp_path / "k.jsonl", [{"token_ids": list(range(1, 11))}])
    assert read_requests(p2, keys="kvcm", block_size=4).keys.tolist() == KVCM_KEYS_4
    c = read_requests(p, hash_algo="sha256_cbor")
    assert c.request_keys(2).tolist() == CBOR_KEYS


def test_request_log_cli_convert(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "req.jsonl", [{"timestamp": 0, "token_ids": list(range(1, 11))}])
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(trace_group, ["convert", str(p), str(out), "--keys", "kvcm",
                                         "--block-size", "4"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(out.read_text())["keys"] == KVCM_KEYS_4  # written as kvcm JSONL
    r = CliRunner().invoke(trace_group, ["stats", str(p), "--json", "--hash-seed", "1"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["format"] == "requests"


@pytest.mark.parametrize("line, message", [
    ('{"timestamp": 0}', r"req.jsonl:2: missing field 'token_ids'"),
    ('{"token_ids": [1, -2]}', r"req.jsonl:2: field 'token_ids': expected a list of "
                                r"non-negative integers, got -2"),
    ('{"token_ids": "abc"}', r"req.jsonl:2: field 'token_ids'"),
    ('{"token_ids": [1], "timestamp": "x"}', r"req.jsonl:2: field 'timestamp': expected a "
                                             r"number"),
    ('{"token_ids": [1], "lora_name": 5}', r"req.jsonl:2: field 'lora_name': expected a "
                                           r"string"),
    ('{"token_ids": [1], "session_id": [1]}', r"req.jsonl:2: field 'session_id'"),
    ('{"token_ids": [1], "output_length": -1}', r"req.jsonl:2: field 'output_length'"),
    ('{"token_ids": [1', r"req.jsonl:2: invalid JSON"),
])
def test_request_log_errors(tmp_path: Path, line: str, message: str) -> None:
    p = write_jsonl(tmp_path / "req.jsonl", ['{"token_ids": [1, 2]}', line])
    with pytest.raises(TraceError, match=message):
        read_requests(p)


def test_dynamo_mooncake_sessions_and_delay(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "m.jsonl", [
        {"session_id": "a", "timestamp": 1000, "input_length": 40, "output_length": 1,
         "hash_ids": [1, 2]},
        {"session_id": "b", "timestamp": 1500, "output_length": 2, "hash_ids": [7]},
        {"session_id": "a", "delay": 250, "input_length": 60, "output_length": 3,
         "hash_ids": [1, 2, 3]},
        {"session_id": "a", "delay_ms": 100, "output_length": 4, "hash_ids": [1, 2, 3, 4]},
        {"session_id": "b", "created_time": 1100, "output_length": 5, "hash_ids": [7, 8]},
    ])
    assert detect_format(p) == "mooncake"
    t = read_trace(p, block_size=20)
    # a: 1000, then +250 = 1250, then +100 = 1350 (ms); b: 1500 and created_time 1100
    assert (t.ts_ns // 10**6).tolist() == [1000, 1100, 1250, 1350, 1500]
    assert t.output_len.tolist() == [1, 5, 3, 4, 2]
    assert t.input_len.tolist() == [40, 40, 60, 80, 20]  # default: len(hash_ids) x 20
    assert t.session is not None and t.turn is not None
    assert t.session.tolist() == [0, 1, 0, 0, 1] and t.turn.tolist() == [0, 1, 1, 2, 0]
    assert t.key_counts().tolist() == [2, 2, 3, 4, 1]
    assert t.request_keys(3)[:2].tolist() == t.request_keys(0).tolist()  # prefix-chained
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"session_id": "a", "timestamp": 1, "output_length": 1, "hash_ids": [1]},
        {"session_id": "a", "delay": -5, "output_length": 1, "hash_ids": [1]}])
    with pytest.raises(TraceError, match=r"bad.jsonl:2: field 'delay': expected non-negative"):
        read_trace(bad)


AGENTIC = [
    {"request_id": "r1", "session_id": "s", "timestamp": 1000, "hash_ids": [1, 2],
     "input_length": 1024, "output_length": 10, "prefix_reset": True},
    {"request_id": "r3", "session_id": "s", "wait_for": ["r2", "c1"], "delay": 5,
     "tool_wait_ms": 100, "hash_ids": [1, 2, 3, 4], "output_length": 12},
    {"request_id": "r2", "session_id": "s", "wait_for": ["r1"], "delay": 20, "hash_ids": [1, 2, 3],
     "output_length": 11, "branches": ["c1"], "tool_events": [{"tool_call_id": "x"}]},
    {"request_id": "c1", "session_id": "child", "wait_for": ["r1"], "tool_wait_ms": 400,
     "hash_ids": [9], "output_length": 3},
    {"request_id": "other", "timestamp": 1010, "hash_ids": [5], "output_length": 1},
]


def test_agentic_golden(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", AGENTIC)
    assert detect_format(p) == "agentic"
    t = read_trace(p, block_size=512)
    # r1 1000; other 1010; r2 = 1000 + 20; c1 = 1000 + 400; r3 = max(1020, 1400) + 105
    assert (t.ts_ns // 10**6).tolist() == [1000, 1010, 1020, 1400, 1505]
    assert t.key_counts().tolist() == [2, 1, 3, 1, 4]
    assert t.input_len.tolist() == [1024, 512, 1536, 512, 2048]
    assert t.output_len.tolist() == [10, 1, 11, 3, 12]
    assert t.session is not None
    assert t.session.tolist() == [0, 2, 0, 1, 0]  # s, other (its own), s, child, s
    assert t.request_keys(4)[:3].tolist() == t.request_keys(2).tolist()


@pytest.mark.parametrize("change, message", [
    ({1: {"wait_for": ["nope"]}}, r"a.jsonl:2: field 'wait_for\[0\]': expected a request_id"),
    ({0: {"wait_for": ["r3"]}}, r"field 'wait_for': dependency cycle"),
    ({4: {"request_id": "r1"}}, r"a.jsonl:5: field 'request_id': expected a unique id "
                                r"\(already on line 1\)"),
    ({4: {"timestamp": None}}, r"a.jsonl:5: missing field 'timestamp'"),
    ({2: {"delay": "soon"}}, r"a.jsonl:3: field 'delay'"),
    ({3: {"hash_ids": [1.5]}}, r"a.jsonl:4: field 'hash_ids'"),
    ({0: {"request_id": None}}, r"a.jsonl:1: missing field 'request_id'"),
])
def test_agentic_errors(tmp_path: Path, change: dict[int, dict[str, Any]], message: str) -> None:
    rows = [dict(r) for r in AGENTIC]
    for i, upd in change.items():
        rows[i].update(upd)
        rows[i] = {k: v for k, v in rows[i].items() if v is not None}
    with pytest.raises(TraceError, match=message):
        read_agentic(write_jsonl(tmp_path / "a.jsonl", rows))


def test_error_messages_name_file_and_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", [AGENTIC[0], {"request_id": "x", "hash_ids": []}])
    with pytest.raises(TraceError) as ei:
        read_agentic(p)
    assert re.search(r"a\.jsonl:2: missing field 'timestamp'", str(ei.value))


def test_request_log_keys_equal_published_event_hashes(tmp_path: Path) -> None:
    """A request log's vLLM keys are the keys of the hashes the engine publishes.

    The engine's block hashes (bytes, as vLLM publishes them with
    ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``, or their int form by default) are computed
    by ``vllm_reference`` and sent through the event decoder.
    """
    import msgpack

    from kvsim.trace.kv_events import decode_batch

    ser = lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL)  # noqa: E731
    parent = hashlib.sha256(ser("7")).digest()
    hashes = []
    for b in range(2):
        parent = hashlib.sha256(ser((parent, tuple(TOKENS[b * 16:(b + 1) * 16]), None))).digest()
        hashes.append(parent)
    as_ints = [int.from_bytes(h, "big") & (2**64 - 1) for h in hashes]
    for published in (hashes, as_ints):
        ev = decode_batch(msgpack.packb([0.0, [["BlockStored", published, None, TOKENS[:32],
                                                16, None, "GPU"]]])).events[0]
        p = write_jsonl(tmp_path / "r.jsonl", [{"token_ids": TOKENS}])
        assert read_requests(p, hash_seed="7").keys.tolist() == list(ev.block_hashes)

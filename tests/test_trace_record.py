"""`kvsim trace record` against a real ZMQ publisher on loopback.

The publisher here behaves as the engines' ``ZmqEventPublisher`` does (read from
vLLM's and SGLang's ``kv_events.py``): PUB frames (topic, 8-byte big-endian sequence
number, msgpack batch), a ROUTER replay socket answering ``[b"", start]`` with
``[b"", seq, payload]`` for every buffered batch from ``start`` and an end marker
``[b"", -1, b""]``. It skips one sequence number on the PUB socket (kept in its replay
buffer): the recorder must repair that gap from the replay socket. Batches alternate
between the two encodings (positional arrays and maps by field name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from kvsim.trace.kv_events import EventBatch, KVEvent, read_recording
from kvsim.trace.recorder import Recorder

U64 = (1 << 64) - 1


def signed(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


class Publisher:
    """PUB + ROUTER replay on ephemeral loopback ports, in a background thread."""

    def __init__(self, payloads: list[bytes], *, skip: set[int] = frozenset(),  # type: ignore[assignment]
                 resend: set[int] = frozenset(), buffer_from: int = 0,  # type: ignore[assignment]
                 topic: bytes = b"kv") -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind("tcp://127.0.0.1:0")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:0")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.payloads = payloads
        self.skip, self.resend, self.buffer_from = skip, resend, buffer_from
        self.topic = topic
        self.sent = 0
        self.done = threading.Event()
        self.replay_requests: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self.thread.start()
        return self

    def _serve_replay(self) -> None:
        while self.router.poll(0):
            ident, _, start = self.router.recv_multipart()
            first = int.from_bytes(start, "big")
            self.replay_requests.append(first)
            for seq in range(max(first, self.buffer_from), self.sent):
                self.router.send_multipart([ident, b"", seq.to_bytes(8, "big"),
                                            self.payloads[seq]])
            self.router.send_multipart([ident, b"", (-1).to_bytes(8, "big", signed=True), b""])

    def _run(self) -> None:
        time.sleep(0.3)  # let the subscriber connect (the recorder catches up anyway)
        deadline = time.monotonic() + 30
        for seq, payload in enumerate(self.payloads):
            self._serve_replay()
            if seq not in self.skip:
                self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
            if seq in self.resend:
                self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
            self.sent = seq + 1
            time.sleep(0.01)
        while not self.done.is_set() and time.monotonic() < deadline:
            self._serve_replay()
            time.sleep(0.005)

    def close(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(10)
        self.pub.close(linger=0)
        self.router.close(linger=0)
        self.ctx.term()


def make_batches() -> tuple[list[bytes], list[EventBatch]]:
    """Payloads in both encodings and the batches a correct decoder must return."""
    payloads: list[bytes] = []
    expected: list[EventBatch] = []
    for i in range(12):
        big = (1 << 64) - 1 - i  # beyond 2**63
        as_bytes = bytes(range(24)) + (1000 + i).to_bytes(8, "big")  # a 32-byte sha256 hash
        toks = list(range(i * 32, i * 32 + 32))
        if i % 2 == 0:  # positional (array_like) encoding, as SGLang / older vLLM
            events: list[Any] = [
                ["BlockStored", [10 + i, big], None, toks, 16, None, "GPU"],
                ["BlockStored", [as_bytes], big, toks[:16], 16],  # trailing fields omitted
                ["BlockRemoved", [10 + i - 2], "GPU"],
                ["SomethingNew", 1, 2],  # unknown event type: skipped
            ]
            raw = msgpack.packb([1000.0 + i, events, 0])
        else:  # by field name, as vLLM since 2026
            events = [
                {"type": "BlockStored", "block_hashes": [10 + i, big], "parent_block_hash": None,
                 "token_ids": toks, "block_size": 16, "lora_id": None, "medium": "CPU",
                 "lora_name": "ad", "group_idx": 1, "extra_keys": [["ad"], ["ad"]]},
                {"type": "BlockStored", "block_hashes": [as_bytes], "parent_block_hash": big,
                 "token_ids": toks[:16], "block_size": 16, "lora_id": 7, "medium": None,
                 "lora_name": None},
                {"type": "BlockStored", "block_hashes": [10 + i, big], "parent_block_hash": None,
                 "token_ids": toks, "block_size": 16, "lora_id": None, "medium": "CPU",
                 "lora_name": "ad", "group_idx": 1},  # a duplicate store
                {"type": "BlockRemoved", "block_hashes": [10 + i - 2], "medium": "CPU",
                 "group_idx": 1},
            ]
            if i == 7:
                events.append({"type": "AllBlocksCleared"})
            raw = msgpack.packb({"ts": 1000.0 + i, "events": events, "data_parallel_rank": 0})
        payloads.append(raw)
        exp = [KVEvent("BlockStored", (10 + i, signed(big)), None, tuple(toks), 16, None,
                       "GPU" if i % 2 == 0 else "CPU", "ad" if i % 2 else None,
                       1 if i % 2 else None),
               KVEvent("BlockStored", (1000 + i,), signed(big), tuple(toks[:16]), 16,
                       7 if i % 2 else None, None, None, None)]
        if i % 2:
            exp.append(exp[0])
        exp.append(KVEvent("BlockRemoved", (10 + i - 2,), medium="GPU" if i % 2 == 0 else "CPU",
                           group_idx=1 if i % 2 else None))
        if i == 7:
            exp.append(KVEvent("AllBlocksCleared"))
        expected.append(EventBatch(ts=1000.0 + i, events=tuple(exp), dp_rank=0))
    return payloads, expected


def recorded(out: Path) -> list[tuple[int, EventBatch]]:
    batches, _ = read_recording(out)
    return [(b.seq, b.batch) for b in sorted(batches, key=lambda b: b.seq)]


def test_recorder_repairs_a_gap_from_the_replay_socket(tmp_path: Path) -> None:
    payloads, expected = make_batches()
    pub = Publisher(payloads, skip={5}, resend={8}).start()
    out = tmp_path / "rec"
    rec = Recorder([pub.endpoint], out, replay=[pub.replay_endpoint], topic="kv",
                   max_batches=len(payloads), duration=20, rotate_events=10)
    try:
        stats = rec.run()
    finally:
        pub.close()
    assert recorded(out) == list(enumerate(expected))
    assert 5 in pub.replay_requests  # the gap was asked for from seq 5
    assert stats.duplicates >= 1 and stats.gap_batches == 0 and stats.bad_frames == 0
    assert stats.skipped_events == 6  # the unknown event type, once per positional batch
    batches, meta = read_recording(out)
    assert meta["parts"] >= 2  # rotated every 10 events, each part written whole
    assert [b.seq for b in batches if b.replayed] >= [5]
    assert not list(out.glob(".*tmp*"))


def test_lost_batches_are_recorded_as_a_gap(tmp_path: Path) -> None:
    payloads, expected = make_batches()
    # seq 3 and 4 never reach the subscriber and are no longer in the replay buffer
    pub = Publisher(payloads[:8], skip={3, 4}, buffer_from=5).start()
    out = tmp_path / "rec"
    rec = Recorder([pub.endpoint], out, replay=[pub.replay_endpoint], catch_up=False,
                   max_batches=6, duration=20)
    try:
        stats = rec.run()
    finally:
        pub.close()
    got = recorded(out)
    assert [s for s, _ in got] == [0, 1, 2, 5, 6, 7]
    _, meta = read_recording(out)
    assert {"source": pub.endpoint, "first": 3, "end": 5} in meta["gaps"]
    assert stats.gap_batches == 2
    for seq, b in got:
        assert b == expected[seq]


def test_cli_records_until_sigterm(tmp_path: Path) -> None:
    payloads, expected = make_batches()
    pub = Publisher(payloads, skip={2})  # started once the recorder has subscribed
    out = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsim", "trace", "record", "--zmq", pub.endpoint,
         "--replay", pub.replay_endpoint, "--duration", "60", "-v", str(out)],
        stderr=subprocess.PIPE, text=True, env=env)
    seen: set[int] = set()
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if " seq " in line and "recorded" in line:
                seen.add(int(line.split(" seq ")[1].split()[0]))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 40
        while not any("subscribed" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.start()
        while len(seen) < len(payloads) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(seen) == len(payloads), "".join(lines[-20:])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    t.join(5)
    assert recorded(out) == list(enumerate(expected))
    assert any("recorded 12 batches" in ln for ln in lines)


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", "not a msgpack EventBatch"),
    (msgpack.packb([1.0, [["BlockStored", "nope"]]]), "events[0][1]: expected a list"),
    (msgpack.packb({"ts": 1.0, "events": [{"type": "BlockRemoved",
                                           "block_hashes": [1, "x"]}]}),
     "events[0].block_hashes[1]: expected an int or bytes"),
    (msgpack.packb([1.0, [["BlockStored", [b""]]]]), "events[0][1][0]: expected 1..64 hash"),
    (msgpack.packb({"ts": "x", "events": []}), "ts: expected seconds"),
    (msgpack.packb([1.0, [["BlockStored", [1], None, [1], 16, None, "G" * 300]]]),
     "events[0][6]: expected a string"),
    (msgpack.packb({"events": []}), "batch: expected a map with ts and events"),
])
def test_bad_payloads_name_the_frame_and_field(payload: bytes, message: str) -> None:
    from kvsim.trace.kv_events import EventDecodeError, decode_batch

    with pytest.raises(EventDecodeError, match="tcp://h:1 seq 9") as ei:
        decode_batch(payload, "tcp://h:1 seq 9")
    assert message in str(ei.value)


def test_bounds() -> None:
    from kvsim.trace.kv_events import EventDecodeError, Limits, decode_batch

    lim = Limits(max_events=2, max_hashes=3, max_tokens=4, max_payload_bytes=1000)
    with pytest.raises(EventDecodeError, match="at most 2 events"):
        decode_batch(msgpack.packb([1.0, [["AllBlocksCleared"]] * 3]), "f", lim)
    with pytest.raises(EventDecodeError, match="at most 3 hashes"):
        decode_batch(msgpack.packb([1.0, [["BlockRemoved", [1, 2, 3, 4]]]]), "f", lim)
    with pytest.raises(EventDecodeError, match="at most 4 tokens"):
        decode_batch(msgpack.packb([1.0, [["BlockStored", [1], None, [1] * 5]]]), "f",
                     Limits(max_tokens=4))
    # msgpack itself refuses arrays longer than every field's bound
    with pytest.raises(EventDecodeError, match="max_array_len"):
        decode_batch(msgpack.packb([1.0, [["BlockStored", [1], None, [1] * 5]]]), "f", lim)
    with pytest.raises(EventDecodeError, match="exceeds 1000"):
        decode_batch(b"\x90" * 1001, "f", lim)


def test_two_ranks_and_hostile_frames(tmp_path: Path) -> None:
    payloads, expected = make_batches()
    a = Publisher(payloads[:6], skip={4}).start()  # data-parallel rank 0
    b = Publisher(payloads[6:], skip={1}).start()  # rank 1, its own sequence from 0
    # a third "publisher" that sends garbage: wrong frame counts, a short sequence
    # number, a payload that is not msgpack, a batch of the wrong shape
    ctx = zmq.Context()
    junk = ctx.socket(zmq.PUB)
    junk.bind("tcp://127.0.0.1:0")
    junk_ep = junk.getsockopt_string(zmq.LAST_ENDPOINT)
    out = tmp_path / "rec"
    rec = Recorder([a.endpoint, b.endpoint, junk_ep], out,
                   replay=[a.replay_endpoint, b.replay_endpoint, ""],
                   max_batches=12 + 2, duration=20)

    def spam() -> None:
        time.sleep(1.0)  # no replay socket here: give the subscription time to join
        for _ in range(1):
            junk.send_multipart([b"kv"])
            junk.send_multipart([b"kv", b"\x01"])
            junk.send_multipart([b"kv", (0).to_bytes(8, "big"), b"\xc1\xc1"])
            junk.send_multipart([b"kv", (1).to_bytes(8, "big"), msgpack.packb({"ts": 1})])
            junk.send_multipart([b"kv", (2).to_bytes(8, "big"), msgpack.packb([1.0, []])])
            junk.send_multipart([b"kv", (3).to_bytes(8, "big"),
                                 msgpack.packb([1.0, [["AllBlocksCleared"]]])])
            time.sleep(0.05)

    t = threading.Thread(target=spam, daemon=True)
    t.start()
    try:
        stats = rec.run()
    finally:
        a.close()
        b.close()
        t.join(5)
        junk.close(linger=0)
        ctx.term()
    batches, _ = read_recording(out)
    by_src: dict[str, list[tuple[int, EventBatch]]] = {}
    for rb in batches:
        by_src.setdefault(rb.source, []).append((rb.seq, rb.batch))
    assert sorted(by_src[a.endpoint]) == list(enumerate(expected[:6]))
    assert sorted(by_src[b.endpoint]) == list(enumerate(expected[6:]))
    # the two valid junk batches: seq 2 has no events (so no rows), seq 3 has one
    assert [s for s, _ in by_src[junk_ep]] == [3]
    assert stats.bad_frames == 4 and stats.gap_batches == 0 and stats.batches == 14


def test_decoder_golden_every_field() -> None:
    """Every field in both encodings, by position as in the engines' declarations."""
    from kvsim.trace.kv_events import decode_batch

    toks = list(range(48))
    full = ["BlockStored", [1, 2, 3], 2**63, toks, 16, 5, "CPU", "ad", [None, None, None],
            2, "full_attention", None]
    named = {"type": "BlockStored", "block_hashes": [1, 2, 3], "parent_block_hash": 2**63,
             "token_ids": toks, "block_size": 16, "lora_id": 5, "medium": "CPU",
             "lora_name": "ad", "extra_keys": [None, None, None], "group_idx": 2,
             "kv_cache_spec_kind": "full_attention", "kv_cache_spec_sliding_window": None,
             "some_future_field": 1}
    want = KVEvent("BlockStored", (1, 2, 3), -(2**63), tuple(toks), 16, 5, "CPU", "ad", 2)
    removed = KVEvent("BlockRemoved", (7,), medium="CPU", group_idx=2)
    for batch in (msgpack.packb([5.0, [full, ["BlockRemoved", [7], "CPU", 2]], 3]),
                  msgpack.packb({"ts": 5.0, "attn_dp_rank": 3, "events": [
                      named, {"type": "BlockRemoved", "block_hashes": [7], "medium": "CPU",
                              "group_idx": 2}]})):
        b = decode_batch(batch)
        assert b == EventBatch(5.0, (want, removed), dp_rank=3)
    assert want.parents() == [-(2**63), 1, 2]  # a multi-block store chains its blocks
    # SGLang's shortest form: five fields, no medium, no rank
    b = decode_batch(msgpack.packb([1.0, [["BlockStored", [9], None, [1] * 16, 16, None],
                                          ["AllBlocksCleared"]]]))
    assert b.events == (KVEvent("BlockStored", (9,), None, (1,) * 16, 16),
                        KVEvent("AllBlocksCleared")) and b.dp_rank is None


def test_catch_up_starts_at_the_oldest_buffered_batch(tmp_path: Path) -> None:
    payloads, expected = make_batches()
    # the subscriber sees nothing before seq 6; the publisher still buffers 4 and 5 only
    pub = Publisher(payloads[:8], skip=set(range(6)), buffer_from=4).start()
    out = tmp_path / "rec"
    rec = Recorder([pub.endpoint], out, replay=[pub.replay_endpoint], max_batches=4,
                   duration=20)
    try:
        stats = rec.run()
    finally:
        pub.close()
    assert recorded(out) == [(s, expected[s]) for s in (4, 5, 6, 7)]
    assert stats.gap_batches == 0 and pub.replay_requests == [0]

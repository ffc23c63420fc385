"""Record vLLM / SGLang KV-cache events from their ZMQ publishers into Parquet.

The engines' ``ZmqEventPublisher`` sends every batch on a PUB socket as three frames
(topic, the sequence number as 8 bytes big-endian, the msgpack ``EventBatch``) and keeps
the last ``buffer_steps`` batches for a ROUTER *replay* socket: a client sends
``[b"", start_seq (8 bytes big-endian)]`` and gets ``[b"", seq, payload]`` for every
buffered batch with ``seq >= start_seq``, then ``[b"", -1 (8 bytes, signed), b""]``.

:class:`Recorder` subscribes to one or more publishers (one per data-parallel rank: each
rank publishes on its own port) with a SUB socket each and, when given, a DEALER on the
matching replay socket. Per publisher it tracks the last sequence number; a jump
(``seq > last + 1``) asks the replay socket for ``last + 1`` onwards, records the
missing batches in order, then the one that revealed the gap. What the replay cannot
give (the publisher's buffer moved on, or no replay socket) is recorded as a *gap* in
the recording's metadata. A repeated or older sequence number is dropped as a
duplicate, except 0 after a higher number, which is a restarted publisher. With
``catch_up`` the first batch seen from a publisher also asks for everything it still
buffers (so a recording started late, or a subscription that joined after the first
messages, begins at the publisher's oldest batch; what it no longer buffers is not
counted as a gap).

Batches are buffered and written as ``OUT/part-NNNNN.parquet`` (temp file + rename)
every ``rotate_events`` events or ``rotate_seconds``, and on stop. Every received frame
is bounded (``MAXMSGSIZE`` on the sockets, :class:`~kvsim.trace.kv_events.Limits` on the
payload); a frame that fails to decode is counted and logged, never fatal.

Example:
    >>> r = Recorder(["tcp://127.0.0.1:1"], "/tmp/unused-rec")
    >>> r.sources[0].endpoint
    'tcp://127.0.0.1:1'
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from kvsim.trace.kv_events import (
    EventDecodeError,
    Limits,
    RecordedBatch,
    decode_batch,
    write_recording_part,
)

__all__ = ["END_SEQ", "Recorder", "RecorderStats"]

log = logging.getLogger("kvsim.trace.record")

END_SEQ = -1
_SEQ_MAX = (1 << 63) - 1
# counters each part's metadata holds for its own span (read_recording sums them)
_PART_COUNTERS = ("batches", "events", "replayed", "duplicates", "bad_frames",
                  "skipped_events", "restarts", "gap_batches")


@dataclass
class RecorderStats:
    """Counters of a recording (also written into every part's metadata)."""

    batches: int = 0
    events: int = 0
    replayed: int = 0
    duplicates: int = 0
    bad_frames: int = 0
    skipped_events: int = 0
    restarts: int = 0
    gap_batches: int = 0
    parts: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)

    def as_meta(self) -> dict[str, Any]:
        """The counters as a JSON-able dict."""
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class _Source:
    endpoint: str
    replay: str | None
    sub: Any = None
    dealer: Any = None
    last: int | None = None


class Recorder:
    """Subscribe to KV-event publishers and write what they send to ``out``.

    Args:
        endpoints: PUB endpoints to connect to (e.g. ``tcp://host:5557``).
        out: the recording directory (created); parts are ``part-NNNNN.parquet``.
        replay: replay (ROUTER) endpoints, one per entry of ``endpoints`` (``None`` or
            ``""`` for a publisher without one); default none.
        topic: subscription prefix (``""`` = every topic).
        rotate_events: write a part after this many buffered events.
        rotate_seconds: write a part at least this often (when it has events).
        rotate_bytes: write a part once the buffered payloads reach this many bytes
            (bounds the recorder's memory whatever the events hold).
        replay_timeout: seconds to wait for a replay to finish.
        catch_up: replay a publisher's buffer when its first batch arrives.
        limits: payload bounds.
        max_batches: stop after recording this many batches (``None`` = no limit).
        duration: stop after this many seconds (``None`` = no limit).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, endpoints: Sequence[str], out: str | os.PathLike[str], *,
                 replay: Sequence[str | None] | None = None, topic: str = "",
                 rotate_events: int = 1_000_000, rotate_seconds: float = 300.0,
                 rotate_bytes: int = 256 << 20,
                 replay_timeout: float = 5.0, catch_up: bool = True,
                 limits: Limits | None = None, max_batches: int | None = None,
                 duration: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        rp = list(replay or [])
        if rp and len(rp) != len(endpoints):
            raise ValueError(f"{len(rp)} replay endpoints for {len(endpoints)} publishers "
                             "(give one per publisher, in the same order)")
        self.sources = [_Source(e, (rp[i] or None) if rp else None)
                        for i, e in enumerate(endpoints)]
        self.out = Path(out)
        self.topic = topic.encode()
        self.rotate_events = max(1, int(rotate_events))
        self.rotate_seconds = float(rotate_seconds)
        self.rotate_bytes = max(1, int(rotate_bytes))
        self._buf_bytes = 0
        self.replay_timeout = float(replay_timeout)
        self.catch_up = catch_up
        self.limits = limits or Limits()
        self.max_batches = max_batches
        self.duration = duration
        self.clock = clock
        self.stats = RecorderStats()
        self.stop_event = threading.Event()
        self._buf: list[RecordedBatch] = []
        self._buf_events = 0
        self._gaps_pending: list[dict[str, Any]] = []
        self._ctx: Any = None
        self._flushed: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler or another thread)."""
        self.stop_event.set()

    def run(self) -> RecorderStats:
        """Record until :meth:`stop`, ``max_batches`` or ``duration``; flush; return stats."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.stats.parts = len(list(self.out.glob("part-*.parquet")))
        self._ctx = zmq.Context()
        poller = zmq.Poller()
        try:
            for s in self.sources:
                s.sub = self._socket(zmq.SUB)
                s.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
                s.sub.connect(s.endpoint)
                poller.register(s.sub, zmq.POLLIN)
                if s.replay:
                    s.dealer = self._socket(zmq.DEALER)
                    s.dealer.connect(s.replay)
            log.info("subscribed to %s", ", ".join(s.endpoint for s in self.sources))
            start = self.clock()
            last_flush = start
            while not self.stop_event.is_set():
                now = self.clock()
                if self.duration is not None and now - start >= self.duration:
                    break
                if self.max_batches is not None and self.stats.batches >= self.max_batches:
                    break
                if self._buf and now - last_flush >= self.rotate_seconds:
                    self.flush()
                    last_flush = now
                for sock, _ in poller.poll(100):
                    src = next(s for s in self.sources if s.sub is sock)
                    for _ in range(1000):  # drain, bounded, then let the loop check stop
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_frames(src, frames)
                        if self._buf_events >= self.rotate_events or \
                                self._buf_bytes >= self.rotate_bytes:
                            self.flush()
                            last_flush = self.clock()
                        if self.max_batches is not None and \
                                self.stats.batches >= self.max_batches:
                            break
        finally:
            self.flush()
            for s in self.sources:
                for sock in (s.sub, s.dealer):
                    if sock is not None:
                        sock.close(linger=0)
            self._ctx.term()
        return self.stats

    def _socket(self, kind: int) -> Any:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_payload_bytes + 4096)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        return sock

    # ------------------------------------------------------------------ frames
    def _where(self, src: _Source, seq: int | None) -> str:
        return f"{src.endpoint} seq {seq}" if seq is not None else src.endpoint

    def _on_frames(self, src: _Source, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.stats.bad_frames += 1
            log.warning("%s: expected 3 frames (topic, 8-byte seq, payload), got %d frames",
                        src.endpoint, len(frames))
            return
        seq = int.from_bytes(frames[1], "big")
        if seq > _SEQ_MAX:
            self.stats.bad_frames += 1
            log.warning("%s: sequence number %d out of range", src.endpoint, seq)
            return
        if src.last is None:
            if self.catch_up and src.dealer is not None and seq > 0:
                self._replay(src, 0, seq, catching_up=True)
        elif seq <= src.last:
            if seq == 0:
                self.stats.restarts += 1
                log.warning("%s: sequence restarted at 0 (publisher restarted)", src.endpoint)
            else:
                self.stats.duplicates += 1
                return
        elif seq > src.last + 1:
            self._replay(src, src.last + 1, seq)
        self._record(src, seq, frames[2], replayed=False)

    def _record(self, src: _Source, seq: int, payload: bytes, *, replayed: bool) -> None:
        src.last = seq
        try:
            batch = decode_batch(payload, self._where(src, seq), self.limits)
        except EventDecodeError as e:
            self.stats.bad_frames += 1
            log.warning("%s", e)
            return
        self._buf.append(RecordedBatch(source=src.endpoint, seq=seq, batch=batch,
                                       recv_ns=time.time_ns(), replayed=replayed))
        self._buf_events += len(batch.events)
        self._buf_bytes += len(payload)
        self.stats.batches += 1
        self.stats.events += len(batch.events)
        self.stats.skipped_events += batch.skipped
        self.stats.replayed += replayed
        log.debug("recorded %s seq %d (%d events%s)", src.endpoint, seq, len(batch.events),
                  ", replayed" if replayed else "")

    def _replay(self, src: _Source, first: int, upto: int, *, catching_up: bool = False
                ) -> None:
        """Record batches ``first .. upto - 1`` from the replay socket; note what is missing.

        When ``catching_up`` (the first batch of a publisher), what the publisher no
        longer buffers is not a gap: the recording simply starts later.
        """
        got = first
        if src.dealer is not None:
            src.dealer.send_multipart([b"", first.to_bytes(8, "big")])
            deadline = self.clock() + self.replay_timeout
            limit = (upto - first) + 100_000  # the publisher may send newer batches too
            for _ in range(limit):
                left = deadline - self.clock()
                if left <= 0 or not src.dealer.poll(int(left * 1000)):
                    log.warning("%s: replay from %d timed out", src.endpoint, first)
                    break
                frames = src.dealer.recv_multipart()
                if len(frames) != 3 or len(frames[1]) != 8:
                    self.stats.bad_frames += 1
                    continue
                rseq = int.from_bytes(frames[1], "big", signed=True)
                if rseq == END_SEQ:
                    break
                if got <= rseq < upto:
                    if rseq > got and not (catching_up and got == first):
                        self._gap(src, got, rseq)
                    self._record(src, rseq, frames[2], replayed=True)
                    got = rseq + 1
        if got < upto and not (catching_up and got == first):
            self._gap(src, got, upto)

    def _gap(self, src: _Source, first: int, end: int) -> None:
        gap = {"source": src.endpoint, "first": first, "end": end}
        self.stats.gaps.append(gap)
        self._gaps_pending.append(gap)
        self.stats.gap_batches += end - first
        log.warning("%s: batches %d..%d are lost (not in the replay buffer)",
                    src.endpoint, first, end - 1)

    # ------------------------------------------------------------------ output
    def flush(self) -> Path | None:
        """Write the buffered batches as the next part (nothing if the buffer is empty)."""
        if not self._buf and not self._gaps_pending:
            return None
        path = self.out / f"part-{self.stats.parts:05d}.parquet"
        now = {k: getattr(self.stats, k) for k in _PART_COUNTERS}
        meta: dict[str, Any] = {k: now[k] - self._flushed.get(k, 0) for k in _PART_COUNTERS}
        meta["gaps"] = self._gaps_pending
        write_recording_part(path, self._buf, meta)
        self.stats.parts += 1
        log.info("wrote %s (%d batches, %d events)", path, len(self._buf), self._buf_events)
        self._buf = []
        self._buf_events = 0
        self._buf_bytes = 0
        self._gaps_pending = []
        self._flushed = now
        return path

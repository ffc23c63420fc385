"""The in-memory trace: one columnar table of requests, keys in CSR form.

Every reader produces a :class:`Trace`; the simulator, the curve builder and the
converters consume it. Keys are stored flat (``keys``) with ``offsets`` so that
request ``i`` owns ``keys[offsets[i]:offsets[i + 1]]``: numba kernels walk these
arrays directly with no per-request Python objects.

Example:
    >>> import numpy as np
    >>> t = Trace.from_lists(ts_ns=[0, 5], keys=[[1, 2], [1, 3]],
    ...                      input_len=[1024, 1100], block_size=512)
    >>> t.n_requests, t.n_keys, t.request_keys(1).tolist()
    (2, 4, [1, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

# Request kinds: a combined read+write request (the default replay unit), a read
# only (a ``get`` / GetCacheLocation event) and a write only (a write event).
KIND_REQUEST = 0
KIND_READ = 1
KIND_WRITE = 2

# Query types of a read, numbered as in the manager API enum order.
QT_PREFIX = 0
QT_BATCH = 1
QT_SW = 2

QUERY_TYPE_NAMES = {"prefix": QT_PREFIX, "batch": QT_BATCH, "sw": QT_SW}


class TraceError(ValueError):
    """A trace could not be read: the message names the file, line and field."""


@dataclass(frozen=True)
class Trace:
    """A request trace in columnar form.

    Attributes:
        ts_ns: int64[n] request times in nanoseconds, non-decreasing.
        instance: int32[n] index into ``instances`` for each request.
        instances: instance ids, in order of first appearance.
        offsets: int64[n + 1] CSR offsets into ``keys``.
        keys: int64[total] prefix-chained block keys (full blocks only unless the
            reader was told ``tail="keep"``).
        input_len: int64[n] prompt tokens (the hit-rate denominator).
        output_len: int64[n] generated tokens.
        block_size: tokens per block of ``keys``.
        kind: int8[n] ``KIND_REQUEST``, ``KIND_READ`` or ``KIND_WRITE``.
        query_type: int8[n] ``QT_PREFIX``, ``QT_BATCH`` or ``QT_SW``.
        sw_size: int32[n] window size for ``QT_SW`` reads (0 otherwise).
        mask: bool[total] or None; True = the block is already held by the engine
            (an *internal* read). Offsets masks are expanded to bools by readers.
        session: int64[n] or None, a conversation id (root chat id).
        turn: int32[n] or None, the turn number within a session.
        type_code: int16[n] or None, index into ``type_names`` (request type).
        type_names: names of request types.
        source: where the trace came from (a path or ``"<generated>"``).
    """

    ts_ns: np.ndarray
    instance: np.ndarray
    instances: tuple[str, ...]
    offsets: np.ndarray
    keys: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    block_size: int
    kind: np.ndarray
    query_type: np.ndarray
    sw_size: np.ndarray
    mask: np.ndarray | None = None
    session: np.ndarray | None = None
    turn: np.ndarray | None = None
    type_code: np.ndarray | None = None
    type_names: tuple[str, ...] = ()
    source: str = "<memory>"
    meta: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    @staticmethod
    def from_lists(
        *,
        ts_ns: Sequence[int],
        keys: Sequence[Sequence[int]],
        input_len: Sequence[int] | None = None,
        output_len: Sequence[int] | None = None,
        block_size: int = 512,
        instance: Sequence[str] | None = None,
        source: str = "<memory>",
    ) -> Trace:
        """Build a trace from Python lists (tests, notebooks, small tools).

        ``input_len`` defaults to ``len(keys[i]) * block_size``; ``instance`` to one
        instance named ``"default"``.
        """
        n = len(ts_ns)
        lens = np.fromiter((len(k) for k in keys), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = (
            np.concatenate([np.asarray(k, dtype=np.int64) for k in keys])
            if n and offsets[-1]
            else np.zeros(0, dtype=np.int64)
        )
        if instance is None:
            names: tuple[str, ...] = ("default",)
            inst = np.zeros(n, dtype=np.int32)
        else:
            uniq: dict[str, int] = {}
            inst = np.fromiter(
                (uniq.setdefault(s, len(uniq)) for s in instance), dtype=np.int32, count=n
            )
            names = tuple(uniq)
        il = (
            np.asarray(input_len, dtype=np.int64)
            if input_len is not None
            else lens * block_size
        )
        ol = (
            np.asarray(output_len, dtype=np.int64)
            if output_len is not None
            else np.zeros(n, dtype=np.int64)
        )
        return Trace(
            ts_ns=np.asarray(ts_ns, dtype=np.int64),
            instance=inst,
            instances=names,
            offsets=offsets,
            keys=flat,
            input_len=il,
            output_len=ol,
            block_size=block_size,
            kind=np.zeros(n, dtype=np.int8),
            query_type=np.zeros(n, dtype=np.int8),
            sw_size=np.zeros(n, dtype=np.int32),
            source=source,
        )

    # ------------------------------------------------------------------ views
    @property
    def n_requests(self) -> int:
        """Number of requests (rows)."""
        return int(self.ts_ns.shape[0])

    @property
    def n_keys(self) -> int:
        """Total number of block keys over all requests."""
        return int(self.keys.shape[0])

    def request_keys(self, i: int) -> np.ndarray:
        """The keys of request ``i`` (a view)."""
        return self.keys[self.offsets[i] : self.offsets[i + 1]]

    def key_counts(self) -> np.ndarray:
        """int64[n]: number of keys per request."""
        return np.diff(self.offsets)

    def with_block_size(self, block_size: int) -> Trace:
        """The same trace with a different nominal block size (no re-keying)."""
        return replace(self, block_size=block_size)

    def select(self, rows: np.ndarray) -> Trace:
        """A new trace holding ``rows`` (indices, in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.key_counts()[rows]
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        idx = _gather_index(self.offsets, rows, int(offsets[-1]))
        return replace(
            self,
            ts_ns=self.ts_ns[rows],
            instance=self.instance[rows],
            offsets=offsets,
            keys=self.keys[idx],
            input_len=self.input_len[rows],
            output_len=self.output_len[rows],
            kind=self.kind[rows],
            query_type=self.query_type[rows],
            sw_size=self.sw_size[rows],
            mask=None if self.mask is None else self.mask[idx],
            session=None if self.session is None else self.session[rows],
            turn=None if self.turn is None else self.turn[rows],
            type_code=None if self.type_code is None else self.type_code[rows],
        )

    def head(self, n: int) -> Trace:
        """The first ``n`` requests."""
        return self.select(np.arange(min(n, self.n_requests)))

    def validate(self) -> None:
        """Check internal consistency; raise :class:`TraceError` on the first problem."""
        n = self.n_requests
        for name in ("instance", "input_len", "output_len", "kind", "query_type", "sw_size"):
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise TraceError(f"{self.source}: column {name!r} has {arr.shape[0]} rows, not {n}")
        if self.offsets.shape[0] != n + 1 or self.offsets[-1] != self.n_keys:
            raise TraceError(f"{self.source}: offsets do not match keys")
        if n and np.any(np.diff(self.ts_ns) < 0):
            raise TraceError(f"{self.source}: timestamps are not sorted")
        if self.mask is not None and self.mask.shape[0] != self.n_keys:
            raise TraceError(
                f"{self.source}: mask has {self.mask.shape[0]} entries, not {self.n_keys}"
            )


def _gather_index(offsets: np.ndarray, rows: np.ndarray, total: int) -> np.ndarray:
    """Flat key indices of ``rows`` in order (vectorised CSR gather)."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    out_off = np.zeros(rows.shape[0], dtype=np.int64)
    np.cumsum(counts[:-1], out=out_off[1:])
    rep = np.repeat(starts - out_off, counts)
    return rep + np.arange(total, dtype=np.int64)

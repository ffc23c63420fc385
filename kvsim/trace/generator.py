"""Synthetic KV-cache traces: chat sessions, agent loops and long documents.

The workload is a stream of *sessions* arriving by a Poisson or bursty (two-state
Markov-modulated Poisson) process. Each session has a class:

* ``chat``: a system prompt (one of ``system_prompts``, Zipf(``zipf_a``) popular),
  then turns; each turn's prompt is the previous prompt + the previous output + new
  user text, so every turn re-reads the whole previous conversation.
* ``agent``: a long shared prefix (tool definitions; one of ``agent_prefixes``,
  Zipf popular) + a task, then many short steps that append the previous output and
  a tool result.
* ``doc``: a system prompt + one long unique document (+ rare follow-up questions):
  little reuse.

Keys are prefix-chained like real block hashes: the blocks of a shared prefix are
the chain (:func:`~kvsim.trace.hashing.chain_ids`) of per-prefix content ids; a
session continues the chain of its prefix's last full block with ids unique to the
session; a request's keys are the first ``input_len // block_size`` keys of its
session's chain. Only full blocks have keys.

Everything is vectorised with numpy (the only sequential step, the hash chain, runs
position by position over all sessions at once), deterministic for a given
:class:`GenSpec` (one ``numpy.random.Generator`` seeded by ``spec.seed``), and the
key gather runs in bounded chunks: 20M keys take a few seconds.

Example:
    >>> t = generate_trace(GenSpec(seed=1, requests=200, instances=2))
    >>> t.n_requests, t.instances, t.block_size
    (200, ('inst0', 'inst1'), 16)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import numpy as np
import orjson

from kvsim.trace.hashing import CHAIN_ROOT, as_int64, as_uint64, chain_ids, chain_step, mix64
from kvsim.trace.model import Trace

__all__ = ["SESSION_TYPES", "GenSpec", "generate_trace"]

SESSION_TYPES = ("chat", "agent", "doc")
_CHAT, _AGENT, _DOC = 0, 1, 2
_GATHER_CHUNK = 1 << 22  # keys gathered per step (bounds temporary memory)
_PREFIX_SALT = 0x5052454649580000  # "PREFIX"
_SESSION_SALT = 0x5345535349000000  # "SESSI"


@dataclass(frozen=True)
class GenSpec:
    """Parameters of :func:`generate_trace` (all have defaults).

    Size: by default requests arrive for ``duration_s`` seconds. ``requests`` asks for
    exactly that many requests instead, and ``target_keys`` for about that many block
    accesses (the first requests whose keys reach it); the time span then follows
    from ``request_rate``.

    Attributes:
        seed: random seed; the same spec always gives the same trace.
        duration_s: trace length in seconds (when neither size target is set).
        request_rate: mean requests per second.
        requests: exact number of requests, or None.
        target_keys: approximate number of block accesses, or None.
        arrival: ``"poisson"`` or ``"bursty"`` (two-state modulated Poisson).
        burst_factor: bursty: rate in a burst / rate outside bursts.
        burst_on_s: bursty: mean burst length (s).
        burst_off_s: bursty: mean time between bursts (s).
        instances: number of instances (sessions are spread uniformly).
        block_size: tokens per block.
        mix: fractions of chat, agent and doc sessions (normalised).
        zipf_a: Zipf exponent of shared-prefix popularity (rank r has weight r**-a).
        system_prompts: number of distinct system prompts (chat and doc).
        system_prompt_tokens: (min, max) system prompt length, log-uniform.
        agent_prefixes: number of distinct agent prefixes.
        agent_prefix_tokens: (min, max) agent prefix length, log-uniform.
        chat_turns: mean turns per chat session (geometric).
        chat_user_tokens: mean new user tokens per turn (log-normal).
        chat_output_tokens: mean output tokens per chat turn.
        chat_think_s: mean time between chat turns (exponential).
        agent_steps: mean steps per agent session (geometric).
        agent_task_tokens: mean task tokens of an agent's first step.
        agent_step_tokens: mean tool-result tokens appended per step.
        agent_output_tokens: mean output tokens per step.
        agent_step_s: mean time between agent steps.
        doc_turns: mean questions per document session (geometric).
        doc_tokens: (min, max) document length, log-uniform.
        doc_question_tokens: mean follow-up question tokens.
        doc_output_tokens: mean output tokens per document request.
        doc_think_s: mean time between document questions.
        token_scale: multiplies every token length (prompts and outputs).
        max_context_tokens: a session ends before its prompt would exceed this.
    """

    seed: int = 0
    duration_s: float = 600.0
    request_rate: float = 5.0
    requests: int | None = None
    target_keys: int | None = None
    arrival: Literal["poisson", "bursty"] = "poisson"
    burst_factor: float = 8.0
    burst_on_s: float = 20.0
    burst_off_s: float = 100.0
    instances: int = 1
    block_size: int = 16
    mix: tuple[float, float, float] = (0.6, 0.1, 0.3)
    zipf_a: float = 1.1
    system_prompts: int = 32
    system_prompt_tokens: tuple[int, int] = (200, 3000)
    agent_prefixes: int = 8
    agent_prefix_tokens: tuple[int, int] = (2000, 12000)
    chat_turns: float = 3.0
    chat_user_tokens: float = 300.0
    chat_output_tokens: float = 250.0
    chat_think_s: float = 40.0
    agent_steps: float = 8.0
    agent_task_tokens: float = 600.0
    agent_step_tokens: float = 400.0
    agent_output_tokens: float = 120.0
    agent_step_s: float = 4.0
    doc_turns: float = 1.3
    doc_tokens: tuple[int, int] = (2000, 24000)
    doc_question_tokens: float = 60.0
    doc_output_tokens: float = 300.0
    doc_think_s: float = 90.0
    token_scale: float = 1.0
    max_context_tokens: int = 65536

    def __post_init__(self) -> None:
        positive = (
            "duration_s", "request_rate", "burst_factor", "burst_on_s", "burst_off_s",
            "instances", "block_size", "system_prompts", "agent_prefixes", "token_scale",
            "max_context_tokens", "chat_user_tokens", "chat_output_tokens",
            "agent_task_tokens", "agent_step_tokens", "agent_output_tokens",
            "doc_question_tokens", "doc_output_tokens",
        )  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"GenSpec.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("chat_turns", "agent_steps", "doc_turns"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"GenSpec.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("chat_think_s", "agent_step_s", "doc_think_s", "zipf_a"):
            if getattr(self, name) < 0:
                raise ValueError(f"GenSpec.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("system_prompt_tokens", "agent_prefix_tokens", "doc_tokens"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"GenSpec.{name} must be (min, max) with 0 < min <= max")
        if self.arrival not in ("poisson", "bursty"):
            raise ValueError(f"GenSpec.arrival must be 'poisson' or 'bursty', got {self.arrival!r}")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError("GenSpec.mix must be three non-negative fractions (chat, agent, doc)")
        if self.requests is not None and self.target_keys is not None:
            raise ValueError("give GenSpec.requests or GenSpec.target_keys, not both")
        for name in ("requests", "target_keys"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"GenSpec.{name} must be positive, got {v!r}")

    def replace(self, **changes: object) -> GenSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def warmup_s(self) -> float:
        """How long before time 0 sessions start (three mean session lengths)."""
        span = max(
            (self.chat_turns - 1) * self.chat_think_s,
            (self.agent_steps - 1) * self.agent_step_s,
            (self.doc_turns - 1) * self.doc_think_s,
        )
        return 3.0 * span

    @property
    def mean_requests_per_session(self) -> float:
        """Expected requests per session (before the context cap)."""
        w = np.asarray(self.mix, dtype=float) / sum(self.mix)
        return float(w @ np.array([self.chat_turns, self.agent_steps, self.doc_turns]))


# ---------------------------------------------------------------------- randomness
def _lognormal(rng: np.random.Generator, mean: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Log-normal draws with the given means (element-wise)."""
    mean = np.asarray(mean, dtype=float)
    return rng.lognormal(np.log(mean) - sigma * sigma / 2, sigma)


def _loguniform(rng: np.random.Generator, lo: float, hi: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _zipf_choice(rng: np.random.Generator, n: int, a: float, size: int) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=float) ** -a
    return np.asarray(rng.choice(n, size=size, p=w / w.sum()))


def _arrivals(spec: GenSpec, rng: np.random.Generator, rate: float, horizon: float) -> np.ndarray:
    """Sorted arrival times in [0, horizon) of a Poisson or two-state MMPP process."""
    if spec.arrival == "poisson":
        return np.sort(rng.uniform(0.0, horizon, rng.poisson(rate * horizon)))
    on, off = spec.burst_on_s, spec.burst_off_s
    p_on = on / (on + off)
    low = rate / (1 - p_on + p_on * spec.burst_factor)
    n_int = 2 * int(horizon / (on + off)) + 8
    durs = np.zeros(0)
    while durs.sum() < horizon:  # alternate off, on, off, ... until the horizon
        means = np.where(np.arange(durs.size, durs.size + n_int) % 2 == 0, off, on)
        durs = np.concatenate([durs, rng.exponential(means)])
    starts = np.concatenate([[0.0], np.cumsum(durs)[:-1]])
    rates = np.where(np.arange(durs.size) % 2 == 0, low, low * spec.burst_factor)
    counts = rng.poisson(rates * durs)
    t = np.repeat(starts, counts) + rng.uniform(0.0, 1.0, counts.sum()) * np.repeat(durs, counts)
    return np.sort(t[t < horizon])


def _session_cumsum(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Cumulative sums that restart at every ``first`` row (rows grouped by session)."""
    cs = np.cumsum(x)
    base = np.maximum.accumulate(np.where(first, cs - x, 0))
    return cs - base


# ---------------------------------------------------------------------- plan
@dataclass
class _Plan:
    """The request table (no keys yet), sorted by time."""

    ts_ns: np.ndarray
    session: np.ndarray
    turn: np.ndarray
    cls: np.ndarray
    prefix: np.ndarray
    instance: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    prefix_len: np.ndarray  # tokens of each shared prefix
    horizon_ns: int
    n_sessions: int  # sessions started (before the context cap and the time cut)

    def take(self, n: int) -> _Plan:
        """The first ``n`` requests."""
        per_request = {
            f.name: getattr(self, f.name)[:n]
            for f in fields(self)
            if f.name not in ("prefix_len", "horizon_ns", "n_sessions")
        }
        return replace(self, **per_request)


def _plan(spec: GenSpec, horizon: float) -> _Plan:
    """The requests at times >= 0 of the sessions starting before ``horizon``, by time.

    Requests before ``horizon`` are complete (no later session can add any).
    """
    rng = np.random.default_rng(spec.seed)
    sc = spec.token_scale
    n_sys, n_agent = spec.system_prompts, spec.agent_prefixes
    prefix_len = np.concatenate(
        [
            _loguniform(rng, *spec.system_prompt_tokens, n_sys),
            _loguniform(rng, *spec.agent_prefix_tokens, n_agent),
        ]
    )
    prefix_len = np.maximum(1, np.rint(prefix_len * sc)).astype(np.int64)

    # Sessions start from -warmup so that the trace opens in steady state (sessions
    # already under way); requests before time 0 are dropped.
    warmup = spec.warmup_s
    rate = spec.request_rate / spec.mean_requests_per_session
    starts = _arrivals(spec, rng, rate, horizon + warmup) - warmup
    s = starts.shape[0]
    mix = np.asarray(spec.mix, dtype=float) / sum(spec.mix)
    cls = np.asarray(rng.choice(3, size=s, p=mix))
    mean_turns = np.array([spec.chat_turns, spec.agent_steps, spec.doc_turns])[cls]
    turns = rng.geometric(1.0 / mean_turns).astype(np.int64)
    prefix = np.where(
        cls == _AGENT,
        n_sys + _zipf_choice(rng, n_agent, spec.zipf_a, s),
        _zipf_choice(rng, n_sys, spec.zipf_a, s),
    )
    inst = np.asarray(rng.integers(0, spec.instances, size=s), dtype=np.int32)

    # One row per request, grouped by session.
    sess = np.repeat(np.arange(s, dtype=np.int64), turns)
    first_row = np.zeros(s + 1, dtype=np.int64)
    np.cumsum(turns, out=first_row[1:])
    j = np.arange(sess.shape[0], dtype=np.int64) - first_row[:-1][sess]
    first = j == 0
    c = cls[sess]
    out = _lognormal(
        rng,
        np.array([spec.chat_output_tokens, spec.agent_output_tokens, spec.doc_output_tokens])[c],
    )
    first_tok = np.where(
        c == _DOC,
        _loguniform(rng, *spec.doc_tokens, c.shape[0]),
        _lognormal(rng, np.array([spec.chat_user_tokens, spec.agent_task_tokens, 1.0])[c]),
    )
    step_tok = _lognormal(
        rng, np.array([spec.chat_user_tokens, spec.agent_step_tokens, spec.doc_question_tokens])[c]
    )
    gap = rng.exponential(np.array([spec.chat_think_s, spec.agent_step_s, spec.doc_think_s])[c])
    out = np.maximum(1, np.rint(out * sc)).astype(np.int64)
    first_tok = np.maximum(1, np.rint(first_tok * sc)).astype(np.int64)
    step_tok = np.maximum(1, np.rint(step_tok * sc)).astype(np.int64)
    prev_out = np.concatenate([[0], out[:-1]])
    append = np.where(first, first_tok, step_tok + prev_out)
    input_len = prefix_len[prefix[sess]] + _session_cumsum(append, first)
    ts = starts[sess] + _session_cumsum(np.where(first, 0.0, gap), first)
    # input_len grows within a session, so the context cap ends the session.
    keep = (input_len <= spec.max_context_tokens) & (ts >= 0)
    ts_ns = np.rint(ts[keep] * 1e9).astype(np.int64)
    order = np.argsort(ts_ns, kind="stable")
    rows = np.flatnonzero(keep)[order]
    return _Plan(
        ts_ns=ts_ns[order],
        session=sess[rows],
        turn=(j[rows] + 1).astype(np.int32),
        cls=cls[sess[rows]].astype(np.int16),
        prefix=prefix[sess[rows]],
        instance=inst[sess[rows]],
        input_len=input_len[rows],
        output_len=out[rows],
        prefix_len=prefix_len,
        horizon_ns=int(horizon * 1e9),
        n_sessions=s,
    )


def _sized_plan(spec: GenSpec) -> _Plan:
    """The plan cut to ``duration_s``, ``requests`` or ``target_keys``."""
    if spec.requests is None and spec.target_keys is None:
        plan = _plan(spec, spec.duration_s)
        return plan.take(int(np.searchsorted(plan.ts_ns, plan.horizon_ns)))
    bs = spec.block_size
    if spec.requests is not None:
        want, per_request = float(spec.requests), 1.0
    else:
        assert spec.target_keys is not None
        pilot = _plan(spec, 2000.0 / spec.request_rate)
        want = float(spec.target_keys)
        per_request = max(1.0, float((pilot.input_len // bs).mean()) if pilot.ts_ns.size else 1.0)
    horizon = 1.2 * want / (spec.request_rate * per_request) + 60.0
    while True:
        plan = _plan(spec, horizon)
        complete = int(np.searchsorted(plan.ts_ns, plan.horizon_ns))
        sizes = np.ones(complete) if spec.requests is not None else plan.input_len[:complete] // bs
        have = np.cumsum(sizes)
        if have.size and have[-1] >= want:
            return plan.take(int(np.searchsorted(have, want)) + 1)
        got = float(have[-1]) if have.size else 0.0
        if got == 0 and plan.n_sessions >= 1000:
            raise ValueError(
                f"{plan.n_sessions} sessions produced no {'requests' if spec.requests else 'keys'}"
                " (check max_context_tokens, block_size and the token lengths)"
            )
        horizon *= min(max(1.5, 1.2 * want / max(got, 1.0)), 10.0)


# ---------------------------------------------------------------------- keys
def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lens[i])`` (vectorised)."""
    total = int(lens.sum())
    out_off = np.zeros(lens.shape[0], dtype=np.int64)
    np.cumsum(lens[:-1], out=out_off[1:])
    return np.repeat(starts - out_off, lens) + np.arange(total, dtype=np.int64)


def _content_ids(salt: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row content ids ``chain_step(salt_row, j)``, j < lens[row]; and CSR offsets."""
    offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    j = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lens)
    ids = chain_step(np.repeat(salt, lens), as_uint64(j))
    return ids, offsets


def _keys(spec: GenSpec, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, keys) of the planned requests."""
    bs = spec.block_size
    seed_salt = mix64(np.array([spec.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    # Shared prefixes: chains of per-prefix content.
    pb = plan.prefix_len // bs
    n_prefix = pb.shape[0]
    p_salt = mix64(as_uint64(np.arange(n_prefix, dtype=np.int64)) ^ np.uint64(_PREFIX_SALT))
    ids, p_off = _content_ids(p_salt ^ seed_salt, pb)
    prefix_pool = as_uint64(chain_ids(ids, p_off))
    last = np.where(pb > 0, prefix_pool[np.maximum(p_off[1:] - 1, 0)], np.uint64(CHAIN_ROOT))

    # Sessions: continue the prefix chain with session-unique content.
    n_keys = plan.input_len // bs
    pb_r = pb[plan.prefix]
    sess_ids, sess_of = np.unique(plan.session, return_inverse=True)
    need = np.zeros(sess_ids.shape[0], dtype=np.int64)
    np.maximum.at(need, sess_of, n_keys - pb_r)
    s_prefix = np.zeros(sess_ids.shape[0], dtype=np.int64)
    s_prefix[sess_of] = plan.prefix
    s_salt = mix64(as_uint64(sess_ids) ^ np.uint64(_SESSION_SALT)) ^ seed_salt
    ids, s_off = _content_ids(s_salt, need)
    session_pool = as_uint64(chain_ids(ids, s_off, init=last[s_prefix]))
    del ids
    pool = as_int64(np.concatenate([prefix_pool, session_pool]))

    # Request keys: a prefix range then a session range of the pool, gathered in chunks.
    head = np.minimum(n_keys, pb_r)
    seg_starts = np.stack([p_off[plan.prefix], prefix_pool.shape[0] + s_off[sess_of]], axis=1)
    seg_lens = np.stack([head, n_keys - head], axis=1)
    offsets = np.zeros(n_keys.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_keys, out=offsets[1:])
    keys = np.empty(int(offsets[-1]), dtype=np.int64)
    r = 0
    while r < n_keys.shape[0]:
        e = int(np.searchsorted(offsets, offsets[r] + _GATHER_CHUNK, side="right")) - 1
        e = max(e, r + 1)
        keys[offsets[r] : offsets[e]] = pool[
            _ranges(seg_starts[r:e].ravel(), seg_lens[r:e].ravel())
        ]
        r = e
    return offsets, keys


def generate_trace(spec: GenSpec | None = None) -> Trace:
    """Generate a synthetic trace.

    Args:
        spec: the parameters (default ``GenSpec()``: 10 minutes at 5 requests/s).

    Returns:
        A time-sorted trace with ``session``, ``turn`` and ``type_code`` (names
        :data:`SESSION_TYPES`); ``meta["kvsim.gen.spec"]`` holds the spec as JSON.

    Example:
        >>> a = generate_trace(GenSpec(seed=3, target_keys=50_000))
        >>> b = generate_trace(GenSpec(seed=3, target_keys=50_000))
        >>> bool((a.keys == b.keys).all()), abs(a.n_keys - 50_000) < 5_000
        (True, True)
    """
    spec = spec or GenSpec()
    plan = _sized_plan(spec)
    offsets, keys = _keys(spec, plan)
    n = plan.ts_ns.shape[0]
    names = (
        ("default",) if spec.instances == 1 else tuple(f"inst{i}" for i in range(spec.instances))
    )
    return Trace(
        ts_ns=plan.ts_ns,
        instance=plan.instance.astype(np.int32),
        instances=names,
        offsets=offsets,
        keys=keys,
        input_len=plan.input_len,
        output_len=plan.output_len,
        block_size=spec.block_size,
        kind=np.zeros(n, dtype=np.int8),
        query_type=np.zeros(n, dtype=np.int8),
        sw_size=np.zeros(n, dtype=np.int32),
        session=plan.session,
        turn=plan.turn,
        type_code=plan.cls,
        type_names=SESSION_TYPES,
        source="<generated>",
        meta={"kvsim.gen.spec": orjson.dumps(asdict(spec)).decode()},
    )

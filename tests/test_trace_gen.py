"""The synthetic trace generator."""

from __future__ import annotations

import itertools
import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.trace import SESSION_TYPES, GenSpec, Trace, generate_trace, trace_diff, trace_stats
from kvsim.trace.hashing import is_prefix_chained

ALL_COLUMNS = (
    "ts_ns",
    "instance",
    "instances",
    "offsets",
    "keys",
    "input_len",
    "output_len",
    "block_size",
    "kind",
    "query_type",
    "sw_size",
    "mask",
    "session",
    "turn",
    "type_code",
    "type_names",
)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return generate_trace(GenSpec(seed=11, requests=2500, instances=3))


def test_shape_and_columns(trace: Trace) -> None:
    trace.validate()
    assert trace.n_requests == 2500
    assert trace.instances == ("inst0", "inst1", "inst2")
    assert set(np.unique(trace.instance)) == {0, 1, 2}
    assert trace.block_size == 16
    assert trace.type_names == SESSION_TYPES
    assert trace.session is not None and trace.turn is not None and trace.type_code is not None
    assert set(np.unique(trace.type_code)) == {0, 1, 2}
    assert (trace.key_counts() == trace.input_len // 16).all()  # full blocks only
    assert trace.ts_ns[0] >= 0
    assert (trace.output_len > 0).all() and trace.mask is None
    spec = orjson.loads(trace.meta["kvsim.gen.spec"])
    assert spec["seed"] == 11 and spec["requests"] == 2500


def test_same_seed_identical_different_seed_differs(trace: Trace) -> None:
    again = generate_trace(GenSpec(seed=11, requests=2500, instances=3))
    assert trace_diff(trace, again, columns=ALL_COLUMNS) == []
    other = generate_trace(GenSpec(seed=12, requests=2500, instances=3))
    assert set(trace_diff(trace, other, columns=ALL_COLUMNS)) >= {"ts_ns", "keys", "input_len"}
    # Keys of different seeds do not collide (the seed salts every content id).
    assert np.intersect1d(trace.keys, other.keys).size == 0


def test_keys_are_prefix_chained(trace: Trace) -> None:
    assert is_prefix_chained(trace.keys, trace.offsets)
    # Within a session, each request's keys extend the previous request's keys.
    assert trace.session is not None
    order = np.lexsort((trace.ts_ns, trace.session))
    for a, b in itertools.pairwise(order):
        if trace.session[a] == trace.session[b]:
            ka, kb = trace.request_keys(a), trace.request_keys(b)
            assert trace.turn[b] == trace.turn[a] + 1
            assert len(kb) >= len(ka) and (kb[: len(ka)] == ka).all()


def test_shared_prefixes_are_reused(trace: Trace) -> None:
    s = trace_stats(trace)
    assert 0.5 < s.ideal_block_hit_rate < 0.95
    first = trace.keys[trace.offsets[:-1][trace.key_counts() > 0]]
    # A few popular system prompts / agent prefixes: few distinct first blocks.
    assert np.unique(first).size <= 32 + 8


def test_workload_classes_behave(trace: Trace) -> None:
    assert trace.type_code is not None and trace.turn is not None
    chat, agent, doc = (trace.type_code == i for i in range(3))
    assert trace.turn[agent].max() > trace.turn[doc].max()
    assert np.median(trace.input_len[doc & (trace.turn == 1)]) > np.median(
        trace.input_len[chat & (trace.turn == 1)]
    )


def test_size_targets() -> None:
    t = generate_trace(GenSpec(seed=2, target_keys=300_000))
    assert 300_000 <= t.n_keys < 300_000 + t.key_counts().max() + 1
    t = generate_trace(GenSpec(seed=2, duration_s=120, request_rate=10))
    assert t.ts_ns.max() < 120e9
    assert 900 < t.n_requests < 1500
    t = generate_trace(GenSpec(seed=2, requests=1, block_size=64))
    assert t.n_requests == 1 and t.block_size == 64


def test_bursty_arrivals_are_burstier() -> None:
    def dispersion(arrival: str) -> float:
        t = generate_trace(GenSpec(seed=5, requests=4000, arrival=arrival, request_rate=20))  # type: ignore[arg-type]
        counts = np.bincount((t.ts_ns // 10**9).astype(np.int64))
        return float(counts.var() / counts.mean())

    assert dispersion("bursty") > 2 * dispersion("poisson")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"requests or GenSpec\.target_keys"):
        GenSpec(requests=5, target_keys=5)
    with pytest.raises(ValueError, match="arrival"):
        GenSpec(arrival="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mix"):
        GenSpec(mix=(0, 0, 0))
    with pytest.raises(ValueError, match="block_size"):
        GenSpec(block_size=0)
    with pytest.raises(ValueError, match="chat_turns"):
        GenSpec(chat_turns=0.5)
    with pytest.raises(ValueError, match="sessions produced no requests"):
        generate_trace(GenSpec(requests=10, max_context_tokens=10))
    with pytest.raises(ValueError, match="sessions produced no keys"):
        generate_trace(GenSpec(target_keys=10, block_size=100_000))
    assert GenSpec().replace(seed=3).seed == 3
    assert GenSpec().mean_requests_per_session == pytest.approx(0.6 * 3 + 0.1 * 8 + 0.3 * 1.3)


def test_large_trace_is_fast() -> None:
    t0 = time.perf_counter()
    t = generate_trace(GenSpec(seed=1, target_keys=3_000_000))
    elapsed = time.perf_counter() - t0
    assert t.n_keys >= 3_000_000
    assert elapsed < 10.0  # ~0.3 s on one core; 20M keys take ~2 s


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    instances=st.integers(1, 4),
    block_size=st.sampled_from([1, 8, 16, 64, 512]),
    mix=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1)),
    zipf_a=st.floats(0, 3),
)
def test_generated_traces_are_valid(
    seed: int, instances: int, block_size: int, mix: tuple[float, float, float], zipf_a: float
) -> None:
    spec = GenSpec(
        seed=seed,
        requests=150,
        instances=instances,
        block_size=block_size,
        mix=mix,
        zipf_a=zipf_a,
        token_scale=0.2,
    )
    t = generate_trace(spec)
    t.validate()
    assert t.n_requests == 150
    assert (t.key_counts() == t.input_len // block_size).all()
    assert is_prefix_chained(t.keys, t.offsets)
    assert (t.input_len <= spec.max_context_tokens).all()

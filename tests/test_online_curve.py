"""The online curve (kvsim/optimizer/online_curve.py) equals the one-pass facts of the
whole trace, whatever the batching; peeked reads equal ``curve_facts(read_rows="peek")``."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from kvsim.optimizer.curve import CurveError, curve_facts
from kvsim.optimizer.online_curve import OnlineCurve
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

CAPS = [1, 7, 50, 200, 1000, 4000, 0]


def _feed(trace: Trace, curve: OnlineCurve, cuts: list[int], read: np.ndarray,
          commit: np.ndarray) -> np.ndarray:
    """Feed the trace in batches split at ``cuts``; returns the summed hit blocks."""
    total = np.zeros(len(CAPS))
    bounds = [0, *cuts, trace.n_requests]
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        off = trace.offsets[a:b + 1] - trace.offsets[a]
        keys = trace.keys[trace.offsets[a]:trace.offsets[b]]
        mask = None if trace.mask is None else trace.mask[trace.offsets[a]:trace.offsets[b]]
        fig = curve.feed_csr(np.zeros(b - a, np.int64), trace.instance[a:b].astype(np.int64),
                             off, keys, mask, read[a:b], commit[a:b])
        total += fig.s_hits.sum(axis=0)
    return total


@pytest.mark.parametrize("batches", [1, 7, 60])
def test_batches_equal_one_pass(batches: int) -> None:
    t = generate_trace(GenSpec(seed=3, requests=1200, instances=3, block_size=64))
    rng = np.random.default_rng(batches)
    cuts = sorted(rng.choice(np.arange(1, t.n_requests), size=batches - 1, replace=False)
                  .tolist()) if batches > 1 else []
    n = t.n_requests
    got = _feed(t, OnlineCurve(CAPS), cuts, np.ones(n, bool), np.ones(n, bool))
    want = curve_facts(t).curve(CAPS)["hit_blocks"].to_numpy()
    np.testing.assert_array_equal(got, want)


def test_peeked_reads_equal_curve_facts_peek() -> None:
    """A read/write-separated trace: reads peek, writes commit, in the online curve and in
    ``curve_facts(read_rows="peek")`` alike; ``refuse`` still refuses."""
    base = generate_trace(GenSpec(seed=5, requests=600, instances=2, block_size=64))
    rows = [base.request_keys(q).tolist() for q in range(base.n_requests)]
    keys = [r for r in rows for _ in (0, 1)]
    kind = [k for _ in rows for k in (KIND_READ, KIND_WRITE)]
    inst = [f"i{int(base.instance[q])}" for q in range(base.n_requests) for _ in (0, 1)]
    t = replace(Trace.from_lists(ts_ns=list(range(len(keys))), keys=keys, instance=inst,
                                 block_size=64), kind=np.asarray(kind, dtype=np.int8))
    with pytest.raises(CurveError, match="peek"):
        curve_facts(t)
    is_read = t.kind == KIND_READ
    got = _feed(t, OnlineCurve(CAPS), [101, 400, 401], is_read, ~is_read)
    want = curve_facts(t, read_rows="peek").curve(CAPS)["hit_blocks"].to_numpy()
    np.testing.assert_array_equal(got, want)
    # read-then-write per request: peeking equals the combined request's curve
    combined = curve_facts(base).curve(CAPS)["hit_blocks"].to_numpy()
    np.testing.assert_array_equal(want, combined)


def test_sampled_online_close_to_exact() -> None:
    t = generate_trace(GenSpec(seed=9, requests=3000, instances=2, block_size=32))
    n = t.n_requests
    caps = [100, 400, 1600, 6400]
    exact = curve_facts(t).curve(caps)["block_hit_rate"].to_numpy()
    c = OnlineCurve(caps, sample_rate=0.1)
    c_all = np.ones(n, bool)
    bounds = [*list(range(0, n, 250)), n]
    s_hits = np.zeros(len(caps))
    s_reads = 0.0
    for a, b in itertools.pairwise(bounds):
        off = t.offsets[a:b + 1] - t.offsets[a]
        fig = c.feed_csr(np.zeros(b - a, np.int64), t.instance[a:b].astype(np.int64), off,
                         t.keys[t.offsets[a]:t.offsets[b]], None, c_all[a:b], c_all[a:b])
        s_hits += fig.s_hits.sum(axis=0)
        s_reads += float(fig.s_reads.sum())
    est = s_hits / s_reads
    assert np.abs(est - exact).mean() < 0.03, (est, exact)
    assert c.tracked_keys < 0.5 * curve_facts(t).unique_blocks  # the sample is smaller

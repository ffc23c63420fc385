"""Cost model figures by hand, and the exact split against exhaustive search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.optimizer.cost import CostModel, GpuPrice, ModelShape, StoragePrice
from kvsim.optimizer.split import brute_force_split, dp_split, greedy_split


def test_bytes_per_token_by_hand() -> None:
    # Llama-3-8B: 32 layers x 2 (K, V) x 8 KV heads x 128 dims x 2 bytes (bf16)
    assert ModelShape(layers=32, kv_heads=8, head_dim=128, dtype_bytes=2).bytes_per_token \
        == 32 * 2 * 8 * 128 * 2 == 131072
    # fp8 halves it
    assert ModelShape(layers=32, kv_heads=8, head_dim=128, dtype_bytes=1).bytes_per_token \
        == 65536
    # MLA (DeepSeek-V3): one latent of 512 + 64 per token and layer, no K/V pair
    assert ModelShape.preset("deepseek-v3").bytes_per_token == 61 * 576 * 2 == 70272
    with pytest.raises(ValueError):
        ModelShape(layers=32)
    with pytest.raises(KeyError, match="llama3-8b"):
        ModelShape.preset("nope")


def test_costs_by_hand() -> None:
    m = CostModel(ModelShape(layers=32, kv_heads=8, head_dim=128),
                  StoragePrice({"memory": 0.01, "file": 0.0002}),
                  GpuPrice(prefill_tokens_per_s=5000.0, gpu_price_per_hour=2.5))
    # 10,000 blocks x 16 tokens x 131072 B = 20.97152 GB; 2 hours
    assert m.storage_cost(10_000, 16, 7200.0) == pytest.approx(20.97152 * 0.01 * 2)
    assert m.storage_cost(10_000, 16, 7200.0, "file") == pytest.approx(20.97152 * 0.0002 * 2)
    # a hit token saves 1/5000 GPU-s at 2.5/3600 $/GPU-s
    assert m.gpu.gpu_seconds_per_token == pytest.approx(2e-4)
    assert m.savings(3_600_000) == pytest.approx(3_600_000 * 2e-4 * 2.5 / 3600) == \
        pytest.approx(0.5)
    assert m.net_cost(10_000, 16, 7200.0, 3_600_000) == pytest.approx(0.4194304 - 0.5)
    assert CostModel.from_dict(m.to_dict()) == m
    with pytest.raises(KeyError, match="hf3fs"):
        m.storage.price("hf3fs")


curves = st.lists(st.integers(0, 50), min_size=6, max_size=6).map(
    lambda d: np.concatenate(([0], np.cumsum(d[:5]))))  # monotone, any shape


@settings(max_examples=150, deadline=None)
@given(st.lists(curves, min_size=1, max_size=3), st.integers(3, 5))
def test_dp_equals_brute_force(values: list[np.ndarray], steps: int) -> None:
    ks, v = dp_split(values, steps)
    _bks, bv = brute_force_split(values, steps)
    assert v == bv
    assert sum(ks) <= steps and min(ks) >= 1
    assert sum(int(values[j][k]) for j, k in enumerate(ks)) == v


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=5, max_size=5), min_size=1, max_size=3),
       st.integers(3, 5))
def test_greedy_exact_on_concave(gains: list[list[int]], steps: int) -> None:
    values = [np.concatenate(([0], np.cumsum(sorted(g, reverse=True)))) for g in gains]
    assert greedy_split(values, steps)[1] == brute_force_split(values, steps)[1]


def test_greedy_fails_on_a_jump() -> None:
    a = np.array([0, 5, 6, 6, 6])
    b = np.array([0, 0, 0, 9, 9])
    assert dp_split([a, b], 4) == ((1, 3), 14) == brute_force_split([a, b], 4)
    assert greedy_split([a, b], 4)[1] == 6

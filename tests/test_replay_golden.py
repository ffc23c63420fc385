"""The replay contract's golden figures on the Mooncake conversation trace."""

from __future__ import annotations

import pytest

from kvsim.config import KVSimConfig
from kvsim.sim.replay import replay
from kvsim.trace.readers import read_trace

# capacity (blocks, 0 = unbounded) -> hit_blocks, block_hit_rate, token_hit_rate
GOLDEN = {
    1000: (12990, 0.046982, 0.045933),
    5859: (40644, 0.146999, 0.143720),
    20000: (84692, 0.306310, 0.299476),
    97656: (104926, 0.379492, 0.371025),
    0: (105592, 0.381900, 0.373380),
}


@pytest.fixture(scope="module")
def mooncake(mooncake_path):
    return read_trace(mooncake_path, "mooncake")


def test_trace_shape(mooncake) -> None:
    assert mooncake.n_requests == 12_031
    assert mooncake.n_keys == 276_491
    assert int(mooncake.input_len.sum()) == 144_793_823
    assert mooncake.block_size == 512


@pytest.mark.parametrize("capacity", list(GOLDEN))
def test_golden_lru(mooncake, capacity: int) -> None:
    r = replay(mooncake, KVSimConfig.single_cache(capacity_blocks=capacity))
    s = r.summary()
    hit_blocks, block_rate, token_rate = GOLDEN[capacity]
    assert s["hit_blocks"] == hit_blocks
    assert round(s["block_hit_rate"], 6) == block_rate
    assert round(s["token_hit_rate"], 6) == token_rate
    assert s["read_blocks"] == 276_491
    if capacity:
        assert int(r.cached_blocks.max()) <= capacity


def test_head_first_strands_tails(mooncake) -> None:
    """Head-first commit evicts prefix heads and strands their tails: fewer hits."""
    lru = replay(mooncake, KVSimConfig.single_cache(capacity_blocks=5859)).summary()
    head = replay(mooncake, KVSimConfig.single_cache(capacity_blocks=5859,
                                                     policy="lru_head_first")).summary()
    assert head["hit_blocks"] < lru["hit_blocks"] == 40644

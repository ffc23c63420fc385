"""`kvsim trace stats` on a KV-event recording: golden figures on a hand-made fixture.

Every expected number below is worked out by hand from the seven batches of
``fixture()`` (comments give the arithmetic).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from kvsim.trace.cli import trace_group
from kvsim.trace.event_stats import event_stats
from kvsim.trace.kv_events import (
    EventBatch,
    KVEvent,
    RecordedBatch,
    read_recording,
    write_recording_part,
)
from kvsim.trace.model import TraceError


def st(*h: int, medium: str = "GPU") -> KVEvent:
    return KVEvent("BlockStored", block_hashes=h, block_size=16, medium=medium,
                   token_ids=tuple(range(16 * len(h))))


def rm(*h: int, medium: str = "GPU") -> KVEvent:
    return KVEvent("BlockRemoved", block_hashes=h, medium=medium)


def fixture() -> list[RecordedBatch]:
    plan = [
        (10.0, [st(1, 2)]),  # GPU: 1, 2 stored
        (12.0, [rm(1)]),  # 1 removed after 2 s
        (13.0, [st(1)]),  # 1 stored again: a re-store after removal, 1 s later
        (14.0, [st(2)]),  # duplicate store
        (15.0, [st(3, medium="CPU"), rm(9)]),  # CPU: 3; GPU: 9 was never seen
        (20.0, [KVEvent("AllBlocksCleared")]),  # clears GPU 1, 2 and CPU 3
        (22.0, [st(3, medium="CPU")]),  # a re-store after a clear
    ]
    return [RecordedBatch("tcp://e:1", i, EventBatch(ts, tuple(evs), dp_rank=0))
            for i, (ts, evs) in enumerate(plan)]


def test_golden_event_stats() -> None:
    s = event_stats(fixture())
    assert (s.batches, s.events, s.sources, s.caches, s.duration_s) == (7, 8, 1, 2, 12.0)
    assert (s.stores, s.duplicate_stores, s.removals, s.unknown_removals) == (5, 1, 1, 1)
    assert (s.clears, s.cleared_blocks, s.distinct_blocks) == (1, 3, 3)
    assert (s.restores_after_removal, s.restored_tokens_after_removal,
            s.restores_after_clear) == (1, 16, 1)
    assert (s.restore_gap_p50_s, s.completed_lifetimes, s.lifetime_max_s) == (1.0, 1, 2.0)
    # residency per block: GPU 1 = (12-10) + (20-13) = 9, GPU 2 = 20-10 = 10,
    # CPU 3 = (20-15) + (22-22) = 5
    assert (s.residency_p50_s, s.residency_p90_s, s.residency_max_s) == (9.0, 10.0, 10.0)
    gpu, cpu = s.media["GPU"], s.media["CPU"]
    assert (gpu.stores, gpu.removals, gpu.distinct_blocks, gpu.peak_resident,
            gpu.resident_at_end, gpu.restores_after_removal) == (3, 1, 2, 2, 0, 1)
    # GPU resident blocks: 2 on [10,12), 1 on [12,13), 2 on [13,20), 0 after: 19 / 12 s
    assert gpu.mean_resident == pytest.approx(19 / 12)
    assert (cpu.stores, cpu.distinct_blocks, cpu.peak_resident, cpu.resident_at_end) == \
        (2, 1, 1, 1)
    assert cpu.mean_resident == pytest.approx(5 / 12)  # 1 block on [15,20)
    assert "not a hit-rate trace" in s.note


def test_cli_stats_on_a_recording(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    b = fixture()
    write_recording_part(rec / "part-00000.parquet", b[:3], {"gaps": []})
    write_recording_part(rec / "part-00001.parquet", b[3:],
                         {"gaps": [{"source": "tcp://e:1", "first": 50, "end": 53}]})
    back, meta = read_recording(rec)
    assert back == b and meta["parts"] == 2
    r = CliRunner().invoke(trace_group, ["stats", str(rec), "--json"])
    assert r.exit_code == 0, r.output
    d = orjson.loads(r.stdout)
    assert d["format"] == "kv-events" and d["restores_after_removal"] == 1
    assert (d["gaps"], d["gap_batches"]) == (1, 3)
    assert d["media"]["GPU"]["peak_resident"] == 2
    r = CliRunner().invoke(trace_group, ["stats", str(rec / "part-00001.parquet")])
    assert r.exit_code == 0, r.output
    assert "not a hit-rate trace" in r.output and "lower bound" in r.output


def test_bad_recordings_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no part-"):
        read_recording(tmp_path)
    bad = tmp_path / "part-00000.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(TraceError, match=r"part-00000\.parquet: cannot read"):
        read_recording(tmp_path)

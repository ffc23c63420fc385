"""Sim/prod parity: a trace driven through the server gives the hits `kvsim replay` gives.

A client does, per request: getCacheLocation (prefix), startWriteCache with every key,
finishWriteCache with every new key successful. That is the replay contract's combined
request (read on the cache as it was, then write every key tail first), so the server's
per-request hits equal ``replay`` of the trace in the default combined mode; the
server's event log, read back with the ``kvcm-events`` reader (read rows then write
rows, the read/write-separated mode), replays to the same hits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from transports import TRANSPORTS, Client, caller

from kvsim.cli import main
from kvsim.config import KVSimConfig
from kvsim.sim.drive import drive
from kvsim.sim.replay import replay
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace
from kvsim.trace.readers import read_kvcm_events, read_trace
from kvsim.trace.writers import write_parquet


def _config(tmp: Path, quota_blocks: int, policy: str = "lru") -> KVSimConfig:
    return KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp / "nfs")}],
        "instance_groups": [{"name": "default", "quota": {"blocks": quota_blocks},
                             "storage_candidates": ["nfs_01"],
                             "eviction": {"policy": policy}}],
    })


def _drive(client: Client, trace: Trace) -> np.ndarray:
    """Per request: getCacheLocation (prefix), startWriteCache with every key,
    finishWriteCache with every new key (:func:`kvsim.sim.drive.drive`); the hits."""
    d = drive(trace, caller(client), clock="wall")
    assert d.refused_writes == 0
    return d.result.hit_blocks


@pytest.mark.parametrize(("transport", "requests", "quota"),
                         [("inproc", 1500, 1000), ("inproc", 1500, 6000), ("http", 300, 800),
                          ("grpc", 300, 800)])
def test_server_equals_replay(transport: str, requests: int, quota: int,
                              tmp_path: Path) -> None:
    trace = generate_trace(GenSpec(seed=7, requests=requests, instances=2, block_size=128))
    assert int(trace.key_counts().max()) < quota  # every request fits the quota
    cfg = _config(tmp_path, quota)
    client = TRANSPORTS[transport](tmp_path, config=cfg)
    try:
        served = _drive(client, trace)
        usage = client.service.mgr.usage()[0]  # type: ignore[attr-defined]
    finally:
        client.close()
    sim = replay(trace, cfg)
    assert usage.evicted_blocks > 0  # the quota was reached: eviction order matters
    np.testing.assert_array_equal(served, sim.hit_blocks)

    events = read_kvcm_events(tmp_path / "events.jsonl", block_size=trace.block_size)
    assert int(np.count_nonzero(events.kind == KIND_READ)) == trace.n_requests
    assert int(np.count_nonzero(events.kind == KIND_WRITE)) == trace.n_requests
    ev = replay(events, cfg)
    reads = events.kind == KIND_READ
    np.testing.assert_array_equal(ev.hit_blocks[reads], sim.hit_blocks)
    assert ev.summary()["hit_blocks"] == sim.summary()["hit_blocks"]


def test_cli_replays_event_log(tmp_path: Path) -> None:
    trace = generate_trace(GenSpec(seed=3, requests=200, instances=1, block_size=128))
    cfg = _config(tmp_path, 500)
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    client = TRANSPORTS["inproc"](tmp_path, config=cfg)
    try:
        served = _drive(client, trace)
    finally:
        client.close()
    tpath = tmp_path / "trace.parquet"
    write_parquet(trace, tpath)
    out = {}
    for name, args in {"trace": [str(tpath)],
                       "events": [str(tmp_path / "events.jsonl"), "--format", "kvcm-events",
                                  "--block-size", str(trace.block_size)]}.items():
        r = CliRunner().invoke(main, ["replay", *args, "--config", str(cfg_path), "--json",
                                      "--no-out"])
        assert r.exit_code == 0, r.output
        import json

        out[name] = json.loads(r.stdout)
    hit = [out[k]["results"][0]["hit_blocks"] for k in ("trace", "events")]
    assert hit[0] == hit[1] == int(served.sum())
    assert read_trace(tmp_path / "events.jsonl").n_requests == 2 * trace.n_requests  # auto

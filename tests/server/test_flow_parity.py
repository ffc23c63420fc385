"""Parity: ``replay --flow client`` equals the live server, request by request.

The server side is a :class:`Service` on a manual clock (``kvsim serve --clock manual``)
driven by :func:`kvsim.sim.drive.drive` with ``setClock`` before each request (in
process through ``Service.call``; one test over real HTTP processes with the CLI, one
over a real server's gRPC listeners). Both
sides run the same core rules, so hit blocks per request and evictions per trigger must
be equal for every policy, eviction mode, watermark, reclaim cadence and storage limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsim.config import KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.core.policies import POLICIES
from kvsim.core.spec import EVICTION_MODES
from kvsim.server.service import Service
from kvsim.sim.drive import drive
from kvsim.sim.replay import replay
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.model import Trace
from kvsim.trace.writers import write_trace

BLOCK_BYTES = 1000
LIMITS = ("none", "type_quota", "storage_capacity", "max_key_count", "delete_delay")
TRACE = generate_trace(GenSpec(seed=11, requests=240, instances=4, block_size=16))


def _config(tmp: Path, *, policy: str = "lru", mode: str = "group_precise",
            used: float = 1.0, limit: str = "none", interval_ms: int = 0,
            quota: int = 120, health: bool = False) -> KVSimConfig:
    """Two groups over two storages (``fast`` memory, then ``slow`` file), four instances
    with sized blocks; ``limit`` adds one storage rule."""
    groups = []
    for g in ("a", "b"):
        grp: dict[str, Any] = {
            "name": g, "quota": {"blocks": quota}, "used_percentage": used,
            # a byte limit on the only candidate: it evicts (with two it would spill)
            "storage_candidates": (["fast"] if limit in ("type_quota", "storage_capacity")
                                   else ["fast", "slow"]),
            "eviction": {"policy": policy, "mode": mode, "batch_size": 7}}
        if limit == "type_quota":
            grp["quota"]["storage_types"] = {"memory": 40 * BLOCK_BYTES}
        if limit == "max_key_count":
            grp["max_key_count"] = 90
        if limit == "delete_delay":
            grp["delay_before_delete_ms"] = 50
        groups.append(grp)
    storages = [{"name": "fast", "type": "memory", "uri": "mem://fast",
                 "capacity_bytes": 60 * BLOCK_BYTES if limit == "storage_capacity" else 0},
                {"name": "slow", "type": "file", "uri": str(tmp / "slow")}]
    data: dict[str, Any] = {
        "storages": storages, "instance_groups": groups,
        "instances": [{"instance_id": name, "group": "ab"[i % 2], "block_size": 16,
                       "location_spec_infos": [{"name": "tp0", "size": BLOCK_BYTES}]}
                      for i, name in enumerate(TRACE.instances)],
        "reclaim": {"interval_ms": interval_ms},
    }
    if health:
        data["reclaim"]["storage_health"] = [{"storage": "fast", "at_ms": 0, "healthy": False}]
    return KVSimConfig.from_dict(data)


def _live(tmp: Path, cfg: KVSimConfig, trace: Trace) -> tuple[np.ndarray, dict[str, int]]:
    svc = Service(cfg, data_dir=tmp / "srv", clock=ManualClock(0), manual_clock=True,
                  admin_auth="none", event_log=False, storage_probe_seconds=0)
    try:
        d = drive(trace, lambda api, m, b: svc.call(api, m, b), config=cfg, clock="trace")
        assert d.result.evicted_by_trigger == svc.evicted_by_trigger  # read via getMetrics
        return d.result.hit_blocks, svc.evicted_by_trigger
    finally:
        svc.close()


def _check(tmp: Path, cfg: KVSimConfig, trace: Trace = TRACE) -> None:
    r = replay(trace, cfg, flow="client")
    hits, evicted = _live(tmp, cfg, trace)
    diff = np.flatnonzero(hits != r.hit_blocks)
    assert diff.shape[0] == 0, (f"{diff.shape[0]} requests differ, first {diff[:5].tolist()}: "
                                f"live {hits[diff[:5]].tolist()} replay "
                                f"{r.hit_blocks[diff[:5]].tolist()}")
    assert evicted == r.evicted_by_trigger
    assert int(r.hit_blocks.sum()) > 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy(tmp_path: Path, policy: str) -> None:
    i = sorted(POLICIES).index(policy)
    modes = sorted(EVICTION_MODES)
    _check(tmp_path, _config(tmp_path, policy=policy, mode=modes[i % len(modes)],
                             used=(1.0, 0.8)[i % 2], interval_ms=(0, 200)[(i // 2) % 2]))


@pytest.mark.parametrize("used", [1.0, 0.8])
@pytest.mark.parametrize("limit", LIMITS)
def test_every_limit(tmp_path: Path, limit: str, used: float) -> None:
    cfg = _config(tmp_path, policy="sieve", mode="group_rough", used=used, limit=limit,
                  interval_ms=100)
    _check(tmp_path, cfg)
    if limit != "none" and limit != "delete_delay":  # the rule did something
        r = replay(TRACE, cfg, flow="client")
        plain = replay(TRACE, _config(tmp_path, policy="sieve", mode="group_rough", used=used,
                                      interval_ms=100), flow="client")
        # it evicted, or (max_key_count at used_percentage 1: the reclaimer's target is
        # the limit itself) it refused writes
        assert r.evicted_by_trigger or r.hit_blocks.sum() != plain.hit_blocks.sum()


@pytest.mark.parametrize("mode", sorted(EVICTION_MODES))
def test_every_mode_with_evict_at_each_write(tmp_path: Path, mode: str) -> None:
    _check(tmp_path, _config(tmp_path, policy="lfu", mode=mode, used=0.8, interval_ms=0,
                             limit="max_key_count"))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.sampled_from(sorted(POLICIES)), mode=st.sampled_from(sorted(EVICTION_MODES)),
       used=st.sampled_from([1.0, 0.8]), limit=st.sampled_from(LIMITS),
       interval=st.sampled_from([0, 1, 250]), quota=st.integers(60, 200))
def test_any_combination(tmp_path_factory: pytest.TempPathFactory, policy: str, mode: str,
                         used: float, limit: str, interval: int, quota: int) -> None:
    tmp = tmp_path_factory.mktemp("combo")
    _check(tmp, _config(tmp, policy=policy, mode=mode, used=used, limit=limit,
                        interval_ms=interval, quota=quota))


def test_watermark_reclaims_on_the_interval_not_at_the_write(tmp_path: Path) -> None:
    """At ``interval_ms`` N the writes keep only the hard quota; the reclaimer brings the
    usage down to the watermark at its due times (in trace time)."""
    each = replay(TRACE, _config(tmp_path, used=0.5, interval_ms=0), flow="client")
    timed = replay(TRACE, _config(tmp_path, used=0.5, interval_ms=10_000), flow="client")
    assert int(each.group_used.max()) <= 60  # the watermark, at every write
    assert int(timed.group_used.max()) > 60  # above it between reclaimer runs
    assert int(timed.group_used.max()) <= 120  # never above the quota


def test_combined_flow_interval_keeps_golden_path(tmp_path: Path) -> None:
    """``interval_ms`` 0 in the combined flow is the contract's kernel, unchanged; N > 0
    evicts to the quota at writes and to the watermark on the reclaimer's times."""
    base = _config(tmp_path, used=0.5)
    r0 = replay(TRACE, base)
    assert int(r0.group_used.max()) <= 60
    r1 = replay(TRACE, _config(tmp_path, used=0.5, interval_ms=10_000))
    assert 60 < int(r1.group_used.max()) <= 120
    assert r1.evicted_by_trigger.get("quota", 0) > 0


def test_scheduled_outage_is_simulated(tmp_path: Path) -> None:
    """A storage taken down from the config at trace time 0: nothing is placed on it, so
    the client flow equals a config without that storage."""
    down = replay(TRACE, _config(tmp_path, health=True), flow="client")
    cfg = _config(tmp_path)
    gone = KVSimConfig.from_dict(cfg.to_dict() | {
        "storages": [s for s in cfg.to_dict()["storages"] if s["name"] != "fast"],
        "instance_groups": [g | {"storage_candidates": ["slow"]}
                            for g in cfg.to_dict()["instance_groups"]]})
    assert down.hit_blocks.tolist() == replay(TRACE, gone, flow="client").hit_blocks.tolist()


@pytest.mark.parametrize("limit", [*LIMITS, "health"])
def test_combined_flow_refuses_the_storage_rules_it_would_ignore(tmp_path: Path,
                                                                  limit: str) -> None:
    """The contract's combined request has no storages: a config with a storage rule is
    refused, naming the field and pointing at the client flow (which honours it)."""
    from click.testing import CliRunner

    from kvsim.cli import main
    from kvsim.config import ConfigError

    cfg = _config(tmp_path, used=0.8, limit="none" if limit == "health" else limit,
                  health=limit == "health", interval_ms=100)
    field = {"type_quota": r"instance_groups\[0\]\.quota\.storage_types",
             "storage_capacity": r"storages\[0\]\.capacity_bytes",
             "max_key_count": r"instance_groups\[0\]\.max_key_count",
             "health": r"reclaim\.storage_health"}.get(limit)
    if field is None:  # none, or a delete delay (no hit depends on it): the kernel runs
        assert cfg.storage_rules() == []
        assert int(replay(TRACE, cfg).hit_blocks.sum()) > 0
        return
    with pytest.raises(ConfigError, match=field + r".*--flow client"):
        replay(TRACE, cfg)
    r = replay(TRACE, cfg, flow="client")
    plain = replay(TRACE, _config(tmp_path, used=0.8, interval_ms=100), flow="client")
    if limit != "health":  # (the outage moves every write to `slow`: the same hits)
        assert r.hit_blocks.tolist() != plain.hit_blocks.tolist()  # the rule matters
    cfg_path = tmp_path / "c.yaml"
    cfg.save(cfg_path)
    trace_path = tmp_path / "t.parquet"
    write_trace(TRACE, trace_path)
    out = CliRunner().invoke(main, ["replay", str(trace_path), "--config", str(cfg_path),
                                    "--no-out", "--flow", "combined"])
    assert out.exit_code != 0 and "--flow client" in out.output, out.output
    for flow in (["--flow", "client"], []):  # the default (auto) picks the client flow
        ok = CliRunner().invoke(main, ["replay", str(trace_path), "--config", str(cfg_path),
                                       "--no-out", "--json", *flow])
        assert ok.exit_code == 0, ok.output
        assert ("flow: client" in ok.stderr) == (not flow)
        doc = json.loads(ok.stdout[ok.stdout.index("{"):])
        assert doc["results"][0]["hit_blocks"] == int(r.hit_blocks.sum())


# ------------------------------------------------------------------------ over HTTP
def _free_port() -> int:
    from conftest import free_port  # type: ignore[import-not-found]

    return int(free_port())


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"kvsim serve exited with {proc.returncode}")
        try:
            httpx.post(f"{url}/api/checkHealth", json={}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError("kvsim serve did not come up")


def test_drive_cli_over_http_equals_replay_client_flow(tmp_path: Path) -> None:
    cfg = _config(tmp_path, policy="s3fifo", used=0.8, limit="storage_capacity",
                  interval_ms=100)
    cfg_path = tmp_path / "c.yaml"
    cfg.save(cfg_path)
    trace_path = tmp_path / "t.parquet"
    write_trace(TRACE, trace_path)
    env = os.environ | {"KVSIM_ADMIN_PASSWORD": "drive-pw"}
    mp, ap = _free_port(), _free_port()
    srv = subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--config", str(cfg_path), "--clock", "manual",
         "--http-port", str(mp), "--admin-http-port", str(ap), "--no-grpc",
         "--debug-http-port", "-1", "--data-dir", str(tmp_path / "srv"),
         "--storage-probe-seconds", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(f"http://127.0.0.1:{ap}", srv)
        out = subprocess.run(
            [sys.executable, "-m", "kvsim", "drive", str(trace_path), "--url",
             f"http://127.0.0.1:{mp}", "--admin-url", f"http://127.0.0.1:{ap}", "--clock",
             "trace", "--config", str(cfg_path), "--json"],
            env=env, capture_output=True, timeout=600, check=True)
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    doc = json.loads(out.stdout)
    rep = subprocess.run(
        [sys.executable, "-m", "kvsim", "replay", str(trace_path), "--config", str(cfg_path),
         "--flow", "client", "--json"], env=env, capture_output=True, timeout=600, check=True)
    want = json.loads(rep.stdout)
    got_r, want_r = doc["results"][0], want["results"][0]
    assert got_r["hit_blocks"] == want_r["hit_blocks"] > 0
    assert got_r["hit_tokens"] == want_r["hit_tokens"]
    assert got_r["evicted_by_trigger"] == want_r["evicted_by_trigger"]
    assert want_r["evicted_by_trigger"]
    assert set(doc) >= {"trace", "results"} and doc["drive"]["latency"]


def test_drive_over_grpc_equals_replay_client_flow(tmp_path: Path) -> None:
    """The same over a real server's gRPC listeners (``grpc://`` URLs): ``setClock`` is
    an AdminService rpc, called with the admin credential."""
    from kvsim.server.app import start_server
    from kvsim.sim.drive import GrpcCaller

    cfg = _config(tmp_path, policy="slru", mode="group_rough", used=0.8, limit="max_key_count",
                  interval_ms=100)
    h = start_server(cfg, data_dir=tmp_path / "srv", manual_clock=True, grpc_port=0,
                     admin_grpc_port=0, http_port=0, admin_http_port=0, debug_http_port=-1,
                     admin_password="grpc-pw", event_log=False, storage_probe_seconds=0)
    try:
        c = GrpcCaller(f"grpc://127.0.0.1:{h.grpc_port}", f"grpc://127.0.0.1:{h.admin_grpc_port}",
                       admin_credential="admin:grpc-pw", timeout_s=300)
        try:
            d = drive(TRACE, c, config=cfg, clock="trace")
            assert c("admin", "setClock", {"now_ns": 0})["now_ns"] == int(TRACE.ts_ns[-1])
        finally:
            c.close()
        row = d.latency_table()[0]
        assert (row["call"], row["count"]) == ("setClock", TRACE.n_requests)
        evicted = h.service.evicted_by_trigger
    finally:
        h.stop()
    r = replay(TRACE, cfg, flow="client")
    assert d.result.hit_blocks.tolist() == r.hit_blocks.tolist()
    assert d.result.evicted_by_trigger == evicted == r.evicted_by_trigger
    assert r.evicted_by_trigger and int(r.hit_blocks.sum()) > 0
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        GrpcCaller("127.0.0.1:1")


def test_reclaim_config_round_trip_and_errors(tmp_path: Path) -> None:
    from kvsim.config import ConfigError

    cfg = _config(tmp_path, interval_ms=250, health=True)
    assert KVSimConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.reclaim.interval_ms == 250 and cfg.reclaim.storage_health[0].storage == "fast"
    bad = cfg.to_dict() | {"reclaim": {"storage_health": [{"storage": "nope", "at_ms": 1}]}}
    with pytest.raises(ConfigError, match=r"reclaim\.storage_health\[0\]\.storage"):
        KVSimConfig.from_dict(bad)
    with pytest.raises(ConfigError, match=r"reclaim\.interval_ms"):
        KVSimConfig.from_dict(cfg.to_dict() | {"reclaim": {"interval_ms": -1}})


def test_drive_concurrency_and_rate_on_the_wall_clock(tmp_path: Path) -> None:
    """Several requests in flight (the service serializes them under its lock): every
    call answered, latencies recorded per call, the pace respected."""
    cfg = _config(tmp_path, quota=100_000)  # nothing evicted: hits do not depend on order
    svc = Service(cfg, data_dir=tmp_path / "srv", admin_auth="none", event_log=False,
                  storage_probe_seconds=0)
    t = TRACE.head(60)
    try:
        d = drive(t, lambda api, m, b: svc.call(api, m, b), config=cfg, clock="wall",
                  concurrency=4, rate=400)
    finally:
        svc.close()
    lat = {row["call"]: row["count"] for row in d.latency_table()}
    assert lat == {"getCacheLocation": 60, "startWriteCache": 60, "finishWriteCache": 60}
    assert d.elapsed_s >= 59 / 400 and d.refused_writes == 0
    # every read hit at most the keys written before it was answered
    assert 0 < int(d.result.hit_blocks.sum()) <= int(t.key_counts().sum())
    with pytest.raises(ValueError, match="concurrency must be 1"):
        drive(t, lambda api, m, b: {}, clock="trace", concurrency=2)

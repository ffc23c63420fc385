"""Tair KVCM's optimizer inputs (issue 15): its publisher log and its optimizer-schema
dialog rows replay as traces, and its optimizer config converts to and from kvsim's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kvsim.cli import main
from kvsim.config import ConfigError, KVSimConfig
from kvsim.optimizer.kvcm_config import KvcmConfigError, export_kvcm, import_kvcm
from kvsim.trace.model import KIND_READ, KIND_WRITE
from kvsim.trace.readers import TraceError, read_trace


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ev(typ: str, t: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"e{t}", "source": kw.pop("source", "i0"), "component": "cache_manager",
            "type": typ, "trigger_time_us": t, **kw}


def _rows(tr: Any) -> list[tuple[int, int, list[int]]]:
    off = tr.offsets.tolist()
    return [(int(tr.kind[i]), int(tr.ts_ns[i]) // 1000, tr.keys[off[i]:off[i + 1]].tolist())
            for i in range(len(off) - 1)]


def test_publisher_log_reads_sessions_offsets_and_names(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "pub.log", [
        _ev("GetCacheLocation", 10, query_type="prefix_match", keys=[1, 2, 3], block_mask=1,
            sw_size=0, tokens=[]),
        _ev("StartWriteCache", 20, write_session_id="s1", keys=[1, 2, 3, 4],
            block_mask=[True, False, False, False]),
        _ev("GetCacheLocation", 25, query_type="batch_get", keys=[7], block_mask=[False]),
        _ev("FinishWriteCache", 30, write_session_id="s1", success_block=3),
        _ev("FinishWriteCache", 31, write_session_id="never_started", success_block=1),
        _ev("StartWriteCache", 40, write_session_id="s2", keys=[8, 9], block_mask=0),
        _ev("CacheReclaimSubmit", 50, group="g"),
    ])
    tr = read_trace(p)  # auto-detected as kvcm-events
    assert _rows(tr) == [(KIND_READ, 10, [1, 2, 3]), (KIND_READ, 25, [7]),
                         (KIND_WRITE, 30, [1, 2, 3, 4]),
                         (KIND_WRITE, 40 + 100_000, [8, 9])]  # unfinished: start + 100 ms
    assert tr.mask is not None and tr.mask[:3].tolist() == [True, False, False]
    assert tr.query_type[:2].tolist() == [0, 1]  # prefix, batch


def test_publisher_log_rejects_a_bad_query_type(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "pub.log", [_ev("GetCacheLocation", 1, query_type="nope", keys=[1])])
    with pytest.raises(TraceError, match=r"pub\.log:1.*query_type"):
        read_trace(p)


def test_optimizer_schema_empty_mask_and_total_keys(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "t.jsonl", [
        {"instance_id": "a", "timestamp_us": 5, "keys": [1, 2], "block_mask": [],
         "total_keys": [1, 2, 3], "input_len": 32, "output_len": 16},
        {"instance_id": "a", "timestamp_us": 6, "type": "get", "keys": [1, 2, 3],
         "block_mask": [], "input_len": 48},
    ])
    tr = read_trace(p, block_size=16)
    assert _rows(tr) == [(KIND_READ, 5, [1, 2]), (KIND_WRITE, 5, [1, 2, 3]),
                         (KIND_READ, 6, [1, 2, 3])]
    assert tr.mask is None
    bad = _jsonl(tmp_path / "b.jsonl", [{"instance_id": "a", "timestamp_us": 1, "keys": [1],
                                         "total_keys": "3"}])
    with pytest.raises(TraceError, match=r"b\.jsonl:1.*total_keys"):
        read_trace(bad)


OPT = {
    "trace_file_path": "/somewhere/trace.jsonl",
    "eviction_params": {"eviction_mode": 3, "eviction_batch_size_per_instance": 8},
    "instance_groups": [{
        "group_name": "grp", "quota_capacity": 0.5, "used_percentage": 0.9,
        "tier_flows": [{"from_tier": "p", "to_tier": "h"}],
        "storages": [{"unique_name": "p", "storage_type": "pace", "capacity": 0.25},
                     {"unique_name": "h", "storage_type": "hf3fs", "capacity": 0.25}],
        "instances": [{"instance_id": "a", "block_size": 4, "bytes_per_token": 8,
                       "eviction_policy_type": "random_lru",
                       "eviction_policy_params": {"sample_rate": 0.5}}]}],
}


def test_import_export_round_trip() -> None:
    d, notes = import_kvcm(OPT)
    cfg = KVSimConfig.from_dict(d)
    g = cfg.groups[0]
    assert (g.name, g.quota_bytes, g.used_percentage) == ("grp", 1 << 29, 0.9)
    assert (g.eviction.policy, g.eviction.params, g.eviction.mode, g.eviction.batch_size) == (
        "random_lru", {"sample_rate": 0.5}, "instance_precise", 8)
    assert [(s.name, s.type, s.capacity_bytes) for s in cfg.storages] == [
        ("p", "pace", 1 << 28), ("h", "hf3fs", 1 << 28)]
    assert cfg.instances[0].block_bytes == 4 * 8
    assert any("tier_flows" in n for n in notes) and any("trace_file_path" in n for n in notes)
    back = export_kvcm(cfg.to_dict())
    assert back["eviction_params"] == OPT["eviction_params"]
    bg, og = back["instance_groups"][0], OPT["instance_groups"][0]
    assert (bg["group_name"], bg["quota_capacity"], bg["used_percentage"]) == ("grp", 0.5, 0.9)
    assert bg["instances"][0] | {} == {"instance_id": "a", "block_size": 4, "bytes_per_token": 8,
                                       "eviction_policy_type": "random_lru",
                                       "eviction_policy_params": {"sample_rate": 0.5}}
    assert [(s["unique_name"], s["capacity"]) for s in bg["storages"]] == [
        (s["unique_name"], s["capacity"]) for s in og["storages"]]


def test_import_errors_name_the_field() -> None:
    bad = json.loads(json.dumps(OPT))
    bad["instance_groups"][0]["instances"][0]["eviction_policy_type"] = "mru"
    with pytest.raises(KvcmConfigError, match=r"instances\[0\]\.eviction_policy_type"):
        import_kvcm(bad)
    bad = json.loads(json.dumps(OPT))
    bad["instance_groups"][0]["instances"].append(
        {"instance_id": "b", "block_size": 4, "eviction_policy_type": "lru"})
    with pytest.raises(KvcmConfigError, match="split the group"):
        import_kvcm(bad)
    with pytest.raises(KvcmConfigError, match=r"eviction\.policy: 'lfu'"):
        export_kvcm({"instance_groups": [{"name": "g", "eviction": {"policy": "lfu",
                                                                    "mode": "group_rough"}}]})


def test_cli_config_import_export_and_replay_with_kvcm_config(tmp_path: Path) -> None:
    src = tmp_path / "optimizer_startup_config_load.json"
    src.write_text(json.dumps(OPT))
    r = CliRunner().invoke(main, ["config", "import", str(src), "-o", str(tmp_path / "c.yaml")])
    assert r.exit_code == 0, r.output
    assert KVSimConfig.load(tmp_path / "c.yaml").groups[0].eviction.policy == "random_lru"
    r = CliRunner().invoke(main, ["config", "export", str(tmp_path / "c.yaml"),
                                  "-o", str(tmp_path / "back.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "back.json").read_text())["instance_groups"][0][
        "group_name"] == "grp"
    # replay reads KVCM's config directly, with KVCM's dialog-turn trace
    tr = _jsonl(tmp_path / "t.jsonl", [
        {"instance_id": "a", "timestamp_us": 1 + i, "keys": [1, 2], "block_mask": [],
         "total_keys": [1, 2, 3 + i], "input_len": 8} for i in range(4)])
    # its storages have capacities: the client flow honours them (the combined flow,
    # which has no storages, refuses the config); by default replay picks the client flow
    r = CliRunner().invoke(main, ["replay", str(tr), "--config", str(src), "--json",
                                  "--flow", "combined"])
    assert r.exit_code != 0 and "capacity_bytes" in r.output and "--flow client" in r.output
    for flow in (["--flow", "client"], []):
        r = CliRunner().invoke(main, ["replay", str(tr), "--config", str(src), "--json", *flow])
        assert r.exit_code == 0, r.output
        assert ("flow: client" in r.stderr) == (not flow)
        out = json.loads(r.stdout[r.stdout.index("{"):])
        assert out["results"][0]["hit_blocks"] == 6  # turns 2..4 hit keys 1 and 2
        # tokens per key from the config's instance (4), not the reader's default (16)
        assert out["trace"]["block_size"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instance_groups": [{"group_name": "g"}]}))
    with pytest.raises(ConfigError, match=r"bad\.json.*quota_capacity"):
        KVSimConfig.load(bad)


def test_upstream_current_schema_config_unlimited_and_huge_capacities() -> None:
    """KVCM's current optimizer config: ``-1`` is unlimited, ``ttl_config`` nests the TTL,
    and its own test config gives storages 1e10 GiB (past int64 bytes): unlimited."""
    g = {"group_name": "g", "quota_capacity": -1, "used_percentage": 1.0,
         "ttl_config": {"default_block_ttl_seconds": 3600, "refresh_on_read": True},
         "tier_flows": [{"from_tier": "p", "to_tier": "h", "write_mode": "write_through"}],
         "storages": [{"unique_name": "p", "storage_type": "pace", "capacity": 1e10},
                      {"unique_name": "h", "storage_type": "hf3fs", "capacity": -1}],
         "instances": [{"instance_id": "i", "block_size": 16, "bytes_per_token": 8,
                        "eviction_policy_type": "ttl",
                        "eviction_policy_params": {"fallback_on_pressure": False}}]}
    data = {"eviction_params": {"eviction_mode": 1, "eviction_batch_size_per_instance": 100},
            "trace_replay": {"mode": "read_write", "write_delay_ns": 1},
            "instance_groups": [g]}
    d, notes = import_kvcm(data)
    cfg = KVSimConfig.from_dict(d)
    assert cfg.groups[0].quota_bytes == 0  # unlimited
    assert [s.capacity_bytes for s in cfg.storages] == [0, 0]
    assert cfg.groups[0].eviction.params == {"ttl_s": 3600.0}
    assert any("storages[0].capacity: 1e+10 GiB" in n for n in notes)
    assert any("fallback_on_pressure" in n for n in notes)
    assert any(n.startswith("trace_replay") for n in notes)
    assert not any("ttl_config" in n for n in notes)  # used by the ttl policy
    back = export_kvcm(cfg.to_dict())["instance_groups"][0]
    assert back["quota_capacity"] == -1 and [s["capacity"] for s in back["storages"]] == [-1, -1]
    assert back["ttl_config"]["default_block_ttl_seconds"] == 3600
    # an lru instance: its sampled LRU is named as a difference
    g["instances"][0] |= {"eviction_policy_type": "lru",
                          "eviction_policy_params": {"sample_rate": 0.1}}
    _, notes = import_kvcm(data)
    assert any("sample_rate 0.1" in n for n in notes) and any("ttl_config" in n for n in notes)


def test_config_bounds_quota_and_capacity_below_int64() -> None:
    big = {"storages": [{"name": "s", "capacity_bytes": 1 << 63}],
           "instance_groups": [{"name": "g"}]}
    with pytest.raises(ConfigError, match=r"storages\[0\]\.capacity_bytes"):
        KVSimConfig.from_dict(big)
    with pytest.raises(ConfigError, match=r"quota\.bytes"):
        KVSimConfig.from_dict({"instance_groups": [{"name": "g", "quota": {"bytes": 1 << 63}}]})


def test_upstream_standard_rows_write_fields_ignored_empty_get(tmp_path: Path) -> None:
    """KVCM's standard loader: a write row's read fields are ignored whatever they hold
    (its own test sends ``"input_len": "ignored"``); a get with no keys counts its
    tokens; ``ttl_us`` / ``location_spec_names`` are accepted."""
    tr = _jsonl(tmp_path / "std.jsonl", [
        {"type": "get", "instance_id": "a", "trace_id": "r", "timestamp_ns": 1000, "keys": [],
         "input_len": 128, "query_type": "prefix_match", "block_mask": []},
        {"type": "write", "instance_id": "a", "trace_id": "w", "timestamp_ns": 1001,
         "keys": [1, 2], "input_len": "ignored", "block_mask": "x", "ttl_us": -1},
        {"type": "request", "instance_id": "a", "timestamp_ns": 2000, "keys": [1, 2, 3],
         "input_len": 50, "query_type": "prefix_match", "block_mask": [], "sw_size": 0,
         "location_spec_names": [], "ttl_us": 0},
    ])
    t = read_trace(tr, "kvcm")
    assert _rows(t) == [(KIND_READ, 1, []), (KIND_WRITE, 1, [1, 2]), (0, 2, [1, 2, 3])]
    assert t.input_len.tolist() == [128, 32, 50]
    r = CliRunner().invoke(main, ["replay", str(tr), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])["results"][0]
    assert res["hit_blocks"] == 2 and res["hit_tokens"] == 32

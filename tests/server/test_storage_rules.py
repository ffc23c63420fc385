"""Storage rules of the manager server: per-storage-type quotas (placement and the
``storage_type`` reclaim trigger), ``max_key_count`` (write-time room and the
``max_key_count`` trigger) and file storage health probes (usable = enabled AND healthy;
reads do not hand out blocks on unusable storages)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from transports import ADMIN_PASSWORD, TRANSPORTS, Client

from kvsim.config import ConfigError, KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.server.service import Service, probe_directory
from kvsim.server.store import SqliteStore

T0 = 1_700_000_000 * 10**9
BLOCK = 1024  # bytes of one block (one spec)
SPEC = [{"name": "tp0", "size": BLOCK}]
MODEL = {"model_name": "m", "dtype": "bf16"}


def ok(r: dict[str, Any]) -> dict[str, Any]:
    assert r["header"]["status"]["code"] == "OK", r["header"]
    return r


def code(r: dict[str, Any]) -> str:
    return str(r["header"]["status"]["code"])


def msg(r: dict[str, Any]) -> str:
    return str(r["header"]["status"]["message"])


def storage_cfg(tmp: Path) -> list[dict[str, Any]]:
    return [{"name": "fast", "type": "mooncake", "uri": "mc-master:50051"},
            {"name": "nfs_a", "type": "file", "uri": str(tmp / "nfs_a")},
            {"name": "nfs_b", "type": "file", "uri": str(tmp / "nfs_b")}]


def make_config(tmp: Path, **group: Any) -> KVSimConfig:
    g = {"name": "g", "quota": {"bytes": 10**9}, "storage_candidates": ["fast", "nfs_a"],
         "used_percentage": 1.0} | group
    return KVSimConfig.from_dict({
        # the reclaimer on its timer (these tests call tick), not at each write
        "reclaim": {"interval_ms": 500},
        "storages": storage_cfg(tmp), "instance_groups": [g],
        "instances": [{"instance_id": "i0", "group": "g", "block_size": 16,
                       "location_spec_infos": SPEC},
                      {"instance_id": "i1", "group": "g", "block_size": 16,
                       "location_spec_infos": SPEC}]})


class Calls:
    """Meta/admin calls on an in-process service (admin with the test credential)."""

    def __init__(self, s: Service) -> None:
        self.s = s

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.s.call("meta", method, body)

    def admin(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.s.call("admin", method, body, credential=f"admin:{ADMIN_PASSWORD}")

    def write(self, keys: list[int], iid: str = "i0") -> dict[str, Any]:
        """startWriteCache + finishWriteCache (all succeed); the start's reply."""
        w = ok(self.meta("startWriteCache", {"instance_id": iid, "block_keys": keys}))
        ok(self.meta("finishWriteCache", {"instance_id": iid,
                                          "write_session_id": w["write_session_id"],
                                          "success_blocks": {"offset": len(w["locations"])}}))
        return w

    def types(self, keys: list[int], iid: str = "i0") -> list[str]:
        r = ok(self.meta("getCacheLocation", {"instance_id": iid, "block_keys": keys,
                                              "query_type": "QT_BATCH_GET"}))
        return [loc["type"] for loc in r["locations"]]

    def storage(self, keys: list[int], iid: str = "i0") -> list[str]:
        """The storage name of each key's location ('' for a miss)."""
        r = ok(self.meta("getCacheLocation", {"instance_id": iid, "block_keys": keys,
                                              "query_type": "QT_BATCH_GET"}))
        out = []
        for loc in r["locations"]:
            uri = loc["location_specs"][0]["uri"] if loc["location_specs"] else ""
            out.append(uri.split("://", 1)[1].split("/", 1)[0] if uri else "")
        return out


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def service(tmp: Path, clock: ManualClock, config: KVSimConfig | None = None,
            **kw: Any) -> Service:
    return Service(config, data_dir=tmp, clock=clock, admin_password=ADMIN_PASSWORD, **kw)


def events(tmp: Path, s: Service, kind: str) -> list[dict[str, Any]]:
    assert s.events is not None
    s.events.flush()
    lines = (tmp / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def metric(s: Service, name: str, **tags: str) -> float:
    vals = [v for n, v, t in s.metrics() if n == name and all(t.get(k) == x
                                                               for k, x in tags.items())]
    assert len(vals) == 1, (name, tags, vals)
    return float(vals[0])


# ---------------------------------------------------------------- per-storage-type quotas
def test_type_quota_placement_spills_in_candidate_order_then_evicts_that_type(
        tmp_path: Path, clock: ManualClock) -> None:
    qc = (("mooncake", 4 * BLOCK), ("file", 6 * BLOCK))
    s = service(tmp_path, clock, make_config(tmp_path, quota={
        "bytes": 10**9, "storage_types": dict(qc)}))
    c = Calls(s)
    c.write([1, 2, 3, 4])  # fills mooncake
    assert c.types([1, 2, 3, 4]) == ["ST_MOONCAKE"] * 4
    clock.advance(10**6)
    c.write([5, 6])  # mooncake full: the next candidate, nfs_a
    assert c.storage([5, 6]) == ["nfs_a", "nfs_a"]
    clock.advance(10**6)
    c.write([7, 8, 9, 10])  # nfs_a 6/6 now
    assert c.storage([7, 8, 9, 10]) == ["nfs_a"] * 4
    clock.advance(10**6)
    c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2]})  # 3, 4 are LRU
    clock.advance(10**6)
    # no type has room: evict on the first candidate's type only, its LRU blocks (3, 4)
    c.write([11, 12])
    assert c.storage([11, 12]) == ["fast", "fast"]
    assert c.s.mgr.cached_keys("i0").tolist() == [1, 2, 5, 6, 7, 8, 9, 10, 11, 12]
    assert s.evicted_by_trigger == {"write_storage_type": 2}
    # 5 blocks fit no type even after evicting all of it: refused, nothing evicted
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [20, 21, 22, 23, 24,
                                                                       25, 26]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY", r
    assert "storage type 'mooncake' quota" in msg(r)
    assert len(c.s.mgr.cached_keys("i0")) == 10
    # per-type usage in the metrics (bytes; WRITING + SERVING)
    assert metric(s, "kvsim_storage_type_used_bytes", group="g",
                  storage_type="ST_MOONCAKE") == 4 * BLOCK
    assert metric(s, "kvsim_storage_type_quota_bytes", group="g",
                  storage_type="ST_NFS") == 6 * BLOCK
    s.close()


def test_type_quota_counts_pending_writes(tmp_path: Path, clock: ManualClock) -> None:
    s = service(tmp_path, clock, make_config(
        tmp_path, storage_candidates=["fast"],
        quota={"bytes": 10**9, "storage_types": {"mooncake": 3 * BLOCK}}))
    c = Calls(s)
    ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2]}))  # WRITING
    r = c.meta("startWriteCache", {"instance_id": "i1", "block_keys": [7, 8]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # WRITING blocks cannot be evicted
    ok(c.meta("startWriteCache", {"instance_id": "i1", "block_keys": [7]}))
    s.close()


def test_storage_type_trigger_evicts_only_that_type_in_policy_order(
        tmp_path: Path, clock: ManualClock) -> None:
    s = service(tmp_path, clock, make_config(
        tmp_path, used_percentage=0.5,
        quota={"bytes": 10**9, "storage_types": {"mooncake": 4 * BLOCK,
                                                 "file": 100 * BLOCK}}))
    c = Calls(s)
    for k in (1, 2, 3, 4):  # one block per write: a clear recency order
        clock.advance(10**6)
        c.write([k], iid="i0" if k % 2 else "i1")
    clock.advance(10**6)
    c.write([5, 6, 7])  # spills to nfs_a (mooncake is full)
    assert c.storage([5, 6, 7]) == ["nfs_a"] * 3
    clock.advance(10**6)
    c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1]})  # 1 is MRU now
    before = sorted(s.mgr.cached_keys("i0").tolist() + s.mgr.cached_keys("i1").tolist())
    assert before == [1, 2, 3, 4, 5, 6, 7]
    t = s.tick()
    # mooncake: 4 blocks > 4 x 0.5: the two least recent on mooncake (2 then 3) go
    assert t["reclaimed"] == 2
    after = sorted(s.mgr.cached_keys("i0").tolist() + s.mgr.cached_keys("i1").tolist())
    assert after == [1, 4, 5, 6, 7]  # no nfs block was touched
    ev = events(tmp_path, s, "CacheReclaimSubmit")
    assert [(e["trigger"], e["storage_type"], e["blocks"], e["used"], e["capacity"])
            for e in ev] == [("storage_type", "ST_MOONCAKE", 2, 4 * BLOCK, 2 * BLOCK)]
    assert s.evicted_by_trigger == {"storage_type": 2}
    assert metric(s, "kvsim_evicted_blocks", trigger="storage_type") == 2
    assert s.tick()["reclaimed"] == 0  # at the target now
    s.close()


def test_type_quota_wire_validation_names_the_field(tmp_path: Path, clock: ManualClock) -> None:
    s = service(tmp_path, clock)
    c = Calls(s)

    def group(qc: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return {"instance_group": {"name": "t", "storage_candidates": ["nfs_01"],
                                   "quota": {"capacity": 10**6, "quota_config": qc}} | kw}

    r = c.admin("createInstanceGroup", group([{"storage_type": "ST_NFS", "capacity": 0}]))
    assert code(r) == "INVALID_ARGUMENT"
    assert msg(r).startswith("instance_group.quota.quota_config[0].capacity: must be > 0")
    r = c.admin("createInstanceGroup", group([{"capacity": 5}]))
    assert msg(r).startswith("instance_group.quota.quota_config[0].storage_type: required")
    r = c.admin("createInstanceGroup", group([{"storage_type": "ST_NFS", "capacity": 5},
                                              {"storage_type": 4, "capacity": 6}]))
    assert msg(r).startswith("instance_group.quota.quota_config[1].storage_type: ST_NFS has")
    r = c.admin("createInstanceGroup", group([{"storage_type": "ST_XX", "capacity": 5}]))
    assert code(r) == "INVALID_ARGUMENT" and "quota_config[0].storage_type" in msg(r)
    ok(c.admin("createInstanceGroup", group([{"storage_type": "ST_NFS", "capacity": "4096"}])))
    g = ok(c.admin("getInstanceGroup", {"name": "t"}))["instance_group"]
    assert g["quota"]["quota_config"] == [{"storage_type": "ST_NFS", "capacity": 4096}]
    assert s.mgr.group("t").storage_type_quotas == (("file", 4096),)
    # type quotas count bytes: an instance without sizes is refused
    r = c.meta("registerInstance", {"instance_group": "t", "instance_id": "z",
                                    "block_size": 16, "model_deployment": MODEL})
    assert code(r) == "INVALID_ARGUMENT" and msg(r).startswith("location_spec_infos:")
    s.close()


# ---------------------------------------------------------------- max_key_count
@pytest.mark.parametrize("mode", ["group_precise", "instance_precise"])
def test_max_key_count_trigger_and_write_room_never_over_evict(
        tmp_path: Path, clock: ManualClock, mode: str) -> None:
    s = service(tmp_path, clock, make_config(
        tmp_path, max_key_count=10, used_percentage=0.8, storage_candidates=["nfs_a"],
        eviction={"policy": "lru", "mode": mode}))
    c = Calls(s)
    for k in range(1, 11):
        clock.advance(10**6)
        c.write([k], iid="i0" if k % 2 else "i1")
    assert s.mgr.key_count("g") == (10, 10)
    assert s.tick()["reclaimed"] == 2  # 10 keys > 10 x 0.8: exactly 2
    held = sorted(s.mgr.cached_keys("i0").tolist() + s.mgr.cached_keys("i1").tolist())
    # in the mode's order: group-wide LRU, or instance by instance (i0 holds 1, 3, ...)
    assert held == (list(range(3, 11)) if mode == "group_precise" else [2, *range(4, 11)])
    ev = events(tmp_path, s, "CacheReclaimSubmit")
    assert [(e["trigger"], e["blocks"], e["used"], e["capacity"]) for e in ev] == \
        [("max_key_count", 2, 10, 8)]
    # a write of 5 new keys: 8 + 5 = 13 > 10 -> refused, as in KVCM (a write never
    # evicts for max_key_count: the reclaimer does); 2 new keys fit exactly
    clock.advance(10**6)
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [20, 21, 22, 23, 24]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "max_key_count of 10" in msg(r)
    assert s.mgr.key_count("g")[0] == 8
    c.write([20, 21])
    held = sorted(s.mgr.cached_keys("i0").tolist() + s.mgr.cached_keys("i1").tolist())
    assert held == sorted(([*range(3, 11)] if mode == "group_precise"
                           else [2, *range(4, 11)]) + [20, 21])
    assert s.evicted_by_trigger == {"max_key_count": 2}
    assert metric(s, "kvsim_group_keys", group="g") == 10
    # more new keys than the limit: refused, nothing evicted
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": list(range(100, 111))})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "max_key_count of 10" in msg(r)
    assert s.mgr.key_count("g")[0] == 10
    s.close()


def test_max_key_count_counts_writing_blocks(tmp_path: Path, clock: ManualClock) -> None:
    s = service(tmp_path, clock, make_config(tmp_path, max_key_count=4,
                                             storage_candidates=["nfs_a"]))
    c = Calls(s)
    c.write([1])
    ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [2, 3, 4]}))  # WRITING
    r = c.meta("startWriteCache", {"instance_id": "i1", "block_keys": [8, 9]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # 3 writing + 2 new > 4
    assert s.mgr.cached_keys("i0").tolist() == [1]  # and 1 was not evicted for nothing
    r = c.meta("startWriteCache", {"instance_id": "i1", "block_keys": [8]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # 1 + 3 writing + 1 new > 4: no eviction
    assert s.mgr.cached_keys("i0").tolist() == [1]
    s.close()


def test_max_key_count_wire_round_trip_and_validation(tmp_path: Path,
                                                      clock: ManualClock) -> None:
    s = service(tmp_path, clock)
    c = Calls(s)
    mic = {"max_key_count": "7", "mutex_shard_num": 16}
    body = {"instance_group": {"name": "k", "storage_candidates": ["nfs_01"],
                               "quota": {"capacity_blocks": 100},
                               "cache_config": {"meta_indexer_config": mic}}}
    ok(c.admin("createInstanceGroup", body))
    g = ok(c.admin("getInstanceGroup", {"name": "k"}))["instance_group"]
    assert g["cache_config"]["meta_indexer_config"] == {"max_key_count": 7,
                                                        "mutex_shard_num": 16}
    assert s.mgr.group("k").max_key_count == 7
    snap = json.loads(ok(c.admin("genConfigSnapshot", {}))["config_snapshot"])
    assert [x["cache_config"]["meta_indexer_config"]["max_key_count"]
            for x in snap["instance_groups"] if x["name"] == "k"] == [7]
    bad = json.loads(json.dumps(body))
    bad["instance_group"]["name"] = "k2"
    bad["instance_group"]["cache_config"]["meta_indexer_config"]["max_key_count"] = -1
    r = c.admin("createInstanceGroup", bad)
    assert code(r) == "INVALID_ARGUMENT"
    assert msg(r).startswith("instance_group.cache_config.meta_indexer_config.max_key_count:")
    s.close()


def test_new_fields_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    def start() -> Service:
        return service(tmp_path, clock, store=SqliteStore(tmp_path / "state.db"))

    s = start()
    c = Calls(s)
    ok(c.admin("createInstanceGroup", {"instance_group": {
        "name": "r", "storage_candidates": ["nfs_01"],
        "quota": {"capacity": 10**6, "quota_config": [{"storage_type": "ST_NFS",
                                                        "capacity": 3 * BLOCK}]},
        "cache_config": {"meta_indexer_config": {"max_key_count": 2}}}}))
    ok(c.meta("registerInstance", {"instance_group": "r", "instance_id": "x",
                                   "block_size": 16, "location_spec_infos": SPEC,
                                   "model_deployment": MODEL}))
    c.write([1, 2], iid="x")
    group = ok(c.admin("getInstanceGroup", {"name": "r"}))["instance_group"]
    s.close()
    s = start()
    c = Calls(s)
    assert ok(c.admin("getInstanceGroup", {"name": "r"}))["instance_group"] == group
    assert s.mgr.group("r").max_key_count == 2
    assert s.mgr.group("r").storage_type_quotas == (("file", 3 * BLOCK),)
    clock.advance(10**6)
    r = c.meta("startWriteCache", {"instance_id": "x", "block_keys": [3]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # still enforced: 2 keys at most
    assert s.mgr.cached_keys("x").tolist() == [1, 2]
    s.close()


def test_config_file_carries_type_quotas_and_max_key_count(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    cfg = make_config(tmp_path, max_key_count=50,
                      quota={"bytes": 10**6, "storage_types": {"file": 4096, "mooncake": 2048}})
    g = cfg.groups[0]
    assert g.storage_type_quotas == (("file", 4096), ("mooncake", 2048))
    assert g.max_key_count == 50
    again = KVSimConfig.from_dict(cfg.to_dict())
    assert again.groups == cfg.groups
    with pytest.raises(ConfigError, match=r"instance_groups\[0\]\.quota\.storage_types\.nvme: "
                                          "unknown storage type"):
        make_config(tmp_path, quota={"bytes": 1, "storage_types": {"nvme": 5}})
    with pytest.raises(ConfigError, match=r"instance_groups\[0\]\.quota\.storage_types\.file"):
        make_config(tmp_path, quota={"bytes": 1, "storage_types": {"file": 0}})
    with pytest.raises(ConfigError, match=r"instance_groups\[0\]\.max_key_count"):
        make_config(tmp_path, max_key_count=-3)
    s = service(tmp_path, clock, cfg)
    w = ok(Calls(s).admin("getInstanceGroup", {"name": "g"}))["instance_group"]
    assert w["quota"]["quota_config"] == [{"storage_type": "ST_NFS", "capacity": 4096},
                                          {"storage_type": "ST_MOONCAKE", "capacity": 2048}]
    assert w["cache_config"]["meta_indexer_config"] == {"max_key_count": 50}
    s.close()
    # the client flow enforces them; the contract's combined flow (no storages) refuses
    # the config, naming the fields
    import kvsim.api as kv
    from kvsim.sim.replay import replay
    from kvsim.trace.model import Trace

    tr = Trace.from_lists(ts_ns=list(range(20)), keys=[[1, 2, 3, i] for i in range(20)],
                          block_size=16, instance=["i0"] * 20)
    with pytest.raises(ConfigError, match=r"instance_groups\[0\]\.quota\.storage_types, "
                                          r"instance_groups\[0\]\.max_key_count: .*--flow client"):
        kv.replay(tr, config=cfg)
    r = replay(tr, cfg, flow="client")
    assert r.summary()["block_hit_rate"] > 0.5
    run = kv.replay(tr, config=cfg, flow="client")
    assert float(run.summary["block_hit_rate"][0]) == r.summary()["block_hit_rate"]


# ---------------------------------------------------------------- health probes
def break_dir(path: Path) -> None:
    """Make a storage root unusable even for root: the directory becomes a regular file."""
    shutil.rmtree(path)
    path.write_text("not a directory")


def heal_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def test_probe_directory(tmp_path: Path) -> None:
    d = tmp_path / "root"
    d.mkdir()
    assert probe_directory(d) is None
    assert list(d.iterdir()) == []  # the probe file is gone
    break_dir(d)
    assert probe_directory(d) is not None
    assert probe_directory(d / "sub") is not None  # under a regular file
    shutil.rmtree(tmp_path / "gone", ignore_errors=True)
    assert "FileNotFoundError" in str(probe_directory(tmp_path / "gone"))


def test_failing_probe_makes_storage_unusable_until_it_recovers(
        tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, storage_candidates=["nfs_a", "nfs_b"])
    s = service(tmp_path, clock, cfg, storage_probe_seconds=5)
    c = Calls(s)
    s.tick()  # the first tick probes: all healthy
    c.write([3])  # on nfs_a
    ok(c.admin("disableStorage", {"storage_unique_name": "nfs_a"}))
    c.write([1, 2])  # on nfs_b
    ok(c.admin("enableStorage", {"storage_unique_name": "nfs_a"}))
    assert c.storage([1, 2, 3]) == ["nfs_b", "nfs_b", "nfs_a"]
    sw = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3],
                                        "query_type": "QT_REVERSE_ROLL_SW_MATCH",
                                        "sw_size": 2}))["locations"]
    assert [bool(x["location_specs"]) for x in sw] == [False, True, True]

    break_dir(tmp_path / "nfs_a")
    s.tick()  # within the probe interval: not probed yet
    listed = {x["global_unique_name"]: x for x in ok(c.admin("listStorage", {}))["storage"]}
    assert listed["nfs_a"]["healthy"] is True
    clock.advance(5 * 10**9)
    s.tick()
    listed = {x["global_unique_name"]: x for x in ok(c.admin("listStorage", {}))["storage"]}
    assert (listed["nfs_a"]["available"], listed["nfs_a"]["healthy"]) == (True, False)
    assert listed["nfs_a"]["health_message"]
    assert listed["nfs_b"]["healthy"] is True and listed["fast"]["healthy"] is True
    assert metric(s, "kvsim_storage_healthy", storage="nfs_a") == 0
    assert metric(s, "kvsim_storage_healthy", storage="nfs_b") == 1
    [ch] = events(tmp_path, s, "StorageHealthChange")
    assert (ch["storage"], ch["healthy"]) == ("nfs_a", False) and ch["reason"]

    # reads: prefix stops before the block on nfs_a, batch answers a placeholder, the
    # sliding window moves left, the length counts the prefix
    pre = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3, 4]}))
    assert len(pre["locations"]) == 2
    assert c.types([1, 2, 3]) == ["ST_NFS", "ST_NFS", "ST_UNSPECIFIED"]
    sw = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3],
                                        "query_type": "QT_REVERSE_ROLL_SW_MATCH",
                                        "sw_size": 2}))["locations"]
    assert [bool(x["location_specs"]) for x in sw] == [True, True, False]
    n = ok(c.meta("getCacheLocationLen", {"instance_id": "i0", "block_keys": [1, 2, 3]}))
    assert n["cache_location_len"] == 2
    meta = ok(c.meta("getCacheMeta", {"instance_id": "i0", "block_keys": [3]}))
    assert meta["locations"][0]["type"] == "ST_UNSPECIFIED"

    # writes avoid it; the key held there is written again on a usable storage
    w = c.write([1, 2, 3, 5])
    assert w["block_mask"] == {"offset": 2} and len(w["locations"]) == 2  # 3 and 5 new
    assert c.storage([1, 2, 3, 5]) == ["nfs_b"] * 4

    # recovery: healthy and used again
    heal_dir(tmp_path / "nfs_a")
    clock.advance(5 * 10**9)
    assert s.tick() is not None
    assert metric(s, "kvsim_storage_healthy", storage="nfs_a") == 1
    assert [e["healthy"] for e in events(tmp_path, s, "StorageHealthChange")] == [False, True]
    c.write([9])
    assert c.storage([9]) == ["nfs_a"]
    s.close()


def test_usable_means_enabled_and_healthy(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, storage_candidates=["nfs_a"])
    s = service(tmp_path, clock, cfg, storage_probe_seconds=0)  # no background probes
    c = Calls(s)
    c.write([1])
    break_dir(tmp_path / "nfs_a")
    assert s.probe_storages() == {"nfs_a": False, "nfs_b": True}
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [2]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "nfs_a: unhealthy" in msg(r)
    ok(c.admin("disableStorage", {"storage_unique_name": "nfs_a"}))
    heal_dir(tmp_path / "nfs_a")
    s.probe_storages()
    # healthy again but disabled by the admin: still not used, still not read
    assert c.types([1]) == ["ST_UNSPECIFIED"]
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [2]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "nfs_a: disabled" in msg(r)
    ok(c.admin("enableStorage", {"storage_unique_name": "nfs_a"}))
    assert c.types([1]) == ["ST_NFS"]
    clock.advance(60 * 10**9)
    s.tick()  # probing off: the tick does not probe
    break_dir(tmp_path / "nfs_a")
    s.tick()
    assert c.types([1]) == ["ST_NFS"]
    s.close()


def test_descriptor_storages_follow_admin_only(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, storage_candidates=["fast"])
    s = service(tmp_path, clock, cfg)
    c = Calls(s)
    c.write([1, 2])
    assert set(s.probe_storages()) == {"nfs_a", "nfs_b"}  # mooncake is not probed
    ok(c.admin("disableStorage", {"storage_unique_name": "fast"}))
    pre = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2]}))
    assert pre["locations"] == []
    ok(c.admin("enableStorage", {"storage_unique_name": "fast"}))
    assert c.types([1, 2]) == ["ST_MOONCAKE"] * 2
    s.close()


# ---------------------------------------------------------------- over the wire
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_rules_over_the_wire(transport: str, tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, storage_candidates=["nfs_a", "nfs_b"])
    cl: Client = TRANSPORTS[transport](tmp_path, config=cfg, clock=clock)
    try:
        ok(cl.admin("createInstanceGroup", {"instance_group": {
            "name": "w", "storage_candidates": ["nfs_a", "nfs_b"],
            "quota": {"capacity": 10**6, "quota_config": [
                {"storage_type": "ST_NFS", "capacity": 3 * BLOCK}]},
            "cache_config": {"meta_indexer_config": {"max_key_count": 5}}}}))
        ok(cl.meta("registerInstance", {"instance_group": "w", "instance_id": "x",
                                        "block_size": 16, "location_spec_infos": SPEC,
                                        "model_deployment": MODEL}))
        r = cl.meta("startWriteCache", {"instance_id": "x", "block_keys": [1, 2, 3, 4]})
        assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # 4 KiB > the 3 KiB NFS quota
        w = ok(cl.meta("startWriteCache", {"instance_id": "x", "block_keys": [1, 2]}))
        ok(cl.meta("finishWriteCache", {"instance_id": "x",
                                        "write_session_id": w["write_session_id"],
                                        "success_blocks": {"offset": 2}}))
        g = ok(cl.admin("getInstanceGroup", {"name": "w"}))["instance_group"]
        assert g["cache_config"]["meta_indexer_config"]["max_key_count"] == 5
        assert g["quota"]["quota_config"] == [{"storage_type": "ST_NFS",
                                               "capacity": 3 * BLOCK}]
        break_dir(tmp_path / "nfs_a")
        cl.service.probe_storages()
        listed = {x["global_unique_name"]: x
                  for x in ok(cl.admin("listStorage", {}))["storage"]}
        assert listed["nfs_a"]["healthy"] is False and listed["nfs_b"]["healthy"] is True
        r = ok(cl.meta("getCacheLocation", {"instance_id": "x", "block_keys": [1, 2]}))
        assert r["locations"] == []
        mets = ok(cl.admin("getMetrics", {}))["metrics"]
        health = {m["metric_tags"][0]["tag_value"]: m["metric_value"]
                  for m in mets if m["metric_name"] == "kvsim_storage_healthy"}
        assert health["nfs_a"] == {"int_value": 0} and health["nfs_b"] == {"int_value": 1}
        if transport == "http":
            text = httpx.get(f"{cl.meta_url}/metrics", timeout=10).text  # type: ignore[attr-defined]
            assert 'kvsim_storage_healthy{storage="nfs_a"} 0' in text
    finally:
        cl.close()


def test_unfiltered_reads_unchanged_when_all_usable(tmp_path: Path, clock: ManualClock) -> None:
    """With every storage usable the reads take the plain kernel path; with a slot mask
    of all-true the filtered path gives the same rows for every query rule."""
    s = service(tmp_path, clock, make_config(tmp_path))
    c = Calls(s)
    rng = np.random.default_rng(3)
    c.write(rng.choice(40, size=25, replace=False).tolist())
    assert s.mgr.storage.all_ok
    allok = np.ones(128, dtype=bool)
    for _ in range(50):
        keys = rng.integers(0, 40, size=int(rng.integers(1, 12)))
        mask = rng.random(keys.shape[0]) < 0.2 if rng.random() < 0.5 else None
        for q, sw in (("prefix", 0), ("batch", 0), ("sw", int(rng.integers(1, len(keys) + 1)))):
            a = s.mgr.match("i0", keys, query=q, mask=mask, sw_size=sw, touch=False)
            b = s.mgr.match("i0", keys, query=q, mask=mask, sw_size=sw, touch=False,
                            slot_ok=allok)
            assert (a.hit_blocks, a.window_start) == (b.hit_blocks, b.window_start)
            assert a.rows.tolist() == b.rows.tolist() and a.found.tolist() == b.found.tolist()
    s.close()


# ---------------------------------------------------------------- storage capacity
def capacity_config(tmp: Path, fast_blocks: int, nfs_blocks: int) -> KVSimConfig:
    """Storages ``fast`` and ``nfs_a`` with capacities in blocks; groups ``g`` (both
    storages) and ``h`` (``fast`` only), no type quotas."""
    sts = storage_cfg(tmp)
    sts[0]["capacity_bytes"] = fast_blocks * BLOCK
    sts[1]["capacity_bytes"] = nfs_blocks * BLOCK
    inst = [{"instance_id": i, "group": g, "block_size": 16, "location_spec_infos": SPEC}
            for i, g in (("i0", "g"), ("h0", "h"))]
    return KVSimConfig.from_dict({
        "storages": sts,
        "instance_groups": [
            {"name": "g", "quota": {"bytes": 10**9}, "used_percentage": 1.0,
             "storage_candidates": ["fast", "nfs_a"]},
            {"name": "h", "quota": {"bytes": 10**9}, "used_percentage": 1.0,
             "storage_candidates": ["fast"]}],
        "instances": inst})


def test_storage_capacity_spills_then_evicts_own_group(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    s = service(tmp_path, clock, capacity_config(tmp_path, 4, 6))
    c = Calls(s)
    c.write([1, 2, 3, 4])  # fills fast
    clock.advance(10**6)
    c.write([5, 6])  # fast is full: the next candidate
    assert c.storage([1, 2, 3, 4, 5, 6]) == ["fast"] * 4 + ["nfs_a"] * 2
    clock.advance(10**6)
    c.write([7, 8, 9, 10])  # nfs_a full too
    clock.advance(10**6)
    c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2]})  # 3, 4 are LRU
    clock.advance(10**6)
    c.write([11, 12])  # evicts the LRU blocks on the first candidate only
    assert c.storage([11, 12]) == ["fast", "fast"]
    assert s.mgr.cached_keys("i0").tolist() == [1, 2, 5, 6, 7, 8, 9, 10, 11, 12]
    assert s.evicted_by_trigger == {"write_storage_capacity": 2}
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": list(range(20, 27))})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY"  # 7 blocks fit neither storage
    assert "capacity of storage 'fast'" in msg(r) and "capacity of storage 'nfs_a'" in msg(r)
    assert len(s.mgr.cached_keys("i0")) == 10  # refused: nothing evicted
    m = {(n, t.get("storage")): v for n, v, t in s.metrics()}
    assert m[("kvsim_storage_used_bytes", "fast")] == 4 * BLOCK
    assert m[("kvsim_storage_used_bytes", "nfs_a")] == 6 * BLOCK
    assert m[("kvsim_storage_capacity_bytes", "fast")] == 4 * BLOCK
    assert m[("kvsim_storage_used_bytes", "nfs_b")] == 0
    assert ("kvsim_storage_capacity_bytes", "nfs_b") not in m
    s.close()


def test_storage_capacity_is_shared_and_never_evicts_another_group(
        tmp_path: Path, clock: ManualClock) -> None:
    s = service(tmp_path, clock, capacity_config(tmp_path, 4, 6))
    c = Calls(s)
    c.write([1, 2, 3])  # group g: 3 of fast's 4 blocks
    ok(c.meta("startWriteCache", {"instance_id": "h0", "block_keys": [50]}))  # WRITING
    r = c.meta("startWriteCache", {"instance_id": "h0", "block_keys": [51]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY", r  # g's blocks are not h's to evict
    assert "capacity of storage 'fast'" in msg(r)
    assert s.mgr.cached_keys("i0").tolist() == [1, 2, 3]
    clock.advance(10**6)
    c.write([4, 5])  # g spills to nfs_a: fast is full with h's pending block
    assert c.storage([4, 5]) == ["nfs_a", "nfs_a"]
    # a larger capacity over the wire takes effect at the next write
    ok(c.admin("updateStorage", {"storage": {
        "global_unique_name": "fast", "capacity_bytes": 6 * BLOCK,
        "mooncake": {"master_service_entry": "mc-master:50051"}}}))
    clock.advance(10**6)
    w = ok(c.meta("startWriteCache", {"instance_id": "h0", "block_keys": [51, 52]}))
    assert len(w["locations"]) == 2
    s.close()


def test_storage_capacity_from_the_wire_is_validated(tmp_path: Path,
                                                     clock: ManualClock) -> None:
    s = service(tmp_path, clock, capacity_config(tmp_path, 4, 6))
    c = Calls(s)
    r = c.admin("addStorage", {"storage": {"global_unique_name": "m2", "capacity_bytes": -1,
                                           "mooncake": {"master_service_entry": "x:1"}}})
    assert code(r) == "INVALID_ARGUMENT" and "storage.capacity_bytes" in msg(r)
    listed = {x["global_unique_name"]: x for x in ok(c.admin("listStorage", {}))["storage"]}
    assert listed["fast"]["capacity_bytes"] == 4 * BLOCK
    s.close()


def test_storage_capacity_trigger_shares_the_excess_between_groups(
        tmp_path: Path, clock: ManualClock) -> None:
    """Lowering a storage's capacity below what it holds: the tick brings it back, each
    group giving back its share of the excess in its own LRU order."""
    s = service(tmp_path, clock, capacity_config(tmp_path, 6, 6))
    c = Calls(s)
    for k in (1, 2, 3, 4):  # group g: 4 blocks on fast, 1 oldest
        c.write([k])
        clock.advance(10**6)
    for k in (50, 51):  # group h: 2 blocks on fast
        c.write([k], iid="h0")
        clock.advance(10**6)
    c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1]})  # 2, 3 are g's LRU
    clock.advance(10**6)
    assert s.tick()["reclaimed"] == 0  # 6 of 6 blocks: nothing to do
    ok(c.admin("updateStorage", {"storage": {
        "global_unique_name": "fast", "capacity_bytes": 3 * BLOCK,
        "mooncake": {"master_service_entry": "mc-master:50051"}}}))
    assert s.tick()["reclaimed"] == 3
    # excess 3 blocks: g (4 of 6) gives back 2, h (2 of 6) gives back 1
    assert s.mgr.cached_keys("i0").tolist() == [1, 4]
    assert s.mgr.cached_keys("h0").tolist() == [51]
    assert s.evicted_by_trigger == {"storage_capacity": 3}
    ev = events(tmp_path, s, "CacheReclaimSubmit")
    assert [(e["trigger"], e["storage"], e["blocks"], e["used"], e["capacity"])
            for e in ev] == [("storage_capacity", "fast", 3, 6 * BLOCK, 3 * BLOCK)]
    assert s.tick()["reclaimed"] == 0
    m = {(n, t.get("storage")): v for n, v, t in s.metrics()}
    assert m[("kvsim_storage_used_bytes", "fast")] == 3 * BLOCK
    s.close()

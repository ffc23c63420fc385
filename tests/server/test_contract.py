"""The manager API contract (../shared/docs/manager-api.md), once per transport."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transports import ADMIN_PASSWORD, TRANSPORTS, Client

from kvsim.config import KVSimConfig
from kvsim.core.clock import ManualClock
from kvsim.trace.hashing import kvcm_token_keys

T0 = 1_700_000_000 * 10**9


def code(reply: dict[str, Any]) -> str:
    return reply["header"]["status"]["code"]


def msg(reply: dict[str, Any]) -> str:
    return reply["header"]["status"]["message"]


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert code(reply) == "OK", reply["header"]
    assert reply["header"]["request_id"]
    return reply


SPECS = [{"name": "tp0", "size": 100}, {"name": "tp1", "size": 100}]
MD = {"model_name": "qwen", "dtype": "bf16", "tp_size": 2, "user_data": "x"}


def register(c: Client, iid: str = "i0", group: str = "default", **kw: Any) -> dict[str, Any]:
    body = {"trace_id": "t", "instance_group": group, "instance_id": iid, "block_size": 4,
            "location_spec_infos": SPECS, "model_deployment": MD} | kw
    return c.meta("registerInstance", body)


def write(c: Client, keys: list[int], iid: str = "i0", ok_n: int | None = None
          ) -> dict[str, Any]:
    w = ok(c.meta("startWriteCache", {"instance_id": iid, "block_keys": keys}))
    n_new = len(w["locations"])
    ok(c.meta("finishWriteCache", {"instance_id": iid, "write_session_id": w["write_session_id"],
                                   "success_blocks": {"offset": n_new if ok_n is None
                                                      else ok_n}}))
    return w


def hits(c: Client, keys: list[int], iid: str = "i0", **kw: Any) -> int:
    r = ok(c.meta("getCacheLocation", {"instance_id": iid, "block_keys": keys} | kw))
    return len(r["locations"])


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def c(transport: str, tmp_path: Path, clock: ManualClock) -> Iterator[Client]:
    client = TRANSPORTS[transport](tmp_path, clock=clock)
    yield client
    client.close()


def small_config(tmp: Path, **group: Any) -> KVSimConfig:
    return KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp / "nfs")}],
        "instance_groups": [{"name": "default", "storage_candidates": ["nfs_01"]} | group],
    })


# ---------------------------------------------------------------------------- registry
def test_register_idempotent_and_duplicate(c: Client) -> None:
    r = ok(register(c))
    st = json.loads(r["storage_configs"])
    assert st[0]["global_unique_name"] == "nfs_01"
    ok(register(c))  # identical: idempotent
    ok(register(c, model_deployment=MD | {"user_data": "other"}))  # user_data ignored
    assert code(register(c, block_size=8)) == "DUPLICATE_ENTITY"
    assert code(register(c, model_deployment=MD | {"dtype": "fp8"})) == "DUPLICATE_ENTITY"
    assert code(register(c, "i1", group="nope")) == "INVALID_ARGUMENT"
    r = register(c, "i2", model_deployment={"dtype": "bf16"})
    assert code(r) == "INVALID_ARGUMENT" and "model_deployment.model_name" in msg(r)
    r = register(c, "i3", block_size="x")
    assert code(r) == "INVALID_ARGUMENT" and "block_size" in msg(r)


def test_get_instance_info(c: Client) -> None:
    ok(register(c, location_spec_groups=[{"name": "full", "spec_names": ["tp0", "tp1"]}]))
    r = ok(c.meta("getInstanceInfo", {"instance_id": "i0"}))
    info = r["instance_info"]
    assert r["instance_group"] == "default"
    assert info["instance_group_name"] == "default" and info["quota_group_name"] == "default"
    assert info["block_size"] == 4 and info["location_spec_infos"] == SPECS
    assert info["model_deployment"]["model_name"] == "qwen"
    assert info["location_spec_groups"] == [{"name": "full", "spec_names": ["tp0", "tp1"]}]
    assert code(c.meta("getInstanceInfo", {"instance_id": "zz"})) == "INSTANCE_NOT_EXIST"
    assert code(c.meta("getCacheLocation", {"instance_id": "zz", "block_keys": [1]})) == \
        "INSTANCE_NOT_EXIST"


def test_unknown_method_is_unsupported(c: Client) -> None:
    assert code(c.meta("noSuchCall", {})) == "UNSUPPORTED"
    assert code(c.admin("noSuchCall", {})) == "UNSUPPORTED"
    assert code(c.meta("addStorage", {})) == "UNSUPPORTED"  # admin call on the meta API


# ---------------------------------------------------------------------------- write + read
def test_write_then_prefix_read(c: Client, tmp_path: Path) -> None:
    ok(register(c))
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3],
                                      "write_timeout_seconds": 10}))
    assert w["block_mask"] == {"offset": 0}
    assert len(w["locations"]) == 3
    loc = w["locations"][0]
    assert loc["type"] == "ST_NFS" and loc["spec_size"] == 2
    assert [s["name"] for s in loc["location_specs"]] == ["tp0", "tp1"]
    uri = loc["location_specs"][0]["uri"]
    assert uri.startswith(f"file://nfs_01{tmp_path / 'nfs_01'}/i0/")
    assert len({s["uri"] for x in w["locations"] for s in x["location_specs"]}) == 6
    # WRITING blocks are not readable
    assert hits(c, [1, 2, 3]) == 0
    ok(c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": w["write_session_id"],
                                   "success_blocks": {"offset": 3}}))
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3, 4],
                                       "query_type": "QT_PREFIX_MATCH"}))
    assert [x["location_specs"] for x in g["locations"]] == \
        [x["location_specs"] for x in w["locations"]]
    assert hits(c, [1, 9, 3]) == 1  # nothing after the first miss
    assert hits(c, ["1", "2"], query_type=2) == 2  # int64 as strings, enum as number
    # masked keys are skipped
    assert hits(c, [7, 8, 3], block_mask={"offset": 2}) == 1
    assert hits(c, [1, 7, 3], block_mask={"bool_masks": {"values": [False, True, False]}}) == 2
    # filter the specs
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1],
                                       "location_spec_names": ["tp1"]}))
    assert [s["name"] for s in g["locations"][0]["location_specs"]] == ["tp1"]
    assert g["locations"][0]["spec_size"] == 1


def test_batch_and_sliding_window(c: Client) -> None:
    ok(register(c))
    write(c, [1, 2, 3])
    write(c, [10, 11])
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 5, 3],
                                       "query_type": "QT_BATCH_GET"}))
    types = [x["type"] for x in g["locations"]]
    assert types == ["ST_NFS", "ST_UNSPECIFIED", "ST_NFS"]
    assert g["locations"][1]["location_specs"] == []
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 5, 10, 11],
                                       "query_type": "QT_REVERSE_ROLL_SW_MATCH", "sw_size": 2}))
    assert [x["type"] for x in g["locations"]] == \
        ["ST_UNSPECIFIED", "ST_UNSPECIFIED", "ST_NFS", "ST_NFS"]
    for bad in (0, 5, -1):
        r = c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2],
                                        "query_type": "QT_REVERSE_ROLL_SW_MATCH",
                                        "sw_size": bad})
        assert code(r) == "INVALID_ARGUMENT" and "sw_size" in msg(r)
    n = ok(c.meta("getCacheLocationLen", {"instance_id": "i0", "block_keys": [1, 2, 9]}))
    assert n["cache_location_len"] == 2


def test_start_write_block_mask(c: Client) -> None:
    ok(register(c))
    write(c, [1, 2])
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]}))
    assert w["block_mask"] == {"offset": 2} and len(w["locations"]) == 1
    write(c, [5])
    w2 = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [4, 5, 6]}))
    assert w2["block_mask"] == {"bool_masks": {"values": [False, True, False]}}
    assert len(w2["locations"]) == 2
    # keys being written by another session are skipped too
    w3 = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [3]}))
    assert w3["block_mask"] == {"offset": 1} and w3["locations"] == []


def test_finish_partial_and_errors(c: Client) -> None:
    ok(register(c))
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]}))
    sid = w["write_session_id"]
    r = c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": sid})
    assert code(r) == "INVALID_ARGUMENT" and "success_blocks" in msg(r)
    r = c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": sid,
                                    "success_blocks": {"bool_masks": {"values": [True]}}})
    assert code(r) == "INVALID_ARGUMENT" and "success_blocks" in msg(r)
    ok(c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": sid,
                                   "success_blocks": {"bool_masks": {"values":
                                                                     [True, False, True]}}}))
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3],
                                       "query_type": "QT_BATCH_GET"}))
    assert [x["type"] for x in g["locations"]] == ["ST_NFS", "ST_UNSPECIFIED", "ST_NFS"]
    r = c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": sid,
                                    "success_blocks": {"offset": 0}})
    assert code(r) == "INVALID_ARGUMENT" and "session" in msg(r)
    r = c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": "999",
                                    "success_blocks": {"offset": 0}})
    assert code(r) == "INVALID_ARGUMENT"


def test_token_ids_hash_to_keys(c: Client) -> None:
    ok(register(c))
    tokens = list(range(1, 11))  # block_size 4: two full blocks, the tail is dropped
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "token_ids": tokens}))
    assert len(w["locations"]) == 2
    ok(c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": w["write_session_id"],
                                   "success_blocks": {"offset": 2}}))
    keys = kvcm_token_keys(tokens, 4).tolist()
    assert hits(c, keys) == 2
    # keys win over tokens
    assert hits(c, [12345], token_ids=tokens) == 0


def test_get_cache_meta(c: Client, clock: ManualClock) -> None:
    ok(register(c))
    write(c, [1, 2])
    clock.advance(5 * 10**9)
    r = ok(c.meta("getCacheMeta", {"instance_id": "i0", "block_keys": [1, 7, 2],
                                   "block_mask": {"offset": 1}}))
    metas = [json.loads(m) for m in r["metas"]]
    assert [m["status"] for m in metas] == ["CLS_NOT_FOUND", "CLS_SERVING"]
    assert metas[1]["id"] == "2" and "access_count" not in metas[1]
    assert [x["type"] for x in r["locations"]] == ["ST_UNSPECIFIED", "ST_NFS"]
    r = ok(c.meta("getCacheMeta", {"instance_id": "i0", "block_keys": [1], "detail_level": 1}))
    m = json.loads(r["metas"][0])
    assert m["write_time_us"] == T0 // 1000 and m["access_count"] >= 1


def test_remove_and_trim(c: Client, clock: ManualClock) -> None:
    ok(register(c))
    write(c, [1, 2, 3])
    ok(c.meta("removeCache", {"instance_id": "i0", "block_keys": [1, 2],
                              "block_mask": {"offset": 1}}))
    g = ok(c.meta("getCacheLocation", {"instance_id": "i0", "block_keys": [1, 2, 3],
                                       "query_type": "QT_BATCH_GET"}))
    assert [x["type"] for x in g["locations"]] == ["ST_NFS", "ST_UNSPECIFIED", "ST_NFS"]
    clock.advance(100 * 10**9)
    write(c, [4])
    t_sec = T0 // 10**9
    ok(c.meta("trimCache", {"instance_id": "i0", "strategy": "TS_TIMESTAMP",
                            "begin_timestamp": t_sec - 1, "end_timestamp": t_sec + 50}))
    assert hits(c, [4]) == 1 and hits(c, [1]) == 0
    r = c.meta("trimCache", {"instance_id": "i0", "strategy": "TS_TIMESTAMP",
                             "begin_timestamp": 10, "end_timestamp": 5})
    assert code(r) == "INVALID_ARGUMENT" and "end_timestamp" in msg(r)
    ok(c.meta("trimCache", {"instance_id": "i0", "strategy": "TS_REMOVE_ALL_CACHE"}))
    assert hits(c, [4]) == 0
    write(c, [5])
    ok(c.meta("trimCache", {"instance_id": "i0", "strategy": 2}))
    assert hits(c, [5]) == 0
    r = c.meta("trimCache", {"instance_id": "i0"})
    assert code(r) == "INVALID_ARGUMENT" and "strategy" in msg(r)
    r = c.meta("trimCache", {"instance_id": "i0", "strategy": "TS_NOPE"})
    assert code(r) == "INVALID_ARGUMENT" and "strategy" in msg(r)


# ---------------------------------------------------------------------------- quota, expiry
def test_quota_reach_max_entity_capacity(transport: str, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, quota={"blocks": 4})
    c = TRANSPORTS[transport](tmp_path, config=cfg, clock=ManualClock(T0))
    try:
        ok(register(c))
        w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]}))
        r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [4, 5]})
        assert code(r) == "REACH_MAX_ENTITY_CAPACITY"
        ok(c.meta("finishWriteCache", {"instance_id": "i0",
                                       "write_session_id": w["write_session_id"],
                                       "success_blocks": {"offset": 3}}))
        write(c, [4, 5])  # SERVING blocks are evictable: the write fits
        assert hits(c, [4, 5]) == 2
        r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [10, 11, 12, 13, 14]})
        assert code(r) == "REACH_MAX_ENTITY_CAPACITY"
        u = {g.name: g for g in c.service.mgr.usage()}["default"]
        assert u.used <= 4 and u.pending_blocks == 0
    finally:
        c.close()


def test_write_session_expiry(c: Client, clock: ManualClock) -> None:
    ok(register(c))
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2],
                                      "write_timeout_seconds": 5}))
    clock.advance(4 * 10**9)
    assert c.tick()["expired"] == 0
    clock.advance(2 * 10**9)
    assert c.tick()["expired"] == 1
    r = c.meta("finishWriteCache", {"instance_id": "i0", "write_session_id": w["write_session_id"],
                                    "success_blocks": {"offset": 2}})
    assert code(r) == "INVALID_ARGUMENT"
    assert hits(c, [1, 2]) == 0
    u = {g.name: g for g in c.service.mgr.usage()}["default"]
    assert u.used == 0 and u.pending_blocks == 0
    w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1, 2]}))
    assert len(w["locations"]) == 2  # the keys are free to write again


def test_reclaimer_and_event_log(transport: str, tmp_path: Path) -> None:
    # the reclaimer on its timer (reclaim.interval_ms > 0): the writes keep the quota only
    cfg = KVSimConfig.from_dict(small_config(tmp_path, quota={"blocks": 10},
                                             used_percentage=0.5).to_dict()
                                | {"reclaim": {"interval_ms": 500}})
    c = TRANSPORTS[transport](tmp_path, config=cfg, clock=ManualClock(T0))
    try:
        ok(register(c))
        write(c, list(range(1, 9)))
        assert hits(c, [1]) == 1
        t = c.tick()
        assert t["reclaimed"] == 3
        u = {g.name: g for g in c.service.mgr.usage()}["default"]
        assert u.used == 5
        lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
        kinds = [x["type"] for x in lines]
        assert kinds == ["StartWriteCache", "FinishWriteCache", "GetCacheLocation",
                         "CacheReclaimSubmit"]
        assert all(x["trigger_time_us"] == T0 // 1000 for x in lines)
        assert lines[0]["source"] == "i0" and lines[3]["blocks"] == 3
    finally:
        c.close()


def test_watermark_kept_at_each_write_by_default(tmp_path: Path) -> None:
    """``reclaim.interval_ms`` 0 (the default): finishWriteCache runs the reclaimer, so
    the usage never rests above quota x used_percentage (as the replay contract)."""
    cfg = small_config(tmp_path, quota={"blocks": 10}, used_percentage=0.5)
    c = TRANSPORTS["inproc"](tmp_path, config=cfg, clock=ManualClock(T0))
    try:
        ok(register(c))
        write(c, list(range(1, 9)))
        u = {g.name: g for g in c.service.mgr.usage()}["default"]
        assert u.used == 5 and c.service.evicted_by_trigger == {"quota": 3}
        assert c.tick()["reclaimed"] == 0
        lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert [x["type"] for x in lines] == ["StartWriteCache", "FinishWriteCache",
                                              "CacheReclaimSubmit"]
    finally:
        c.close()


def test_set_clock(transport: str, tmp_path: Path) -> None:
    """The admin call ``setClock`` (``kvsim serve --clock manual``), on every transport:
    the reclaimer runs at its due times on the way (``reclaim.interval_ms``), write
    sessions expire, the clock never moves back; a wall-clock server refuses it."""
    cfg = KVSimConfig.from_dict(small_config(tmp_path, quota={"blocks": 10},
                                             used_percentage=0.5).to_dict()
                                | {"reclaim": {"interval_ms": 1000}})
    c = TRANSPORTS[transport](tmp_path, config=cfg, clock=ManualClock(T0), manual_clock=True)
    try:
        ok(register(c))
        write(c, list(range(1, 9)))  # 8 blocks: over the watermark (5) until a tick
        w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [20, 21],
                                          "write_timeout_seconds": 2}))
        r = ok(c.admin("setClock", {"now_ns": T0 + 999_999_999}))
        assert (r["now_ns"], r["expired"], r["reclaimed"], r["reaped"]) == (
            T0 + 999_999_999, 0, 0, 0)
        assert hits(c, list(range(1, 9))) == 8
        r = ok(c.admin("setClock", {"now_ns": str(T0 + 3 * 10**9)}))  # int64 as a string
        assert r["now_ns"] == T0 + 3 * 10**9
        # the tick at T0 + 1 s keeps the watermark with the session's 2 pending blocks
        # counted (10 -> 5); the one at T0 + 3 s expires the session
        assert r["expired"] == 1 and r["reclaimed"] == 5
        assert sum(hits(c, [k]) for k in range(1, 9)) == 3
        r = c.meta("finishWriteCache", {"instance_id": "i0",
                                        "write_session_id": w["write_session_id"],
                                        "success_blocks": {"offset": 2}})
        assert code(r) == "INVALID_ARGUMENT"  # expired on the way
        for t in (T0, 0):  # never back (0 is a time, not a missing field, over gRPC too)
            back = ok(c.admin("setClock", {"now_ns": t}))
            assert back["now_ns"] == T0 + 3 * 10**9 and back["reclaimed"] == 0
        assert code(c.admin("setClock", {})) == "INVALID_ARGUMENT"
        r = c.admin("setClock", {"now_ns": T0 + 4 * 10**9}, credential="admin:wrong")
        assert code(r) == "INVALID_ARGUMENT" and "credential" in msg(r)
        assert c.service.clock.now_ns() == T0 + 3 * 10**9
    finally:
        c.close()


def test_set_clock_refused_on_a_wall_clock(c: Client) -> None:
    r = c.admin("setClock", {"now_ns": T0 + 10**9})
    assert code(r) == "UNSUPPORTED" and "--clock manual" in msg(r)


# ---------------------------------------------------------------------------- admin
def test_admin_auth(c: Client) -> None:
    for cred in (None, "admin:wrong", "nobody:x", "garbage"):
        r = c.admin("listStorage", {}, credential=cred)
        assert code(r) == "INVALID_ARGUMENT" and "credential" in msg(r)
        assert not r.get("storage")  # HTTP prints the reply's fields at their defaults
    ok(c.admin("addAccount", {"user_name": "bob", "password": "pw", "role": "ROLE_USER"}))
    assert code(c.admin("listStorage", {}, credential="bob:pw")) == "INVALID_ARGUMENT"
    ok(c.admin("addAccount", {"user_name": "root2", "password": "pw2", "role": 1}))
    ok(c.admin("listStorage", {}, credential="root2:pw2"))
    ok(c.admin("listStorage", {}, credential=f"admin:{ADMIN_PASSWORD}"))
    # meta calls need no credential
    ok(register(c))


def test_storages(c: Client, tmp_path: Path) -> None:
    st = {"global_unique_name": "nfs_02", "nfs": {"root_path": str(tmp_path / "n2")}}
    ok(c.admin("addStorage", {"storage": st}))
    assert (tmp_path / "n2").is_dir()
    ok(c.admin("addStorage", {"storage": st}))  # identical: idempotent
    r = c.admin("addStorage", {"storage": st | {"nfs": {"root_path": str(tmp_path / "x")}}})
    assert code(r) == "DUPLICATE_ENTITY"
    r = c.admin("addStorage", {"storage": {"global_unique_name": "m"}})
    assert code(r) == "INVALID_ARGUMENT" and "storage" in msg(r)
    ok(c.admin("addStorage", {"storage": {"global_unique_name": "mc",
                                          "mooncake": {"master_service_entry": "h:1"}}}))
    names = [s["global_unique_name"] for s in ok(c.admin("listStorage", {}))["storage"]]
    assert names == ["mc", "nfs_01", "nfs_02"]
    ok(c.admin("disableStorage", {"storage_unique_name": "nfs_02"}))
    lst = {s["global_unique_name"]: s for s in ok(c.admin("listStorage", {}))["storage"]}
    assert lst["nfs_02"]["available"] is False and lst["nfs_01"]["available"] is True
    ok(c.admin("enableStorage", {"storage_unique_name": "nfs_02"}))
    ok(c.admin("updateStorage", {"storage": st | {"nfs": {"root_path": str(tmp_path / "n3")}}}))
    r = c.admin("updateStorage", {"storage": st | {"global_unique_name": "zz"}})
    assert code(r) == "INVALID_ARGUMENT"
    ok(c.admin("removeStorage", {"storage_unique_name": "nfs_02"}))
    r = c.admin("removeStorage", {"storage_unique_name": "nfs_01"})  # a group candidate
    assert code(r) == "INVALID_ARGUMENT" and "default" in msg(r)
    assert code(c.admin("enableStorage", {"storage_unique_name": "zz"})) == "INVALID_ARGUMENT"


def test_disabled_storage_blocks_writes(c: Client) -> None:
    ok(register(c))
    ok(c.admin("disableStorage", {"storage_unique_name": "nfs_01"}))
    r = c.meta("startWriteCache", {"instance_id": "i0", "block_keys": [1]})
    assert code(r) == "REACH_MAX_ENTITY_CAPACITY" and "storage" in msg(r)


def group_body(name: str = "g1", version: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": name, "storage_candidates": ["nfs_01"], "max_instance_count": 2,
            "quota": {"capacity": 10**6, "quota_config": [{"storage_type": "ST_NFS",
                                                           "capacity": 10**6}]},
            "cache_config": {"reclaim_strategy": {"reclaim_policy": "POLICY_LRU",
                                                  "trigger_strategy": {"used_percentage": 0.9},
                                                  "delay_before_delete_ms": 0}},
            "user_data": "u", "version": version} | kw


def test_instance_groups(c: Client) -> None:
    ok(c.admin("createInstanceGroup", {"instance_group": group_body()}))
    ok(c.admin("createInstanceGroup", {"instance_group": group_body()}))  # identical
    r = c.admin("createInstanceGroup", {"instance_group": group_body(max_instance_count=5)})
    assert code(r) == "DUPLICATE_ENTITY"
    g = ok(c.admin("getInstanceGroup", {"name": "g1"}))["instance_group"]
    assert g["quota"]["capacity"] == 10**6 and g["version"] == 1
    assert g["quota"]["quota_config"] == [{"storage_type": "ST_NFS", "capacity": 10**6}]
    rs = g["cache_config"]["reclaim_strategy"]
    assert rs["reclaim_policy"] == "POLICY_LRU" and rs["trigger_strategy"]["used_percentage"] == 0.9
    # as in KVCM, a candidate may name a storage not added yet (writes skip it)
    ok(c.admin("createInstanceGroup", {"instance_group": group_body(
        "g2", storage_candidates=["nope"])}))
    g2 = ok(c.admin("getInstanceGroup", {"name": "g2"}))["instance_group"]
    assert g2["storage_candidates"] == ["nope"]
    ok(c.admin("removeInstanceGroup", {"name": "g2"}))
    # optimistic version check
    up = {"instance_group": group_body(version=2, user_data="v2"), "current_version": 1}
    ok(c.admin("updateInstanceGroup", up))
    r = c.admin("updateInstanceGroup", up)  # stale current_version
    assert code(r) == "INVALID_ARGUMENT" and "version conflict" in msg(r)
    r = c.admin("updateInstanceGroup", {"instance_group": group_body(version=2),
                                        "current_version": 2})
    assert code(r) == "INVALID_ARGUMENT" and "larger" in msg(r)
    assert ok(c.admin("getInstanceGroup", {"name": "g1"}))["instance_group"]["user_data"] == "v2"
    # instances in the group; max_instance_count
    ok(register(c, "a", group="g1"))
    ok(c.admin("registerInstance", {"instance_group": "g1", "instance_id": "b", "block_size": 4,
                                    "location_spec_infos": SPECS, "model_deployment": MD}))
    assert code(register(c, "c", group="g1")) == "REACH_MAX_ENTITY_CAPACITY"
    lst = ok(c.admin("listInstanceInfo", {"instance_group_name": "g1"}))["instance_info"]
    assert [i["instance_id"] for i in lst] == ["a", "b"]
    assert ok(c.admin("getInstanceInfo", {"instance_id": "a"}))["instance_info"][
        "instance_group_name"] == "g1"
    r = c.admin("removeInstanceGroup", {"name": "g1"})
    assert code(r) == "INVALID_ARGUMENT" and "instances" in msg(r)
    ok(c.admin("removeInstance", {"instance_id": "a"}))
    ok(c.admin("removeInstance", {"instance_id": "b"}))
    assert code(c.admin("removeInstance", {"instance_id": "b"})) == "INSTANCE_NOT_EXIST"
    ok(c.admin("removeInstanceGroup", {"name": "g1"}))
    assert code(c.admin("getInstanceGroup", {"name": "g1"})) == "INVALID_ARGUMENT"


def test_accounts(c: Client) -> None:
    ok(c.admin("addAccount", {"user_name": "u1", "password": "p", "role": "ROLE_USER"}))
    assert code(c.admin("addAccount", {"user_name": "u1", "password": "q"})) == \
        "DUPLICATE_ENTITY"
    r = c.admin("addAccount", {"user_name": "u2"})
    assert code(r) == "INVALID_ARGUMENT" and "password" in msg(r)
    accs = ok(c.admin("listAccount", {}))["accounts"]
    assert accs == [{"user_name": "admin", "role": "ROLE_ADMIN"},
                    {"user_name": "u1", "role": "ROLE_USER"}]
    assert "p" not in json.dumps(accs)
    ok(c.admin("deleteAccount", {"user_name": "u1"}))
    assert code(c.admin("deleteAccount", {"user_name": "u1"})) == "INVALID_ARGUMENT"
    r = c.admin("deleteAccount", {"user_name": "admin"})
    assert code(r) == "INVALID_ARGUMENT" and "last admin" in msg(r)


def test_config_snapshot_roundtrip(c: Client) -> None:
    ok(c.admin("createInstanceGroup", {"instance_group": group_body()}))
    ok(register(c, "a", group="g1"))
    ok(c.admin("addAccount", {"user_name": "u1", "password": "p"}))
    snap = ok(c.admin("genConfigSnapshot", {}))["config_snapshot"]
    data = json.loads(snap)
    assert {g["name"] for g in data["instance_groups"]} == {"default", "g1"}
    assert [i["instance_id"] for i in data["instances"]] == ["a"]
    ok(c.admin("removeInstance", {"instance_id": "a"}))
    ok(c.admin("removeInstanceGroup", {"name": "g1"}))
    ok(c.admin("loadConfigSnapshot", {"config_snapshot": snap}))
    assert ok(c.admin("genConfigSnapshot", {}))["config_snapshot"] == snap
    ok(c.meta("getInstanceInfo", {"instance_id": "a"}))
    # a bad snapshot changes nothing
    r = c.admin("loadConfigSnapshot", {"config_snapshot": "{not json"})
    assert code(r) == "INVALID_ARGUMENT" and "config_snapshot" in msg(r)
    bad = data | {"instances": [{"instance_id": "x", "instance_group_name": "nope"}]}
    assert code(c.admin("loadConfigSnapshot", {"config_snapshot": json.dumps(bad)})) == \
        "INVALID_ARGUMENT"
    assert ok(c.admin("genConfigSnapshot", {}))["config_snapshot"] == snap


def test_monitoring_calls(c: Client) -> None:
    ok(register(c))
    write(c, [1, 2])
    m = ok(c.admin("getMetrics", {}))
    by = {(x["metric_name"], tuple((t["tag_key"], t["tag_value"]) for t in x["metric_tags"])):
          x["metric_value"] for x in m["metrics"]}
    assert by[("kvsim_group_serving_blocks", (("group", "default"), ("unit", "bytes")))] == \
        {"int_value": 2}
    assert m["timestamp"] > 0
    h = ok(c.admin("checkHealth", {}))
    assert h["is_leader"] is True and h["is_health"] is True
    ci = ok(c.admin("getManagerClusterInfo", {}))
    assert ci["self_node_id"] == ci["leader_node_id"] == ci["leader_endpoint"]["node_id"]
    assert code(c.admin("leaderDemote", {})) == "UNSUPPORTED"


def test_state_consistent_after_many_ops(c: Client) -> None:
    ok(register(c))
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = rng.integers(0, 40, size=int(rng.integers(1, 8))).tolist()
        w = ok(c.meta("startWriteCache", {"instance_id": "i0", "block_keys": keys}))
        n = len(w["locations"])
        ok(c.meta("finishWriteCache", {"instance_id": "i0",
                                       "write_session_id": w["write_session_id"],
                                       "success_blocks": {"offset": int(rng.integers(0, n + 1))}}))
    u = {g.name: g for g in c.service.mgr.usage()}["default"]
    assert u.pending_blocks == 0 and u.used == u.serving_blocks * 200
    held = c.service.mgr.cached_keys("i0")
    assert hits(c, held.tolist(), query_type="QT_BATCH_GET") == held.shape[0]

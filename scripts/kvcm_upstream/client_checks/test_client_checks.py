"""KVCM's Python client (kv_cache_manager/py_connector/common/manager_client.py,
unchanged) and its connectors' storage_configs parsing against a live `kvsim serve
--admin-auth none`, started by the testlib shim. Our own checks (not upstream's)."""
import json
import os
import shutil
import tempfile

import pytest
import requests
from connector_parsing import SglangParser, VllmParser
from kv_cache_manager.py_connector.common.manager_client import KvCacheManagerClient
from testlib.worker import Worker, WorkerEnv

BS = 4
DEPLOY = {"model_name": "Qwen/Qwen3-0.6B", "dtype": "bfloat16", "use_mla": False,
          "tp_size": 2, "dp_size": 1, "pp_size": 1}
SPECS = [{"name": "tp0", "size": 28 * 2 * BS * 8 * 128 * 2},
         {"name": "tp1", "size": 28 * 2 * BS * 8 * 128 * 2}]


def gen_key_vector(tokens, block_size):
    """KVCM's GenKeyVector (hash_util.h, from RTP-LLM), written from its formula:
    per full block, for each token v: h ^= v + 0x9e3779b97f4a7c15 + (h << 12) + (h >> 32)
    on int64 (wrapping), chained from h = 0."""
    def s64(x):
        x &= (1 << 64) - 1
        return x - (1 << 64) if x >> 63 else x

    keys, h = [], 0
    for b in range(len(tokens) // block_size):
        for v in tokens[b * block_size:(b + 1) * block_size]:
            h = s64(h ^ s64(v + 0x9e3779b97f4a7c15 + s64(h << 12) + (h >> 32)))
        keys.append(h)
    return keys


@pytest.fixture(scope="module")
def kv():
    os.makedirs("run", exist_ok=True)
    root = tempfile.mkdtemp(prefix="client_checks_", dir="run")
    w = Worker(0, WorkerEnv(workdir=os.path.join(root, "w0"), path_root=root))
    assert w.start_worker()
    yield w
    w.stop_worker()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def client(kv):
    c = KvCacheManagerClient(f"http://127.0.0.1:{kv.env.http_port}")
    yield c
    c.close()


def admin(kv, method, body):
    r = requests.post(f"http://127.0.0.1:{kv.env.admin_http_port}/api/{method}", json=body,
                      timeout=30)
    return r.json()


def register(client, iid, group="default", **kw):
    return client.register_instance({"trace_id": "trace_trace", "instance_group": group,
                                     "instance_id": iid, "model_deployment": DEPLOY,
                                     "block_size": BS, "location_spec_infos": SPECS}, **kw)


TOKENS = list(range(1000, 1010))  # 2 full blocks of 4 + 2 tokens


def test_01_register_as_the_vllm_connector_does(client):
    r = register(client, "vllm0")
    assert isinstance(r["storage_configs"], str)


def test_02_vllm_parse_does_not_crash_on_default_storages(client):
    r = register(client, "vllm0")
    for e in json.loads(r["storage_configs"]):
        assert {"type", "is_available", "global_unique_name", "storage_spec"} <= set(e)
    assert VllmParser().parse_hf3fs_configs(r["storage_configs"]) == []


def test_03_sglang_parse_does_not_crash(client):
    r = register(client, "vllm0")
    assert SglangParser().parse_hf3fs_configs(r["storage_configs"]) == []


def _hf3fs_group(kv, name, field, storage):
    assert admin(kv, "addStorage", {"storage": {"global_unique_name": storage,
                                                field: {"mountpoint": "/3fs/stage",
                                                        "root_dir": "kvcache"}}}
                 )["header"]["status"]["code"] == "OK"
    assert admin(kv, "createInstanceGroup", {"instance_group": {
        "name": name, "storage_candidates": [storage],
        "quota": {"capacity": 1 << 40}}})["header"]["status"]["code"] == "OK"


def test_04_hf3fs_storage_reaches_both_connectors(kv, client):
    _hf3fs_group(kv, "g3fs", "threefs", "hf3fs_01")
    r = register(client, "vllm3fs", group="g3fs")
    v = VllmParser().parse_hf3fs_configs(r["storage_configs"])
    s = SglangParser().parse_hf3fs_configs(r["storage_configs"])
    assert [(c["type"], c["mountpoint"], c["root_dir"]) for c in v] == [
        ("hf3fs", "/3fs/stage", "kvcache")]
    assert [(c["type"], c["mountpoint"], c["root_dir"]) for c in s] == [
        ("hf3fs", "/3fs/stage", "kvcache")]


def test_05_vcns_hf3fs_is_taken_as_hf3fs_by_vllm(kv, client):
    _hf3fs_group(kv, "gvcns", "vcnsthreefs", "vcns_01")
    r = register(client, "vllmvcns", group="gvcns")
    assert [c["type"] for c in json.loads(r["storage_configs"])] == ["vcns_hf3fs"]
    assert [c["type"] for c in VllmParser().parse_hf3fs_configs(r["storage_configs"])] == [
        "hf3fs"]


def test_06_get_instance_info(client):
    register(client, "vllm0")
    r = client.get_instance_info({"trace_id": "t", "instance_id": "vllm0"})
    md = r["instance_info"]["model_deployment"]
    assert (md["model_name"], md["dtype"], md["tp_size"]) == ("Qwen/Qwen3-0.6B", "bfloat16", 2)
    assert int(r["instance_info"]["block_size"]) == BS


STATE = {}


def test_07_start_write_by_token_ids(client):
    register(client, "vllm0")
    r = client.start_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                  "token_ids": TOKENS, "write_timeout_seconds": 30})
    assert r["write_session_id"]
    assert len(r["locations"]) == 2  # full blocks only
    for loc in r["locations"]:
        assert sorted(s["name"] for s in loc["location_specs"]) == ["tp0", "tp1"]
    STATE["written"] = r


def test_08_connector_finds_its_uris(client):
    locs = STATE["written"]["locations"]
    p = VllmParser()
    u0, u1 = p.get_self_uris(locs, 0), p.get_self_uris(locs, 1)
    assert len(u0) == len(u1) == 2 and not set(u0) & set(u1)
    assert all(u for u in u0 + u1)


def test_09_finish_write(client):
    client.finish_write_cache({"trace_id": "test_test", "instance_id": "vllm0",
                               "write_session_id": STATE["written"]["write_session_id"],
                               "success_blocks": {"bool_masks": {"values": [True, True]}}})


def test_10_read_back_by_token_ids(client):
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "token_ids": TOKENS,
                                   "block_mask": {"offset": 0}})
    assert r["locations"] == STATE["written"]["locations"]


def test_11_read_back_by_upstream_keys(client):
    keys = gen_key_vector(TOKENS, BS)
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "block_keys": keys,
                                   "block_mask": {"offset": 0}})
    assert r["locations"] == STATE["written"]["locations"]


def test_12_longer_prompt_shares_the_prefix(client):
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH",
                                   "token_ids": [*TOKENS[:8], 7, 7, 7, 7, 7],
                                   "block_mask": {"offset": 0}})
    assert len(r["locations"]) == 2


def test_13_block_mask_offset(client):
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "token_ids": TOKENS,
                                   "block_mask": {"offset": 1}})
    assert r["locations"] == STATE["written"]["locations"][1:]


def test_14_rewrite_needs_no_new_locations(client):
    r = client.start_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                  "token_ids": TOKENS, "write_timeout_seconds": 30})
    assert r["locations"] == []
    if r.get("write_session_id"):
        client.finish_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                   "write_session_id": r["write_session_id"],
                                   "success_blocks": {"bool_masks": {"values": []}}},
                                  check_response=False)


def test_15_error_raises_in_the_client(client):
    with pytest.raises(AssertionError):
        client.get_cache_location({"trace_id": "t", "instance_id": "nobody",
                                   "query_type": "QT_PREFIX_MATCH", "block_keys": [1]})


def test_16_error_reply_carries_every_field(client):
    r = client.get_cache_location({"trace_id": "t", "instance_id": "nobody",
                                   "query_type": "QT_PREFIX_MATCH", "block_keys": [1]},
                                  check_response=False)
    assert r["header"]["status"]["code"] != "OK" and r["locations"] == []


def test_17_register_unknown_group(client):
    r = register(client, "x", group="no_such_group", check_response=False)
    assert r["header"]["status"]["code"] != "OK" and "storage_configs" in r


def test_18_register_conflict_is_refused(client):
    r = client.register_instance({"trace_id": "t", "instance_group": "default",
                                  "instance_id": "vllm0",
                                  "model_deployment": dict(DEPLOY, model_name="other"),
                                  "block_size": BS, "location_spec_infos": SPECS},
                                 check_response=False)
    assert r["header"]["status"]["code"] != "OK"


def test_19_finish_of_unknown_session(client):
    r = client.finish_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                   "write_session_id": "nope",
                                   "success_blocks": {"bool_masks": {"values": [True]}}},
                                  check_response=False)
    assert r["header"]["status"]["code"] != "OK"


def test_20_remove_cache_by_token_ids(client):
    client.remove_cache({"trace_id": "t", "instance_id": "vllm0", "token_ids": TOKENS})
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "token_ids": TOKENS,
                                   "block_mask": {"offset": 0}})
    assert r["locations"] == []


def test_21_trim_cache(client):
    w = client.start_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                  "token_ids": TOKENS, "write_timeout_seconds": 30})
    client.finish_write_cache({"trace_id": "t", "instance_id": "vllm0",
                               "write_session_id": w["write_session_id"],
                               "success_blocks": {"bool_masks": {"values": [True, True]}}})
    client.trim_cache({"trace_id": "t", "instance_id": "vllm0",
                       "strategy": "TS_REMOVE_ALL_CACHE"})
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "token_ids": TOKENS,
                                   "block_mask": {"offset": 0}})
    assert r["locations"] == []


def test_22_failed_blocks_are_not_served(client):
    w = client.start_write_cache({"trace_id": "t", "instance_id": "vllm0",
                                  "token_ids": TOKENS, "write_timeout_seconds": 30})
    client.finish_write_cache({"trace_id": "t", "instance_id": "vllm0",
                               "write_session_id": w["write_session_id"],
                               "success_blocks": {"bool_masks": {"values": [True, False]}}})
    r = client.get_cache_location({"trace_id": "t", "instance_id": "vllm0",
                                   "query_type": "QT_PREFIX_MATCH", "token_ids": TOKENS,
                                   "block_mask": {"offset": 0}})
    assert len(r["locations"]) == 1


def test_23_unknown_instance_info(client):
    r = client.get_instance_info({"trace_id": "t", "instance_id": "nobody"},
                                 check_response=False)
    assert r["header"]["status"]["code"] != "OK"

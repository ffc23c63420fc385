"""Issue 19: the offline optimum's headroom in ``getCapacityAdvice`` (``bound: belady``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvsim.config import KVSimConfig
from kvsim.optimizer.bounds import belady
from kvsim.server.service import Service
from kvsim.trace.generator import GenSpec, generate_trace
from kvsim.trace.readers import read_trace

QUOTA = 400


def test_belady_headroom_from_the_event_log(tmp_path: Path) -> None:
    cfg = KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp_path / "nfs")}],
        "instance_groups": [{"name": "default", "quota": {"blocks": QUOTA},
                             "storage_candidates": ["nfs_01"],
                             "eviction": {"policy": "lru"}}],
    })
    trace = generate_trace(GenSpec(seed=3, requests=300, instances=2, block_size=64))
    svc = Service(cfg, data_dir=tmp_path, admin_password="pw", advisor_sample_rate=1.0)
    try:
        def call(method: str, body: dict) -> dict:
            r = svc.call("meta", method, body)
            assert r["header"]["status"]["code"] == "OK", (method, r["header"])
            return r

        for name in trace.instances:
            call("registerInstance", {"instance_group": "default", "instance_id": name,
                                      "block_size": trace.block_size,
                                      "model_deployment": {"model_name": "m",
                                                           "dtype": "bf16"}})
        for q in range(trace.n_requests):
            iid = trace.instances[int(trace.instance[q])]
            keys = trace.request_keys(q).tolist()
            call("getCacheLocation", {"instance_id": iid, "block_keys": keys,
                                      "query_type": "QT_PREFIX_MATCH"})
            w = call("startWriteCache", {"instance_id": iid, "block_keys": keys})
            call("finishWriteCache", {"instance_id": iid,
                                      "write_session_id": w["write_session_id"],
                                      "success_blocks": {"offset": len(w["locations"])}})
            if q % 50 == 49:
                svc.tick()
        svc.tick()
        plain = svc.call("admin", "getCapacityAdvice", {}, credential="admin:pw")
        assert "belady" not in plain["advice"]["groups"][0]
        r = svc.call("admin", "getCapacityAdvice", {"bound": "belady"},
                     credential="admin:pw")
    finally:
        svc.close()
    assert r["header"]["status"]["code"] == "OK", r["header"]
    g = r["advice"]["groups"][0]
    b = g["belady"]
    logged = read_trace(tmp_path / "events.jsonl", "kvcm-events")
    rows = np.argsort(logged.ts_ns, kind="stable")
    want = belady(logged.select(rows), [QUOTA])[0]["hit_blocks"]
    actual = g["windows"]["since_start"]["actual_hit_blocks"]
    assert b["capacity_blocks"] == QUOTA and b["hit_blocks"] == want
    assert b["headroom_blocks"] == want - actual >= 0
    assert 0 < actual < want  # the quota binds: there is something to win

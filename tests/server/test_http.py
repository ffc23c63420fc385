"""HTTP-only behaviour, and a fuzz test of every call with malformed bodies."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transports import ADMIN_CREDENTIAL, ADMIN_PASSWORD

from kvsim.server.app import ServerHandle, start_server
from kvsim.server.service import Service

AUTH = {"Authorization": "Basic " + base64.b64encode(ADMIN_CREDENTIAL.encode()).decode()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    h = start_server(None, data_dir=tmp_path_factory.mktemp("srv"),
                     admin_password=ADMIN_PASSWORD, tick_seconds=0.05)
    # an instance with some blocks, so that fuzzed calls naming "i0" reach deep code
    svc = h.service
    svc.call("meta", "registerInstance", {
        "instance_group": "default", "instance_id": "i0", "block_size": 4,
        "location_spec_infos": [{"name": "tp0", "size": 8}],
        "location_spec_groups": [{"name": "default", "spec_names": ["tp0"]}],
        "model_deployment": {"model_name": "m", "dtype": "d"}})
    w = svc.call("meta", "startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]})
    svc.call("meta", "finishWriteCache", {"instance_id": "i0",
                                          "write_session_id": w["write_session_id"],
                                          "success_blocks": {"offset": 3}})
    yield h
    h.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def urls(h: ServerHandle) -> tuple[str, str]:
    return f"http://127.0.0.1:{h.http_port}", f"http://127.0.0.1:{h.admin_http_port}"


def test_not_json_is_400(server: ServerHandle, http: httpx.Client) -> None:
    meta, admin = urls(server)
    for base in (meta, admin):
        r = http.post(f"{base}/api/getCacheLocation", content=b"{nope",
                      headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
    # JSON but not an object: 200 with INVALID_ARGUMENT
    r = http.post(f"{meta}/api/getCacheLocation", json=[1, 2])
    assert r.status_code == 200
    assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
    # an empty body is an empty request
    r = http.post(f"{meta}/api/getInstanceInfo", content=b"")
    assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
    assert "instance_id" in r.json()["header"]["status"]["message"]


def test_basic_auth_and_metrics(server: ServerHandle, http: httpx.Client) -> None:
    meta, admin = urls(server)
    r = http.post(f"{admin}/api/checkHealth", json={})
    assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
    r = http.post(f"{admin}/api/checkHealth", json={}, headers={"Authorization": "Basic !!"})
    assert r.json()["header"]["status"]["code"] == "INVALID_ARGUMENT"
    r = http.post(f"{admin}/api/checkHealth", json={}, headers=AUTH)
    assert r.json()["is_health"] is True
    ci = http.post(f"{admin}/api/getManagerClusterInfo", json={}, headers=AUTH).json()
    assert ci["leader_endpoint"]["meta_http_port"] == server.http_port
    assert ci["leader_endpoint"]["admin_http_port"] == server.admin_http_port
    assert http.get(f"{admin}/metrics").status_code == 401  # admin metrics need the admin
    for base, hdr in ((meta, {}), (admin, AUTH)):
        m = http.get(f"{base}/metrics", headers=hdr)
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
        assert 'kvsim_group_quota{group="default",unit="bytes"} 3e+10' in m.text
        assert "kvsim_calls{" in m.text
    assert http.post(f"{meta}/api/noop", json={}).json()["header"]["status"]["code"] == "OK"


def test_call_latency_histogram(server: ServerHandle, http: httpx.Client) -> None:
    """``/metrics`` has a Prometheus histogram of each call's time in the service: the
    buckets are cumulative, end at +Inf = count, and count every call made."""
    from prometheus_client.parser import text_string_to_metric_families

    meta, _ = urls(server)

    def samples() -> dict[tuple[str, str], float]:
        fams = {f.name: f for f in text_string_to_metric_families(
            http.get(f"{meta}/metrics").text)}
        assert fams["kvsim_call_seconds"].type == "histogram"
        return {(s.name, s.labels.get("le", "")): s.value
                for s in fams["kvsim_call_seconds"].samples
                if s.labels["method"] == "getInstanceInfo"}

    before = samples() if "kvsim_call_seconds" in http.get(f"{meta}/metrics").text else {}
    for _ in range(7):
        http.post(f"{meta}/api/getInstanceInfo", json={"instance_id": "nope"})
    after = samples()
    n = after[("kvsim_call_seconds_count", "")] - before.get(("kvsim_call_seconds_count", ""), 0)
    assert n == 7
    les = [k[1] for k in after if k[0] == "kvsim_call_seconds_bucket"]
    assert les[-1] == "+Inf" and len(les) == 13
    cum = [after[("kvsim_call_seconds_bucket", le)] for le in les]
    assert cum == sorted(cum) and cum[-1] == after[("kvsim_call_seconds_count", "")]
    assert 0 < after[("kvsim_call_seconds_sum", "")] < 7 + before.get(
        ("kvsim_call_seconds_sum", ""), 0)


def test_access_log(server: ServerHandle, http: httpx.Client,
                    caplog: pytest.LogCaptureFixture) -> None:
    meta, _ = urls(server)
    with caplog.at_level(logging.INFO, logger="kvsim.access"):
        http.post(f"{meta}/api/getInstanceInfo", json={"instance_id": "x"})
    lines = [r.getMessage() for r in caplog.records if r.name == "kvsim.access"]
    assert any("meta/getInstanceInfo 200 INSTANCE_NOT_EXIST" in x for x in lines)


def test_grpc_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *a: Any) -> Any:
        if name == "kvsim.server.grpc_server":
            raise ModuleNotFoundError(name, name=name)
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(RuntimeError, match="grpc_server"):
        start_server(None, data_dir=tmp_path, grpc_port=0)


# ---------------------------------------------------------------------------- fuzz
META_CALLS = ["registerInstance", "getInstanceInfo", "getCacheLocation", "getCacheLocationLen",
              "getCacheMeta", "startWriteCache", "finishWriteCache", "removeCache", "trimCache"]
ADMIN_CALLS = ["addStorage", "enableStorage", "disableStorage", "removeStorage",
               "updateStorage", "listStorage", "createInstanceGroup", "updateInstanceGroup",
               "removeInstanceGroup", "getInstanceGroup", "listInstanceGroup",
               "registerInstance", "removeInstance", "getInstanceInfo", "listInstanceInfo",
               "addAccount", "deleteAccount", "listAccount", "genConfigSnapshot",
               "loadConfigSnapshot", "getMetrics", "checkHealth", "getManagerClusterInfo",
               "leaderDemote"]
FIELDS = ["trace_id", "instance_id", "instance_group", "block_size", "block_keys", "token_ids",
          "block_mask", "query_type", "sw_size", "location_spec_names", "location_spec_infos",
          "model_deployment", "location_spec_groups", "detail_level", "write_timeout_seconds",
          "location_spec_group_names", "write_session_id", "success_blocks", "strategy",
          "begin_timestamp", "end_timestamp", "storage", "storage_unique_name",
          "instance_group_name", "name", "current_version", "user_name", "password", "role",
          "config_snapshot", "offset", "bool_masks", "values", "nfs", "root_path",
          "global_unique_name", "quota", "capacity", "cache_config", "version"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["i0", "default", "nfs_01", "QT_BATCH_GET",
                                           "QT_REVERSE_ROLL_SW_MATCH", "TS_TIMESTAMP", "1",
                                           "-5", "9" * 30, "tp0", "ROLE_ADMIN"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)


def _json_safe(v: Any) -> Any:
    """Replace NaN/inf (not JSON) by strings."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def _consistent(svc: Service) -> None:
    for u in svc.mgr.usage():
        assert u.used >= 0 and u.serving_blocks >= 0 and u.pending_blocks >= 0
    assert len(svc.mgr.sessions()) == svc.mgr.pending_sessions()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(api=st.sampled_from(["meta", "admin"]), data=st.data(), body=bodies)
def test_fuzz_every_call(server: ServerHandle, http: httpx.Client, api: str,
                         data: st.DataObject, body: dict[str, Any]) -> None:
    meta, admin = urls(server)
    method = data.draw(st.sampled_from(META_CALLS if api == "meta" else ADMIN_CALLS))
    if api == "admin" and method in ("loadConfigSnapshot", "deleteAccount"):
        body.pop("config_snapshot", None)  # keep the registry and accounts in place
        body.pop("user_name", None)
    base = meta if api == "meta" else admin
    r = http.post(f"{base}/api/{method}", json=_json_safe(body), headers=AUTH)
    assert r.status_code == 200, r.text
    h = r.json()["header"]
    assert h["request_id"]
    assert h["status"]["code"] != "INTERNAL_ERROR", (method, body, h)
    if h["status"]["code"] == "INVALID_ARGUMENT":
        assert h["status"]["message"]
    _consistent(server.service)


def test_still_serving_after_fuzz(server: ServerHandle, http: httpx.Client) -> None:
    meta, _ = urls(server)
    body = {"instance_group": "default", "instance_id": "after-fuzz", "block_size": 4,
            "location_spec_infos": [{"name": "tp0", "size": 8}],
            "model_deployment": {"model_name": "m", "dtype": "d"}}
    assert http.post(f"{meta}/api/registerInstance", json=body).json()["header"]["status"][
        "code"] == "OK"
    w = http.post(f"{meta}/api/startWriteCache",
                  json={"instance_id": "after-fuzz", "block_keys": [1, 2]}).json()
    f = http.post(f"{meta}/api/finishWriteCache",
                  json={"instance_id": "after-fuzz", "write_session_id": w["write_session_id"],
                        "success_blocks": {"offset": len(w["locations"])}}).json()
    assert f["header"]["status"]["code"] == "OK"
    g = http.post(f"{meta}/api/getCacheLocation",
                  json={"instance_id": "after-fuzz", "block_keys": [1, 2]}).json()
    assert len(g["locations"]) == 2
    _consistent(server.service)

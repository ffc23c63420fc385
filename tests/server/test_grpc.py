"""The gRPC transport: proto <-> dict conversion and a real server on loopback.

A fake service stands in for ``kvsim.server.service.Service``: it records the bodies it
gets and answers with canned replies, so these tests check the adapter alone (every
method of both services, every message type). The contract suite over the real service
runs through ``tests/server/transports.py``.
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _d
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.server import grpc_server as gs
from kvsim.server.grpc_client import GrpcClient, body_to_message, message_to_reply
from kvsim.server.proto import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    meta_service_pb2,
    meta_service_pb2_grpc,
)

FD = _d.FieldDescriptor


class FakeService:
    """Records every call and replies with ``replies[(api, method)]`` or a bare OK."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str | None]] = []
        self.replies: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()

    def call(
        self, api: str, method: str, body: dict[str, Any], *, credential: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            self.calls.append((api, method, body, credential))
        reply = self.replies.get((api, method))
        if isinstance(reply, Exception):
            raise reply
        if reply is None:
            return {"header": {"status": {"code": "OK", "message": ""}, "request_id": "r1"}}
        return reply  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fake() -> FakeService:
    return FakeService()


@pytest.fixture(scope="module")
def server(fake: FakeService) -> Iterator[gs.GrpcHandle]:
    handle = gs.serve_grpc(fake, "127.0.0.1", 0, 0)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: gs.GrpcHandle) -> Iterator[GrpcClient]:
    with GrpcClient("127.0.0.1", server.meta_port, server.admin_port, timeout=10) as c:
        yield c


@pytest.fixture(autouse=True)
def _reset(fake: FakeService) -> None:
    fake.calls.clear()
    fake.replies.clear()


def fill(msg: Message, seed: int = 1, depth: int = 0) -> Message:
    """Sets every field of ``msg`` to a non-default value (first member of each oneof;
    two entries per repeated field), recursively."""
    for i, f in enumerate(msg.DESCRIPTOR.fields):
        if f.containing_oneof is not None and f.containing_oneof.fields[0] is not f:
            continue
        v = seed * 31 + i + 1
        if f.type == FD.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.Struct":
            getattr(msg, f.name).update({"k": 2.5, "s": f"v{v}", "n": v})
            continue
        if f.type == FD.TYPE_MESSAGE:
            if depth > 6:
                continue
            if f.is_repeated:
                for k in range(2):
                    fill(getattr(msg, f.name).add(), v + k, depth + 1)
            else:
                sub = getattr(msg, f.name)
                sub.SetInParent()
                fill(sub, v, depth + 1)
            continue
        if f.type == FD.TYPE_ENUM:
            vals = [e.number for e in f.enum_type.values if e.number != 0]
            vals = vals or [0]
            scalars: list[Any] = [vals[v % len(vals)], vals[(v + 1) % len(vals)]]
        elif f.type == FD.TYPE_BOOL:
            scalars = [True, False]
        elif f.type == FD.TYPE_STRING:
            scalars = [f"{f.name}-{v}", f"{f.name}-{v}-b"]
        elif f.type == FD.TYPE_DOUBLE:
            scalars = [v + 0.25, -v - 0.5]
        elif f.type in (FD.TYPE_INT64, FD.TYPE_UINT64):
            scalars = [2**62 + v, -(2**62) - v if f.type == FD.TYPE_INT64 else 2**63 + v]
        else:
            scalars = [v, -v]
        if f.is_repeated:
            getattr(msg, f.name).extend(scalars)
        else:
            setattr(msg, f.name, scalars[0])
    return msg


ALL_METHODS = [
    (api, spec) for api in ("meta", "admin") for spec in gs.method_table(api).values()
]
METHOD_IDS = [f"{api}.{spec.name}" for api, spec in ALL_METHODS]


# -- descriptors -------------------------------------------------------------------------


def test_services_match_kvcm_names() -> None:
    assert gs.META_SERVICE.full_name == "kv_cache_manager.proto.meta.MetaService"
    assert gs.ADMIN_SERVICE.full_name == "kv_cache_manager.proto.admin.AdminService"
    meta = set(gs.method_table("meta"))
    assert meta == {
        "registerInstance", "getInstanceInfo", "getCacheMeta", "getCacheLocation",
        "startWriteCache", "finishWriteCache", "removeCache", "trimCache",
        "getCacheLocationLen",
    }
    admin = set(gs.method_table("admin"))
    documented = {
        "addStorage", "enableStorage", "disableStorage", "removeStorage", "updateStorage",
        "listStorage", "createInstanceGroup", "updateInstanceGroup", "removeInstanceGroup",
        "getInstanceGroup", "registerInstance", "removeInstance", "getInstanceInfo",
        "listInstanceInfo", "addAccount", "deleteAccount", "listAccount",
        "genConfigSnapshot", "loadConfigSnapshot", "getMetrics", "checkHealth",
        "getManagerClusterInfo", "leaderDemote", "listInstanceGroup",
    }
    assert documented <= admin
    spec = gs.method_table("meta")["getCacheLocation"]
    assert spec.path == "/kv_cache_manager.proto.meta.MetaService/GetCacheLocation"


def test_enum_numbers() -> None:
    codes = {v.name: v.number for v in meta_service_pb2.ErrorCode.DESCRIPTOR.values}
    assert codes == {
        "UNSPECIFIED": 0, "OK": 1, "UNSUPPORTED": 2, "INTERNAL_ERROR": 3,
        "SERVICE_NOT_READY": 4, "INVALID_ARGUMENT": 5, "DUPLICATE_ENTITY": 6,
        "REACH_MAX_ENTITY_CAPACITY": 7, "INSTANCE_NOT_EXIST": 8, "SERVER_NOT_LEADER": 9,
        "IO_ERROR": 20, "UNKNOWN_ERROR": 100, "ERROR_MAX": 65535,
    }
    admin_codes = {v.name: v.number for v in admin_service_pb2.ErrorCode.DESCRIPTOR.values}
    assert admin_codes == codes
    assert meta_service_pb2.QT_BATCH_GET == 1
    assert meta_service_pb2.QT_PREFIX_MATCH == 2
    assert meta_service_pb2.QT_REVERSE_ROLL_SW_MATCH == 3
    assert meta_service_pb2.TS_REMOVE_ALL_CACHE == 1
    assert meta_service_pb2.TS_REMOVE_ALL_META == 2
    assert meta_service_pb2.TS_TIMESTAMP == 3
    assert meta_service_pb2.ST_UNSPECIFIED == 0


def test_kvcm_field_numbers() -> None:
    """A few field numbers that KVCM clients put on the wire."""
    req = meta_service_pb2.GetCacheLocationRequest.DESCRIPTOR.fields_by_name
    assert {n: req[n].number for n in req} == {
        "trace_id": 1, "instance_id": 2, "query_type": 3, "block_keys": 4, "token_ids": 5,
        "block_mask": 6, "sw_size": 7, "location_spec_names": 8,
    }
    loc = meta_service_pb2.CacheLocation.DESCRIPTOR.fields_by_name
    assert (loc["type"].number, loc["spec_size"].number, loc["location_specs"].number) == (
        1, 2, 3)
    sw = meta_service_pb2.StartWriteCacheResponse.DESCRIPTOR.fields_by_name
    assert [sw[n].number for n in ("header", "write_session_id", "block_mask", "locations")] == [
        1, 2, 3, 4]


# -- conversion without a server ---------------------------------------------------------


@pytest.mark.parametrize(("api", "spec"), ALL_METHODS, ids=METHOD_IDS)
def test_request_dict_round_trip(api: str, spec: gs.MethodSpec) -> None:
    msg = fill(spec.request())
    body = gs.message_to_body(msg)
    assert body_to_message(body, spec.request) == msg


@pytest.mark.parametrize(("api", "spec"), ALL_METHODS, ids=METHOD_IDS)
def test_reply_dict_round_trip(api: str, spec: gs.MethodSpec) -> None:
    msg = fill(spec.response())
    reply = message_to_reply(msg)
    assert gs.reply_to_message(reply, spec.response) == msg


def draw_fill(data: st.DataObject, msg: Message, depth: int = 0) -> Message:
    """Sets a hypothesis-chosen subset of ``msg``'s fields (any oneof member, values at
    the extremes, defaults, unknown enum numbers, non-finite doubles), recursively."""
    ints = {FD.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
            FD.TYPE_UINT64: st.integers(0, 2**64 - 1),
            FD.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
            FD.TYPE_UINT32: st.integers(0, 2**32 - 1)}
    for f in msg.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        if f.type == FD.TYPE_MESSAGE:
            if f.message_type.full_name == "google.protobuf.Struct":
                getattr(msg, f.name).update(data.draw(st.dictionaries(
                    st.text(max_size=3), st.integers(-5, 5) | st.floats(-9, 9) | st.text(
                        max_size=3), max_size=3)))
            elif f.message_type.GetOptions().map_entry:
                continue
            elif depth < 4:
                if f.is_repeated:
                    for _ in range(data.draw(st.integers(0, 2))):
                        draw_fill(data, getattr(msg, f.name).add(), depth + 1)
                else:
                    sub = getattr(msg, f.name)
                    sub.SetInParent()
                    draw_fill(data, sub, depth + 1)
            continue
        if f.type == FD.TYPE_ENUM:
            strat: st.SearchStrategy[Any] = st.sampled_from(
                [e.number for e in f.enum_type.values] + [77])
        elif f.type == FD.TYPE_BOOL:
            strat = st.booleans()
        elif f.type == FD.TYPE_STRING:
            strat = st.text(max_size=5)
        elif f.type == FD.TYPE_DOUBLE:
            strat = st.floats(allow_nan=True, allow_infinity=True)
        elif f.type == FD.TYPE_FLOAT:
            strat = st.floats(width=32)
        elif f.type == FD.TYPE_BYTES:
            strat = st.binary(max_size=4)
        else:
            strat = ints.get(f.type, st.integers(-(2**31), 2**31 - 1))
        if f.is_repeated:
            getattr(msg, f.name).extend(data.draw(st.lists(strat, max_size=3)))
        else:
            setattr(msg, f.name, data.draw(strat))
    return msg


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(type(a) is type(b) and a == b)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_METHODS), st.data())
def test_fast_request_conversion_equals_json_format(method: tuple[str, gs.MethodSpec],
                                                    data: st.DataObject) -> None:
    """``message_to_body`` (built from the set fields) gives exactly what the
    ``json_format`` path gives, for every request type."""
    msg = draw_fill(data, method[1].request())
    assert _same(gs.message_to_body(msg), gs.message_to_body_slow(msg))


def test_int64_reach_the_service_as_ints() -> None:
    req = meta_service_pb2.GetCacheLocationRequest(block_keys=[1, -(2**63), 2**63 - 1])
    body = gs.message_to_body(req)
    assert body["block_keys"] == [1, -(2**63), 2**63 - 1]
    assert all(type(k) is int for k in body["block_keys"])


def test_reply_int64_numbers_and_strings_accepted() -> None:
    cls = admin_service_pb2.GetMetricsResponse
    a = gs.reply_to_message({"timestamp": 5, "metrics": [{"metric_value": {"int_value": "7"}}]},
                            cls)
    b = gs.reply_to_message({"timestamp": "5", "metrics": [{"metric_value": {"int_value": 7}}]},
                            cls)
    assert a == b
    assert message_to_reply(a)["timestamp"] == 5
    assert message_to_reply(a)["metrics"][0]["metric_value"] == {"int_value": 7}


def test_reply_ignores_unknown_fields_and_enum_names() -> None:
    msg = gs.reply_to_message(
        {
            "header": {"status": {"code": "OK"}, "request_id": "x", "extra": 1},
            "locations": [{"type": "ST_SOMETHING_NEW", "spec_size": 1, "kvsim_only": [1]}],
            "not_a_field": {"a": 1},
        },
        meta_service_pb2.GetCacheLocationResponse,
    )
    assert msg.header.request_id == "x"
    assert msg.locations[0].type == meta_service_pb2.ST_UNSPECIFIED
    assert msg.locations[0].spec_size == 1


def test_masks_keep_a_zero_offset() -> None:
    req = meta_service_pb2.GetCacheLocationRequest()
    req.block_mask.offset = 0
    assert gs.message_to_body(req) == {"block_mask": {"offset": 0}}
    req.block_mask.bool_masks.values.extend([True, False, True])
    want = {"block_mask": {"bool_masks": {"values": [True, False, True]}}}
    assert gs.message_to_body(req) == want


def test_client_body_accepts_http_forms() -> None:
    cls = meta_service_pb2.GetCacheLocationRequest
    a = body_to_message(
        {"query_type": "QT_PREFIX_MATCH", "block_keys": ["1", "2"], "sw_size": "3",
         "unknown": [1, 2]},
        cls,
    )
    b = body_to_message({"query_type": 2, "block_keys": [1, 2], "sw_size": 3}, cls)
    assert a == b


def test_decode_credential() -> None:
    tok = base64.b64encode(b"alice:s3cr:et").decode()
    assert gs.decode_credential([("authorization", f"Basic {tok}")]) == "alice:s3cr:et"
    assert gs.decode_credential([("x", "y"), ("Authorization", f"basic  {tok}")]) == (
        "alice:s3cr:et")
    assert gs.decode_credential([]) is None
    assert gs.decode_credential(None) is None
    # Not Basic, or not base64: passed through so the service refuses it.
    assert gs.decode_credential([("authorization", "Bearer abc")]) == "Bearer abc"
    assert gs.decode_credential([("authorization", "Basic !!!")]) == "Basic !!!"


# -- a real server -----------------------------------------------------------------------


@pytest.mark.parametrize(("api", "spec"), ALL_METHODS, ids=METHOD_IDS)
def test_every_method_over_grpc(
    fake: FakeService, client: GrpcClient, api: str, spec: gs.MethodSpec
) -> None:
    request = fill(spec.request(), seed=3)
    expected = fill(spec.response(), seed=5)
    fake.replies[(api, spec.call_name)] = json_format.MessageToDict(
        expected, preserving_proto_field_name=True
    )
    got = client.call(api, spec.name, request)
    assert got == expected
    ((c_api, c_method, body, cred),) = fake.calls
    assert (c_api, c_method, cred) == (api, spec.call_name, None)
    assert body == gs.message_to_body(request)
    assert body_to_message(body, spec.request) == request


def test_get_cache_location_shapes(fake: FakeService, client: GrpcClient) -> None:
    fake.replies[("meta", "getCacheLocation")] = {
        "header": {"status": {"code": "OK", "message": ""}, "request_id": "rid-1"},
        "locations": [
            {"type": "ST_NFS", "spec_size": 2,
             "location_specs": [{"name": "tp0", "uri": "file://a"},
                                {"name": "tp1", "uri": "file://b"}]},
            {"type": 0, "spec_size": 2,
             "location_specs": [{"name": "tp0", "uri": ""}, {"name": "tp1", "uri": ""}]},
        ],
    }
    reply = client.meta(
        "getCacheLocation",
        {"trace_id": "t", "instance_id": "i", "query_type": 3, "sw_size": 1,
         "block_keys": [10, "11", -12], "block_mask": {"offset": 0},
         "location_spec_names": ["tp0", "tp1"]},
    )
    ((_, _, body, _),) = fake.calls
    assert body == {
        "trace_id": "t", "instance_id": "i", "query_type": "QT_REVERSE_ROLL_SW_MATCH",
        "sw_size": 1, "block_keys": [10, 11, -12], "block_mask": {"offset": 0},
        "location_spec_names": ["tp0", "tp1"],
    }
    assert reply["header"] == {
        "status": {"code": "OK", "message": ""}, "request_id": "rid-1", "tracer_result": ""}
    assert [loc["type"] for loc in reply["locations"]] == ["ST_NFS", "ST_UNSPECIFIED"]
    assert reply["locations"][1]["location_specs"] == [
        {"name": "tp0", "uri": ""}, {"name": "tp1", "uri": ""}]


def test_error_codes_travel_in_the_header(fake: FakeService, client: GrpcClient) -> None:
    for code in ("INVALID_ARGUMENT", "REACH_MAX_ENTITY_CAPACITY", "INSTANCE_NOT_EXIST",
                 "IO_ERROR", "UNKNOWN_ERROR"):
        fake.replies[("meta", "startWriteCache")] = {
            "header": {"status": {"code": code, "message": "why"}, "request_id": "r"}}
        reply = client.meta("startWriteCache", {"instance_id": "i"})
        assert reply["header"]["status"] == {"code": code, "message": "why"}
        assert set(reply) == {"header"}  # as over HTTP: an error is just its header
    fake.replies.clear()
    ok = client.meta("startWriteCache", {"instance_id": "i"})  # a bare OK: defaults shown
    assert ok["locations"] == [] and ok["write_session_id"] == ""


def test_start_write_bool_mask_and_finish(fake: FakeService, client: GrpcClient) -> None:
    fake.replies[("meta", "startWriteCache")] = {
        "header": {"status": {"code": "OK"}, "request_id": "r"},
        "write_session_id": "ws-1",
        "block_mask": {"bool_masks": {"values": [True, False, True]}},
        "locations": [{"type": "ST_3FS", "spec_size": 1,
                       "location_specs": [{"name": "tp0", "uri": "3fs://x"}]}],
    }
    reply = client.meta("startWriteCache", {
        "instance_id": "i", "token_ids": list(range(5)), "write_timeout_seconds": 30,
        "location_spec_group_names": ["full", "full", "full"]})
    assert reply["block_mask"] == {"bool_masks": {"values": [True, False, True]}}
    assert reply["locations"][0]["type"] == "ST_3FS"
    ((_, _, body, _),) = fake.calls
    assert body["token_ids"] == list(range(5))
    assert body["write_timeout_seconds"] == 30
    client.meta("finishWriteCache", {"write_session_id": "ws-1",
                                     "success_blocks": {"bool_masks": {"values": [True]}}})
    assert fake.calls[-1][2] == {"write_session_id": "ws-1",
                                 "success_blocks": {"bool_masks": {"values": [True]}}}


def test_admin_nested_group(fake: FakeService, client: GrpcClient) -> None:
    group = {
        "name": "g", "storage_candidates": ["nfs1", "3fs1"], "global_quota_group_name": "q",
        "max_instance_count": "10",
        "quota": {"capacity": 1 << 40,
                  "quota_config": [{"storage_type": "ST_NFS", "capacity": "1024"}]},
        "cache_config": {
            "reclaim_strategy": {"reclaim_policy": "POLICY_LRU",
                                 "trigger_strategy": {"used_percentage": 0.9},
                                 "delay_before_delete_ms": 100},
            "data_storage_strategy": "CPS_PREFER_3FS",
            "meta_indexer_config": {"max_key_count": 1000, "mutex_shard_num": 16,
                                    "batch_key_size": 64,
                                    "meta_storage_backend_config": {
                                        "storage_type": "local", "storage_uri": ""}}},
        "user_data": "{}", "version": 2,
    }
    client.admin("updateInstanceGroup", {"instance_group": group, "current_version": 1})
    ((api, method, body, _),) = fake.calls
    assert (api, method) == ("admin", "updateInstanceGroup")
    assert body["current_version"] == 1
    g = body["instance_group"]
    assert g["quota"] == {"capacity": 1 << 40,
                          "quota_config": [{"storage_type": "ST_NFS", "capacity": 1024}]}
    assert g["cache_config"]["reclaim_strategy"]["trigger_strategy"] == {"used_percentage": 0.9}
    assert g["cache_config"]["data_storage_strategy"] == "CPS_PREFER_3FS"
    fake.replies[("admin", "getInstanceGroup")] = {
        "header": {"status": {"code": "OK"}, "request_id": "r"}, "instance_group": g}
    back = client.admin("getInstanceGroup", {"name": "g"})["instance_group"]
    assert back["quota"]["capacity"] == 1 << 40
    assert back["version"] == 2 and back["max_instance_count"] == 10
    assert back["cache_config"]["meta_indexer_config"]["max_key_count"] == 1000


def test_credential_reaches_the_service(
    fake: FakeService, server: gs.GrpcHandle
) -> None:
    with GrpcClient("127.0.0.1", server.meta_port, server.admin_port,
                    credential="root:p@ss:word") as c:
        c.admin("checkHealth", {})
        c.set_credential(None)
        c.admin("listAccount", {})
    assert [(m, cred) for _, m, _, cred in fake.calls] == [
        ("checkHealth", "root:p@ss:word"), ("listAccount", None)]


def test_generated_stubs_work(fake: FakeService, server: gs.GrpcHandle) -> None:
    fake.replies[("admin", "checkHealth")] = {
        "header": {"status": {"code": "OK"}, "request_id": "r"},
        "is_leader": True, "is_health": True}
    with grpc.insecure_channel(f"127.0.0.1:{server.admin_port}") as ch:
        stub = admin_service_pb2_grpc.AdminServiceStub(ch)
        resp = stub.CheckHealth(admin_service_pb2.CheckHealthRequest(trace_id="t"), timeout=10)
    assert resp.is_leader and resp.is_health
    assert resp.header.status.code == admin_service_pb2.OK
    with grpc.insecure_channel(f"127.0.0.1:{server.meta_port}") as ch:
        mstub = meta_service_pb2_grpc.MetaServiceStub(ch)
        r = mstub.TrimCache(meta_service_pb2.TrimCacheRequest(
            instance_id="i", strategy=meta_service_pb2.TS_TIMESTAMP, begin_timestamp=1,
            end_timestamp=2), timeout=10)
    assert r.header.status.code == meta_service_pb2.OK
    assert fake.calls[-1][1:3] == ("trimCache", {
        "instance_id": "i", "strategy": "TS_TIMESTAMP", "begin_timestamp": 1,
        "end_timestamp": 2})


def test_every_listener_serves_meta_admin_and_debug(server: gs.GrpcHandle) -> None:
    # two listeners, each serving all three services: KVCM's clients send admin calls to
    # its one gRPC port, which is the meta port
    assert server.meta_port != server.admin_port
    for port in (server.meta_port, server.admin_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = admin_service_pb2_grpc.AdminServiceStub(ch)
            reply = stub.CheckHealth(admin_service_pb2.CheckHealthRequest(), timeout=10)
            assert reply.header.request_id


def test_service_exception_is_internal_error(fake: FakeService, client: GrpcClient) -> None:
    fake.replies[("meta", "removeCache")] = RuntimeError("boom")
    reply = client.meta("removeCache", {"instance_id": "i"})
    assert reply["header"]["status"]["code"] == "INTERNAL_ERROR"
    assert "boom" in reply["header"]["status"]["message"]
    assert reply["header"]["request_id"]


def test_misfit_reply_is_internal_error(fake: FakeService, client: GrpcClient) -> None:
    fake.replies[("meta", "getCacheMeta")] = {
        "header": {"status": {"code": "OK"}, "request_id": "keep-me"},
        "metas": [{"id": 1}],  # must be JSON strings
    }
    reply = client.meta("getCacheMeta", {"instance_id": "i"})
    assert reply["header"]["status"]["code"] == "INTERNAL_ERROR"
    assert reply["header"]["request_id"] == "keep-me"
    assert "metas" not in reply


def test_unknown_method_name(client: GrpcClient) -> None:
    with pytest.raises(ValueError, match="no method"):
        client.meta("getEverything", {})


def test_concurrent_clients(fake: FakeService, server: gs.GrpcHandle) -> None:
    def one(i: int) -> str:
        with GrpcClient("127.0.0.1", server.meta_port, server.admin_port) as c:
            for _ in range(5):
                c.meta("getCacheLocation", {"instance_id": f"i{i}", "block_keys": [i]})
            return c.meta("getInstanceInfo", {"instance_id": f"i{i}"})["header"]["request_id"]

    with ThreadPoolExecutor(16) as ex:
        assert list(ex.map(one, range(16))) == ["r1"] * 16
    assert len(fake.calls) == 16 * 6


def test_busy_port_is_an_error(fake: FakeService) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        with pytest.raises(OSError):
            gs.serve_grpc(fake, "127.0.0.1", port, 0)
        with pytest.raises(OSError):
            gs.serve_grpc(fake, "127.0.0.1", 0, port)
    finally:
        sock.close()


def test_fixed_ports_and_stop(fake: FakeService) -> None:
    h1 = gs.serve_grpc(fake, "127.0.0.1", 0, 0)
    meta, admin = h1.meta_port, h1.admin_port
    h1.stop()
    h2 = gs.serve_grpc(fake, "127.0.0.1", meta, admin)
    try:
        assert (h2.meta_port, h2.admin_port) == (meta, admin)
        with GrpcClient("127.0.0.1", meta, admin, timeout=10) as c:
            assert c.admin("checkHealth", {})["header"]["status"]["code"] == "OK"
    finally:
        h2.stop()


def test_eviction_params_keep_ints(fake: FakeService, client: GrpcClient) -> None:
    """Struct numbers are doubles on the wire; whole ones reach the service as ints."""
    group = {"name": "g", "cache_config": {"reclaim_strategy": {"eviction": {
        "policy": "random_lru", "params": {"sample": 5, "alpha": 0.5, "tiers": [1, 2.5]},
        "mode": "group_precise", "batch_size": 100}}}}
    client.admin("createInstanceGroup", {"instance_group": group})
    body = fake.calls[-1][2]
    ev = body["instance_group"]["cache_config"]["reclaim_strategy"]["eviction"]
    assert ev == group["cache_config"]["reclaim_strategy"]["eviction"]  # type: ignore[index]
    assert type(ev["params"]["sample"]) is int
    fake.replies[("admin", "getInstanceGroup")] = {
        "header": {"status": {"code": "OK"}, "request_id": "r"}, "instance_group": group}
    back = client.admin("getInstanceGroup", {"name": "g"})["instance_group"]
    assert back["cache_config"]["reclaim_strategy"]["eviction"]["params"] == {
        "sample": 5, "alpha": 0.5, "tiers": [1, 2.5]}


@pytest.mark.parametrize(("api", "spec"), ALL_METHODS, ids=METHOD_IDS)
def test_reply_fast_path_equals_parse_dict(api: str, spec: gs.MethodSpec) -> None:
    """The constructor fast path and ``ParseDict`` agree (ints as ints, all defaults)."""
    msg = fill(spec.response(), seed=7)
    reply = message_to_reply(msg)  # int64 as ints: the constructor takes it
    slow = json_format.ParseDict(reply, spec.response(), ignore_unknown_fields=True)
    assert gs.reply_to_message(reply, spec.response) == slow == msg
    sparse = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    assert gs.reply_to_message(sparse, spec.response) == msg  # int64 as strings


def test_reply_fast_path_edge_cases() -> None:
    cls = meta_service_pb2.StartWriteCacheResponse
    m = gs.reply_to_message({"block_mask": None, "locations": [], "write_session_id": "1"}, cls)
    assert not m.HasField("block_mask") and m.write_session_id == "1"
    m = gs.reply_to_message({"block_mask": {"offset": 0}}, cls)
    assert m.block_mask.WhichOneof("info") == "offset"
    m = gs.reply_to_message({"locations": [{"type": 4, "spec_size": 1.0}]}, cls)
    assert m.locations[0].type == meta_service_pb2.ST_NFS and m.locations[0].spec_size == 1
    with pytest.raises(json_format.ParseError):
        gs.reply_to_message({"locations": [{"spec_size": 1.5}]}, cls)
    g = gs.reply_to_message(
        {"instance_group": {"cache_config": {"reclaim_strategy": {
            "eviction": {"params": {"a": 1, "b": [1, "x"]}}}}}},
        admin_service_pb2.GetInstanceGroupResponse,
    )
    params = g.instance_group.cache_config.reclaim_strategy.eviction.params  # type: ignore[attr-defined]
    assert json_format.MessageToDict(params) == {"a": 1, "b": [1, "x"]}


def test_server_equals_replay_over_grpc(tmp_path: Path) -> None:
    """The sim/prod parity check of ``test_parity.py``, driven over gRPC."""
    from test_parity import test_server_equals_replay

    test_server_equals_replay("grpc", 300, 800, tmp_path)


def test_cached_location_encodings_match_the_dicts_and_follow_storage_changes(
        tmp_path: Path) -> None:
    """The read path's cached encodings (protobuf messages for gRPC, orjson fragments
    for HTTP) equal the plain dicts, are built once per block, and are rebuilt when a
    storage changes."""
    import orjson

    from kvsim.server.service import Service, json_fragment

    svc = Service(None, data_dir=tmp_path, event_log=False, admin_password="pw")
    keys = list(range(100, 108))
    try:
        assert svc.call("meta", "registerInstance", {
            "instance_group": "default", "instance_id": "i", "block_size": 4,
            "location_spec_infos": [{"name": "tp0", "size": 64}],
            "model_deployment": {"model_name": "m", "dtype": "bf16"}})["header"]["status"][
                "code"] == "OK"
        w = svc.call("meta", "startWriteCache", {"instance_id": "i", "block_keys": keys})
        svc.call("meta", "finishWriteCache", {"instance_id": "i",
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": 8}})
        cls = meta_service_pb2.GetCacheLocationResponse
        loc_cls = type(cls().locations.add())
        enc = gs.location_encoder(loc_cls)
        assert gs.location_encoder(loc_cls) is enc  # one per class
        body = {"instance_id": "i", "block_keys": keys}

        def read(**kw: Any) -> list[Any]:
            r = svc.call("meta", "getCacheLocation", body, **kw)
            assert r["header"]["status"]["code"] == "OK"
            return list(r["locations"])

        plain = read()
        msgs = read(location_encoder=enc)
        assert msgs == [body_to_message(d, loc_cls) for d in plain]
        assert all(a is b for a, b in zip(msgs, read(location_encoder=enc), strict=True))
        frags = read(json_fragments=True)
        assert orjson.loads(orjson.dumps(frags)) == plain
        assert all(a is b for a, b in zip(frags, read(location_encoder=json_fragment),
                                          strict=True))
        new_root = str(tmp_path / "moved")
        assert svc.call("admin", "updateStorage", {"storage": {
            "global_unique_name": "nfs_01", "nfs": {"root_path": new_root}}},
            credential="admin:pw")["header"]["status"]["code"] == "OK"
        plain2 = read()
        assert plain2 != plain and new_root in plain2[0]["location_specs"][0]["uri"]
        assert read(location_encoder=enc) == [body_to_message(d, loc_cls) for d in plain2]
        assert orjson.loads(orjson.dumps(read(json_fragments=True))) == plain2
    finally:
        svc.close()

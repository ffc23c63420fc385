"""A bounded adversarial soak (issue 13): random and hostile bodies at every call over
HTTP and gRPC (seeded, loopback, well under 60 s), then a normal write/read cycle and a
restart are still exact, and no call ever answered INTERNAL_ERROR or HTTP 5xx."""

from __future__ import annotations

import base64
import random
import re
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kvsim.server.app import start_server
from kvsim.server.grpc_client import GrpcClient
from kvsim.server.grpc_server import method_table

PW = "pw-soak"
CRED = f"admin:{PW}"
SECONDS = 12.0  # per transport

_STRINGS = ["", "a", "default", "i0", "nfs_01", "../../etc", "..", "/", "a/../../b", "²", "٣",
            "9" * 5000, "\x00", "é" * 300, "QT_PREFIX_MATCH", "ROLE_ADMIN", "1e309", "-1",
            "9223372036854775808", " 7 ", "ST_NFS", "x" * 70_000]
# Calls that may legitimately drop the checked blocks (an admin disabling their storage,
# shrinking their group's quota, removing them): sent half as often, and never when the
# body names the group, storage or instance the final check reads (the soak asserts
# robustness; an authorised removal of the checked blocks is not a defect).
_DESTRUCTIVE = {m.lower() for m in (
    "removeInstanceGroup", "removeStorage", "disableStorage", "loadConfigSnapshot",
    "removeInstance", "trimCache", "removeCache", "deleteAccount", "leaderDemote",
    "updateInstanceGroup", "updateStorage")}
_PROTECTED = re.compile(r"default|nfs_01|good")
_INTS = [0, 1, -1, 2, 7, 2**31 - 1, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63), 10**6]
_FIELDS = ["instance_id", "instance_group", "block_keys", "token_ids", "block_mask",
           "query_type", "sw_size", "write_session_id", "success_blocks",
           "write_timeout_seconds", "location_spec_infos", "location_spec_group_names",
           "location_spec_names", "model_deployment", "block_size", "storage",
           "instance_group_name", "name", "storage_unique_name", "user_name", "password",
           "role", "config_snapshot", "strategy", "begin_timestamp", "end_timestamp",
           "detail_level", "current_version", "trace_id", "offset", "bool_masks", "values"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.25:
        return rng.choice([*_INTS, True, False, None, 1.5, float("1e308")])
    if r < 0.5:
        return rng.choice(_STRINGS)
    if r < 0.75:
        n = rng.choice([0, 1, 3, 64, 3000])
        if rng.random() < 0.5:
            return [rng.choice(_INTS) for _ in range(n)]
        return [_value(rng, depth + 1) for _ in range(min(n, 6))]
    return {rng.choice(_FIELDS): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _body(rng: random.Random) -> Any:
    if rng.random() < 0.05:
        return _value(rng)  # not even an object
    return {rng.choice(_FIELDS): _value(rng) for _ in range(rng.randint(0, 8))}


def _repeated(f: FieldDescriptor) -> bool:
    rep = getattr(f, "is_repeated", None)  # protobuf >= 6 (``label`` is gone)
    return bool(rep) if rep is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _fill(msg: Message, rng: random.Random, depth: int = 0) -> None:
    """Set random (often hostile) values on a protobuf message's fields."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        if f.containing_oneof is not None and rng.random() < 0.5:
            continue
        n = rng.choice([1, 2, 50, 2000]) if _repeated(f) else 1
        for _ in range(n if f.type != FieldDescriptor.TYPE_MESSAGE else min(n, 5)):
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                if depth > 3 or f.message_type.GetOptions().map_entry:
                    break
                sub = getattr(msg, f.name).add() if _repeated(f) \
                    else getattr(msg, f.name)
                _fill(sub, rng, depth + 1)
                if not _repeated(f):
                    sub.SetInParent()
                continue
            if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                          FieldDescriptor.TYPE_SFIXED64):
                v: Any = rng.choice(_INTS)
            elif f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                            FieldDescriptor.TYPE_ENUM):
                v = rng.choice([x for x in _INTS if -(2**31) <= x < 2**31])
            elif f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
                v = abs(rng.choice([0, 1, 2**31 - 1]))
            elif f.type == FieldDescriptor.TYPE_BOOL:
                v = rng.random() < 0.5
            elif f.type == FieldDescriptor.TYPE_STRING:
                v = rng.choice(_STRINGS)
            elif f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                v = rng.choice([0.0, -1.0, 1e308, float("nan")])
            elif f.type == FieldDescriptor.TYPE_BYTES:
                v = rng.randbytes(rng.choice([0, 10, 1000]))
            else:
                break
            try:
                if _repeated(f):
                    getattr(msg, f.name).append(v)
                else:
                    setattr(msg, f.name, v)
            except (ValueError, TypeError):
                break


def _cycle(meta: Any, iid: str, keys: list[int]) -> None:
    """A normal write then read: exactly the written keys come back."""
    w = meta("startWriteCache", {"instance_id": iid, "block_keys": keys})
    assert w["header"]["status"]["code"] == "OK", w["header"]
    n_new = len(w["locations"])
    f = meta("finishWriteCache", {"instance_id": iid, "write_session_id": w["write_session_id"],
                                  "success_blocks": {"offset": n_new}})
    assert f["header"]["status"]["code"] == "OK", f["header"]
    _check(meta, iid, keys)


def _check(meta: Any, iid: str, keys: list[int]) -> None:
    g = meta("getCacheLocation", {"instance_id": iid, "block_keys": [*keys, keys[-1] + 10 ** 9],
                                  "query_type": "QT_PREFIX_MATCH"})
    assert g["header"]["status"]["code"] == "OK", g["header"]
    assert len(g["locations"]) == len(keys)
    for k, loc in zip(keys, g["locations"], strict=True):
        assert loc["location_specs"][0]["uri"].split("/")[-1].startswith(f"{k:016x}.")


def test_adversarial_soak(tmp_path: Path) -> None:
    rng = random.Random(13)
    h = start_server(None, data_dir=tmp_path, admin_password=PW, tick_seconds=0.2,
                     grpc_port=0, admin_grpc_port=0, state="sqlite")
    c = httpx.Client(timeout=30)
    auth = {"Authorization": "Basic " + base64.b64encode(CRED.encode()).decode()}
    urls = {"meta": f"http://127.0.0.1:{h.http_port}/api",
            "admin": f"http://127.0.0.1:{h.admin_http_port}/api"}

    def meta(method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = c.post(f"{urls['meta']}/{method}", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    reg = {"instance_group": "default", "instance_id": "good", "block_size": 16,
           "location_spec_infos": [{"name": "tp0", "size": 4096}],
           "model_deployment": {"model_name": "m", "dtype": "bf16"}}
    assert meta("registerInstance", reg)["header"]["status"]["code"] == "OK"
    _cycle(meta, "good", list(range(100, 140)))
    codes: dict[str, int] = {}
    sent = 0
    gc_ = GrpcClient("127.0.0.1", h.grpc_port, h.admin_grpc_port, timeout=30)
    try:
        # ---- HTTP: random JSON (and non-JSON) at every call, with and without credentials
        end = time.monotonic() + SECONDS
        calls = [("meta", m) for m in method_table("meta")] + \
                [("admin", m) for m in method_table("admin")]
        while time.monotonic() < end:
            api, method = rng.choice(calls)
            body = _body(rng)
            if method.lower() in _DESTRUCTIVE and (
                    rng.random() < 0.5 or _PROTECTED.search(str(body))):
                method = "noSuch" + method  # half as often, never on the checked state
            if rng.random() < 0.05:
                data = rng.randbytes(rng.choice([1, 100, 5000]))
            else:
                data = httpx.Request("POST", "http://x", json=body).content
            hdr = auth if api == "admin" and rng.random() < 0.7 else {}
            r = c.post(f"{urls[api]}/{method}", content=data,
                       headers=hdr | {"content-type": "application/json"})
            sent += 1
            assert r.status_code in (200, 400), (method, body, r.status_code, r.text[:300])
            code = r.json()["header"]["status"]["code"]
            codes[code] = codes.get(code, 0) + 1
            assert code != "INTERNAL_ERROR", (method, body, r.text[:500])
        # ---- gRPC: typed messages with hostile values, and raw garbage bytes
        end = time.monotonic() + SECONDS
        tables = {api: method_table(api) for api in ("meta", "admin")}
        while time.monotonic() < end:
            api = rng.choice(["meta", "admin"])
            name, spec = rng.choice(sorted(tables[api].items()))
            gc_.set_credential(CRED if rng.random() < 0.7 else None)
            channel = gc_._channels[api]
            path = spec.path
            sent += 1
            if rng.random() < 0.1:
                try:
                    channel.unary_unary(path)(rng.randbytes(rng.choice([1, 50, 3000])),
                                              timeout=30)
                except grpc.RpcError as e:
                    assert e.code() != grpc.StatusCode.UNKNOWN, e
                continue
            msg = spec.request()
            _fill(msg, rng)
            if spec.name.lower() in _DESTRUCTIVE and (
                    rng.random() < 0.5 or _PROTECTED.search(str(msg))):
                continue
            try:
                rep = gc_.call(api, spec.name, msg)
            except grpc.RpcError as e:  # e.g. a message over the size limit
                assert e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.INVALID_ARGUMENT), e
                continue
            code = rep.header.status.code
            assert code != 3, (name, msg)  # INTERNAL_ERROR
        # ---- still exact: a normal write/read cycle, the earlier blocks, a restart
        h.service.tick()
        _check(meta, "good", list(range(100, 140)))
        _cycle(meta, "good", list(range(500, 564)))
    finally:
        gc_.close()
        c.close()
        h.stop()
    print(f"soak: {sent} hostile requests; HTTP reply codes {codes}")
    assert sent > 500 and codes.get("OK", 0) > 0
    h = start_server(None, data_dir=tmp_path, admin_password=PW, tick_seconds=3600,
                     state="sqlite")
    c = httpx.Client(timeout=30)
    urls["meta"] = f"http://127.0.0.1:{h.http_port}/api"
    try:
        _check(meta, "good", list(range(100, 140)))
        _check(meta, "good", list(range(500, 564)))
        _cycle(meta, "good", list(range(900, 920)))
    finally:
        c.close()
        h.stop()


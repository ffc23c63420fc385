"""gRPC reads with pre-serialized locations give the same reply message as the
message path, for cached locations, a spec-name filter and an unknown instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvsim.server import grpc_server as gs
from kvsim.server.proto import meta_service_pb2
from kvsim.server.service import Service


def test_serialized_locations_equal_the_message_path(tmp_path: Path) -> None:
    svc = Service(None, data_dir=tmp_path, event_log=False, admin_password="pw")
    keys = list(range(100, 140))
    try:
        assert svc.call("meta", "registerInstance", {
            "instance_group": "default", "instance_id": "i", "block_size": 4,
            "location_spec_infos": [{"name": "tp0", "size": 64}, {"name": "tp1", "size": 64}],
            "model_deployment": {"model_name": "m", "dtype": "bf16"}})["header"]["status"][
                "code"] == "OK"
        w = svc.call("meta", "startWriteCache", {"instance_id": "i", "block_keys": keys[:30]})
        svc.call("meta", "finishWriteCache", {"instance_id": "i",
                                              "write_session_id": w["write_session_id"],
                                              "success_blocks": {"offset": 30}})
        spec = gs.method_table("meta")["getCacheLocation"]
        cls = meta_service_pb2.GetCacheLocationResponse
        kw = gs._encoder_kwargs(svc, spec)
        assert kw, "the read takes a location encoder"
        for body in ({"instance_id": "i", "block_keys": keys},
                     {"instance_id": "i", "block_keys": keys, "query_type": "QT_BATCH_GET"},
                     {"instance_id": "i", "block_keys": keys, "location_spec_names": ["tp1"]},
                     {"instance_id": "nobody", "block_keys": keys}):
            for _ in range(2):  # built, then from the cache
                plain: dict[str, Any] = svc.call("meta", "getCacheLocation", body)
                fast = svc.call("meta", "getCacheLocation", body, **kw)
                got = gs._serialize(gs._with_serialized_locations(fast, cls)) \
                    if "locations" in fast else gs._serialize(gs.reply_to_message(fast, cls))
                want = gs.reply_to_message(plain, cls)
                msg = cls.FromString(got)
                msg.header.request_id = want.header.request_id = ""
                assert msg == want, body
                assert len(msg.locations) == len(plain.get("locations", []))
    finally:
        svc.close()

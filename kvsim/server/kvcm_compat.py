"""What makes ``kvsim serve`` a drop-in for Tair KVCM's own clients, beyond the call set.

Small, transport-neutral pieces the service and the transports share:

* :func:`storage_config_entry`: one storage as KVCM's ``registerInstance`` reply lists
  it in ``storage_configs`` (``{"type", "is_available", "global_unique_name",
  "storage_spec": {...}}``, type names ``file``, ``hf3fs``, ``vcns_hf3fs``,
  ``mooncake``, ``pace``, ``dummy``), the shape the vLLM and SGLang connectors parse;
* :func:`reply_defaults`: every field of a call's reply message at its default value,
  as KVCM's HTTP gateway prints it (int64 as strings, repeated fields as ``[]``), so
  error replies carry the same keys as successful ones;
* :func:`upper_camel`: the ``api_name`` KVCM uses in metrics and fault injection
  (``StartWriteCache`` for ``startWriteCache``).

Example:
    >>> e = storage_config_entry({"global_unique_name": "h1",
    ...     "threefs": {"mountpoint": "/3fs", "root_dir": "kv"}}, True)
    >>> e["type"], e["is_available"], e["storage_spec"]["root_dir"]
    ('hf3fs', True, 'kv')
    >>> reply_defaults("meta", "registerInstance")["storage_configs"]
    ''
    >>> upper_camel("getCacheLocation")
    'GetCacheLocation'
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import socket
import uuid
from typing import Any

from kvsim.server import wire as W

__all__ = ["install_compat", "kvcm_metrics", "new_node_id", "publish_endpoint",
           "reply_defaults", "self_endpoint", "storage_config_entry", "upper_camel"]

# the StorageConfig oneof field kvsim keeps -> KVCM's storage type name
_TYPE_NAME = {"nfs": "file", "threefs": "hf3fs", "vcnsthreefs": "vcns_hf3fs",
              "mooncake": "mooncake", "tair_mem_pool": "pace", "local": "dummy",
              "dummy": "dummy"}  # fmt: skip


def _spec(field: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The ``storage_spec`` object of one storage, every key KVCM writes for its type."""
    def s(k: str, default: str = "") -> str:
        v = spec.get(k, default)
        return v if isinstance(v, str) else default

    def i(k: str, default: int = 0) -> int:
        v = spec.get(k, default)
        return v if isinstance(v, int) and not isinstance(v, bool) else default

    if field in ("threefs", "vcnsthreefs"):
        out: dict[str, Any] = {"cluster_name": s("cluster_name"), "mountpoint": s("mountpoint"),
                               "root_dir": s("root_dir"),
                               "key_count_per_file": i("key_count_per_file")}
        if field == "vcnsthreefs":
            out |= {"remote_host": s("remote_host"), "remote_port": i("remote_port"),
                    "meta_storage_uri": s("meta_storage_uri")}
        return out
    if field == "mooncake":
        return {"local_hostname": s("local_hostname", "localhost"),
                "metadata_connstring": s("metadata_connstring"),
                "protocol": s("protocol", "tcp"), "rdma_device": s("rdma_device"),
                "master_server_entry": s("master_server_entry")
                or s("master_service_entry")}
    if field == "tair_mem_pool":
        return {"domain": s("domain"), "timeout": i("timeout"),
                "service_discovery_url": s("service_discovery_url"),
                "media_type": i("media_type")}
    return {"root_path": s("root_path"), "key_count_per_file": i("key_count_per_file", 1)}


def storage_config_entry(wire: dict[str, Any], available: bool) -> dict[str, Any]:
    """One storage in KVCM's ``storage_configs`` JSON shape.

    Args:
        wire: the storage as the admin API holds it (``global_unique_name`` and one
            oneof field: ``nfs``, ``threefs``, ``vcnsthreefs``, ``mooncake``,
            ``tair_mem_pool``, ``local``).
        available: whether writes may go there now (enabled and healthy).

    Returns:
        ``{"type", "is_available", "global_unique_name", "storage_spec"}``.

    Example:
        >>> storage_config_entry({"global_unique_name": "n", "nfs": {"root_path": "/d"}},
        ...                      False)["storage_spec"]
        {'root_path': '/d', 'key_count_per_file': 1}
    """
    field = next((f for f in _TYPE_NAME if isinstance(wire.get(f), dict)), "nfs")
    return {"type": _TYPE_NAME[field], "is_available": bool(available),
            "global_unique_name": str(wire.get("global_unique_name", "")),
            "storage_spec": _spec(field, wire.get(field) or {})}


def upper_camel(method: str) -> str:
    """``getCacheLocation`` -> ``GetCacheLocation`` (KVCM's ``api_name``)."""
    return method[:1].upper() + method[1:]


@functools.lru_cache(maxsize=256)
def _defaults(api: str, method: str) -> dict[str, Any]:
    try:
        from google.protobuf import json_format, message_factory

        from kvsim.server.proto import admin_service_pb2, meta_service_pb2
    except ImportError:  # pragma: no cover - protobuf is a dependency
        return {}
    mod = {"meta": meta_service_pb2, "admin": admin_service_pb2}.get(api)
    if api == "debug":
        return {}  # every debug reply is a CommonResponse: header only
    if mod is None:
        return {}
    svc = next(iter(mod.DESCRIPTOR.services_by_name.values()))
    m = svc.methods_by_name.get(upper_camel(method))
    if m is None:
        return {}
    msg = message_factory.GetMessageClass(m.output_type)()
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    d.pop("header", None)
    return d


def reply_defaults(api: str, method: str) -> dict[str, Any]:
    """Every field but ``header`` of ``method``'s reply message at its default value,
    printed as KVCM's HTTP gateway prints it ({} for an unknown call).

    Example:
        >>> reply_defaults("meta", "getCacheLocation")["locations"]
        []
        >>> reply_defaults("admin", "getLeaderElectorConfig")
        {'campaign_delay_time_ms': '0'}
    """
    return copy.deepcopy(_defaults(api, method))


def new_node_id() -> str:
    """A node id unique to this process: host name, pid and a random suffix (KVCM
    generates one per process too, so two servers on one host never share it).

    Example:
        >>> a, b = new_node_id(), new_node_id()
        >>> a != b and a.startswith(socket.gethostname())
        True
    """
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def self_endpoint(svc: Any) -> dict[str, Any]:
    """Where this node listens, as ``getManagerClusterInfo``'s ``leader_endpoint``
    (KVCM's ``NodeEndpoint``: node id, host and the four ports)."""
    ep: dict[str, Any] = {"node_id": svc.node_id,
                          "host": str(svc.endpoints.get("host", "127.0.0.1"))}
    for k in ("meta_rpc_port", "meta_http_port", "admin_rpc_port", "admin_http_port"):
        ep[k] = int(svc.endpoints.get(k) or 0)
    return ep


def publish_endpoint(svc: Any) -> None:
    """Publish this node's endpoint with its leader lease (once the ports are known),
    so followers can report the leader's ``leader_endpoint``; no-op without an
    elector. The lease carries it from its next renewal on."""
    el = getattr(svc, "elector", None)
    if el is not None and hasattr(el.lease, "info"):
        el.lease.info = self_endpoint(svc)


_LOG_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
               "WARN": logging.WARNING, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
               "FATAL": logging.CRITICAL, "CRITICAL": logging.CRITICAL}  # fmt: skip


def kvcm_metrics(latency: dict[tuple[str, str], list[Any]]) -> list[dict[str, Any]]:
    """KVCM's per-call metrics from the service's latency table: for every call
    served, ``service.query_counter`` (int, calls) and ``service.query_rt_us`` (float,
    mean microseconds per call), tagged ``api_name`` (UpperCamel)."""
    out: list[dict[str, Any]] = []
    for (api, method), (count, secs, _) in sorted(latency.items()):
        if method == "<unknown>" or not count:
            continue
        tags = [{"tag_key": "api_name", "tag_value": upper_camel(method)},
                {"tag_key": "service", "tag_value": api}]
        out.append({"metric_name": "service.query_counter",
                    "metric_value": {"int_value": int(count)}, "metric_tags": tags})
        out.append({"metric_name": "service.query_rt_us",
                    "metric_value": {"float_value": float(secs) * 1e6 / count},
                    "metric_tags": tags})
    return out


def install_compat(svc: Any) -> None:
    """Add KVCM's remaining admin calls and the debug service to a
    :class:`~kvsim.server.service.Service`'s call tables.

    Admin: ``getCacheMeta`` and ``removeCache`` (the meta calls, on the admin API as in
    KVCM), ``getLeaderElectorConfig`` / ``updateLeaderElectorConfig``
    (``campaign_delay_time_ms``: how long a demoted leader waits before it campaigns
    again; default two leases), ``updateLogger`` (``module_name``, ``log_level``) and
    KVCM's metric names in ``getMetrics``; ``getManagerClusterInfo`` reports the
    lease's expiration. Debug: ``injectFault``, ``removeFault``, ``clearFaults``.
    """
    state: dict[str, Any] = {"campaign_delay_ms": None}
    admin = svc._admin

    def delay_ms() -> int:
        if state["campaign_delay_ms"] is not None:
            return int(state["campaign_delay_ms"])
        el = svc.elector
        return 2 * int(el.lease.ttl_ms) if el is not None else 0

    def get_elector_config(body: dict[str, Any]) -> dict[str, Any]:
        return {"campaign_delay_time_ms": delay_ms()}

    def update_elector_config(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("campaign_delay_time_ms") is None:
            raise W.WireError("campaign_delay_time_ms: required (milliseconds)")
        state["campaign_delay_ms"] = W.get_int(body, "campaign_delay_time_ms", 0, low=0,
                                               high=7 * 86_400_000)
        return {}

    def leader_demote(body: dict[str, Any]) -> dict[str, Any]:
        el = svc.elector
        if el is None:
            return orig_demote(body)  # single node: says why it cannot
        el.demote(hold_off_s=delay_ms() / 1000.0)
        return {}

    def update_logger(body: dict[str, Any]) -> dict[str, Any]:
        module = W.get_str(body, "module_name")
        level = W.get_str(body, "log_level", required=True).strip().upper()
        if level not in _LOG_LEVELS:
            raise W.WireError(f"log_level: unknown level {level[:20]!r} (one of "
                              f"{', '.join(_LOG_LEVELS)})")
        # only loggers that exist: a new name per call would add a logger per call
        # (the logging module keeps every one for the life of the process)
        known = module == "kvsim" or (module.startswith("kvsim.")
                                      and module in logging.root.manager.loggerDict)
        logging.getLogger(module if known else "kvsim").setLevel(_LOG_LEVELS[level])
        return {}

    def get_metrics(body: dict[str, Any]) -> dict[str, Any]:
        out = orig_metrics(body)
        out["metrics"] = out["metrics"] + kvcm_metrics(svc.latency)
        return out

    def cluster_info(body: dict[str, Any]) -> dict[str, Any]:
        out = orig_cluster(body)
        el = svc.elector
        exp = 0
        if el is None:
            exp = 0
        elif el.is_leader and getattr(el, "renewed_at_ms", 0):
            exp = int(el.renewed_at_ms) + int(el.lease.ttl_ms)
        out["self_leader_expiration_time"] = exp
        if el is not None and not el.is_leader:
            # a follower: the leader's endpoint as the leader published it (KVCM's
            # followers report it too); {} while nobody leads
            holder_info = getattr(el.lease, "holder_info", None)
            info = holder_info() if holder_info is not None else {}
            leader = out.get("leader_node_id")
            out["leader_endpoint"] = (info if leader and info.get("node_id") == leader
                                      else {})
        return out

    orig_demote = admin["leaderDemote"]
    orig_metrics = admin["getMetrics"]
    orig_cluster = admin["getManagerClusterInfo"]
    admin.update({
        "getCacheMeta": svc._meta["getCacheMeta"],
        "removeCache": svc._meta["removeCache"],
        "getLeaderElectorConfig": get_elector_config,
        "updateLeaderElectorConfig": update_elector_config,
        "updateLogger": update_logger,
        "leaderDemote": leader_demote,
        "getMetrics": get_metrics,
        "getManagerClusterInfo": cluster_info,
    })
    for m in ("injectFault", "removeFault", "clearFaults"):
        svc._debug[m] = functools.partial(svc.faults.call, m)

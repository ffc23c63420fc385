"""Drive a live manager with a trace, as its clients would (``kvsim drive``).

Per request: ``getCacheLocation`` (prefix, or batch with ``replay.match: batch``),
``startWriteCache`` of every key and ``finishWriteCache`` with every new block written;
a write refused with ``REACH_MAX_ENTITY_CAPACITY`` writes nothing, as a client sees it.
Against ``kvsim serve --clock manual`` with ``clock="trace"``, an admin ``setClock`` to
the request's trace time comes first, so the server's reclaimer runs in trace time and
the run equals ``kvsim replay --flow client`` request by request.

The transport is a callable ``call(api, method, body) -> reply`` (``api`` is ``meta``
or ``admin``): :class:`HttpCaller` speaks the HTTP API of any manager (kvsim's or a
stock Tair KVCM), :class:`GrpcCaller` its gRPC API, :func:`service_caller` an
in-process :class:`~kvsim.server.service.Service`. This is the one place the client
sequence is written: tests and benchmarks that drive a server call :func:`drive`.

Example:
    >>> from kvsim.core.clock import ManualClock
    >>> from kvsim.server.service import Service
    >>> from kvsim.trace.model import Trace
    >>> import tempfile
    >>> svc = Service(KVSimConfig.from_dict({"instance_groups": [{"name": "default",
    ...     "quota": {"blocks": 3}}]}), data_dir=tempfile.mkdtemp(), clock=ManualClock(0),
    ...     manual_clock=True, admin_auth="none", event_log=False)
    >>> t = Trace.from_lists(ts_ns=[0, 1, 2, 3], keys=[[1, 2], [1, 2, 3], [4], [1, 2]])
    >>> drive(t, lambda api, m, b: svc.call(api, m, b)).result.hit_blocks.tolist()
    [0, 2, 0, 2]
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvsim.config import KVSimConfig
from kvsim.sim.replay import ReplayResult
from kvsim.trace.model import KIND_READ, KIND_WRITE, Trace

__all__ = ["DriveError", "DriveResult", "GrpcCaller", "HttpCaller", "caller_for", "drive",
           "grpc_address", "service_caller"]

Caller = Callable[[str, str, dict[str, Any]], dict[str, Any]]
CALLS = ("setClock", "getCacheLocation", "startWriteCache", "finishWriteCache")


class DriveError(RuntimeError):
    """The manager answered a call with an unexpected error."""


@dataclass(frozen=True)
class DriveResult:
    """A driven run: the per-request outcomes (as a replay's) and call latencies.

    Attributes:
        result: hit blocks per request (cached blocks, usage and evictions are not
            visible through the API: zeros).
        latency_s: per call name, every call's latency in seconds.
        refused_writes: writes answered ``REACH_MAX_ENTITY_CAPACITY``.
        elapsed_s: wall time of the run.
    """

    result: ReplayResult
    latency_s: dict[str, np.ndarray] = field(default_factory=dict)
    refused_writes: int = 0
    elapsed_s: float = 0.0

    def latency_table(self) -> list[dict[str, Any]]:
        """Per call: count, mean, p50, p99 and max latency in ms."""
        out = []
        for name in CALLS:
            v = self.latency_s.get(name)
            if v is None or not v.shape[0]:
                continue
            ms = v * 1e3
            out.append({"call": name, "count": int(v.shape[0]), "mean_ms": float(ms.mean()),
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())})
        return out


class HttpCaller:
    """``call(api, method, body)`` over a manager's HTTP API (``POST <url>/api/<method>``).

    Args:
        url: the meta service's base URL.
        admin_url: the admin service's base URL (None: admin calls are refused).
        admin_credential: ``user:password`` for admin calls (None: no header).
        timeout_s: per call.
    """

    def __init__(self, url: str, admin_url: str | None = None, *,
                 admin_credential: str | None = None, timeout_s: float = 30.0) -> None:
        import httpx

        self.urls = {"meta": url.rstrip("/"), "admin": (admin_url or "").rstrip("/")}
        self.headers: dict[str, str] = {}
        if admin_credential is not None:
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                admin_credential.encode()).decode()
        self._local = threading.local()
        self._timeout = timeout_s
        self._httpx = httpx

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = self._httpx.Client(timeout=self._timeout)
        return c

    def __call__(self, api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        base = self.urls.get(api)
        if not base:
            raise DriveError(f"{method}: no URL for the {api} service (give --admin-url)")
        r = self._client().post(f"{base}/api/{method}", json=body,
                                headers=self.headers if api == "admin" else {})
        if r.status_code != 200:
            raise DriveError(f"{method}: HTTP {r.status_code}: {r.text[:200]}")
        out: dict[str, Any] = r.json()
        return out


class GrpcCaller:
    """``call(api, method, body)`` over a manager's gRPC services (KVCM's ``MetaService``
    and ``AdminService``; bodies and replies in the HTTP API's JSON shape, through
    :class:`~kvsim.server.grpc_client.GrpcClient`).

    Args:
        url: the meta service's address, ``grpc://HOST:PORT``.
        admin_url: the admin service's address, ``grpc://HOST:PORT`` (None: admin calls
            are refused).
        admin_credential: ``user:password`` for admin calls (None: no metadata).
        timeout_s: per call.
    """

    def __init__(self, url: str, admin_url: str | None = None, *,
                 admin_credential: str | None = None, timeout_s: float = 30.0) -> None:
        from kvsim.server.grpc_client import GrpcClient

        host, port = grpc_address(url)
        # meta calls carry no credential (as over HTTP); the admin client its own channel
        self._meta = GrpcClient(host, port, None, timeout=timeout_s)
        self._admin = None
        if admin_url:
            ahost, aport = grpc_address(admin_url)
            self._admin = GrpcClient(ahost, port, aport, credential=admin_credential,
                                     timeout=timeout_s)

    def __call__(self, api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if api == "admin":
            if self._admin is None:
                raise DriveError(f"{method}: no URL for the admin service (give --admin-url)")
            return self._admin.request(api, method, body)
        return self._meta.request(api, method, body)

    def close(self) -> None:
        """Close the channels."""
        self._meta.close()
        if self._admin is not None:
            self._admin.close()


def grpc_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://HOST:PORT`` address.

    Example:
        >>> grpc_address("grpc://127.0.0.1:6381")
        ('127.0.0.1', 6381)
    """
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme != "grpc" or not u.hostname or u.port is None:
        raise ValueError(f"a gRPC address is grpc://HOST:PORT, got {url!r}")
    return u.hostname, u.port


def service_caller(service: Any, credential: str | None = None) -> Caller:
    """``call(api, method, body)`` straight into an in-process
    :class:`~kvsim.server.service.Service` (no transport), admin calls with
    ``credential``."""

    def call(api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = service.call(api, method, body, credential=credential)
        return out

    return call


def caller_for(url: str, admin_url: str | None = None, *,
               admin_credential: str | None = None) -> HttpCaller | GrpcCaller:
    """The transport for ``url``: :class:`GrpcCaller` for ``grpc://``, else HTTP."""
    if url.startswith("grpc://"):
        return GrpcCaller(url, admin_url, admin_credential=admin_credential)
    return HttpCaller(url, admin_url, admin_credential=admin_credential)


def _code(reply: dict[str, Any]) -> str:
    return str(((reply.get("header") or {}).get("status") or {}).get("code", "OK"))


def _ok(method: str, reply: dict[str, Any]) -> dict[str, Any]:
    code = _code(reply)
    if code != "OK":
        msg = ((reply.get("header") or {}).get("status") or {}).get("message", "")
        raise DriveError(f"{method}: {code}: {msg}")
    return reply


def drive(trace: Trace, call: Caller, *, config: KVSimConfig | None = None,
          clock: str = "trace", group: str = "default", concurrency: int = 1,
          rate: float = 0.0, write_timeout_s: int = 0,
          after: Callable[[int], None] | None = None) -> DriveResult:
    """Replay ``trace`` against a live manager through ``call`` (see the module docstring).

    Args:
        trace: requests in timestamp order.
        call: the transport.
        config: the served config, for the match rule (``replay.match``) and the group of
            trace instances it lists (others go to ``group``).
        clock: ``trace`` (``setClock`` to each request's time first; needs ``kvsim serve
            --clock manual``) or ``wall`` (the server's own clock).
        group: the group to register unlisted trace instances in.
        concurrency: requests in flight at once (``clock="trace"`` needs 1: the trace
            order is the run's order).
        rate: requests per second to send at (0 = as fast as answered).
        write_timeout_s: ``write_timeout_seconds`` of each write (0 = the server's default).
        after: called with each request's index once its calls are answered (one request
            in flight only), e.g. to run an in-process server's timer every N requests.

    Returns:
        The outcomes and latencies.

    Raises:
        DriveError: a call failed (other than a refused write).
    """
    if clock not in ("trace", "wall"):
        raise ValueError(f"clock must be 'trace' or 'wall', got {clock!r}")
    if clock == "trace" and concurrency != 1:
        raise ValueError("clock 'trace' runs the trace in order: concurrency must be 1")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if after is not None and concurrency != 1:
        raise ValueError("after runs between requests: concurrency must be 1")
    cfg = config or KVSimConfig()
    listed = {s.instance_id: s.group for s in cfg.instances}
    batch = cfg.replay.match == "batch"
    n = trace.n_requests
    lat: dict[str, list[float]] = {c: [] for c in CALLS}
    lat_lock = threading.Lock()
    refused = [0]

    def timed(api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = call(api, method, body)
        dt = time.perf_counter() - t0
        with lat_lock:
            lat.setdefault(method, []).append(dt)
        return r

    for name in trace.instances:  # register what the manager does not know yet
        info = call("meta", "getInstanceInfo", {"instance_id": name})
        if _code(info) == "OK":
            continue
        _ok("registerInstance", call("meta", "registerInstance", {
            "instance_group": listed.get(name, group), "instance_id": name,
            "block_size": int(cfg.replay.block_size or trace.block_size),
            "model_deployment": {"model_name": "kvsim-drive", "dtype": "bf16"}}))
    hit = np.zeros(n, dtype=np.int64)
    ihit = np.zeros(n, dtype=np.int64)
    iread = np.zeros(n, dtype=np.int64)

    def one(q: int) -> None:
        iid = trace.instances[int(trace.instance[q])]
        a, b = int(trace.offsets[q]), int(trace.offsets[q + 1])
        keys = trace.keys[a:b].tolist()
        kind = int(trace.kind[q])
        mask = None if trace.mask is None else trace.mask[a:b]
        if kind != KIND_WRITE:
            body: dict[str, Any] = {"instance_id": iid, "block_keys": keys,
                                    "query_type": "QT_BATCH_GET" if batch else
                                    "QT_PREFIX_MATCH"}
            if mask is not None:
                body["block_mask"] = {"bool_masks": {"values": mask.tolist()}}
            g = _ok("getCacheLocation", timed("meta", "getCacheLocation", body))
            locs = g.get("locations") or []
            # a prefix read answers the hits; a batch get a placeholder per miss
            found = (sum(1 for x in locs if x.get("location_specs")) if batch
                     else len(locs))
            m = 0 if mask is None else int(np.count_nonzero(mask))
            hit[q] = found + m
            ihit[q] = iread[q] = m
        if kind != KIND_READ and keys:
            wb: dict[str, Any] = {"instance_id": iid, "block_keys": keys}
            if write_timeout_s:
                wb["write_timeout_seconds"] = int(write_timeout_s)
            w = timed("meta", "startWriteCache", wb)
            if _code(w) == "REACH_MAX_ENTITY_CAPACITY":
                with lat_lock:
                    refused[0] += 1
                return
            _ok("startWriteCache", w)
            _ok("finishWriteCache", timed("meta", "finishWriteCache", {
                "instance_id": iid, "write_session_id": w["write_session_id"],
                "success_blocks": {"offset": len(w.get("locations") or [])}}))

    t0 = time.perf_counter()
    if concurrency == 1:
        for q in range(n):
            if rate > 0:
                _pace(t0, q, rate)
            if clock == "trace":
                _ok("setClock", timed("admin", "setClock", {"now_ns": int(trace.ts_ns[q])}))
            one(q)
            if after is not None:
                after(q)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            futs = []
            for q in range(n):
                if rate > 0:
                    _pace(t0, q, rate)
                futs.append(pool.submit(one, q))
            for f in futs:
                f.result()
    elapsed = time.perf_counter() - t0
    evicted = _evicted_by_trigger(call)
    zeros = np.zeros(n, dtype=np.int64)
    groups = tuple(listed.get(name, group) for name in trace.instances)
    res = ReplayResult(
        label=f"drive ({clock} clock)", trace=trace, config=cfg, group_of_instance=groups,
        hit_blocks=hit, internal_hits=ihit, internal_reads=iread, cached_blocks=zeros,
        group_used=zeros, evicted=zeros, elapsed_s=elapsed,
        capacity_units={g.name: g.capacity_units() for g in cfg.groups},
        evicted_by_trigger=evicted)
    return DriveResult(res, {k: np.asarray(v, dtype=np.float64) for k, v in lat.items()},
                       refused[0], elapsed)


def _evicted_by_trigger(call: Caller) -> dict[str, int]:
    """kvsim's ``kvsim_evicted_blocks`` metric per trigger (admin ``getMetrics``); empty
    when the manager has no such metric or the admin service is not reachable."""
    try:
        r = call("admin", "getMetrics", {})
    except Exception:  # a stock manager, or no admin URL: not reported
        return {}
    if _code(r) != "OK":
        return {}
    out: dict[str, int] = {}
    for m in r.get("metrics") or []:
        if m.get("metric_name") != "kvsim_evicted_blocks":
            continue
        tags = {t.get("tag_key"): t.get("tag_value") for t in m.get("metric_tags") or []}
        v = m.get("metric_value") or {}
        out[str(tags.get("trigger"))] = int(v.get("int_value", v.get("float_value", 0)))
    return out


def _pace(t0: float, q: int, rate: float) -> None:
    """Sleep until request ``q``'s send time at ``rate`` requests per second."""
    due = t0 + q / rate
    wait = due - time.perf_counter()
    if wait > 0:
        time.sleep(wait)

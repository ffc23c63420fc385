"""FastAPI apps for the meta (default port 6382) and admin (6492) services.

Every call is ``POST /api/<lowerCamelName>`` with a JSON body, answered HTTP 200
with :meth:`Service.call`'s reply; a body that is not JSON is HTTP 400. That hot path
is a few lines of plain ASGI in front of the FastAPI app (which serves the rest): the
framework's per-request routing and request objects cost more than the call itself. Admin
calls read ``Authorization: Basic base64(user:password)``. Both apps serve
Prometheus ``GET /metrics`` (text format) and ``POST /api/noop`` (a reply that
touches nothing: the transport's own cost, for benchmarks). One access-log line
per call goes to the ``kvsim.access`` logger.

Example:
    >>> from fastapi.testclient import TestClient  # doctest: +SKIP
    >>> from kvsim.server.service import Service
    >>> svc = Service(event_log=False)
    >>> meta = TestClient(create_app(svc, "meta"))  # doctest: +SKIP
    >>> meta.post("/api/checkHealth", json={}).json()["header"]["status"]["code"]  # doctest: +SKIP
    'UNSUPPORTED'
    >>> svc.close()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsim.server.auth import decode_basic
from kvsim.server.service import Service

__all__ = ["KVSimApp", "create_app"]

access_log = logging.getLogger("kvsim.access")

class _ServiceCollector(Collector):
    """Exposes :meth:`Service.metrics` as Prometheus gauges at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        rows = self.service.locked_metrics()
        for name, value, tags in rows:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(name, name.replace("_", " "),
                                                         labels=sorted(tags))
            fam.add_metric([tags[k] for k in sorted(tags)], float(value))
        yield from families.values()


class KVSimApp:
    """The ASGI app of one listener: ``POST /api/<method>`` is answered here directly
    (no per-request framework machinery: this is the hot path); everything else
    (``GET /metrics``, 404s) goes to the FastAPI app in :attr:`fastapi`."""

    def __init__(self, service: Service, api: str, fastapi: FastAPI) -> None:
        self.service = service
        self.api = api
        self.fastapi = fastapi

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith("/api/") and scope["method"] == "POST"):
            await self.fastapi(scope, receive, send)
            return
        t0 = time.perf_counter()
        method = path[5:]
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        raw = b"".join(chunks)
        api = self.api
        status = 200
        if method == "noop":
            reply: dict[str, Any] = {"header": _NOOP_HEADER}
        else:
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as e:
                status = 400
                reply = {"header": {"status": {"code": "INVALID_ARGUMENT",
                                               "message": f"body is not JSON: {e}"},
                                    "request_id": ""}}
            else:
                cred = None
                if api == "admin":
                    for k, v in scope["headers"]:
                        if k == b"authorization":
                            cred = decode_basic(v.decode("latin-1"))
                reply = self.service.call(api, method, body, credential=cred)
        data = orjson.dumps(reply)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
        if access_log.isEnabledFor(logging.INFO):
            c = scope.get("client")
            access_log.info("%s %s/%s %d %s %.2fms", f"{c[0]}:{c[1]}" if c else "-", api,
                            method, status, reply["header"]["status"]["code"],
                            (time.perf_counter() - t0) * 1e3)


_NOOP_HEADER = {"status": {"code": "OK", "message": ""}, "request_id": "noop"}


def create_app(service: Service, api: str) -> KVSimApp:
    """The ASGI app of one listener (``api`` = ``"meta"`` or ``"admin"``).

    ``POST /api/<method>`` -> :meth:`Service.call` (HTTP 400 when the body is not JSON;
    ``/api/noop`` answers OK without touching the service); ``GET /metrics`` and the rest
    are served by a FastAPI app (:attr:`KVSimApp.fastapi`).
    """
    if api not in ("meta", "admin"):
        raise ValueError(f"api must be 'meta' or 'admin', got {api!r}")
    app = FastAPI(title=f"kvsim {api} service", docs_url=None, redoc_url=None,
                  openapi_url=None)
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return KVSimApp(service, api, app)



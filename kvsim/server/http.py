"""FastAPI apps for the meta (default port 6382) and admin (6492) services.

Every call is ``POST /api/<lowerCamelName>`` with a JSON body, answered HTTP 200
with :meth:`Service.call`'s reply; a body that is not JSON is HTTP 400. Admin
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
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsim.server.auth import decode_basic
from kvsim.server.service import Service

__all__ = ["create_app"]

access_log = logging.getLogger("kvsim.access")

_JSON = "application/json"


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


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


def create_app(service: Service, api: str) -> FastAPI:
    """The FastAPI app of one listener (``api`` = ``"meta"`` or ``"admin"``)."""
    if api not in ("meta", "admin"):
        raise ValueError(f"api must be 'meta' or 'admin', got {api!r}")
    app = FastAPI(title=f"kvsim {api} service", docs_url=None, redoc_url=None,
                  openapi_url=None)
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))
    ok_header = {"status": {"code": "OK", "message": ""}, "request_id": "noop"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.post("/api/noop")
    async def noop(request: Request) -> Response:
        await request.body()
        return _json({"header": ok_header})

    @app.post("/api/{method}")
    async def call(method: str, request: Request) -> Response:
        t0 = time.perf_counter()
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as e:
            access_log.info("%s %s/%s 400 not-json", _peer(request), api, method)
            return _json({"header": {"status": {"code": "INVALID_ARGUMENT",
                                                "message": f"body is not JSON: {e}"},
                                     "request_id": ""}}, status=400)
        cred = decode_basic(request.headers.get("authorization")) if api == "admin" else None
        reply = service.call(api, method, body, credential=cred)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s/%s 200 %s %.2fms", _peer(request), api, method,
                            reply["header"]["status"]["code"],
                            (time.perf_counter() - t0) * 1e3)
        return _json(reply)

    return app


def _peer(request: Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else "-"

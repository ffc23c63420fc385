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
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsim.server.auth import decode_basic
from kvsim.server.service import Service

__all__ = ["KVSimApp", "create_app", "fast_protocol"]

access_log = logging.getLogger("kvsim.access")
log = logging.getLogger("kvsim.server")

_HIST = "kvsim_call_seconds"


class _ServiceCollector(Collector):
    """Exposes :meth:`Service.metrics` as Prometheus gauges at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        rows = self.service.locked_metrics()
        # kvsim_call_seconds_{bucket,sum,count}: one Prometheus histogram per (api, method)
        hist: dict[tuple[str, str], dict[str, Any]] = {}
        for name, value, tags in rows:
            if name.startswith(_HIST + "_"):
                h = hist.setdefault((tags["api"], tags["method"]), {"buckets": []})
                if name.endswith("_bucket"):
                    h["buckets"].append((tags["le"], value))
                else:
                    h[name.rsplit("_", 1)[1]] = value
                continue
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(name, name.replace("_", " "),
                                                         labels=sorted(tags))
            fam.add_metric([tags[k] for k in sorted(tags)], float(value))
        yield from families.values()
        if hist:
            hf = HistogramMetricFamily(_HIST, "seconds per call, measured inside the service",
                                       labels=["api", "method"])
            for (api, method), h in sorted(hist.items()):
                hf.add_metric([api, method], buckets=h["buckets"], sum_value=h.get("sum", 0.0))
            yield hf


class KVSimApp:
    """The ASGI app of one listener: ``POST /api/<method>`` is answered here directly
    (no per-request framework machinery: this is the hot path); everything else
    (``GET /metrics``, 404s) goes to the FastAPI app in :attr:`fastapi`."""

    def __init__(self, service: Service, api: str, fastapi: FastAPI) -> None:
        self.service = service
        self.api = api
        self.fastapi = fastapi

    def handle(self, method: str, raw: bytes, headers: list[tuple[bytes, bytes]],
               client: tuple[str, int] | None, t0: float) -> tuple[int, bytes]:
        """Answer ``POST /api/<method>`` with body ``raw``: (HTTP status, JSON reply).

        Shared by the ASGI path and the inline fast path of :class:`FastHttpProtocol`.
        """
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
                    for k, v in headers:
                        if k == b"authorization":
                            cred = decode_basic(v.decode("latin-1"))
                reply = self.service.call(api, method, body, credential=cred,
                                          json_fragments=True)
        data = orjson.dumps(reply)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s/%s %d %s %.2fms",
                            f"{client[0]}:{client[1]}" if client else "-", api, method,
                            status, reply["header"]["status"]["code"],
                            (time.perf_counter() - t0) * 1e3)
        return status, data

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith("/api/") and scope["method"] == "POST"):
            await self.fastapi(scope, receive, send)
            return
        t0 = time.perf_counter()
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        status, data = self.handle(path[5:], b"".join(chunks), scope["headers"],
                                   scope.get("client"), t0)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


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

    if api == "admin":  # the capacity advisor's page (GET /advisor)
        from kvsim.server.advisor_page import add_routes

        add_routes(app, service)
    return KVSimApp(service, api, app)




_REASONS = {200: b"OK", 400: b"Bad Request"}


def fast_protocol(app: KVSimApp) -> type[Any] | None:
    """A uvicorn ``http`` protocol class that answers the API inline, or None.

    uvicorn runs every request as an asyncio task through the ASGI interface and writes
    the response head and body in two socket writes. For ``POST /api/<method>``
    (HTTP/1.1, keep-alive, no ``Expect``, nothing else in flight on the connection)
    this protocol instead buffers the body and, when the message is complete, calls
    :meth:`KVSimApp.handle` and writes the whole response at once, from the parser
    callback: no task, no ASGI messages, one write. Everything else (``GET /metrics``,
    404s, pipelined or HTTP/1.0 requests) takes uvicorn's normal path, so behaviour is
    the same either way (the tests run both). Returns None when uvicorn's httptools
    protocol is missing or does not have the hooks this relies on; the server then
    serves everything through ASGI.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    hooks = ("on_headers_complete", "on_body", "on_message_complete", "on_response_complete")
    if not all(callable(getattr(HttpToolsProtocol, h, None)) for h in hooks):
        return None

    class FastHttpProtocol(HttpToolsProtocol):
        _kvsim_fast = False
        _kvsim_body: list[bytes]

        def on_headers_complete(self) -> None:
            p = self.parser
            cycle = self.cycle
            if (self.url.startswith(b"/api/") and p.get_method() == b"POST"
                    and b"?" not in self.url and b"%" not in self.url
                    and p.get_http_version() == "1.1" and p.should_keep_alive()
                    and not self.expect_100_continue and not p.should_upgrade()
                    and (cycle is None or cycle.response_complete) and not self.pipeline):
                self._kvsim_fast = True
                self._kvsim_body = []
                self._kvsim_t0 = time.perf_counter()
                return
            self._kvsim_fast = False
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._kvsim_fast:
                self._kvsim_body.append(body)
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._kvsim_fast:
                super().on_message_complete()
                return
            self._kvsim_fast = False
            try:
                status, data = app.handle(self.url[5:].decode("latin-1"),
                                          b"".join(self._kvsim_body), self.headers,
                                          self.client, self._kvsim_t0)
            except Exception:  # pragma: no cover - handle() maps every error itself
                log.exception("internal error answering %r", self.url)
                status, data = 500, b'{"header":{"status":{"code":"INTERNAL_ERROR"}}}'
            head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                        % len(data))
            head.append(data)
            self.transport.write(b"".join(head))
            self.on_response_complete()  # counts it, re-arms keep-alive, resumes reading

    return FastHttpProtocol

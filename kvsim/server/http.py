"""FastAPI apps for the meta (default port 6382) and admin (6492) services.

Every call is ``POST /api/<lowerCamelName>`` with a JSON body, answered HTTP 200
with :meth:`Service.call`'s reply; a body that is not JSON is HTTP 400. That hot path
is a few lines of plain ASGI in front of the FastAPI app (which serves the rest): the
framework's per-request routing and request objects cost more than the call itself. Admin
calls read ``Authorization: Basic base64(user:password)`` and run on a thread pool (a
password check is a deliberate ~30 ms scrypt: never on the event loop). Both apps serve
Prometheus ``GET /metrics`` (text format; the admin one needs the admin credential, like
``getMetrics``) and ``POST /api/noop`` (a reply that touches nothing: the transport's own
cost, for benchmarks). One access-log line per call goes to the ``kvsim.access`` logger.

Limits (``server.limits``): a request must arrive whole within ``body_timeout_seconds``
(from its first byte; else HTTP 408) and its body must stay within ``max_body_bytes``
(else HTTP 413); both answers are ``INVALID_ARGUMENT`` naming the limit, and the
connection is closed.

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

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsim.server import bigcalls
from kvsim.server.auth import decode_basic
from kvsim.server.kvcm_compat import reply_defaults
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
        self.limits = service.limits
        # admin calls (and admin /metrics) run here, off the event loop
        self.pool = (ThreadPoolExecutor(max_workers=8, thread_name_prefix="kvsim-admin")
                     if api == "admin" else None)
        # admin calls whose credential still needs a password check (a scrypt) run here:
        # a flood of new (wrong) credentials cannot take the threads that serve admins
        # whose credential was verified before
        self.check_pool = (ThreadPoolExecutor(max_workers=2,
                                              thread_name_prefix="kvsim-admin-check")
                           if api == "admin" else None)
        # meta calls with a body over OFFLOAD_BYTES run here (the loop serves the rest)
        self.big_pool = (ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvsim-big")
                         if api == "meta" else None)

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
                body = (bigcalls.loads(raw, self.service.limits.max_keys_per_request)
                        if api == "meta" and len(raw) > OFFLOAD_BYTES
                        else orjson.loads(raw) if raw.strip() else {})
            except orjson.JSONDecodeError as e:
                status = 400
                reply = {"header": {"status": {"code": "INVALID_ARGUMENT",
                                               "message": f"body is not JSON: {e}"},
                                    "request_id": ""}}
            else:
                # admin and debug calls carry the admin credential
                cred = _credential(headers) if api != "meta" else None
                reply = self.service.call(api, method, body, credential=cred,
                                          json_fragments=True,
                                          peer=client[0] if client else None)
                if reply["header"]["status"]["code"] != "OK":
                    # KVCM prints every field of the reply message, errors included
                    reply = reply_defaults(api, method) | reply
        data = orjson.dumps(reply)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s/%s %d %s %.2fms",
                            f"{client[0]}:{client[1]}" if client else "-", api, method,
                            status, reply["header"]["status"]["code"],
                            (time.perf_counter() - t0) * 1e3)
        return status, data

    def refused_at_once(self, headers: list[tuple[bytes, bytes]],
                        client: tuple[str, int] | None) -> bool:
        """An admin request whose credential will be refused without a scrypt (a flood
        past its rate limit is answered on the loop, never queued for a thread)."""
        return self.service.auth.refuses(self.service.accounts, _credential(headers),
                                         client[0] if client else None)

    def verified(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request's credential was verified before (no scrypt needed)."""
        return self.service.accounts.cached(_credential(headers)) is not None

    def flooding(self, headers: list[tuple[bytes, bytes]],
                 client: tuple[str, int] | None) -> bool:
        """An admin request with a new credential from a client past its failure rate
        (:meth:`~kvsim.server.auth.AuthGuard.over_budget`)."""
        return self.service.auth.over_budget(self.service.accounts, _credential(headers),
                                             client[0] if client else None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith("/api/") and scope["method"] == "POST"):
            await self.fastapi(scope, receive, send)
            return
        t0 = time.perf_counter()
        chunks = []
        size = 0
        lim = self.limits
        try:
            async with asyncio.timeout(lim.body_timeout_seconds):
                while True:
                    msg = await receive()
                    if msg.get("type") == "http.disconnect":
                        return
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    if size > lim.max_body_bytes:
                        raise _Refused(413, "max_body_bytes", lim.max_body_bytes)
                    chunks.append(chunk)
                    if not msg.get("more_body", False):
                        break
            pool = self.pool if self.pool is not None else (
                self.big_pool if size > OFFLOAD_BYTES else None)
            if self.pool is not None and self.service.admin_auth != "none":
                if self.flooding(scope["headers"], scope.get("client")):
                    # past its failure rate: answer late (never a thread, never a
                    # scrypt) so a client looping on wrong passwords runs at our pace
                    await asyncio.sleep(FLOOD_REPLY_DELAY_S)
                if self.refused_at_once(scope["headers"], scope.get("client")):
                    pool = None  # refused without a password check: no thread needed
                elif not self.verified(scope["headers"]):
                    pool = self.check_pool  # needs a scrypt: not on the admins' threads
            if pool is not None:
                status, data = await asyncio.get_running_loop().run_in_executor(
                    pool, self.handle, path[5:], b"".join(chunks), scope["headers"],
                    scope.get("client"), t0)
            else:
                status, data = self.handle(path[5:], b"".join(chunks), scope["headers"],
                                           scope.get("client"), t0)
        except TimeoutError:
            status, data = 408, refusal("body_timeout_seconds", lim.body_timeout_seconds)
        except _Refused as e:
            status, data = e.status, refusal(e.limit, e.value)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


#: How late an admin listener answers a request whose client is past its credential
#: failure rate (``limits.auth_failures_per_second``) with a credential never verified:
#: a flooding client that waits for each answer then sends at most 1/delay requests a
#: second per connection instead of saturating the loop, so a real admin's calls (a
#: verified credential: no scrypt, no delay) are not queued behind the flood. Only the
#: answer waits (a timer): no thread and no password check is spent on it.
FLOOD_REPLY_DELAY_S = 0.5

_NOOP_HEADER = {"status": {"code": "OK", "message": ""}, "request_id": "noop"}


def _credential(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k == b"authorization":
            return decode_basic(v.decode("latin-1"))
    return None


class _Refused(Exception):
    def __init__(self, status: int, limit: str, value: float) -> None:
        self.status, self.limit, self.value = status, limit, value


def refusal(limit: str, value: float) -> bytes:
    """The JSON reply to a request refused by a transport limit (names the limit).

    Example:
        >>> orjson.loads(refusal("max_body_bytes", 1024))["header"]["status"]["message"]
        'the request body is too large: over the limit max_body_bytes (1024)'
    """
    what = ("the request was not received in time" if limit == "body_timeout_seconds"
            else "the request body is too large")
    return orjson.dumps({"header": {"status": {
        "code": "INVALID_ARGUMENT",
        "message": f"{what}: over the limit {limit} ({value:g})"}, "request_id": ""}})


def create_app(service: Service, api: str) -> KVSimApp:
    """The ASGI app of one listener (``api`` = ``"meta"``, ``"admin"`` or ``"debug"``).

    ``POST /api/<method>`` -> :meth:`Service.call` (HTTP 400 when the body is not JSON;
    ``/api/noop`` answers OK without touching the service); ``GET /metrics`` and the rest
    are served by a FastAPI app (:attr:`KVSimApp.fastapi`).
    """
    if api not in ("meta", "admin", "debug"):
        raise ValueError(f"api must be 'meta', 'admin' or 'debug', got {api!r}")
    app = FastAPI(title=f"kvsim {api} service", docs_url=None, redoc_url=None,
                  openapi_url=None)
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))

    kapp = KVSimApp(service, api, app)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if kapp.pool is not None and service.admin_auth != "none":
            # admin: the same credential as getMetrics
            cred = decode_basic(request.headers.get("authorization"))
            peer = request.client.host if request.client else None
            # a credential still to be checked (scrypt) never takes the admins' threads
            pool = (kapp.pool if service.accounts.cached(cred) is not None
                    else kapp.check_pool)
            role = await asyncio.get_running_loop().run_in_executor(
                pool, service.check_admin, cred, peer)
            if role != "ROLE_ADMIN":
                return Response("admin /metrics needs a valid admin credential\n",
                                status_code=401, media_type="text/plain",
                                headers={"www-authenticate": 'Basic realm="kvsim admin"'})
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    if api == "admin":  # the capacity advisor's page (GET /advisor)
        from kvsim.server.advisor_page import add_routes

        add_routes(app, service)
    return kapp




_REASONS = {200: b"OK", 400: b"Bad Request", 408: b"Request Timeout",
            413: b"Content Too Large"}


#: meta request bodies larger than this are answered on a worker thread, not inline
OFFLOAD_BYTES = 256 << 10


def offload(app: KVSimApp, method: str, raw: bytes) -> bool:
    """Whether a meta call is answered on a worker thread rather than inline on the
    event loop: a body over :data:`OFFLOAD_BYTES`, or a call the service says may be
    long (:meth:`~kvsim.server.service.Service.long_call`: many keys, the finish of a
    big write session, a trim), which runs in steps that let other calls in; inline it
    would hold the loop that serves them."""
    if app.big_pool is None:
        return False
    if len(raw) > OFFLOAD_BYTES:
        return True
    return app.service.long_call(method, raw)  # see kvsim.server.bigcalls


def _handle_safely(app: KVSimApp, args: tuple[Any, ...]) -> tuple[int, bytes]:
    try:
        return app.handle(*args)
    except Exception:  # pragma: no cover - handle() maps every error itself
        log.exception("internal error answering %r", args[0])
        return 500, b'{"header":{"status":{"code":"INTERNAL_ERROR"}}}'


def fast_protocol(app: KVSimApp, *, inline: bool = True) -> type[Any] | None:
    """A uvicorn ``http`` protocol class that answers the API inline, or None.

    uvicorn runs every request as an asyncio task through the ASGI interface and writes
    the response head and body in two socket writes. For ``POST /api/<method>``
    (HTTP/1.1, keep-alive, no ``Expect``, nothing else in flight on the connection)
    this protocol instead buffers the body and, when the message is complete, calls
    :meth:`KVSimApp.handle` and writes the whole response at once, from the parser
    callback: no task, no ASGI messages, one write. Everything else (``GET /metrics``,
    404s, pipelined or HTTP/1.0 requests; every request with ``inline`` False, and admin
    calls) takes uvicorn's normal path, so behaviour is the same either way (the tests
    run both). Either way the protocol enforces ``body_timeout_seconds`` (from the
    request's first byte) and ``max_body_bytes``. Returns None when uvicorn's httptools
    protocol is missing or does not have the hooks this relies on; the server then
    serves everything through ASGI.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    hooks = ("on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
             "on_response_complete", "data_received", "connection_lost", "shutdown")
    if not all(callable(getattr(HttpToolsProtocol, h, None)) for h in hooks):
        return None

    # admin calls go through ASGI (to a thread pool). Measured: answering a wrong-password
    # flood inline makes a real admin's call wait longer (p99 ~1 s vs ~160 ms under 32
    # flooders on a loaded VM): the flood then starves the ASGI path the admin takes.
    inline = inline and getattr(app, "pool", None) is None

    class FastHttpProtocol(HttpToolsProtocol):
        _kvsim_fast = False
        _kvsim_body: list[bytes]
        _kvsim_timer: Any = None
        _kvsim_size = 0
        _kvsim_dead = False

        def _kvsim_refuse(self, status: int, limit: str, value: float) -> None:
            """Answer a request over a transport limit and close the connection."""
            self._kvsim_dead = True
            self._kvsim_cancel()
            if self.transport.is_closing():
                return
            data = refusal(limit, value)
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, _REASONS[status], len(data), data))
            self.transport.close()
            log.warning("%s: refused a request over %s", self.client, limit)

        def _kvsim_cancel(self) -> None:
            if self._kvsim_timer is not None:
                self._kvsim_timer.cancel()
                self._kvsim_timer = None

        def data_received(self, data: bytes) -> None:
            if not (self._kvsim_dead or self._kvsim_close):
                super().data_received(data)

        def shutdown(self) -> None:
            if self._kvsim_busy:  # an offloaded call in flight: answer it, then close
                self._kvsim_close = True
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._kvsim_cancel()
            super().connection_lost(exc)

        _kvsim_busy = False
        _kvsim_close = False

        def on_message_begin(self) -> None:
            if self._kvsim_busy:  # pipelined behind an offloaded call: close after it
                self._kvsim_close = True
                return
            super().on_message_begin()
            self._kvsim_size = 0
            self._kvsim_cancel()
            self._kvsim_timer = self.loop.call_later(
                app.limits.body_timeout_seconds, self._kvsim_refuse, 408, "body_timeout_seconds",
                app.limits.body_timeout_seconds)

        def on_headers_complete(self) -> None:
            if self._kvsim_dead or self._kvsim_close:
                return
            for k, v in self.headers:
                if k == b"content-length":
                    try:
                        n = int(v)
                    except ValueError:
                        n = 0
                    if n > app.limits.max_body_bytes:
                        self._kvsim_refuse(413, "max_body_bytes", app.limits.max_body_bytes)
                        return
            p = self.parser
            cycle = self.cycle
            if (inline and self.url.startswith(b"/api/") and p.get_method() == b"POST"
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
            if self._kvsim_dead or self._kvsim_close:
                return
            self._kvsim_size += len(body)
            if self._kvsim_size > app.limits.max_body_bytes:  # chunked, or more than announced
                self._kvsim_refuse(413, "max_body_bytes", app.limits.max_body_bytes)
                return
            if self._kvsim_fast:
                self._kvsim_body.append(body)
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            if self._kvsim_dead or self._kvsim_close:
                return
            self._kvsim_cancel()
            if not self._kvsim_fast:
                super().on_message_complete()
                return
            self._kvsim_fast = False
            args = (self.url[5:].decode("latin-1"), b"".join(self._kvsim_body), self.headers,
                    self.client, self._kvsim_t0)
            if offload(app, args[0], args[1]):
                # a large call (say 100k keys) runs on a worker thread: the loop keeps
                # answering the small ones meanwhile. Reading pauses until it is answered;
                # a request pipelined behind it is not served (the connection closes).
                self._kvsim_busy = True
                self.flow.pause_reading()
                fut = self.loop.run_in_executor(app.big_pool, _handle_safely, app, args)
                fut.add_done_callback(self._kvsim_done)
                return
            self._kvsim_reply(*_handle_safely(app, args))

        def _kvsim_done(self, fut: Any) -> None:
            self._kvsim_busy = False
            if self._kvsim_dead or self.transport.is_closing():
                return
            self._kvsim_reply(*fut.result())
            if self._kvsim_close:
                self.transport.close()

        def _kvsim_reply(self, status: int, data: bytes) -> None:
            head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                        % len(data))
            head.append(data)
            self.transport.write(b"".join(head))
            self.on_response_complete()  # counts it, re-arms keep-alive, resumes reading

    return FastHttpProtocol

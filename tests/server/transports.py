"""Transport factories for the contract suite: ``TRANSPORTS[name](tmp_path, ...) -> client``.

Every client has ``.meta(method, body) -> dict`` and ``.admin(method, body) -> dict``
(admin with the test admin credential unless ``credential=`` is given), ``.service``
(the server's :class:`Service`, for white-box checks), ``.tick()`` and ``.close()``.
"inproc" calls :meth:`Service.call` directly ("inproc-sqlite" with a SQLite state
store); "http" runs a real server on loopback ephemeral ports and talks to it with
httpx; "grpc" runs the same server with its gRPC listeners and talks to them with
:class:`kvsim.server.grpc_client.GrpcClient`. Add another transport by adding a factory
with the same signature (``config=``, ``clock=``, ``manual_clock=``: the server runs on
``clock`` moved only by the admin call ``setClock``, as ``kvsim serve --clock manual``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from kvsim.config import KVSimConfig
from kvsim.core.clock import Clock
from kvsim.server.service import Service

ADMIN_PASSWORD = "test-admin-pw"
ADMIN_CREDENTIAL = f"admin:{ADMIN_PASSWORD}"
_DEFAULT = object()


class Client(Protocol):
    service: Service

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def admin(self, method: str, body: dict[str, Any], *,
              credential: Any = _DEFAULT) -> dict[str, Any]: ...

    def tick(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class InprocClient:
    """Calls the service directly."""

    def __init__(self, tmp: Path, config: KVSimConfig | None, clock: Clock | None,
                 store: Any = None, manual_clock: bool = False) -> None:
        self.service = Service(config, data_dir=tmp, clock=clock, admin_password=ADMIN_PASSWORD,
                               store=store, manual_clock=manual_clock)

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.service.call("meta", method, body)

    def admin(self, method: str, body: dict[str, Any], *,
              credential: Any = _DEFAULT) -> dict[str, Any]:
        cred = ADMIN_CREDENTIAL if credential is _DEFAULT else credential
        return self.service.call("admin", method, body, credential=cred)

    def tick(self) -> dict[str, int]:
        return self.service.tick()

    def close(self) -> None:
        self.service.close()


class HttpClient:
    """A real server on 127.0.0.1 ephemeral ports, called with httpx (keep-alive)."""

    def __init__(self, tmp: Path, config: KVSimConfig | None, clock: Clock | None,
                 manual_clock: bool = False) -> None:
        from kvsim.server.app import start_server

        self.handle = start_server(config, data_dir=tmp, clock=clock,
                                   admin_password=ADMIN_PASSWORD, tick_seconds=3600,
                                   manual_clock=manual_clock)
        self.service = self.handle.service
        self.meta_url = f"http://127.0.0.1:{self.handle.http_port}"
        self.admin_url = f"http://127.0.0.1:{self.handle.admin_http_port}"
        self.http = httpx.Client(timeout=10)

    def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(url, json=body, headers=headers or {})

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.post(f"{self.meta_url}/api/{method}", body)
        assert r.status_code == 200, r.text
        return r.json()

    def admin(self, method: str, body: dict[str, Any], *,
              credential: Any = _DEFAULT) -> dict[str, Any]:
        cred = ADMIN_CREDENTIAL if credential is _DEFAULT else credential
        headers = ({"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}
                   if cred is not None else {})
        r = self.post(f"{self.admin_url}/api/{method}", body, headers)
        assert r.status_code == 200, r.text
        return r.json()

    def tick(self) -> dict[str, int]:
        return self.service.tick()

    def close(self) -> None:
        self.http.close()
        self.handle.stop()


class GrpcTransportClient:
    """A real server with gRPC listeners on 127.0.0.1 ephemeral ports, called over gRPC.

    Bodies are encoded into the request messages as a KVCM gRPC client would. Two cases
    cannot reach the server over gRPC and are answered here, as a gRPC client sees them:
    a method the service does not declare (gRPC status ``UNIMPLEMENTED``, reported as
    ``UNSUPPORTED``) and a body that does not fit the request message (e.g.
    ``"block_size": "x"``; reported as ``INVALID_ARGUMENT`` naming the field).
    """

    def __init__(self, tmp: Path, config: KVSimConfig | None, clock: Clock | None,
                 manual_clock: bool = False) -> None:
        from kvsim.server.app import start_server
        from kvsim.server.grpc_client import GrpcClient

        self.handle = start_server(config, data_dir=tmp, clock=clock,
                                   admin_password=ADMIN_PASSWORD, tick_seconds=3600,
                                   grpc_port=0, admin_grpc_port=0, manual_clock=manual_clock)
        self.service = self.handle.service
        assert self.handle.grpc_port and self.handle.admin_grpc_port
        # generous deadline: the first call may compile the core's numba kernels
        self.grpc = GrpcClient("127.0.0.1", self.handle.grpc_port, self.handle.admin_grpc_port,
                               timeout=300)

    def _call(self, api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        import grpc
        from google.protobuf import json_format

        from kvsim.server.grpc_server import API_SERVICES, method_table

        if method not in method_table(api):
            path = f"/{API_SERVICES[api].full_name}/{method[:1].upper()}{method[1:]}"
            channel = self.grpc._channels[api]
            try:
                channel.unary_unary(path)(b"", timeout=30)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
                return _local_reply("UNSUPPORTED", f"grpc: {e.details()}")
            raise AssertionError(f"{path} answered")
        try:
            return self.grpc.request(api, method, body)
        except json_format.ParseError as e:
            return _local_reply("INVALID_ARGUMENT", f"grpc request encoding: {e}")

    def meta(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self.grpc.set_credential(None)
        return self._call("meta", method, body)

    def admin(self, method: str, body: dict[str, Any], *,
              credential: Any = _DEFAULT) -> dict[str, Any]:
        self.grpc.set_credential(ADMIN_CREDENTIAL if credential is _DEFAULT else credential)
        return self._call("admin", method, body)

    def tick(self) -> dict[str, int]:
        return self.service.tick()

    def close(self) -> None:
        self.grpc.close()
        self.handle.stop()


def caller(client: Client) -> Callable[[str, str, dict[str, Any]], dict[str, Any]]:
    """``client`` as the transport of :func:`kvsim.sim.drive.drive` (the one client
    driver): ``call(api, method, body)``, admin calls with the test admin credential."""

    def call(api: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return client.meta(method, body) if api == "meta" else client.admin(method, body)

    return call


def _local_reply(code: str, message: str) -> dict[str, Any]:
    return {"header": {"status": {"code": code, "message": message},
                       "request_id": "grpc-client"}}


Factory = Callable[..., Client]


def inproc(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None,
           manual_clock: bool = False) -> Client:
    """A client calling :meth:`Service.call` in process."""
    return InprocClient(tmp, config, clock, manual_clock=manual_clock)


def http(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None,
         manual_clock: bool = False) -> Client:
    """A client of a real HTTP server on loopback."""
    return HttpClient(tmp, config, clock, manual_clock)


def grpc(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None,
         manual_clock: bool = False) -> Client:
    """A client of a real server's gRPC listeners on loopback."""
    return GrpcTransportClient(tmp, config, clock, manual_clock)


def inproc_sqlite(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None,
                  manual_clock: bool = False) -> Client:
    """In process, with every call's changes saved to a SQLite state store."""
    from kvsim.server.store import SqliteStore

    return InprocClient(tmp, config, clock, store=SqliteStore(tmp / "state.db"),
                        manual_clock=manual_clock)


TRANSPORTS: dict[str, Factory] = {"inproc": inproc, "http": http, "grpc": grpc,
                                  "inproc-sqlite": inproc_sqlite}

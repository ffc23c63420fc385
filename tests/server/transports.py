"""Transport factories for the contract suite: ``TRANSPORTS[name](tmp_path, ...) -> client``.

Every client has ``.meta(method, body) -> dict`` and ``.admin(method, body) -> dict``
(admin with the test admin credential unless ``credential=`` is given), ``.service``
(the server's :class:`Service`, for white-box checks), ``.tick()`` and ``.close()``.
"inproc" calls :meth:`Service.call` directly; "http" runs a real server on loopback
ephemeral ports and talks to it with httpx. Add another transport (e.g. "grpc") by
adding a factory with the same signature.
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

    def __init__(self, tmp: Path, config: KVSimConfig | None, clock: Clock | None) -> None:
        self.service = Service(config, data_dir=tmp, clock=clock, admin_password=ADMIN_PASSWORD)

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

    def __init__(self, tmp: Path, config: KVSimConfig | None, clock: Clock | None) -> None:
        from kvsim.server.app import start_server

        self.handle = start_server(config, data_dir=tmp, clock=clock,
                                   admin_password=ADMIN_PASSWORD, tick_seconds=3600)
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


Factory = Callable[..., Client]


def inproc(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None
           ) -> Client:
    """A client calling :meth:`Service.call` in process."""
    return InprocClient(tmp, config, clock)


def http(tmp: Path, *, config: KVSimConfig | None = None, clock: Clock | None = None) -> Client:
    """A client of a real HTTP server on loopback."""
    return HttpClient(tmp, config, clock)


TRANSPORTS: dict[str, Factory] = {"inproc": inproc, "http": http}

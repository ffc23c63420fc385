"""The inline fast path of the HTTP listener answers exactly as the ASGI path does.

Two real servers on loopback, one with the fast protocol (the default) and one with
``KVSIM_HTTP_FAST=0``; the same requests, sent over raw sockets so that pipelining,
HTTP/1.0, ``Expect: 100-continue`` and ``Connection: close`` are exercised as sent.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from transports import ADMIN_CREDENTIAL, ADMIN_PASSWORD

from kvsim.server.app import ServerHandle, start_server
from kvsim.server.http import fast_protocol

AUTH = b"Authorization: Basic " + base64.b64encode(ADMIN_CREDENTIAL.encode()) + b"\r\n"


def _start(tmp: Any, fast: bool, monkeypatch: pytest.MonkeyPatch) -> ServerHandle:
    monkeypatch.setenv("KVSIM_HTTP_FAST", "1" if fast else "0")
    h = start_server(None, data_dir=tmp, admin_password=ADMIN_PASSWORD, tick_seconds=0.05)
    svc = h.service
    svc.call("meta", "registerInstance", {
        "instance_group": "default", "instance_id": "i0", "block_size": 4,
        "location_spec_infos": [{"name": "tp0", "size": 8}],
        "model_deployment": {"model_name": "m", "dtype": "d"}})
    w = svc.call("meta", "startWriteCache", {"instance_id": "i0", "block_keys": [1, 2, 3]})
    svc.call("meta", "finishWriteCache", {"instance_id": "i0",
                                          "write_session_id": w["write_session_id"],
                                          "success_blocks": {"offset": 3}})
    return h


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerHandle]]:
    mp = pytest.MonkeyPatch()
    try:
        out = {"fast": _start(tmp_path_factory.mktemp("fast"), True, mp),
               "asgi": _start(tmp_path_factory.mktemp("asgi"), False, mp)}
    finally:
        mp.undo()
    yield out
    for h in out.values():
        h.stop()


def _post(path: str, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/" + version + b"\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n" + extra + b"\r\n" + body)


def _exchange(port: int, data: bytes, n_replies: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``data`` at once and read ``n_replies`` responses (bounded: 10 s timeout)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while len(out) < n_replies:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            if b" 100 " in lines[0]:  # interim response to Expect: 100-continue
                continue
            status = int(lines[0].split()[1])
            headers = {k.decode().lower(): v.decode().strip()
                       for k, v in (ln.split(b":", 1) for ln in lines[1:])}
            n = int(headers["content-length"])
            while len(buf) < n:
                chunk = s.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            out.append((status, headers, buf[:n]))
            buf = buf[n:]
    return out


def _norm(body: bytes) -> Any:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(doc, dict) and "header" in doc:
        doc["header"].pop("request_id", None)
    return doc


def _both(servers: dict[str, ServerHandle], api: str, data: bytes, n: int) -> list[Any]:
    got = {}
    for mode, h in servers.items():
        port = h.http_port if api == "meta" else h.admin_http_port
        here = str(h.service.data_dir).encode()  # URIs name each server's own data dir
        got[mode] = [(st, hd.get("content-type"), _norm(b.replace(here, b"<data>")))
                     for st, hd, b in _exchange(port, data, n)]
    assert got["fast"] == got["asgi"]
    return got["fast"]


def test_fast_protocol_is_available() -> None:
    # the CI machine has httptools and this uvicorn: the fast path must really be on
    from kvsim.server.http import KVSimApp
    assert fast_protocol(object.__new__(KVSimApp)) is not None


CASES = [
    ("noop", "meta", _post("/api/noop", b"{}")),
    ("hit", "meta", _post("/api/getCacheLocation",
                          b'{"instance_id": "i0", "block_keys": [1, 2, 3, 4]}')),
    ("miss", "meta", _post("/api/getCacheLocation", b'{"instance_id": "nope"}')),
    ("not json", "meta", _post("/api/getCacheLocation", b"{nope")),
    ("empty body", "meta", _post("/api/checkHealth", b"")),
    ("unknown call", "meta", _post("/api/doesNotExist", b"{}")),
    ("admin no credential", "admin", _post("/api/listStorage", b"{}")),
    ("admin", "admin", _post("/api/listStorage", b"{}", AUTH)),
    ("http/1.0", "meta", _post("/api/getCacheLocation",
                               b'{"instance_id": "i0", "block_keys": [1]}', version=b"1.0")),
    ("connection close", "meta", _post("/api/noop", b"{}", b"Connection: close\r\n")),
    ("expect 100", "meta", _post("/api/noop", b"{}", b"Expect: 100-continue\r\n")),
    ("query string", "meta", _post("/api/noop?x=1", b"{}")),
]


@pytest.mark.parametrize(("api", "data"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_reply(servers: dict[str, ServerHandle], api: str, data: bytes) -> None:
    [(status, ctype, body)] = _both(servers, api, data, 1)
    assert ctype == "application/json"
    assert status in (200, 400)
    assert body["header"]["status"]["code"] in ("OK", "INVALID_ARGUMENT", "UNSUPPORTED",
                                                "INSTANCE_NOT_EXIST")


def test_reply_content(servers: dict[str, ServerHandle]) -> None:
    [(status, _, body)] = _both(servers, "meta", CASES[1][2], 1)
    assert status == 200 and body["header"]["status"]["code"] == "OK"
    assert len(body["locations"]) == 3  # keys 1..3 are held, 4 is not
    [(status, _, body)] = _both(servers, "meta", CASES[3][2], 1)
    assert status == 400 and body["header"]["status"]["code"] == "INVALID_ARGUMENT"


def test_pipelined_requests_answered_in_order(servers: dict[str, ServerHandle]) -> None:
    reqs = [_post("/api/getCacheLocation",
                  orjson.dumps({"instance_id": "i0", "block_keys": list(range(1, k + 1)),
                                "query_type": "QT_BATCH_GET"}))
            for k in (1, 2, 3, 4, 5)]
    # a GET (ASGI path) in the middle: later requests queue behind it
    reqs.insert(2, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    for mode, h in servers.items():
        got = _exchange(h.http_port, b"".join(reqs), len(reqs))
        assert [st for st, _, _ in got] == [200] * len(reqs), mode
        assert got[2][1]["content-type"].startswith("text/plain"), mode
        sizes = [len(orjson.loads(b)["locations"]) for i, (_, _, b) in enumerate(got) if i != 2]
        assert sizes == [1, 2, 3, 4, 5], mode


def test_keep_alive_many_requests(servers: dict[str, ServerHandle]) -> None:
    # 200 requests on one connection, in 4 bursts: the connection stays usable
    h = servers["fast"]
    with socket.create_connection(("127.0.0.1", h.http_port), timeout=10) as s:
        for _ in range(4):
            s.sendall(_post("/api/noop", b"{}") * 50)
            buf, seen = b"", 0
            while seen < 50:
                chunk = s.recv(65536)
                assert chunk
                buf += chunk
                seen = buf.count(b"HTTP/1.1 200 OK")
            assert seen == 50

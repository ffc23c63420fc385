"""HTTP server throughput and latency on loopback.

Starts ``kvsim serve`` (HTTP and gRPC, no access log) in its own process, registers an
instance and fills 64 blocks, then for each operation and concurrency runs a closed
loop for ``--seconds`` (default 5) from one client process:

* ``noop``: ``POST /api/noop`` (the HTTP stack alone: the baseline),
* ``getCacheLocation``: prefix match of 64 keys, all hits (64 locations in the reply),
* ``grpc_getCacheLocation``: the same read over gRPC (``MetaService``, grpc.aio client),
* ``write_pair``: ``startWriteCache`` of 64 new keys + ``finishWriteCache`` (counted as
  one operation; latency is the pair's),

at 1 and 32 concurrent clients (asyncio tasks over keep-alive connections, each sending
its next request when the reply comes: a closed loop, which measures capacity), and
``getCacheLocation`` once more in an open loop: 32 clients offering ``--rate`` (default
3,000) requests/s together on a fixed schedule for ``--open-seconds`` (default 10, after
1 s of warm-up), latency counted from each request's scheduled time (what a fleet of
engines sees at that load).

Two hostile-load points (issue 13), each beside a baseline in the same run:

* ``big_write``: 4 clients reading 1 key each in a closed loop while one client, in a
  process of its own (its 15 MB replies are parsed there, not on the readers' loop),
  sends ``startWriteCache`` of 100,000 new keys (+ its ``finishWriteCache`` and a
  ``removeCache`` of them) ``--big-writes`` times, after one unmeasured such write (it
  grows the block table once); the reads' p99 while one of the big calls is in flight
  (target < 10 ms; ``reads_during`` splits it per call) vs without, and each big call's
  time. ``--only-big-write`` runs this point alone (report ``*_big_write.json``);
* ``admin_flood``: one admin calling ``listStorage`` (a verified credential) while 32
  clients send wrong passwords to the admin port as fast as they are answered; its p99
  (target < 50 ms) vs without the flood.

Every row also gives the server's own CPU time per operation (from /proc), which other
jobs on the machine do not inflate the way they do wall-clock rates; the p99 of the time
spent inside the service (from the server's ``kvsim_call_seconds`` histogram on
``/metrics``: a bucket bound); and the hypervisor's steal share of the machine's CPU
time. The open-loop row gives how late the client itself sent (``client_late_p99_ms``).

On a machine with 2 or more CPUs the server is pinned to the last CPU and the client to
the others (``--no-pin`` turns that off): a load generator and a server taking turns on
one CPU measure their scheduling, not the server. The client is a minimal raw HTTP/1.1
client over asyncio streams (default: it costs the client process far less CPU) or httpx
(``--client httpx``). Prints a table and writes ``reports/bench_server.json``. Target:
>= 3,000 getCacheLocation/s with p99 < 10 ms at 32 clients.

Last, the capacity advisor's cost on the read path: two more servers side by side,
advisor off and at sample rate 0.01, getCacheLocation at 32 clients in alternating
rounds (``--advisor-rounds``, default 3); target: on >= 95% of off (medians).

Usage:
    python benchmarks/bench_server.py [--seconds 5] [--open-seconds 10] [--rate 3000]
        [--client httpx|raw] [--no-pin] [--quick] [--advisor-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
KEYS = list(range(1_000_000, 1_000_064))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawClient:
    """A minimal keep-alive HTTP/1.1 JSON client over asyncio streams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any], auth: str = "") -> dict[str, Any]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.r is not None
        data = orjson.dumps(body)
        extra = f"Authorization: Basic {auth}\r\n" if auth else ""
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        head = await self.r.readuntil(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        return orjson.loads(await self.r.readexactly(n))  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self.w is not None:
            self.w.close()


class HttpxClient:
    def __init__(self, port: int, client: Any) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.c = client

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.c.post(self.base + path, json=body)
        return r.json()  # type: ignore[no-any-return]

    async def close(self) -> None:
        pass


class GrpcReadClient:
    """``getCacheLocation`` over gRPC (``MetaService/GetCacheLocation``), one request
    message built once; a channel of its own (an HTTP/2 connection) per client."""

    def __init__(self, port: int) -> None:
        import grpc

        from kvsim.server.grpc_client import body_to_message
        from kvsim.server.grpc_server import method_table

        spec = method_table("meta")["getCacheLocation"]
        self.req = body_to_message({"instance_id": "bench", "block_keys": KEYS,
                                    "query_type": "QT_PREFIX_MATCH"}, spec.request)
        self.ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = self.ch.unary_unary(spec.path,
                                        request_serializer=spec.request.SerializeToString,
                                        response_deserializer=spec.response.FromString)

    async def get(self) -> Any:
        return await self.stub(self.req)

    async def close(self) -> None:
        await self.ch.close()


_GRPC_OK = 1  # ErrorCode.OK
_MIXED: dict[str, list[float]] = {}  # the mixed point's latencies, by kind of call


async def _op(cl: Any, op: str, counter: list[int]) -> None:
    if op == "mixed":  # 4 reads, then 1 write pair, per client (80% / 20% of calls)
        cl.n_mixed = getattr(cl, "n_mixed", 0) + 1
        op = "write_pair" if cl.n_mixed % 5 == 0 else "getCacheLocation"
        t0 = time.perf_counter()
        await _op(cl, op, counter)
        counter_key = "mixed_pairs" if op == "write_pair" else "mixed_reads"
        _MIXED.setdefault(counter_key, []).append(time.perf_counter() - t0)
        return
    if op == "grpc_getCacheLocation":
        g = await cl.get()
        assert g.header.status.code == _GRPC_OK and len(g.locations) == 64, g.header
        return
    if op == "noop":
        r = await cl.post("/api/noop", {})
    elif op == "getCacheLocation":
        r = await cl.post("/api/getCacheLocation", {"instance_id": "bench", "block_keys": KEYS,
                                                    "query_type": "QT_PREFIX_MATCH"})
        assert len(r["locations"]) == 64, r["header"]
    else:
        counter[0] += 1
        base = 10_000_000 + counter[0] * 64
        w = await cl.post("/api/startWriteCache", {"instance_id": "bench",
                                                   "block_keys": list(range(base, base + 64))})
        assert w["header"]["status"]["code"] == "OK", w["header"]
        r = await cl.post("/api/finishWriteCache", {
            "instance_id": "bench", "write_session_id": w["write_session_id"],
            "success_blocks": {"offset": len(w["locations"])}})
    assert r["header"]["status"]["code"] == "OK", r["header"]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> list[int]:
    """The machine's aggregate CPU times (``/proc/stat`` line ``cpu``), in ticks."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return []


def _steal_share(t0: list[int], t1: list[int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two readings."""
    if len(t0) < 8 or len(t1) < 8:
        return None
    d = [b - a for a, b in zip(t0, t1, strict=False)]
    total = sum(d[:8])
    return round(d[7] / total, 3) if total > 0 else None


def _server_hist(port: int, method: str) -> dict[str, float]:
    """The server's own ``kvsim_call_seconds`` histogram of ``method`` (cumulative
    counts by bucket bound ``le``), from its Prometheus ``/metrics``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "kvsim_call_seconds":
            for s in fam.samples:
                if s.name.endswith("_bucket") and s.labels.get("method") == method:
                    out[s.labels["le"]] = s.value
    return out


def _server_p99_bound_ms(h0: dict[str, float], h1: dict[str, float]) -> float | None:
    """Upper bound of the server-side p99 between two histogram readings: the smallest
    bucket bound at or under which 99% of the calls made in between finished."""
    d = {le: h1[le] - h0.get(le, 0.0) for le in h1}
    n = d.get("+Inf", 0.0)
    if n <= 0:
        return None
    for le in sorted((x for x in d if x != "+Inf"), key=float):
        if d[le] >= 0.99 * n:
            return float(le) * 1e3
    return float("inf")


_SERVICE_METHOD = {"getCacheLocation": "getCacheLocation", "write_pair": "startWriteCache",
                   "grpc_getCacheLocation": "getCacheLocation"}


def _measure(port: int, pid: int, op: str) -> dict[str, Any]:
    """Start readings of the server's CPU, its latency histogram and the machine's steal."""
    m = _SERVICE_METHOD.get(op)
    return {"cpu": _cpu_s(pid), "times": _cpu_times(), "hist": _server_hist(port, m) if m else {},
            "method": m}


def _measured(port: int, pid: int, start: dict[str, Any], wall: float,
              n: int) -> dict[str, Any]:
    cpu = _cpu_s(pid) - start["cpu"]
    out: dict[str, Any] = {
        # the server's own CPU per operation: what one core of it can serve,
        # whatever the client and other jobs take from the machine
        "server_cpu_us_per_op": round(cpu / max(1, n) * 1e6, 1),
        "server_cpu_share": round(cpu / wall, 2),
        "steal_share": _steal_share(start["times"], _cpu_times())}
    if start["method"]:
        # time inside the service (after the request was read, before the reply is
        # written): what is left of p99 once client, loop and socket queueing are out
        out["server_p99_ms_at_most"] = _server_p99_bound_ms(
            start["hist"], _server_hist(port, start["method"]))
    return out


async def _point(port: int, op: str, conc: int, seconds: float, kind: str,
                 counter: list[int], pid: int, grpc_port: int = 0) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as hc:
        clients = [GrpcReadClient(grpc_port) if op.startswith("grpc_") else
                   RawClient(port) if kind == "raw" else HttpxClient(port, hc)
                   for _ in range(conc)]
        for cl in clients:  # warm up connections
            await _op(cl, op, counter)
        lat: list[float] = []
        t_end = time.perf_counter() + seconds

        async def worker(cl: Any) -> None:
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                await _op(cl, op, counter)
                lat.append(time.perf_counter() - t0)

        start = _measure(port, pid, op)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(cl) for cl in clients))
        wall = time.perf_counter() - t0
        for cl in clients:
            await cl.close()
    a = np.array(lat) * 1e3
    return {"op": op, "clients": conc, "requests": len(lat), "seconds": round(wall, 3),
            "ops_per_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)} | _measured(
                port, pid, start, wall, len(lat))


async def _open_point(port: int, op: str, conc: int, rate: float, seconds: float,
                      counter: list[int], pid: int, warmup: float = 1.0) -> dict[str, Any]:
    """Open loop: ``conc`` clients together offer ``rate`` requests/s on a fixed schedule
    (each client every ``conc / rate`` s, phases staggered). Latency counts from the
    *scheduled* send time, so a slow reply delays the next request of that client and
    that delay is counted too (no coordinated omission, as in wrk2). The first
    ``warmup`` seconds of the schedule run but are not counted. ``client_late_p99_ms``
    is how late the client itself sent (its own scheduling, not the server's reply):
    when it is large, the load generator, not the server, made the tail."""
    clients = [RawClient(port) for _ in range(conc)]
    for cl in clients:
        await _op(cl, op, counter)
    period = conc / rate
    lat: list[float] = []
    late: list[float] = []
    t_start = time.perf_counter() + 0.05
    t_count = t_start + warmup
    t_end = t_count + seconds

    async def worker(j: int, cl: Any) -> None:
        k = 0
        while True:
            due = t_start + (k + j / conc) * period
            if due >= t_end:
                return
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
            await _op(cl, op, counter)
            t_done = time.perf_counter()
            if due >= t_count:
                lat.append(t_done - due)
                late.append(max(0.0, now - due))
            if t_done >= t_read[0]:
                done[0] += 1
            k += 1

    # the start readings (blocking calls) are taken in the warm-up, 0.25 s before
    # counting starts; server CPU per op covers everything served from then on
    t_read, done = [float("inf")], [0]

    async def measure() -> dict[str, Any]:
        await asyncio.sleep(max(0.0, t_count - 0.25 - time.perf_counter()))
        m = _measure(port, pid, op)
        t_read[0] = time.perf_counter()
        return m

    task = asyncio.ensure_future(measure())
    await asyncio.gather(*(worker(j, cl) for j, cl in enumerate(clients)))
    start = await task
    t_stop = time.perf_counter()
    wall = t_stop - t_count
    for cl in clients:
        await cl.close()
    a = np.array(lat) * 1e3
    return {"op": op, "clients": conc, "loop": "open", "offered_per_s": rate,
            "requests": len(lat), "seconds": round(wall, 3),
            "ops_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3),
            "client_late_p99_ms": round(float(np.percentile(np.array(late) * 1e3, 99)), 3),
            } | _measured(port, pid, start, t_stop - t_read[0], done[0])


def _pcts(lat: list[float]) -> dict[str, Any]:
    a = np.asarray(lat) * 1e3 if lat else np.zeros(1)
    return {"n": len(lat), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}


def _big_writer(port: int, n_writes: int, n_keys: int, spans: Any, ready: Any,
                go: Any) -> None:
    """The big writer of :func:`_big_write_point`, in a process of its own (its 100k-key
    requests and replies are built and parsed there, never on the readers' loop): per
    write, ``startWriteCache`` + ``finishWriteCache`` + ``removeCache``; each call's
    (start, end) on the shared monotonic clock goes to ``spans`` as (kind, t0, t1)."""

    async def run() -> None:
        cl = RawClient(port)
        ready.set()
        go.wait()
        # one unmeasured write first: it grows the block table to hold 100k more rows
        # (a one-off, under the lock); each write's blocks are removed after it, as a
        # cache at capacity frees as much as it writes, so the table stays that size
        for i in range(-1, n_writes):
            keys = list(range(10**9 + (i + 1) * n_keys, 10**9 + (i + 2) * n_keys))
            await asyncio.sleep(1.0 if i < 0 else 0.3)  # quiet time: the baseline
            t0 = time.perf_counter()
            w = await cl.post("/api/startWriteCache", {"instance_id": "big", "block_keys": keys})
            assert w["header"]["status"]["code"] == "OK", w["header"]
            t1 = time.perf_counter()
            f = await cl.post("/api/finishWriteCache", {
                "instance_id": "big", "write_session_id": w["write_session_id"],
                "success_blocks": {"offset": len(w["locations"])}})
            assert f["header"]["status"]["code"] == "OK", f["header"]
            t2 = time.perf_counter()
            r = await cl.post("/api/removeCache", {"instance_id": "big", "block_keys": keys})
            assert r["header"]["status"]["code"] == "OK", r["header"]
            t3 = time.perf_counter()
            if i >= 0:
                spans.extend([("start", t0, t1), ("finish", t1, t2), ("remove", t2, t3)])
        await cl.close()

    asyncio.run(run())


async def _big_write_point(port: int, n_writes: int, n_keys: int = 100_000,
                           readers: int = 4) -> dict[str, Any]:
    """1-key reads beside 100k-key startWriteCache calls (see the module docstring).

    The writer runs in its own process (:func:`_big_writer`): parsing a 100k-location
    reply on the readers' event loop would stall them in the client, not the server. A
    read counts as "during" when its time overlaps a big call's (start, end), on the
    monotonic clock both processes share."""
    import multiprocessing as mp

    setup = RawClient(port)
    r = await setup.post("/api/registerInstance", {
        "instance_group": "default", "instance_id": "big", "block_size": 16,
        "location_spec_infos": [{"name": "tp0", "size": 1024}],
        "model_deployment": {"model_name": "bench", "dtype": "bf16"}})
    assert r["header"]["status"]["code"] == "OK", r
    await setup.close()
    ctx = mp.get_context("fork")
    mgr = ctx.Manager()
    spans_p = mgr.list()
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_big_writer, args=(port, n_writes, n_keys, spans_p, ready, go))
    proc.start()
    reads: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def reader(j: int) -> None:
        cl = RawClient(port)
        body = {"instance_id": "bench", "block_keys": [KEYS[j]]}
        while not stop.is_set():
            t0 = time.perf_counter()
            rr = await cl.post("/api/getCacheLocation", body)
            reads.append((t0, time.perf_counter()))
            assert rr["header"]["status"]["code"] == "OK", rr["header"]
        await cl.close()

    async def watch() -> None:
        while not ready.is_set():
            await asyncio.sleep(0.05)
        go.set()
        while proc.is_alive():
            await asyncio.sleep(0.05)
        stop.set()

    await asyncio.gather(watch(), *(reader(j) for j in range(readers)))
    proc.join()
    spans = list(spans_p)
    mgr.shutdown()
    assert proc.exitcode == 0, f"the big writer failed ({proc.exitcode})"
    t_first = min((a for _, a, _ in spans), default=0.0)
    per: dict[str, list[float]] = {"start": [], "finish": [], "remove": []}
    during: list[float] = []
    quiet: list[float] = []
    by_kind: dict[str, list[float]] = {"start": [], "finish": [], "remove": []}
    for k, a, b in spans:
        per[k].append(b - a)
    for a, b in reads:
        if a < t_first - 0.2:
            continue  # the warm-up write and before
        hit = [k for k, s0, s1 in spans if a < s1 and b > s0]
        (during if hit else quiet).append(b - a)
        for k in set(hit):
            by_kind[k].append(b - a)
    return {"op": "big_write", "readers": readers, "keys_per_write": n_keys,
            "writes": n_writes,
            "start_write_s": [round(x, 3) for x in per["start"]],
            "finish_write_s": [round(x, 3) for x in per["finish"]],
            "remove_s": [round(x, 3) for x in per["remove"]],
            "reads_during_writes": _pcts(during), "reads_without": _pcts(quiet),
            "reads_during": {k: _pcts(v) for k, v in by_kind.items()},
            "target_p99_ms": 10, "met": _pcts(during)["p99_ms"] < 10}


async def _admin_flood_point(aport: int, seconds: float, flooders: int = 32
                             ) -> dict[str, Any]:
    """An admin's p99 with and without 32 clients sending wrong passwords."""
    import base64

    good = base64.b64encode(b"admin:bench").decode()
    admin = RawClient(aport)
    r = await admin.post("/api/listStorage", {}, good)  # verified once (cached after)
    assert r["header"]["status"]["code"] == "OK", r

    async def admin_loop(until: float, out: list[float]) -> None:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            rr = await admin.post("/api/listStorage", {}, good)
            out.append(time.perf_counter() - t0)
            assert rr["header"]["status"]["code"] == "OK", rr["header"]
            await asyncio.sleep(0.005)

    quiet: list[float] = []
    await admin_loop(time.perf_counter() + seconds, quiet)
    stop = asyncio.Event()
    refused = [0]

    async def flood(j: int) -> None:
        cl = RawClient(aport)
        bad = base64.b64encode(f"admin:wrong{j}".encode()).decode()
        while not stop.is_set():
            rr = await cl.post("/api/listStorage", {}, bad)
            refused[0] += rr["header"]["status"]["code"] == "INVALID_ARGUMENT"
        await cl.close()

    tasks = [asyncio.create_task(flood(j)) for j in range(flooders)]
    await asyncio.sleep(0.5)
    n0 = refused[0]
    t0 = time.perf_counter()
    loud: list[float] = []
    await admin_loop(time.perf_counter() + seconds, loud)
    rate = (refused[0] - n0) / (time.perf_counter() - t0)
    stop.set()
    await asyncio.gather(*tasks)
    await admin.close()
    return {"op": "admin_flood", "flooders": flooders, "admin_without": _pcts(quiet),
            "admin_during_flood": _pcts(loud), "wrong_password_replies_per_s": round(rate, 1),
            "target_p99_ms": 50, "met": _pcts(loud)["p99_ms"] < 50}


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.post(f"http://127.0.0.1:{port}/api/noop", json={}, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def _cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the last usable CPU for the server, the others for
    the client, so the two never take turns on one CPU (each gets a core of its own, as
    engines and the manager do in production). None, None when not pinning."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def _start_server(port: int, aport: int, gport: int, data: str, env: dict[str, str],
                  srv_cpus: set[int] | None, extra: list[str]) -> subprocess.Popen[bytes]:
    def pin_server() -> None:  # runs in the child before exec: every thread inherits it
        if srv_cpus is not None:
            os.sched_setaffinity(0, srv_cpus)

    return subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--no-access-log",
         "--http-port", str(port), "--admin-http-port", str(aport), "--grpc-port", str(gport),
         "--admin-grpc-port", str(_free_port()), "--data-dir", data, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=pin_server if srv_cpus is not None else None)


def _fill(port: int) -> None:
    """Register the bench instance and write the 64 keys the reads hit."""
    import httpx

    with httpx.Client(timeout=10) as c:
        r = c.post(f"http://127.0.0.1:{port}/api/registerInstance", json={
            "instance_group": "default", "instance_id": "bench", "block_size": 16,
            "location_spec_infos": [{"name": "tp0", "size": 1 << 20}],
            "model_deployment": {"model_name": "bench", "dtype": "bf16"}}).json()
        assert r["header"]["status"]["code"] == "OK", r
        w = c.post(f"http://127.0.0.1:{port}/api/startWriteCache",
                   json={"instance_id": "bench", "block_keys": KEYS}).json()
        c.post(f"http://127.0.0.1:{port}/api/finishWriteCache",
               json={"instance_id": "bench", "write_session_id": w["write_session_id"],
                     "success_blocks": {"offset": 64}})


def _advisor_ab(env: dict[str, str], srv_cpus: set[int] | None, seconds: float, kind: str,
                rounds: int) -> dict[str, Any]:
    """getCacheLocation at 32 clients on two servers started side by side, the capacity
    advisor off (rate 0) and on (rate 0.01), measured in alternating rounds (off, on,
    off, on, ...): the medians' ratio is the advisor's cost on the read path."""
    import httpx

    procs, ports = {}, {}
    for name, rate in (("off", "0"), ("on", "0.01")):
        ports[name] = (_free_port(), _free_port(), _free_port())
        procs[name] = _start_server(*ports[name], tempfile.mkdtemp(prefix="kvsim-bench-"),
                                    env, srv_cpus, ["--advisor-sample-rate", rate])
    try:
        for name in procs:
            _wait_ready(ports[name][0], procs[name])
            _fill(ports[name][0])
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(rounds):
            for name in ("off", "on"):
                res = asyncio.run(_point(ports[name][0], "getCacheLocation", 32, seconds, kind,
                                         [0], procs[name].pid))
                runs[name].append(res)
                print(f"advisor {name:3s}: getCacheLocation 32 clients {res['ops_per_s']:9.1f} "
                      f"ops/s  p99 {res['p99_ms']:7.3f} ms  server "
                      f"{res['server_cpu_us_per_op']:6.1f} CPU-us/op", flush=True)
        adv = httpx.post(f"http://127.0.0.1:{ports['on'][1]}/api/getCapacityAdvice", json={},
                         auth=("admin", env["KVSIM_ADMIN_PASSWORD"]), timeout=30).json()
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)

    def med(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    ratio = med("on", "ops_per_s") / med("off", "ops_per_s")
    a = adv.get("advice", {})
    return {"rounds": rounds, "seconds_per_point": seconds, "runs": runs,
            "off_ops_per_s_median": med("off", "ops_per_s"),
            "on_ops_per_s_median": med("on", "ops_per_s"),
            "off_cpu_us_per_op_median": med("off", "server_cpu_us_per_op"),
            "on_cpu_us_per_op_median": med("on", "server_cpu_us_per_op"),
            "on_over_off": round(ratio, 4),
            "advisor_processed_notes": a.get("processed_notes"),
            "advisor_process_seconds": a.get("process_seconds"),
            "target_within_5_percent": ratio >= 0.95}


def _stores_point(env: dict[str, str], srv_cpus: set[int] | None, seconds: float,
                  kind: str, stores: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """The durable write pair (and a read beside it) on one server per state store,
    started one after the other: the choice of store measured side by side."""
    out = []
    for name, extra in stores:
        port, aport, gport = _free_port(), _free_port(), _free_port()
        data = tempfile.mkdtemp(prefix="kvsim-bench-")
        proc = _start_server(port, aport, gport, data, env, srv_cpus, extra)
        try:
            _wait_ready(port, proc)
            _fill(port)
            row: dict[str, Any] = {"store": name, "args": extra}
            for op in ("getCacheLocation", "write_pair"):
                res = asyncio.run(_point(port, op, 32, seconds, kind, [0], proc.pid))
                row[op] = res
            row["pairs_over_reads"] = round(row["write_pair"]["ops_per_s"]
                                            / row["getCacheLocation"]["ops_per_s"], 3)
            out.append(row)
            w = row["write_pair"]
            print(f"store {name:14s}: write_pair 32 clients {w['ops_per_s']:9.1f} pairs/s  "
                  f"p99 {w['p99_ms']:7.3f} ms  server {w['server_cpu_us_per_op']:6.1f} "
                  f"CPU-us/pair; reads {row['getCacheLocation']['ops_per_s']:9.1f}/s; "
                  f"pairs/reads {row['pairs_over_reads']:.3f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 18's ratios of one run's rows (32 clients, closed loop)."""
    def at32(op: str) -> dict[str, Any]:
        return next(r for r in rows if r["op"] == op and r["clients"] == 32
                    and r.get("loop") != "open")

    noop, read = at32("noop"), at32("getCacheLocation")
    grpc_, pair, mixed = at32("grpc_getCacheLocation"), at32("write_pair"), at32("mixed")
    r = {
        "reads_over_noop": round(read["ops_per_s"] / noop["ops_per_s"], 3),
        "grpc_over_http_reads": round(grpc_["ops_per_s"] / read["ops_per_s"], 3),
        "durable_pairs_over_reads": round(pair["ops_per_s"] / read["ops_per_s"], 3),
        "mixed_p99_over_read_p99": round(mixed["p99_ms"] / read["p99_ms"], 3),
        "mixed_calls_per_s": mixed["ops_per_s"],
    }
    # the same capacity ratios from the server's own CPU per operation: what one core
    # of the server can serve, whether or not the client (or another job) held the
    # wall-clock rate back (rates are client-bound when the server's CPU share is < 1)
    def cpu(row: dict[str, Any]) -> float:
        return max(1e-9, float(row["server_cpu_us_per_op"]))

    r["by_server_cpu"] = {
        "reads_over_noop": round(cpu(noop) / cpu(read), 3),
        "grpc_over_http_reads": round(cpu(read) / cpu(grpc_), 3),
        "durable_pairs_over_reads": round(cpu(read) / cpu(pair), 3),
        "server_cpu_share": {k: row["server_cpu_share"] for k, row in (
            ("noop", noop), ("reads", read), ("grpc_reads", grpc_), ("pairs", pair))}}
    r["met"] = {"reads_over_noop_ge_0.5": r["reads_over_noop"] >= 0.5,
                "grpc_over_http_ge_0.75": r["grpc_over_http_reads"] >= 0.75,
                "pairs_over_reads_ge_0.5": r["durable_pairs_over_reads"] >= 0.5,
                "mixed_p99_le_3x_read_p99": r["mixed_p99_over_read_p99"] <= 3}
    return r


def _main_rows(args: argparse.Namespace, env: dict[str, str], pin: bool, seconds: float,
               open_seconds: float, hostile: bool) -> dict[str, Any]:
    """One server (the default journal state): noop, reads (HTTP, gRPC, open loop),
    mixed, write pairs; with ``hostile`` also the two hostile-load points."""
    port, aport, gport = _free_port(), _free_port(), _free_port()
    data = tempfile.mkdtemp(prefix="kvsim-bench-")
    srv_cpus, cli_cpus = _cpu_split(pin)
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    proc = _start_server(port, aport, gport, data, env, srv_cpus, [])
    if cli_cpus is not None:
        os.sched_setaffinity(0, cli_cpus)
    rows: list[dict[str, Any]] = []
    slo: dict[str, Any] = {}
    big = fl = None
    label = "pinned" if srv_cpus is not None else "unpinned"
    try:
        _wait_ready(port, proc)
        _fill(port)
        counter = [0]

        def extra(res: dict[str, Any]) -> str:
            out = (f"server {res['server_cpu_us_per_op']:6.1f} CPU-us/op "
                   f"({res['server_cpu_share']:.2f} cores)")
            if res.get("server_p99_ms_at_most") is not None:
                out += f", in-service p99 <= {res['server_p99_ms_at_most']:g} ms"
            if res.get("steal_share"):
                out += f", steal {res['steal_share']:.0%}"
            return out

        # the open-loop point runs before the writes (they evict the 64 read keys); the
        # mixed point's reads keep them recent
        ops: tuple[str, ...] = () if args.only_hostile else (
            "noop", "getCacheLocation", "open", "grpc_getCacheLocation", "mixed", "write_pair")
        if args.ratios_only:  # the rows of the four ratios, at 32 clients only
            ops = tuple(o for o in ops if o != "open")
        for op in ops:
            if op == "open":
                slo = asyncio.run(_open_point(port, "getCacheLocation", 32, args.rate,
                                              open_seconds, counter, proc.pid))
                rows.append(slo)
                print(f"[{label}] getCacheLocation  32 clients, open loop at "
                      f"{args.rate:.0f}/s offered: {slo['ops_per_s']:9.1f} ops/s  p50 "
                      f"{slo['p50_ms']:7.3f} ms  p99 {slo['p99_ms']:7.3f} ms  max "
                      f"{slo['max_ms']:7.3f} ms  client late p99 "
                      f"{slo['client_late_p99_ms']:.3f} ms  {extra(slo)}", flush=True)
                continue
            for conc in ((32,) if op == "mixed" or args.ratios_only else (1, 32)):
                _MIXED.clear()
                res = asyncio.run(_point(port, op, conc, seconds, args.client, counter,
                                         proc.pid, gport))
                if op == "mixed":
                    for k, v in _MIXED.items():
                        a = np.array(v) * 1e3
                        res[k] = {"n": len(v), "per_s": round(len(v) / res["seconds"], 1),
                                  "p99_ms": round(float(np.percentile(a, 99)), 3)}
                rows.append(res)
                more = ""
                if op == "mixed":
                    more = (f" (reads {res['mixed_reads']['per_s']}/s p99 "
                            f"{res['mixed_reads']['p99_ms']} ms, pairs "
                            f"{res['mixed_pairs']['per_s']}/s p99 "
                            f"{res['mixed_pairs']['p99_ms']} ms)")
                print(f"[{label}] {op:22s} {conc:3d} clients: {res['ops_per_s']:9.1f} ops/s  "
                      f"p50 {res['p50_ms']:7.3f} ms  p99 {res['p99_ms']:7.3f} ms  "
                      f"{extra(res)}{more}", flush=True)
        if hostile:
            big = asyncio.run(_big_write_point(port, args.big_writes))
            rows.append(big)
            d, q = big["reads_during_writes"], big["reads_without"]
            print(f"[{label}] big_write: 1-key reads ({big['readers']} clients) while "
                  f"startWriteCache of 100,000 keys runs: p50 {d['p50_ms']} p99 "
                  f"{d['p99_ms']} max {d['max_ms']} ms (n={d['n']}); without: p99 "
                  f"{q['p99_ms']} ms (n={q['n']}); startWriteCache {big['start_write_s']} s",
                  flush=True)
            per = ", ".join(f"{k} p99 {v['p99_ms']} ms (n={v['n']})"
                            for k, v in big["reads_during"].items())
            print(f"[{label}] big_write: reads during each call: {per}; finishWriteCache "
                  f"{big['finish_write_s']} s, removeCache {big['remove_s']} s", flush=True)
            if not args.only_big_write:
                fl = asyncio.run(_admin_flood_point(aport, max(2.0, seconds)))
                rows.append(fl)
                d, q = fl["admin_during_flood"], fl["admin_without"]
                print(f"[{label}] admin_flood: listStorage p50 {d['p50_ms']} p99 "
                      f"{d['p99_ms']} max {d['max_ms']} ms under {fl['flooders']} "
                      f"wrong-password clients ({fl['wrong_password_replies_per_s']}/s "
                      f"answered); without: p99 {q['p99_ms']} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if mine is not None:
            os.sched_setaffinity(0, mine)
    out: dict[str, Any] = {"pinned": srv_cpus is not None,
                           "cpus": ({"server": sorted(srv_cpus or ()),
                                     "client": sorted(cli_cpus or ())}
                                    if srv_cpus is not None else None),
                           "results": rows, "big": big, "flood": fl, "slo": slo}
    if not args.only_hostile:
        out["ratios"] = _ratios(rows)
    return out


def _ratios_only(args: argparse.Namespace, env: dict[str, str], modes: list[bool],
                 seconds: float, load0: tuple[float, float, float]) -> None:
    """``--ratios-only``: the four ratios' rows on ``--repeat`` fresh servers per mode,
    each run's ratios and, per ratio, the min / median / max of the runs."""
    args.only_hostile = False
    runs = []
    for i in range(max(1, args.repeat)):
        for pin in modes:
            la = os.getloadavg()[0]
            r = _main_rows(args, env, pin, seconds, 0.0, hostile=False)
            r["loadavg_1m_before"] = round(la, 2)
            runs.append(r)
            ra = r["ratios"]
            bc = ra["by_server_cpu"]
            print(f"run {i + 1} [{'pinned' if pin else 'unpinned'}] load {la:.2f}: reads/no-op "
                  f"{ra['reads_over_noop']}, gRPC/HTTP {ra['grpc_over_http_reads']}, pairs/"
                  f"reads {ra['durable_pairs_over_reads']}, mixed p99/read p99 "
                  f"{ra['mixed_p99_over_read_p99']}; by server CPU/op: reads/no-op "
                  f"{bc['reads_over_noop']}, gRPC/HTTP {bc['grpc_over_http_reads']}, "
                  f"pairs/reads {bc['durable_pairs_over_reads']}", flush=True)
    keys = ("reads_over_noop", "grpc_over_http_reads", "durable_pairs_over_reads",
            "mixed_p99_over_read_p99")
    spread: dict[str, Any] = {}
    for pin in modes:
        mine = [r["ratios"] for r in runs if r["pinned"] == pin]
        spread["pinned" if pin else "unpinned"] = {
            k: {"min": min(x[k] for x in mine), "median": float(np.median([x[k] for x in mine])),
                "max": max(x[k] for x in mine)} for k in keys}
        spread["pinned" if pin else "unpinned"]["by_server_cpu"] = {
            k: {"min": min(x["by_server_cpu"][k] for x in mine),
                "median": float(np.median([x["by_server_cpu"][k] for x in mine])),
                "max": max(x["by_server_cpu"][k] for x in mine)} for k in keys[:3]}
    load1 = os.getloadavg()
    for mode, sp in spread.items():
        print(f"ratios [{mode}] min/median/max of {len(runs) // len(modes)} runs: " + "; ".join(
            f"{k} {v['min']}/{v['median']:.3f}/{v['max']}" for k, v in sp.items()
            if k != "by_server_cpu"), flush=True)
        print(f"ratios [{mode}] by server CPU/op, min/median/max: " + "; ".join(
            f"{k} {v['min']}/{v['median']:.3f}/{v['max']}"
            for k, v in sp["by_server_cpu"].items()), flush=True)
    out = args.out.with_name(args.out.stem + "_ratios.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_server --ratios-only", "client": args.client,
        "seconds_per_point": seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load0],
                    "loadavg_after": [round(x, 2) for x in load1]},
        "runs": [{k: v for k, v in r.items() if k not in ("big", "flood", "slo")}
                 for r in runs],
        "spread": spread}, indent=2) + "\n")
    print(f"load avg {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs; wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per closed-loop point")
    ap.add_argument("--open-seconds", type=float, default=10.0,
                    help="counted seconds of the open-loop point (after 1 s of warm-up)")
    ap.add_argument("--client", choices=["httpx", "raw"], default="raw")
    ap.add_argument("--quick", action="store_true", help="1 s per point")
    ap.add_argument("--rate", type=float, default=3000.0,
                    help="offered getCacheLocation/s of the open-loop point (default 3000)")
    ap.add_argument("--pin", choices=["both", "pinned", "unpinned"], default="both",
                    help="pinned: the server gets the last CPU, the client the others; "
                         "unpinned: they share every CPU; both (default): one after the other")
    ap.add_argument("--no-pin", dest="pin", action="store_const", const="unpinned",
                    help="same as --pin unpinned")
    ap.add_argument("--big-writes", type=int, default=5,
                    help="100k-key startWriteCache calls of the big_write point")
    ap.add_argument("--only-hostile", action="store_true",
                    help="run only the big_write and admin_flood points")
    ap.add_argument("--only-big-write", action="store_true",
                    help="run only the big_write point (implies --only-hostile)")
    ap.add_argument("--advisor-rounds", type=int, default=3,
                    help="alternating rounds of the advisor off/on comparison (0 = skip)")
    ap.add_argument("--restart-blocks", type=int, default=10_000_000,
                    help="blocks of the restart point (0 = skip)")
    ap.add_argument("--no-stores", dest="stores", action="store_false",
                    help="skip the side-by-side state stores point")
    ap.add_argument("--ratios-only", action="store_true",
                    help="only the rows of issue 18's four ratios (no-op, reads, gRPC reads, "
                         "mixed, write pairs; 32 clients), on --repeat fresh servers: prints "
                         "each run's ratios and their spread, writes *_ratios.json")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --ratios-only: runs (each on a fresh server) per pin mode")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_server.json")
    args = ap.parse_args()
    args.only_hostile = args.only_hostile or args.only_big_write
    seconds = 1.0 if args.quick else args.seconds
    open_seconds = 2.0 if args.quick else args.open_seconds
    env = os.environ | {"PYTHONPATH": str(ROOT), "KVSIM_ADMIN_PASSWORD": "bench"}
    load0 = os.getloadavg()
    modes = {"both": [True, False], "pinned": [True], "unpinned": [False]}[args.pin]
    if args.ratios_only:
        _ratios_only(args, env, modes, seconds, load0)
        return
    runs = [_main_rows(args, env, pin, seconds, open_seconds, hostile=(i == 0))
            for i, pin in enumerate(modes)]
    first = runs[0]
    big, fl = first["big"], first["flood"]
    hostile = {"big_write_reads_p99_under_10ms": big["met"]}
    if fl is not None:
        hostile["admin_p99_under_flood_under_50ms"] = fl["met"]
    if args.only_hostile:
        print(f"hostile-load targets: {hostile}")
        out = args.out.with_name(args.out.stem + ("_big_write.json" if args.only_big_write
                                                  else "_hostile.json"))
        out.write_text(json.dumps({"benchmark": "bench_server", "results": first["results"],
                                   "target": hostile}, indent=2) + "\n")
        print(f"wrote {out}")
        return
    srv_cpus, _ = _cpu_split(modes[0])
    stores = None
    if args.stores:
        import shutil

        kinds = [("journal", ["--state", "journal"]),
                 ("journal-fsync", ["--state", "journal://kvsim-journal?fsync=always"]),
                 ("sqlite", ["--state", "sqlite"])]
        redis_proc = None
        if shutil.which("redis-server"):
            rport = _free_port()
            rdir = tempfile.mkdtemp(prefix="kvsim-bench-redis-")
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", rdir,
                 "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            kinds.append(("redis", ["--state", f"redis://127.0.0.1:{rport}/0",
                                    "--leader", "none"]))
        try:
            stores = _stores_point(env, srv_cpus, seconds, args.client, kinds)
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=30)
    restart = None
    if args.restart_blocks > 0:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_restart import measure

        restart = measure(args.restart_blocks, max(1, args.restart_blocks // 500))
        print(f"restart: {restart['blocks_restored']:,} blocks from the journal (snapshot + "
              f"{restart['tail_write_pairs']:,} write pairs of tail) in "
              f"{restart['restart_s']} s ({restart['restart_cpu_s']} CPU-s; the store's scan "
              f"alone {restart['store_scan_s']} s); target < 10 s: "
              f"{'met' if restart['met_under_10s'] else 'NOT met'}", flush=True)
    advisor = (_advisor_ab(env, srv_cpus, seconds, args.client, args.advisor_rounds)
               if args.advisor_rounds > 0 else None)
    load1 = os.getloadavg()
    slo = first["slo"]
    g32 = next(r for r in first["results"] if r["op"] == "getCacheLocation"
               and r["clients"] == 32 and r.get("loop") != "open")
    doc = {
        "benchmark": "bench_server", "client": args.client, "seconds_per_point": seconds,
        "open_loop_seconds": open_seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load0],
                    "loadavg_after": [round(x, 2) for x in load1]},
        "note": ("each mode's rows come from one server (default journal state); pinned: "
                 "server and client on separate CPUs (other jobs still share them: see "
                 "loadavg and steal_share); unpinned: they share every CPU"),
        "runs": [{k: v for k, v in r.items() if k not in ("big", "flood", "slo")}
                 for r in runs],
        "results": first["results"],
        "ratios": {("pinned" if r["pinned"] else "unpinned"): r["ratios"] for r in runs},
        "stores": stores,
        "restart": restart,
        # the capacity advisor's cost on the read path (servers started side by side)
        "advisor": advisor,
        "target": {
            "getCacheLocation_32_ops_per_s": 3000, "p99_ms": 10,
            "met_open_loop": slo["ops_per_s"] >= 0.99 * args.rate and args.rate >= 3000
            and slo["p99_ms"] < 10,
            "met_closed_loop": g32["ops_per_s"] >= 3000 and g32["p99_ms"] < 10,
            "restart_10M_under_10s": restart["met_under_10s"] if restart else None}
        | hostile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    for r in runs:
        ra = r["ratios"]
        print(f"ratios [{'pinned' if r['pinned'] else 'unpinned'}]: reads/no-op "
              f"{ra['reads_over_noop']} (target >= 0.5), gRPC/HTTP reads "
              f"{ra['grpc_over_http_reads']} (>= 0.75), durable write pairs/reads "
              f"{ra['durable_pairs_over_reads']} (>= 0.5), mixed p99/read-only p99 "
              f"{ra['mixed_p99_over_read_p99']} (<= 3); mixed {ra['mixed_calls_per_s']} "
              f"calls/s", flush=True)
    tg = doc["target"]
    print(f"target (>= 3000 getCacheLocation/s, p99 < 10 ms at 32 clients): open loop "
          f"{'met' if tg['met_open_loop'] else 'NOT met'}, closed loop "
          f"{'met' if tg['met_closed_loop'] else 'NOT met'}; load avg {load0[0]:.2f} -> "
          f"{load1[0]:.2f} on {os.cpu_count()} CPUs; wrote {args.out}")
    if advisor is not None:
        print(f"advisor at rate 0.01 vs off (medians of {advisor['rounds']} alternating "
              f"rounds): {advisor['on_ops_per_s_median']:.1f} vs "
              f"{advisor['off_ops_per_s_median']:.1f} getCacheLocation/s = "
              f"{advisor['on_over_off']:.3f} (target >= 0.95: "
              f"{'met' if advisor['target_within_5_percent'] else 'NOT met'})")


if __name__ == "__main__":
    main()

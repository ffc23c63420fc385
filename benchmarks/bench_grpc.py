"""Manager throughput and latency over gRPC on loopback.

Starts ``kvsim serve`` with its gRPC listeners (the production entry point) in its own
process, registers an instance (block size 16, one spec) and fills 64 blocks, then for
each operation and concurrency runs a closed loop for ``--seconds`` (default 3) from one
client process (``grpc.aio``: one asyncio task and one channel per client, typed
requests built once, as an engine's client would):

* ``checkHealth``: the admin no-op (with a credential): the gRPC stack alone, the baseline;
* ``getCacheLocation``: ``QT_PREFIX_MATCH`` of 64 keys, all hits (64 locations back);
* ``write_pair``: ``startWriteCache`` of 64 new keys + ``finishWriteCache`` (one
  operation; latency is the pair's),

at 1 and 32 concurrent clients (``--clients``). For the transport's share, the same
``getCacheLocation`` and ``checkHealth`` are also timed in-process (``Service.call``,
no transport, one client). The layout follows ``benchmarks/bench_server.py`` (HTTP), so
the two reports compare. Prints a table and writes ``reports/bench_grpc.json``.

Usage:
    python benchmarks/bench_grpc.py [--seconds 3] [--clients 1,32] [--quick]

Example (short, no file written):
    python benchmarks/bench_grpc.py --quick --no-write
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = list(range(1_000_000, 1_000_064))
ADMIN_PASSWORD = "bench"
CREDENTIAL = f"admin:{ADMIN_PASSWORD}"
INSTANCE = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(op: str, transport: str, clients: int, lat_s: list[float], wall: float
           ) -> dict[str, Any]:
    a = np.asarray(lat_s) * 1e3
    return {"transport": transport, "op": op, "clients": clients, "requests": int(a.size),
            "seconds": round(wall, 3), "ops_per_s": round(a.size / wall, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)}


def _in_process(seconds: float) -> list[dict[str, Any]]:
    """getCacheLocation and checkHealth through ``Service.call`` (no transport)."""
    from kvsim.server.service import Service

    with tempfile.TemporaryDirectory(prefix="kvsim-bench-grpc-") as tmp:
        svc = Service(data_dir=tmp, admin_password=ADMIN_PASSWORD)
        try:
            r = svc.call("meta", "registerInstance", {
                "instance_group": "default", "instance_id": INSTANCE, "block_size": 16,
                "location_spec_infos": [{"name": "tp0", "size": 1 << 20}],
                "model_deployment": {"model_name": "bench", "dtype": "bf16"}})
            assert r["header"]["status"]["code"] == "OK", r
            w = svc.call("meta", "startWriteCache", {"instance_id": INSTANCE, "block_keys": KEYS})
            svc.call("meta", "finishWriteCache", {"instance_id": INSTANCE,
                                                  "write_session_id": w["write_session_id"],
                                                  "success_blocks": {"offset": 64}})
            body = {"instance_id": INSTANCE, "block_keys": KEYS, "query_type": "QT_PREFIX_MATCH"}
            calls: dict[str, Callable[[], Any]] = {
                "getCacheLocation": lambda: svc.call("meta", "getCacheLocation", body),
                "checkHealth": lambda: svc.call("admin", "checkHealth", {},
                                                credential=CREDENTIAL),
            }
            assert len(calls["getCacheLocation"]()["locations"]) == 64
            rows = []
            for op, fn in calls.items():
                for _ in range(50):
                    fn()
                lat: list[float] = []
                t_end = time.perf_counter() + seconds
                t0 = time.perf_counter()
                while time.perf_counter() < t_end:
                    t1 = time.perf_counter()
                    fn()
                    lat.append(time.perf_counter() - t1)
                rows.append(_stats(op, "in-process", 1, lat, time.perf_counter() - t0))
            return rows
        finally:
            svc.close()


class _AioClient:
    """One grpc.aio channel with typed unary callables."""

    def __init__(self, meta_port: int, admin_port: int) -> None:
        import base64

        import grpc

        from kvsim.server.grpc_server import method_table

        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{meta_port}"),
                         grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}")]
        token = base64.b64encode(CREDENTIAL.encode()).decode()
        self.metadata = (("authorization", f"Basic {token}"),)
        self.fns: dict[str, Any] = {}
        for api, ch in (("meta", self.channels[0]), ("admin", self.channels[1])):
            for spec in method_table(api).values():
                self.fns[f"{api}.{spec.name}"] = ch.unary_unary(
                    spec.path, request_serializer=spec.request.SerializeToString,
                    response_deserializer=spec.response.FromString)

    async def __call__(self, name: str, request: Any) -> Any:
        return await self.fns[name](request, metadata=self.metadata, timeout=60)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def _ops(counter: list[int]) -> dict[str, Callable[[_AioClient], Awaitable[None]]]:
    from kvsim.server.proto import admin_service_pb2 as apb
    from kvsim.server.proto import meta_service_pb2 as mpb

    get = mpb.GetCacheLocationRequest(instance_id=INSTANCE, block_keys=KEYS,
                                      query_type=mpb.QT_PREFIX_MATCH)
    health = apb.CheckHealthRequest(trace_id="bench")

    async def check_health(c: _AioClient) -> None:
        r = await c("admin.CheckHealth", health)
        assert r.header.status.code == apb.OK and r.is_health, r

    async def get_location(c: _AioClient) -> None:
        r = await c("meta.GetCacheLocation", get)
        assert r.header.status.code == mpb.OK and len(r.locations) == 64, r.header

    async def write_pair(c: _AioClient) -> None:
        counter[0] += 1
        base = 10_000_000 + counter[0] * 64
        w = await c("meta.StartWriteCache", mpb.StartWriteCacheRequest(
            instance_id=INSTANCE, block_keys=range(base, base + 64)))
        assert w.header.status.code == mpb.OK, w.header
        f = mpb.FinishWriteCacheRequest(instance_id=INSTANCE,
                                        write_session_id=w.write_session_id)
        f.success_blocks.offset = len(w.locations)
        r = await c("meta.FinishWriteCache", f)
        assert r.header.status.code == mpb.OK, r.header

    return {"checkHealth": check_health, "getCacheLocation": get_location,
            "write_pair": write_pair}


async def _point(ports: tuple[int, int], op: str, conc: int, seconds: float,
                 counter: list[int]) -> dict[str, Any]:
    fn = _ops(counter)[op]
    clients = [_AioClient(*ports) for _ in range(conc)]
    try:
        for c in clients:  # warm up the connections
            for _ in range(5):
                await fn(c)
        lat: list[float] = []
        t_end = time.perf_counter() + seconds

        async def worker(c: _AioClient) -> None:
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                await fn(c)
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.close()
    return _stats(op, "grpc", conc, lat, wall)


def _setup(ports: tuple[int, int], proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Waits for the server, registers the instance and fills the 64 blocks."""
    import grpc

    from kvsim.server.grpc_client import GrpcClient

    deadline = time.monotonic() + timeout
    with GrpcClient("127.0.0.1", *ports, credential=CREDENTIAL, timeout=timeout) as c:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if c.admin("checkHealth", {})["is_health"]:
                    break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        r = c.meta("registerInstance", {
            "instance_group": "default", "instance_id": INSTANCE, "block_size": 16,
            "location_spec_infos": [{"name": "tp0", "size": 1 << 20}],
            "model_deployment": {"model_name": "bench", "dtype": "bf16"}})
        assert r["header"]["status"]["code"] == "OK", r
        w = c.meta("startWriteCache", {"instance_id": INSTANCE, "block_keys": KEYS})
        r = c.meta("finishWriteCache", {"instance_id": INSTANCE,
                                        "write_session_id": w["write_session_id"],
                                        "success_blocks": {"offset": 64}})
        assert r["header"]["status"]["code"] == "OK", r


def main() -> None:
    """Run the benchmark and write ``reports/bench_grpc.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per point")
    ap.add_argument("--clients", default="1,32", help="concurrent clients, comma-separated")
    ap.add_argument("--quick", action="store_true", help="0.5 s per point")
    ap.add_argument("--no-write", action="store_true", help="do not write the JSON report")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_grpc.json")
    args = ap.parse_args()
    seconds = 0.5 if args.quick else args.seconds
    concs = [int(c) for c in args.clients.split(",") if c.strip()]

    from rich.console import Console
    from rich.table import Table

    from kvsim.config import atomic_write_text

    load0 = os.getloadavg()
    rows = _in_process(seconds)
    ports = (_free_port(), _free_port())
    data = tempfile.mkdtemp(prefix="kvsim-bench-grpc-")
    env = os.environ | {"PYTHONPATH": str(ROOT), "KVSIM_ADMIN_PASSWORD": ADMIN_PASSWORD}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsim", "serve", "--no-access-log",
         "--http-port", str(_free_port()), "--admin-http-port", str(_free_port()),
         "--grpc-port", str(ports[0]), "--admin-grpc-port", str(ports[1]),
         "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _setup(ports, proc)
        counter = [0]
        for op in ("checkHealth", "getCacheLocation", "write_pair"):
            for conc in concs:
                rows.append(asyncio.run(_point(ports, op, conc, seconds, counter)))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load1 = os.getloadavg()

    con = Console(width=120)
    table = Table(title="kvsim manager over gRPC, loopback (64 keys per call)")
    for col in ("transport", "op", "clients", "ops/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("transport", "op") else "right")
    for r in rows:
        table.add_row(r["transport"], r["op"], str(r["clients"]), f"{r['ops_per_s']:,.0f}",
                      f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}")
    con.print(table)
    con.print(f"load avg {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs")

    doc = {
        "benchmark": "bench_grpc", "seconds_per_point": seconds,
        "client": "grpc.aio, one channel per client, typed requests",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load0],
                    "loadavg_after": [round(x, 2) for x in load1]},
        "note": "server (kvsim serve, own process) and client share the machine's CPUs with "
                "each other and with any other jobs (see loadavg); in-process rows call "
                "Service.call directly",
        "results": rows,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.no_write:
        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
        con.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

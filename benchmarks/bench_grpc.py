"""Latency and throughput of the manager over gRPC (loopback).

Starts the real service (``kvsim.server.service.Service``) behind
:func:`kvsim.server.grpc_server.serve_grpc` in a separate server process on 127.0.0.1,
registers one instance (block size 16, one 4 KiB spec) and writes 64 blocks, then
measures from client threads in this process, each with its own channel and typed
requests built once:

* ``getCacheLocation``: ``QT_PREFIX_MATCH`` over the 64 keys (all hit, 64 locations back);
* ``checkHealth`` (admin, with a credential): the no-op baseline of the same transport;
* ``service.call`` in-process (no transport) for both, for the transport's share.

Each phase runs for ``--seconds`` at 1 and at 32 concurrent clients (``--clients``) after
a warm-up; latencies are per call, from the client. Prints a table and writes
``reports/bench_grpc.json`` atomically.

Usage:
    python benchmarks/bench_grpc.py [--seconds 3] [--clients 1,32]

Example (short, no file written):
    python benchmarks/bench_grpc.py --seconds 0.5 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_KEYS = 64
ADMIN = ("admin", "bench-password")
INSTANCE = "bench-instance"


def _service(data_dir: str) -> Any:
    from kvsim.server.service import Service

    return Service(data_dir=data_dir, admin_user=ADMIN[0], admin_password=ADMIN[1])


def _prepare(call: Callable[[str, str, dict[str, Any]], dict[str, Any]]) -> list[int]:
    """Registers the instance and writes the 64 blocks; returns the keys."""
    keys = [(i * 0x9E3779B97F4A7C15 + 12345) % (1 << 63) for i in range(1, N_KEYS + 1)]
    r = call("meta", "registerInstance", {
        "trace_id": "bench", "instance_group": "default", "instance_id": INSTANCE,
        "block_size": 16, "location_spec_infos": [{"name": "tp0", "size": 4096}],
        "model_deployment": {"model_name": "bench-model", "dtype": "fp16"}})
    assert r["header"]["status"]["code"] == "OK", r
    r = call("meta", "startWriteCache", {"instance_id": INSTANCE, "block_keys": keys,
                                         "write_timeout_seconds": 60})
    assert r["header"]["status"]["code"] == "OK", r
    r = call("meta", "finishWriteCache", {"instance_id": INSTANCE,
                                          "write_session_id": r["write_session_id"],
                                          "success_blocks": {"offset": N_KEYS}})
    assert r["header"]["status"]["code"] == "OK", r
    return keys


def serve(data_dir: str) -> None:
    """Server process: prints the ports as one JSON line, serves until stdin closes."""
    from kvsim.server.grpc_server import serve_grpc

    svc = _service(data_dir)
    handle = serve_grpc(svc, "127.0.0.1", 0, 0, max_workers=64)
    print(json.dumps({"meta_port": handle.meta_port, "admin_port": handle.admin_port}),
          flush=True)
    sys.stdin.read()
    handle.stop(None)


def _run_phase(make_call: Callable[[], Callable[[], None]], clients: int, seconds: float,
               warmup: int) -> dict[str, Any]:
    """Runs ``clients`` threads calling for ``seconds``; returns latency statistics."""
    start = threading.Barrier(clients + 1)
    lat: list[list[int]] = [[] for _ in range(clients)]
    stop_at = [0.0]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            fn = make_call()
            for _ in range(warmup):
                fn()
            start.wait()
            out = lat[i]
            clock = time.perf_counter_ns
            while time.perf_counter() < stop_at[0]:
                t0 = clock()
                fn()
                out.append(clock() - t0)
        except BaseException as e:  # report, do not hang the barrier
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    us = np.concatenate([np.asarray(x, dtype=np.float64) for x in lat]) / 1000.0
    return {
        "clients": clients,
        "calls": int(us.size),
        "seconds": round(wall, 3),
        "calls_per_s": round(us.size / wall, 1),
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p90_us": round(float(np.percentile(us, 90)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "mean_us": round(float(us.mean()), 1),
    }


def main() -> None:
    """Run the benchmark and write ``reports/bench_grpc.json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per phase")
    ap.add_argument("--clients", default="1,32", help="concurrent clients, comma-separated")
    ap.add_argument("--warmup", type=int, default=50, help="calls per client before timing")
    ap.add_argument("--no-write", action="store_true", help="do not write the JSON report")
    ap.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return

    from rich.console import Console
    from rich.table import Table

    from kvsim.config import atomic_write_text
    from kvsim.server.grpc_client import GrpcClient
    from kvsim.server.proto import admin_service_pb2 as apb
    from kvsim.server.proto import meta_service_pb2 as mpb

    con = Console(width=120)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    rows: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="kvsim-bench-grpc-") as tmp:
        # -- in-process baseline (no transport), one client
        svc = _service(os.path.join(tmp, "inproc"))
        keys = _prepare(lambda api, m, b: svc.call(api, m, b, credential=":".join(ADMIN)))
        body = {"trace_id": "bench", "instance_id": INSTANCE, "query_type": "QT_PREFIX_MATCH",
                "block_keys": keys}
        assert len(svc.call("meta", "getCacheLocation", body)["locations"]) == N_KEYS
        cred = ":".join(ADMIN)
        inproc = {
            "getCacheLocation": lambda: lambda: svc.call("meta", "getCacheLocation", body),
            "checkHealth": lambda: lambda: svc.call("admin", "checkHealth", {},
                                                    credential=cred),
        }
        for name, mk in inproc.items():
            r = _run_phase(mk, 1, args.seconds, args.warmup)
            rows.append({"transport": "in-process", "call": name, **r})
        svc.close()

        # -- gRPC, server in its own process
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", os.path.join(tmp, "grpc")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            ports = json.loads(proc.stdout.readline())
            setup = GrpcClient("127.0.0.1", ports["meta_port"], ports["admin_port"],
                               credential=cred, timeout=300)
            keys = _prepare(lambda api, m, b: setup.request(api, m, b))
            req = mpb.GetCacheLocationRequest(trace_id="bench", instance_id=INSTANCE,
                                              query_type=mpb.QT_PREFIX_MATCH, block_keys=keys)
            probe = setup.call("meta", "GetCacheLocation", req)
            assert probe.header.status.code == mpb.OK and len(probe.locations) == N_KEYS, probe
            health = apb.CheckHealthRequest(trace_id="bench")
            setup.close()

            def grpc_call(api: str, method: str, msg: Any) -> Callable[[], Callable[[], None]]:
                def make() -> Callable[[], None]:
                    c = GrpcClient("127.0.0.1", ports["meta_port"], ports["admin_port"],
                                   credential=cred, timeout=60)
                    return lambda: c.call(api, method, msg)
                return make

            for n in clients:
                for name, mk in (("getCacheLocation", grpc_call("meta", "GetCacheLocation", req)),
                                 ("checkHealth", grpc_call("admin", "CheckHealth", health))):
                    r = _run_phase(mk, n, args.seconds, args.warmup)
                    rows.append({"transport": "grpc", "call": name, **r})
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    table = Table(title=f"kvsim manager over gRPC, loopback ({N_KEYS}-key prefix match)")
    for col in ("transport", "call", "clients", "calls/s", "p50 us", "p90 us", "p99 us"):
        table.add_column(col, justify="right" if col not in ("transport", "call") else "left")
    for r in rows:
        table.add_row(r["transport"], r["call"], str(r["clients"]), f"{r['calls_per_s']:,.0f}",
                      f"{r['p50_us']:,.0f}", f"{r['p90_us']:,.0f}", f"{r['p99_us']:,.0f}")
    con.print(table)

    report = {
        "benchmark": "bench_grpc",
        "description": "getCacheLocation (QT_PREFIX_MATCH, 64 keys, all hit) and checkHealth "
                       "(no-op baseline) over gRPC on loopback, server in its own process; "
                       "in-process service.call for comparison",
        "keys_per_call": N_KEYS,
        "seconds_per_phase": args.seconds,
        "rows": rows,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.no_write:
        out = ROOT / "reports" / "bench_grpc.json"
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        con.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

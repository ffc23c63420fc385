"""What a gRPC call costs grpcio itself on this machine, beside what kvsim's HTTP and
gRPC reads cost, in the same run (issue 18: "gRPC reads >= 0.75 of HTTP's").

Three servers, each pinned to the last CPU, driven from the other CPUs by 32 clients in
a closed loop (as ``bench_server.py``) for ``--seconds`` each, and their own CPU time per
call read from /proc:

* ``kvsim serve``: ``POST /api/noop``, ``getCacheLocation`` of 64 keys over HTTP and the
  same read over gRPC (``bench_server.py``'s clients and points);
* a bare grpcio server (``grpc.server`` with a thread pool, the kind kvsim runs) that
  answers ``MetaService/GetCacheLocation`` with a reply serialized once at start-up (64
  locations, the bytes kvsim sends): no parsing, no protobuf, no service: grpcio's floor;
* the same with ``grpc.aio.server``.

kvsim's own work per read is the HTTP read's CPU above the HTTP no-op's; over gRPC the
same work sits on grpcio's floor instead of the HTTP stack's, so the best gRPC/HTTP ratio
by CPU any kvsim code can reach is HTTP read / (floor + work). The report gives it, and
what kvsim's gRPC adapter adds beyond floor + work.

Usage:
    python benchmarks/bench_grpc_floor.py [--seconds 5] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_server as B

ROOT = Path(__file__).resolve().parents[1]


def _reply_bytes(gport: int) -> bytes:
    """kvsim's own serialized reply to the bench read (64 locations), fetched raw."""
    import grpc

    from kvsim.server.grpc_client import body_to_message
    from kvsim.server.grpc_server import method_table

    spec = method_table("meta")["getCacheLocation"]
    with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
        req = body_to_message({"instance_id": "bench", "block_keys": B.KEYS,
                               "query_type": "QT_PREFIX_MATCH"}, spec.request)
        raw = ch.unary_unary(spec.path, request_serializer=spec.request.SerializeToString,
                             response_deserializer=None)(req, timeout=30)
    assert len(spec.response.FromString(raw).locations) == 64
    return bytes(raw)


def bare_server(flavor: str, port: int, reply_file: str) -> None:
    """Serve the canned reply forever (run in a child process)."""
    import grpc

    from kvsim.server.grpc_server import method_table

    path = method_table("meta")["getCacheLocation"].path
    service, method = path.strip("/").split("/")
    reply = Path(reply_file).read_bytes()
    if flavor == "sync":
        from concurrent import futures

        def answer(req: bytes, ctx: Any) -> bytes:
            return reply

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(answer)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        async def answer(req: bytes, ctx: Any) -> bytes:
            return reply

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(answer)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def _grpc_point(port: int, pid: int, seconds: float, conc: int = 32) -> dict[str, Any]:
    clients = [B.GrpcReadClient(port) for _ in range(conc)]
    for cl in clients:
        g = await cl.get()
        assert len(g.locations) == 64
    n = [0]
    t_end = time.perf_counter() + seconds

    async def worker(cl: Any) -> None:
        while time.perf_counter() < t_end:
            await cl.get()
            n[0] += 1

    cpu0 = B._cpu_s(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(cl) for cl in clients))
    wall = time.perf_counter() - t0
    cpu = B._cpu_s(pid) - cpu0
    for cl in clients:
        await cl.close()
    return {"ops_per_s": round(n[0] / wall, 1),
            "server_cpu_us_per_op": round(cpu / max(1, n[0]) * 1e6, 1),
            "server_cpu_share": round(cpu / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--bare-server", nargs=3, metavar=("FLAVOR", "PORT", "REPLY"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_grpc_floor.json")
    args = ap.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]), args.bare_server[2])
        return
    srv_cpus, cli_cpus = B._cpu_split(not args.no_pin)
    if cli_cpus is not None:
        os.sched_setaffinity(0, cli_cpus)
    env = dict(os.environ)
    load = os.getloadavg()[0]
    rows: dict[str, Any] = {}
    work = tempfile.TemporaryDirectory()
    reply_file = Path(work.name) / "reply.bin"
    with tempfile.TemporaryDirectory() as data:
        port, aport, gport = B._free_port(), B._free_port(), B._free_port()
        proc = B._start_server(port, aport, gport, data, env, srv_cpus, [])
        try:
            B._wait_ready(port, proc)
            B._fill(port)
            reply_file.write_bytes(_reply_bytes(gport))
            for op, name in (("noop", "kvsim_http_noop"), ("getCacheLocation", "kvsim_http_read"),
                             ("grpc_getCacheLocation", "kvsim_grpc_read")):
                r = asyncio.run(B._point(port, op, 32, args.seconds, "raw", [0], proc.pid,
                                         grpc_port=gport))
                rows[name] = {k: r[k] for k in ("ops_per_s", "server_cpu_us_per_op",
                                                "server_cpu_share")}
        finally:
            proc.terminate()
            proc.wait(30)

    def pin() -> None:
        if srv_cpus is not None:
            os.sched_setaffinity(0, srv_cpus)

    for flavor in ("sync", "aio"):
        bport = B._free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", flavor, str(bport),
                                 str(reply_file)],
                                env=env, preexec_fn=pin if srv_cpus is not None else None)
        try:
            time.sleep(3)  # imports and bind
            rows[f"grpcio_{flavor}_floor"] = asyncio.run(_grpc_point(bport, bare.pid,
                                                                      args.seconds))
        finally:
            bare.terminate()
            bare.wait(30)
    work.cleanup()
    http_read = rows["kvsim_http_read"]["server_cpu_us_per_op"]
    http_noop = rows["kvsim_http_noop"]["server_cpu_us_per_op"]
    grpc_read = rows["kvsim_grpc_read"]["server_cpu_us_per_op"]
    floor = min(rows["grpcio_sync_floor"]["server_cpu_us_per_op"],
                rows["grpcio_aio_floor"]["server_cpu_us_per_op"])
    # kvsim's own work per read (parse, service, reply) is what the HTTP read costs above
    # the HTTP no-op; over gRPC the same work sits on grpcio's floor instead
    work_us = http_read - http_noop
    report = {"load_before": load, "pinned": srv_cpus is not None, "seconds": args.seconds,
              "rows": rows,
              "grpc_over_http_by_cpu": round(http_read / grpc_read, 3),
              "kvsim_work_us": round(work_us, 1),
              "grpc_adapter_extra_us": round(grpc_read - floor - work_us, 1),
              "best_possible_grpc_over_http_by_cpu": round(http_read / (floor + work_us), 3)}
    print(f"load {load:.1f}, pinned {report['pinned']}, 32 clients, {args.seconds:.0f} s each")
    print(f"{'server / call':36} {'calls/s':>10} {'server CPU us/call':>20}")
    for name, r in rows.items():
        print(f"{name:36} {r['ops_per_s']:>10,.0f} {r['server_cpu_us_per_op']:>20,.1f}")
    print(f"gRPC/HTTP read by server CPU: {report['grpc_over_http_by_cpu']:.2f} (target 0.75). "
          f"kvsim's work per read (HTTP read - HTTP no-op): {work_us:.0f} us; on grpcio's "
          f"floor ({floor:.0f} us) the best gRPC can do is "
          f"{report['best_possible_grpc_over_http_by_cpu']:.2f}; kvsim's gRPC adapter adds "
          f"{report['grpc_adapter_extra_us']:.0f} us beyond that")
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

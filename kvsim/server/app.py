"""Start the server programmatically: uvicorn on background threads.

:func:`start_server` builds a :class:`~kvsim.server.service.Service`, serves the
meta and admin HTTP apps (and, when asked, gRPC through
``kvsim.server.grpc_server.serve_grpc``), starts the background tick and returns
a :class:`ServerHandle` with the bound ports. Port 0 picks a free port.

Example:
    >>> import httpx
    >>> h = start_server(None, http_port=0, admin_http_port=0)
    >>> r = httpx.post(f"http://127.0.0.1:{h.http_port}/api/getInstanceInfo",
    ...                json={"instance_id": "nope"})
    >>> r.status_code, r.json()["header"]["status"]["code"]
    (200, 'INSTANCE_NOT_EXIST')
    >>> h.stop()
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from kvsim.config import KVSimConfig
from kvsim.core.clock import Clock
from kvsim.core.warm import warm_up
from kvsim.server.http import create_app, fast_protocol
from kvsim.server.kvcm_compat import new_node_id, publish_endpoint
from kvsim.server.service import DEFAULT_PROBE_S, Service
from kvsim.trace.hashing import kvcm_token_keys

__all__ = ["ServerHandle", "start_server"]

log = logging.getLogger("kvsim.server")


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # serving from a thread
        pass


@dataclass
class ServerHandle:
    """A running server: its ports, its :class:`Service`, and :meth:`stop`."""

    service: Service
    host: str
    http_port: int
    admin_http_port: int
    grpc_port: int | None = None
    admin_grpc_port: int | None = None
    debug_http_port: int | None = None
    _servers: list[tuple[_Server, threading.Thread]] = field(default_factory=list)
    _grpc: Any = None

    def stop(self) -> None:
        """Stop the listeners and the background tick; flush the event log."""
        for srv, _ in self._servers:
            srv.should_exit = True
        for _, th in self._servers:
            th.join(timeout=10)
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        self.service.close()

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until a listener stops, ``stop`` is set (e.g. by a SIGTERM handler) or
        Ctrl-C; then call :meth:`stop`, which drains the calls in flight."""
        stop = stop if stop is not None else threading.Event()
        try:
            while all(th.is_alive() for _, th in self._servers) and not stop.is_set():
                stop.wait(0.2)
        except KeyboardInterrupt:
            pass


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _serve(app: Any, sock: socket.socket, access_log: bool) -> tuple[_Server, threading.Thread]:
    http: Any = "h11" if _no_module("httptools") else "auto"
    if http == "auto":  # the limits live in this protocol; inline answers are optional
        http = fast_protocol(app, inline=os.environ.get("KVSIM_HTTP_FAST", "1") != "0") or http
    cfg = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="off",
                         loop="asyncio", http=http)
    srv = _Server(cfg)

    def run() -> None:
        factory: Any = None
        if not _no_module("uvloop"):
            factory = importlib.import_module("uvloop").new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(srv.serve(sockets=[sock]))

    th = threading.Thread(target=run, name="kvsim-http", daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not srv.started and th.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not srv.started:
        raise RuntimeError("the HTTP listener did not start")
    return srv, th


def _no_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


def warm_growth() -> None:
    """Load the block table's growth path (its index rebuild) at start-up: no manager
    call of :func:`~kvsim.core.warm.warm_up` grows a table, so it was compiled (~2 s on
    a loaded 2-CPU machine, every call waiting) inside the first write that outgrew the
    server's table (measured: a 2.1 s stall in the first mixed load of a fresh install).
    """
    from kvsim.core.clock import ManualClock
    from kvsim.core.manager import CacheManager

    # the service's manager's table layout (event level 2, per-slot counts)
    CacheManager(ManualClock(0), rows=64, event_level=2, slot_counts=True).reserve_rows(256)


GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server: what start-up loaded
    (modules, compiled kernels, the restored state's objects) moves to the permanent
    generation (``gc.freeze``), and a young collection runs every 50,000 allocations
    instead of 700. Building the 100,000 location dicts of a big startWriteCache reply
    spent ~75% of its time (and of the GIL, which reads wait for) in collections: 2.5 ->
    0.9-1.0 s in process on the loaded VM."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _on_leader_change(service: Any, store: Any, elector: Any) -> Any:
    """On becoming leader: fence the store with the new epoch, then reload from it (a
    fence refused - a later leader exists - demotes this node)."""
    from kvsim.server.store import StoreError

    def change(lead: bool) -> None:
        if not lead:
            return
        try:
            fence_store(store, elector.lease)
        except StoreError:
            log.exception("state store: fencing refused; stepping down")
            elector.demote()
            return
        service.reload()

    return change


def open_state(state: str, leader: str, lease_ms: int, data_dir: Path,
               node_id: str | None = None) -> tuple[Any, Any]:
    """The state store and leader elector that ``state`` and ``leader`` name.

    The elector takes its first step here, so the service knows its role before it
    loads (only a leader writes the store).

    Raises:
        RuntimeError: a bad combination (``redis`` leader without a Redis state) or a
            store that cannot be opened.
    """
    from kvsim.server.leader import FileLease, LeaderElector, RedisLease
    from kvsim.server.store import StoreError, open_store

    if state == "none":
        if leader in ("redis",):
            raise RuntimeError("--leader redis needs a Redis state (--state redis://...)")
        return None, None
    try:
        store = open_store(state, data_dir)
    except StoreError as e:
        raise RuntimeError(str(e)) from None
    redis_state = hasattr(store, "client")
    kind = leader if leader != "auto" else ("redis" if redis_state else "file")
    lease: Any
    if kind == "none":
        return store, None
    if kind == "redis":
        if not redis_state:
            store.close()
            raise RuntimeError("--leader redis needs a Redis state (--state redis://...)")
        lease = RedisLease(store.client, f"{store.prefix}:leader",  # type: ignore[attr-defined]
                           ttl_ms=lease_ms, owner=node_id)
    else:
        lease = FileLease(data_dir / "leader.lock", ttl_ms=lease_ms, owner=node_id)
    elector = LeaderElector(lease)
    elector.step()
    if elector.is_leader:
        try:
            fence_store(store, lease)
        except StoreError as e:
            elector.stop()
            store.close()
            raise RuntimeError(str(e)) from None
    return store, elector


def fence_store(store: Any, lease: Any) -> None:
    """Make ``store`` refuse the writes of every leader older than ``lease``'s epoch
    (and take that epoch for this process's writes): called on becoming leader, before
    the state is loaded.

    Raises:
        StoreFenced: a later leader fenced the store already.
    """
    epoch = int(getattr(lease, "epoch", 0) or 0)
    fence = getattr(store, "fence", None)
    if epoch > 0 and fence is not None:
        fence(epoch)


def start_server(
    config: KVSimConfig | None,
    *,
    host: str = "127.0.0.1",
    http_port: int = 0,
    admin_http_port: int = 0,
    grpc_port: int | None = None,
    admin_grpc_port: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    admin_password: str | None = None,
    clock: Clock | None = None,
    tick_seconds: float | None = None,
    event_log: bool | None = None,
    state: str | None = None,
    leader: str | None = None,
    leader_lease_ms: int | None = None,
    node_id: str | None = None,
    storage_probe_seconds: float | None = None,
    admin_auth: str = "basic",
    debug_http_port: int | None = None,
    event_format: str = "kvsim",
    advisor_sample_rate: float | None = None,
    manual_clock: bool = False,
) -> ServerHandle:
    """Start the meta and admin listeners in background threads.

    Args:
        config: the registry (None: one group ``default`` and storage ``nfs_01``).
        host: bind address.
        http_port: meta HTTP port (0 = any free port).
        admin_http_port: admin HTTP port (0 = any free port).
        grpc_port: meta gRPC port, or None for no gRPC (needs
            ``kvsim.server.grpc_server``).
        admin_grpc_port: admin gRPC port (default: any free port when gRPC is on).
        data_dir: storage roots and event log (default: ``config.server.data_dir``
            when a config is given, else a temporary directory).
        admin_password: bootstrap admin password (default ``$KVSIM_ADMIN_PASSWORD``,
            else the documented default).
        clock: time source (default: monotonic).
        tick_seconds: background tick period (default ``config.server.tick_seconds``).
        manual_clock: time moves only by the admin call ``setClock`` (a
            :class:`~kvsim.core.clock.ManualClock` at 0 unless ``clock`` is given); the
            reclaimer then runs in that time (``kvsim drive --clock trace``).
        event_log: write the event log (default ``config.server.event_log``).
        state: the state store URL, ``sqlite`` or ``none`` (default
            ``config.server.state``, else ``none`` when no config is given).
        leader: ``auto``, ``file``, ``redis`` or ``none`` (default
            ``config.server.leader``; see :class:`~kvsim.config.ServerOptions`).
        leader_lease_ms: the leader lease (default ``config.server.leader_lease_ms``).
        node_id: this node's id, also the leader lease's owner (default: host name, pid
            and a random suffix: unique per process).
        storage_probe_seconds: file storage health probe period (default
            ``config.server.storage_probe_seconds``, else 5 s; 0 = never).
        admin_auth: ``basic`` (admin and debug calls need an admin account) or
            ``none`` (no credential asked: KVCM's own behaviour, for drop-in use).
        debug_http_port: the debug service's HTTP port (KVCM: meta HTTP port + 3000);
            None = that, or any free port when ``http_port`` is 0; -1 = no debug
            listener.
        event_format: the event log's shape: ``kvsim`` or ``kvcm`` (KVCM's publisher
            format, which its optimizer reads).
        advisor_sample_rate: the capacity advisor's key sampling rate (default
            ``config.server.advisor_sample_rate``, else 0.01; 0 = off).

    Returns:
        The running server's handle.
    """
    opts = config.server if config is not None else None
    if data_dir is None and config is not None and opts is not None:
        data_dir = Path(opts.data_dir)
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="kvsim-serve-"))
    state = state if state is not None else (opts.state if opts is not None else "none")
    leader = leader if leader is not None else (opts.leader if opts is not None else "none")
    lease_ms = leader_lease_ms if leader_lease_ms is not None else (
        opts.leader_lease_ms if opts is not None else 3000)
    if node_id is None:
        node_id = new_node_id()
    store, elector = open_state(state, leader, lease_ms, Path(data_dir), node_id)
    if manual_clock and clock is None:
        from kvsim.core.clock import ManualClock

        clock = ManualClock(0)
    service = Service(
        config, data_dir=data_dir, clock=clock, manual_clock=manual_clock,
        admin_user=opts.admin_user if opts is not None else "admin",
        admin_password=admin_password,
        event_log=event_log if event_log is not None else (opts.event_log if opts else True),
        store=store, elector=elector, node_id=node_id,
        storage_probe_seconds=(storage_probe_seconds if storage_probe_seconds is not None
                               else (opts.storage_probe_seconds if opts is not None
                                     else DEFAULT_PROBE_S)),
        admin_auth=admin_auth, event_format=event_format,
        advisor_sample_rate=(advisor_sample_rate if advisor_sample_rate is not None
                             else (opts.advisor_sample_rate if opts is not None else 0.01)),
    )
    handle = ServerHandle(service=service, host=host, http_port=0, admin_http_port=0)
    # load the core's compiled kernels now, not inside the first clients' calls
    from kvsim.compile_notice import CompileWatch

    with CompileWatch(log.warning, command="serve"):  # says so when kernels compile
        policies = {g.eviction.policy for g in service.mgr.groups()} | {"lru"}
        service.mgr.use_policies(policies)  # one kernel set, the one warmed here
        secs = warm_up(policies)
        warm_growth()
        kvcm_token_keys(np.arange(4, dtype=np.int64), 2)  # token_ids reads and writes
        if service.advisor is not None:  # the advisor's kernels, before its first tick
            from kvsim.optimizer.online_curve import warm_up as warm_advisor

            warm_advisor(service.advisor.sample_rate)
    log.info("core kernels loaded in %.2f s", secs)
    tune_gc()
    if elector is not None:  # after the warm-up: a compile holding the GIL past the
        # lease's ttl cannot make the first renewal late (it renews an unclaimed lease)
        elector.on_change = _on_leader_change(service, store, elector)
        elector.start()
    try:
        msock = _bind(host, http_port)
        asock = _bind(host, admin_http_port)
        handle.http_port = msock.getsockname()[1]
        handle.admin_http_port = asock.getsockname()[1]
        handle._servers.append(_serve(create_app(service, "meta"), msock, False))
        handle._servers.append(_serve(create_app(service, "admin"), asock, False))
        if debug_http_port is None:
            debug_http_port = (handle.http_port + 3000
                               if http_port and handle.http_port + 3000 <= 65535 else 0)
        if debug_http_port >= 0:
            dsock = _bind(host, debug_http_port)
            handle.debug_http_port = dsock.getsockname()[1]
            handle._servers.append(_serve(create_app(service, "debug"), dsock, False))
        if grpc_port is not None:
            try:
                mod = importlib.import_module("kvsim.server.grpc_server")
            except ModuleNotFoundError as e:
                if e.name != "kvsim.server.grpc_server":
                    raise
                raise RuntimeError(
                    "gRPC was requested but kvsim.server.grpc_server is not available in this "
                    "build; start without --grpc-port (HTTP only)") from None
            g = mod.serve_grpc(service, host, grpc_port, admin_grpc_port or 0)
            handle._grpc = g
            handle.grpc_port, handle.admin_grpc_port = g.meta_port, g.admin_port
        service.endpoints.update(host=host, meta_http_port=handle.http_port,
                                 admin_http_port=handle.admin_http_port,
                                 meta_rpc_port=handle.grpc_port or 0,
                                 admin_rpc_port=handle.admin_grpc_port or 0)
        publish_endpoint(service)  # followers report it as the leader's endpoint
        service.start_background(tick_seconds if tick_seconds is not None
                                 else (opts.tick_seconds if opts else 0.5))
    except BaseException:
        handle.stop()
        raise
    return handle

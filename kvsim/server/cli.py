"""``kvsim serve``: run the KVCM-compatible manager (HTTP, and gRPC when available).

Example:
    >>> from click.testing import CliRunner
    >>> "--admin-http-port" in CliRunner().invoke(serve_cmd, ["--help"]).output
    True
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import click

__all__ = ["serve_cmd"]


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Config (YAML or JSON, the schema `kvsim replay` reads); "
              "default: group `default` (30 GB, reclaim at 80%) and file storage `nfs_01`.")
@click.option("--host", default=None, help="Bind address [default: 127.0.0.1].")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Meta service HTTP port [default: 6382].")
@click.option("--admin-http-port", type=click.IntRange(0, 65535), default=None,
              help="Admin service HTTP port [default: 6492].")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="Meta service gRPC port [default: 6381]; --no-grpc turns gRPC off.")
@click.option("--admin-grpc-port", type=click.IntRange(0, 65535), default=None,
              help="Admin service gRPC port [default: 6491].")
@click.option("--no-grpc", is_flag=True, help="Serve HTTP only.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="File storage roots and events.jsonl [default: kvsim-data].")
@click.option("--admin-password-file", type=click.Path(dir_okay=False, exists=True,
                                                     path_type=Path), default=None,
              help="Read the bootstrap admin account's password from this file (first "
                   "line). Or set KVSIM_ADMIN_PASSWORD; default: kvsim-admin, with a "
                   "warning.")
@click.option("--admin-password", default=None, hidden=True,
              help="Deprecated: visible in the process list; use --admin-password-file or "
                   "KVSIM_ADMIN_PASSWORD.")
@click.option("--state", default=None, metavar="URL",
              help="Durable state: journal (<data-dir>/kvsim-journal, the default; "
                   "journal:///DIR?fsync=none|always|interval), sqlite "
                   "(<data-dir>/kvsim-state.db), sqlite:///PATH, "
                   "redis://HOST:PORT/DB?prefix=NAME, or none.")
@click.option("--leader", type=click.Choice(["auto", "file", "redis", "none"]), default=None,
              help="Leader election [default: auto: a Redis lease with a Redis state, else a "
                   "lock file in the data dir]; followers answer SERVER_NOT_LEADER.")
@click.option("--storage-probe-seconds", type=click.FloatRange(0, 86400), default=None,
              help="Probe each file storage (write, fsync, read back, delete a small file) "
                   "this often; a failing one is unhealthy and unused until it recovers; "
                   "0 = never [default: 5].")
@click.option("--advisor-sample-rate", type=click.FloatRange(0, 1), default=None,
              help="The capacity advisor's key sampling rate (1 = exact LRU curves, 0 = "
                   "off) [default: 0.01]; its page is http://HOST:ADMIN_PORT/advisor.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per call on stderr.")
@click.option("--admin-auth", type=click.Choice(["basic", "none"]), default="basic",
              show_default=True,
              help="basic: admin and debug calls need an admin account (HTTP basic auth / "
                   "gRPC metadata). none: no credential asked, as a stock KVCM (drop-in for "
                   "its clients and tests); only on a loopback bind unless "
                   "--allow-unauthenticated-admin.")
@click.option("--allow-unauthenticated-admin", is_flag=True,
              help="With --admin-auth none, also on a non-loopback bind: anyone who can "
                   "reach the admin port can then change or wipe the registry.")
@click.option("--event-format", type=click.Choice(["kvsim", "kvcm"]), default="kvsim",
              show_default=True,
              help="Shape of <data-dir>/events.jsonl: kvsim's events, or KVCM's publisher "
                   "log (what KVCM's optimizer reads); kvsim replay reads both.")
@click.option("--debug-http-port", type=click.IntRange(-1, 65535), default=None,
              help="Debug service (fault injection) HTTP port [default: meta HTTP port + "
                   "3000, as KVCM]; -1 = none. Same credential as the admin calls.")
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "manual"]), default="wall",
              show_default=True,
              help="manual: time moves only by the admin call setClock {now_ns} (the "
                   "reclaimer runs in that time), so `kvsim drive --clock trace` replays "
                   "deterministically. For tests and parity checks, never production.")
def serve_cmd(config_path: Path | None, host: str | None, http_port: int | None,
              admin_http_port: int | None, grpc_port: int | None,
              admin_grpc_port: int | None, no_grpc: bool, data_dir: Path | None,
              admin_password_file: Path | None, admin_password: str | None,
              state: str | None, leader: str | None,
              storage_probe_seconds: float | None, access_log: bool, admin_auth: str,
              allow_unauthenticated_admin: bool, event_format: str,
              debug_http_port: int | None,
              advisor_sample_rate: float | None, clock_kind: str = "wall") -> None:
    """Serve the KV-cache manager API (Tair KVCM compatible) over HTTP and gRPC.

    \b
    Examples:
      kvsim serve                                   # defaults, data in ./kvsim-data
      kvsim serve --config cache.yaml --no-grpc
      KVSIM_ADMIN_PASSWORD=... kvsim serve --http-port 8080
      kvsim serve --admin-password-file /run/secrets/kvsim-admin
      kvsim serve --state redis://127.0.0.1:6379/0   # two of these: one leads
      kvsim serve --admin-auth none                 # drop-in for a stock KVCM, loopback

    SIGTERM (and Ctrl-C) stop it cleanly: the listeners stop accepting, calls in
    flight finish, the event log and the state are flushed, and the exit code is 0.
    """
    from kvsim.config import ConfigError, KVSimConfig
    from kvsim.server.app import start_server
    from kvsim.server.service import DEFAULT_ADMIN_PASSWORD, default_config

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kvsim.access").setLevel(logging.INFO if access_log else logging.WARNING)
    try:
        cfg = KVSimConfig.load(config_path) if config_path is not None else None
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    opts = cfg.server if cfg is not None else KVSimConfig().server
    ddir = data_dir if data_dir is not None else Path(opts.data_dir)
    if cfg is None:
        cfg = default_config(ddir)
    elif not cfg.groups:
        base = default_config(ddir)
        cfg = replace(cfg, storages=cfg.storages or base.storages, groups=base.groups)
    bind = host or opts.host
    if admin_password is not None:
        click.echo("warning: --admin-password is visible in the process list; use "
                   "--admin-password-file or KVSIM_ADMIN_PASSWORD", err=True)
    if admin_password_file is not None:
        try:
            lines = admin_password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"--admin-password-file: cannot read "
                                       f"{admin_password_file}: {e}") from None
        admin_password = lines[0].strip() if lines else ""
        if not admin_password:
            raise click.ClickException(f"--admin-password-file: {admin_password_file} is "
                                       "empty (the password is its first line)")
    elif admin_password is None:
        admin_password = os.environ.get("KVSIM_ADMIN_PASSWORD")
    if admin_auth == "none":
        if not _loopback(bind) and not allow_unauthenticated_admin:
            raise click.ClickException(
                f"--admin-auth none on {bind!r}, which is not a loopback address: anyone "
                f"reaching the admin port could change or wipe the registry. Bind "
                f"127.0.0.1, or add --allow-unauthenticated-admin if the network is trusted")
        for line in ("*" * 72,
                     f"WARNING: ADMIN AUTHENTICATION IS OFF (--admin-auth none) on {bind}:",
                     "every admin and debug call is accepted without a credential.",
                     "*" * 72):
            logging.getLogger("kvsim.server").warning(line)
    elif admin_password is None:
        click.echo(f"warning: admin account {opts.admin_user!r} uses the default password "
                   f"{DEFAULT_ADMIN_PASSWORD!r}; set KVSIM_ADMIN_PASSWORD or "
                   "--admin-password-file", err=True)
    want_grpc = not no_grpc
    if want_grpc and importlib.util.find_spec("kvsim.server.grpc_server") is None:
        if grpc_port is not None:
            raise click.ClickException("--grpc-port: gRPC is not available in this build "
                                       "(kvsim.server.grpc_server is missing)")
        click.echo("warning: gRPC is not available in this build; serving HTTP only", err=True)
        want_grpc = False
    try:
        h = start_server(
            cfg, host=bind,
            http_port=opts.http_port if http_port is None else http_port,
            admin_http_port=opts.admin_http_port if admin_http_port is None else admin_http_port,
            grpc_port=(opts.grpc_port if grpc_port is None else grpc_port) if want_grpc else None,
            admin_grpc_port=opts.admin_grpc_port if admin_grpc_port is None else admin_grpc_port,
            data_dir=ddir, admin_password=admin_password,
            state=state if state is not None else opts.state,
            leader=leader if leader is not None else opts.leader,
            storage_probe_seconds=storage_probe_seconds,
            admin_auth=admin_auth, debug_http_port=debug_http_port,
            event_format=event_format,
            advisor_sample_rate=advisor_sample_rate,
            manual_clock=clock_kind == "manual",
        )
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen: {e.strerror or e}") from None
    grpc = (f", gRPC meta {h.grpc_port} admin {h.admin_grpc_port}" if h.grpc_port else "")
    if h.debug_http_port:
        grpc += f", debug HTTP {h.debug_http_port}"
    svc = h.service
    if svc.store is not None:
        role = ("" if svc.elector is None else
                "; leader" if svc.elector.is_leader else "; follower (waiting for the lease)")
        click.echo(f"state: {svc.store.url}{role}", err=True)
    click.echo(f"kvsim serving on {h.host}: HTTP meta {h.http_port} admin {h.admin_http_port}"
               f"{grpc}; data in {ddir}", err=True)
    # everything loaded so far (modules, compiled kernels, the registry) lives as long
    # as the process: keep it out of the garbage collector's full passes, which would
    # otherwise walk it every few thousand requests (latency spikes)
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        h.wait(stop)
    finally:
        h.stop()
    click.echo("kvsim stopped", err=True)


def _loopback(host: str) -> bool:
    """Whether ``host`` binds only the loopback interface."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

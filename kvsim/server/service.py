"""The transport-neutral manager service: one entry point, :meth:`Service.call`.

HTTP (:mod:`kvsim.server.http`) and gRPC adapters decode a request into a dict and
hand it to ``Service.call(api, method, body, credential=...)``; the reply is the
JSON-shaped response of ``../shared/docs/manager-api.md`` (snake_case, enums as
names, ``header.status`` and ``header.request_id`` always set). The service never
raises for bad input: core errors map to their status codes, malformed fields to
``INVALID_ARGUMENT`` with a message naming the field, an unknown method to
``UNSUPPORTED``; ``INTERNAL_ERROR`` is reserved for bugs.

One lock serializes every call into the :class:`~kvsim.core.manager.CacheManager`
(which is not thread-safe). Time comes from an injected clock (default
:class:`~kvsim.server.clock.MonotonicClock`); :meth:`Service.tick` expires write
sessions past their timeout, runs the reclaimer (group quota, ``max_key_count`` and
per-storage-type quota triggers, each at the group's ``used_percentage``), reaps delayed
deletions and probes ``file`` storages; :meth:`Service.start_background` runs it on a
thread.

Storages: a storage is usable when the admin has it enabled and (``file`` storages) its
last health probe passed. Writes go to the first usable candidate whose storage type
has room under the group's type quota; a block on an unusable storage is not handed out
by reads (one location per key: "prefer available replicas" reduces to a miss).

Write semantics follow the replay contract: ``finishWriteCache`` refreshes every
key the write covered (the ones it skipped because they were held, and the ones it
committed) in tail-first commit order, so read-then-write through the server gives
the same hits as ``kvsim replay`` of the same requests.

Example:
    >>> s = Service()
    >>> r = s.call("meta", "registerInstance", {"instance_group": "default",
    ...     "instance_id": "i0", "block_size": 16,
    ...     "location_spec_infos": [{"name": "tp0", "size": 1024}],
    ...     "model_deployment": {"model_name": "m", "dtype": "fp16"}})
    >>> r["header"]["status"]["code"]
    'OK'
    >>> w = s.call("meta", "startWriteCache", {"instance_id": "i0", "block_keys": [1, 2]})
    >>> len(w["locations"]), w["block_mask"]
    (2, {'offset': 0})
    >>> s.call("meta", "finishWriteCache", {"instance_id": "i0",
    ...     "write_session_id": w["write_session_id"],
    ...     "success_blocks": {"offset": 2}})["header"]["status"]["code"]
    'OK'
    >>> g = s.call("meta", "getCacheLocation", {"instance_id": "i0", "block_keys": ["1", 2, 3],
    ...     "query_type": "QT_PREFIX_MATCH"})
    >>> len(g["locations"]), g["locations"][0]["type"]
    (2, 'ST_NFS')
    >>> s.call("meta", "noSuchCall", {})["header"]["status"]["code"]
    'UNSUPPORTED'
    >>> s.call("admin", "listStorage", {})["header"]["status"]["message"]
    'admin calls need a valid admin credential ("user:password")'
    >>> s.close()
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kvsim.config import KVSimConfig, ServerLimits
from kvsim.core.clock import Clock
from kvsim.core.errors import (
    DuplicateEntity,
    InvalidArgument,
    KVSimError,
    NotFound,
)
from kvsim.core.events import EV_EVICTED, EV_REMOVED
from kvsim.core.manager import (
    MAX_BLOCK_BYTES,
    QUERY_BATCH,
    QUERY_PREFIX,
    QUERY_SW,
    STORAGE_SLOTS,
    CacheManager,
    TickReport,
)
from kvsim.core.policies import POLICIES
from kvsim.core.spec import (
    EVICTION_MODES,
    EvictionSpec,
    GroupSpec,
    InstanceSpec,
    LocationSpec,
    StorageSpec,
)
from kvsim.server import capacity
from kvsim.server import wire as W
from kvsim.server.auth import Account, Accounts, AuthGuard
from kvsim.server.bigcalls import (
    STEP_KEYS,
    StepLock,
    locations_json,
    long_call,
    preparse,
    read_saves_nothing,
    save_finish,
    take_carries,
)
from kvsim.server.clock import MonotonicClock
from kvsim.server.debug import Faults
from kvsim.server.eventlog import EventLog, open_event_log
from kvsim.server.kvcm_compat import install_compat, new_node_id, storage_config_entry
from kvsim.server.store import BlockStore, SessionRecord, StoreBatch
from kvsim.trace.hashing import kvcm_token_keys

__all__ = ["DEFAULT_ADMIN_PASSWORD", "DEFAULT_ADMIN_USER", "Service", "default_config"]

log = logging.getLogger("kvsim.server")

DEFAULT_ADMIN_USER = "admin"
DEFAULT_ADMIN_PASSWORD = "kvsim-admin"
DEFAULT_QUOTA_BYTES = 30 * 10**9
DEFAULT_WRITE_TIMEOUT_S = 30
DEFAULT_PROBE_S = 5.0

_LOC_CACHE_MAX = 1 << 16  # cached location dicts per instance and storage
_READ_LOG_FOLD = 256  # reads whose hit rows are logged before folding into the bitmap
# upper bounds (seconds) of the call-latency histogram's buckets (Prometheus ``le``)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)
_PLACEHOLDER: dict[str, Any] = {"type": "ST_UNSPECIFIED", "spec_size": 0, "location_specs": []}
_URI_SCHEME = {"file": "file", "hf3fs": "3fs", "mooncake": "mooncake", "pace": "pace",
               "memory": "memory"}  # fmt: skip
_STATUS_NAMES = {"writing": "CLS_WRITING", "serving": "CLS_SERVING", "deleting": "CLS_DELETING",
                 "not_found": "CLS_NOT_FOUND"}  # fmt: skip


def default_config(data_dir: str | os.PathLike[str]) -> KVSimConfig:
    """The registry of a server started without a config.

    One group ``default`` (quota 30 GB, reclaim at ``used_percentage`` 0.8) and one
    ``file`` storage ``nfs_01`` rooted at ``<data_dir>/nfs_01``.

    Example:
        >>> c = default_config("/tmp/kv")
        >>> c.groups[0].quota_bytes, c.groups[0].used_percentage, c.storages[0].uri
        (30000000000, 0.8, '/tmp/kv/nfs_01')
    """
    root = str(Path(data_dir) / "nfs_01")
    return KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": root}],
        "instance_groups": [{"name": "default", "quota": {"bytes": DEFAULT_QUOTA_BYTES},
                             "used_percentage": 0.8, "storage_candidates": ["nfs_01"]}],
    }, source="<default>")


class AuthError(KVSimError):
    """A missing or wrong admin credential."""

    code = "INVALID_ARGUMENT"


class Unsupported(KVSimError):
    """A call kvsim does not implement."""

    code = "UNSUPPORTED"


class _Later:
    """A reply field computed after the service lock is released (e.g. the locations
    of a large write: they depend only on values captured when the call ran)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


def new_session_token() -> str:
    """A write session id: 128 random bits as 32 hex digits (unguessable; upstream
    KVCM's ids are random 32-character strings too).

    Example:
        >>> len(new_session_token()), new_session_token() != new_session_token()
        (32, True)
    """
    return secrets.token_hex(16)


@dataclass
class _Instance:
    info: dict[str, Any]  # the wire InstanceInfo (with model_deployment, spec groups)
    spec_names: list[str]
    spec_sizes: list[int]
    spec_groups: dict[str, list[str]]
    # locations already built, per storage slot (and transport encoder): key -> location
    # (a dict, or the transport's encoded form of it; see _row_locations)
    loc_cache: dict[Any, dict[int, Any]] = field(default_factory=dict)
    loc_gen: int = -1


def json_fragment(loc: dict[str, Any]) -> Any:
    """A location as pre-encoded JSON (``orjson.Fragment``): the HTTP transport's
    location encoder (see :meth:`Service.call`).

    Example:
        >>> orjson.dumps([json_fragment({"type": "ST_NFS", "spec_size": 0})])
        b'[{"type":"ST_NFS","spec_size":0}]'
    """
    return orjson.Fragment(orjson.dumps(loc))


class Service:
    """The KVCM-compatible manager behind every transport.

    Args:
        config: the registry to start with (storages, groups, instances); None ->
            :func:`default_config` under ``data_dir``.
        data_dir: where relative ``file`` storage roots and the event log live
            (default: a fresh temporary directory).
        clock: time source (default :class:`MonotonicClock`).
        admin_user: the bootstrap admin account's name.
        admin_password: its password (default: ``$KVSIM_ADMIN_PASSWORD``, else
            :data:`DEFAULT_ADMIN_PASSWORD`).
        event_log: write ``<data_dir>/events.jsonl`` (one JSON object per event).
        store: durable state (registry, blocks, write sessions; see
            :mod:`kvsim.server.store`). When it holds state, the service starts from
            it and ``config`` is not applied; when it is empty, ``config`` is applied
            and saved. Every call's changes are saved before its reply.
        elector: leader election; while this node does not lead, calls other than
            ``checkHealth`` and ``getManagerClusterInfo`` answer ``SERVER_NOT_LEADER``,
            and on becoming leader the state is reloaded from ``store``.
        node_id: this node's id in cluster info (default: host name).
        endpoints: ports reported by ``getManagerClusterInfo`` (set by the starter).
        storage_probe_seconds: how often :meth:`tick` probes each ``file`` storage
            (write, fsync, read back and delete a small file in its root; see
            :meth:`probe_storages`), on ``clock``; 0 = never.
        limits: per-request limits (:class:`~kvsim.config.ServerLimits`; default:
            ``config.server.limits``).
        event_log_max_bytes: rotate the event log past this size (0 = never; default
            ``config.server.event_log_max_bytes``).
        advisor_sample_rate: run the capacity advisor (:mod:`kvsim.server.advisor`) at
            this key sampling rate (1 = exact); 0 = no advisor.
        manual_clock: ``clock`` is a manual clock moved only by :meth:`set_clock` (the
            admin call ``setClock``): the reclaimer then runs at its due times in that
            clock (``config.reclaim.interval_ms``), never on the timer, so a driven
            run is deterministic.
    """

    _read_rows: np.ndarray  # table rows read since the last recency flush

    def __init__(
        self,
        config: KVSimConfig | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        admin_user: str = DEFAULT_ADMIN_USER,
        admin_password: str | None = None,
        event_log: bool = True,
        store: BlockStore | None = None,
        elector: Any = None,
        node_id: str | None = None,
        endpoints: dict[str, Any] | None = None,
        storage_probe_seconds: float = DEFAULT_PROBE_S,
        admin_auth: str = "basic",
        event_format: str = "kvsim",
        limits: ServerLimits | None = None,
        event_log_max_bytes: int | None = None,
        advisor_sample_rate: float = 0.0,
        manual_clock: bool = False,
    ) -> None:
        opts = config.server if config is not None else None
        self.limits = limits if limits is not None else (
            opts.limits if opts is not None else ServerLimits())
        self.data_dir = Path(data_dir) if data_dir is not None else Path(
            tempfile.mkdtemp(prefix="kvsim-serve-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        if manual_clock and not hasattr(self.clock, "set"):
            raise ValueError("manual_clock needs a settable clock (ManualClock)")
        self.manual_clock = manual_clock
        self.store = store
        self.elector = elector
        self._batch = StoreBatch()
        self._registry_dirty = False
        self._restoring = False
        self.store_errors = 0
        self.node_id = node_id or new_node_id()
        if admin_auth not in ("basic", "none"):
            raise ValueError(f"admin_auth must be 'basic' or 'none', got {admin_auth!r}")
        self.admin_auth = admin_auth
        self.faults = Faults()
        self.endpoints: dict[str, Any] = dict(endpoints or {})
        self.started_ns = self.clock.now_ns()
        self._lock = StepLock()  # a long call's steps let waiting calls in (_pause)
        self._stats_lock = threading.Lock()  # the call counters and latency histogram
        #: pauses of long calls between two steps / those that let waiting calls in
        self.lock_pauses = 0
        self.lock_yields = 0
        #: run (without the service lock) at each pause of a long call (tests)
        self.on_pause: Callable[[], None] | None = None
        self._store_lock = threading.Lock()  # orders store writes (taken under _lock)
        self._store_queue: list[StoreBatch] = []  # batches not yet written, oldest first
        #: per session: the blocks of a finish in steps not yet written (save_finish)
        self._carries: dict[int, StoreBatch] = {}
        self._rid_prefix = uuid.uuid4().hex[:12]
        self._rid = itertools.count(1)
        max_log = event_log_max_bytes if event_log_max_bytes is not None else (
            opts.event_log_max_bytes if opts is not None else 256 << 20)
        self.events: EventLog | None = (
            open_event_log(self.data_dir / "events.jsonl", event_format, max_bytes=max_log)
            if event_log else None)
        self.accounts = Accounts()
        self.auth = AuthGuard(self.limits.auth_failures_per_second, self.limits.auth_workers)
        password = admin_password
        if password is None:
            password = os.environ.get("KVSIM_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD)
        self.accounts.add(admin_user, password, "ROLE_ADMIN")
        self._encoder: Callable[[dict[str, Any]], Any] | None = None  # per call (see call)
        self.calls: dict[tuple[str, str, str], int] = {}
        # per (api, method): [count, seconds, per-bucket counts (LATENCY_BUCKETS, +Inf)]
        self.latency: dict[tuple[str, str], list[Any]] = {}
        self.reclaimed_blocks = 0
        self.expired_sessions = 0
        self.probe_interval_ns = int(max(0.0, storage_probe_seconds) * 1e9)
        self._probe_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.advisor = capacity.make_advisor(advisor_sample_rate)
        self._config = config if config is not None else default_config(self.data_dir)
        self._reset_registry()
        if self.store is None or not self._load_store():
            self._load_config(self._config)
            if self.store is not None:
                self._registry_dirty = True
                self._save()
        self._meta: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "registerInstance": self._register_instance,
            "getInstanceInfo": self._get_instance_info,
            "getCacheLocation": self._get_cache_location,
            "getCacheLocationLen": self._get_cache_location_len,
            "getCacheMeta": self._get_cache_meta,
            "startWriteCache": self._start_write,
            "finishWriteCache": self._finish_write,
            "removeCache": self._remove_cache,
            "trimCache": self._trim_cache,
        }
        self._admin: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "addStorage": self._add_storage,
            "enableStorage": lambda b: self._enable_storage(b, True),
            "disableStorage": lambda b: self._enable_storage(b, False),
            "removeStorage": self._remove_storage,
            "updateStorage": self._update_storage,
            "listStorage": self._list_storage,
            "createInstanceGroup": self._create_group,
            "updateInstanceGroup": self._update_group,
            "removeInstanceGroup": self._remove_group,
            "getInstanceGroup": self._get_group,
            "listInstanceGroup": self._list_groups,
            "registerInstance": self._register_instance,
            "removeInstance": self._remove_instance,
            "getInstanceInfo": self._get_instance_info,
            "listInstanceInfo": self._list_instances,
            "addAccount": self._add_account,
            "deleteAccount": self._delete_account,
            "listAccount": self._list_accounts,
            "genConfigSnapshot": self._gen_snapshot,
            "loadConfigSnapshot": self._load_snapshot,
            "getMetrics": self._get_metrics,
            "checkHealth": self._check_health,
            "getManagerClusterInfo": self._cluster_info,
            "leaderDemote": self._leader_demote,
            "setClock": self._set_clock,
            **capacity.admin_calls(self),
        }
        self._debug: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        install_compat(self)  # KVCM's remaining admin calls and the debug service
        self._apis = {"meta": self._meta, "admin": self._admin, "debug": self._debug}

    # ================================================================ entry point
    def call(self, api: str, method: str, body: dict[str, Any], *,
             credential: str | None = None, json_fragments: bool = False,
             location_encoder: Callable[[dict[str, Any]], Any] | None = None,
             peer: str | None = None) -> dict[str, Any]:
        """Run one call and return its JSON-shaped reply (never raises for bad input).

        Args:
            api: ``"meta"`` or ``"admin"``.
            method: the lowerCamel call name, e.g. ``"getCacheLocation"``.
            body: the decoded JSON request (snake_case; unknown fields ignored).
            credential: ``"user:password"``; admin calls need an admin account's.
            json_fragments: the caller serializes the reply with orjson (HTTP): block
                locations may then come as cached ``orjson.Fragment`` objects (the same
                JSON, already encoded) instead of dicts. Shorthand for
                ``location_encoder=json_fragment``.
            location_encoder: a transport's encoding of one location dict (e.g. a
                protobuf message), applied once per cached location: the read path's
                locations then come in that form. Must be one long-lived function per
                form (cached encodings are keyed by its identity).
            peer: the client's address (failed admin credentials are rate-limited per
                address: ``limits.auth_failures_per_second``).

        Returns:
            The reply: ``header{status{code, message}, request_id}`` plus the call's
            fields.
        """
        t0 = time.perf_counter()
        rid = f"{self._rid_prefix}-{next(self._rid)}"
        code, message = "OK", ""
        out: dict[str, Any] = {}
        try:
            table = self._apis.get(api)
            fn = table.get(method) if table is not None else None
            if fn is None:
                raise Unsupported(f"unknown call {api}/{method}")
            if not isinstance(body, dict):
                raise W.WireError(f"the request body must be a JSON object, got "
                                  f"{type(body).__name__}")
            if (api != "meta" and self.admin_auth != "none"
                    and self.check_admin(credential, peer) != "ROLE_ADMIN"):
                raise AuthError('admin calls need a valid admin credential ("user:password")')
            self._check_limits(body)
            if (self.elector is not None and not self.elector.is_leader
                    and method not in _FOLLOWER_CALLS):
                raise NotLeader(f"this node ({self.node_id}) is not the leader; leader: "
                                f"{self.elector.lease.holder() or 'none yet'}")
            batch = None
            failed: BaseException | None = None
            if api == "meta":
                body = preparse(body, self.limits.max_keys_per_request)
            self._lock.acquire()
            try:
                self._encoder = location_encoder or (json_fragment if json_fragments
                                                     else None)
                try:
                    if api != "debug":
                        self.faults.check(method)
                    out = fn(body)
                except BaseException as e:  # its changes so far are saved all the same
                    failed = e
                finally:
                    self._encoder = None
                    batch = None if read_saves_nothing(self, method) else self._collect()
                    if batch is not None:
                        # the store is written after the service lock is released (reads
                        # go on meanwhile), in call order (the store lock is taken before
                        # the service lock is let go), and before the reply
                        self._store_lock.acquire()
            finally:
                self._lock.release()
            if batch is not None:
                try:
                    self._apply_in_order(batch)
                finally:
                    self._store_lock.release()
                self._wait_durable()  # group commit: outside both locks
            if failed is not None:
                raise failed
            if method in _DURABLE_EVENTS and self.events is not None:
                # an acknowledged write's event reaches the OS before the reply
                # (survives kill -9 of the server; not a power loss)
                self.events.flush()
            for k, v in out.items():
                if isinstance(v, _Later):
                    out[k] = v.fn()
        except KVSimError as e:
            code, message = e.code, str(e)
        except Exception as e:  # a bug: report it, keep serving
            log.exception("internal error in %s/%s", api, method)
            code, message = "INTERNAL_ERROR", f"{type(e).__name__}: {e}"
            out = {}
        dt = time.perf_counter() - t0
        known = self._apis.get(api, {})
        ck = (api, method if method in known else "<unknown>", code)
        with self._stats_lock:  # gRPC serves from a thread pool
            self.calls[ck] = self.calls.get(ck, 0) + 1
            lat = self.latency.get(ck[:2])
            if lat is None:
                lat = self.latency[ck[:2]] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            lat[0] += 1
            lat[1] += dt
            lat[2][bisect.bisect_left(LATENCY_BUCKETS, dt)] += 1
        reply: dict[str, Any] = {"header": {"status": {"code": code, "message": message},
                                            "request_id": rid}}
        if code == "OK":
            reply.update(out)
        return reply

    def long_call(self, method: str, raw: bytes) -> bool:
        """Whether a meta call may run in steps (:func:`bigcalls.long_call`)."""
        return long_call(self, method, raw)

    def _pause(self) -> None:
        """Between two steps of a long call (the core's ``pause`` hook; under the lock):
        let waiting calls in (:meth:`StepLock.pause`, running :attr:`on_pause`), keeping
        this call's location encoder."""
        self.lock_pauses += 1
        enc = self._encoder
        self.lock_yields += self._lock.pause(self.on_pause)
        self._encoder = enc  # a call let in meanwhile set its own

    def check_admin(self, credential: str | None, peer: str | None = None) -> str | None:
        """The role of ``credential`` (None: missing, wrong, or refused because
        ``peer`` failed too often: ``limits.auth_failures_per_second``). A credential
        verified before costs a dictionary look-up; a new one costs one scrypt on one
        of ``limits.auth_workers`` threads."""
        return self.auth.check(self.accounts, credential, peer)

    def _check_limits(self, body: dict[str, Any]) -> None:
        """Request-size limits checked before the call takes the service lock."""
        lim = self.limits
        for name, cap, limit in (("block_keys", lim.max_keys_per_request,
                                  "max_keys_per_request"),
                                 ("location_spec_group_names", lim.max_keys_per_request,
                                  "max_keys_per_request"),
                                 ("token_ids", lim.max_tokens_per_request,
                                  "max_tokens_per_request")):
            v = body.get(name)
            if isinstance(v, list) and len(v) > cap:
                raise W.over_limit(name, len(v), limit, cap)

    # ================================================================ lifecycle
    def tick(self) -> dict[str, int]:
        """The background timer: probe storages when due, run the core's reclaimer
        (:meth:`~kvsim.core.manager.CacheManager.tick`: expire overdue write sessions,
        every reclaim trigger, reap delayed deletions; each trigger reported as a
        ``CacheReclaimSubmit`` event naming it), flush the event log.

        On a manual clock (``kvsim serve --clock manual``) the reclaimer runs only as
        the clock moves (``setClock``), so a driven run is deterministic; the timer does
        the rest. Returns what was done (nothing on a follower).
        """
        if self.elector is not None and not self.elector.is_leader:
            return {"expired": 0, "reclaimed": 0, "reaped": 0}
        if self.probe_interval_ns > 0 and self.clock.now_ns() >= self._next_probe_ns:
            self.probe_storages()
        out = {"expired": 0, "reclaimed": 0, "reaped": 0}
        if not self.manual_clock:
            with self._lock:
                self._note_tick(self.mgr.tick(), out)
                self._save()
        self._flush_recency()
        if self.events is not None:
            self.events.flush()
        if self.advisor is not None:
            capacity.process(self)
        return out

    def set_clock(self, now_ns: int) -> dict[str, int]:
        """Move a manual clock to ``now_ns`` (never back), running the reclaimer at each
        due time on the way (the core's :meth:`~kvsim.core.manager.CacheManager.advance_to`);
        the admin call ``setClock`` without the wire. Returns what it did and the time."""
        with self._lock:
            out = self._advance_clock(int(now_ns))
            self._save()
        return out

    def _set_clock(self, body: dict[str, Any]) -> dict[str, Any]:
        """Admin ``setClock`` (``kvsim serve --clock manual`` only): ``now_ns``; the reply
        has ``now_ns``, ``expired``, ``reclaimed`` and ``reaped`` (HTTP and gRPC alike)."""
        now = W.get_int(body, "now_ns", -1, low=0, high=2**62)
        if now < 0:
            raise W.WireError("now_ns: required (the manual clock's new time, ns)")
        return self._advance_clock(now)  # the caller holds the service lock

    def _advance_clock(self, now_ns: int) -> dict[str, int]:
        """:meth:`set_clock`'s work, under the service lock."""
        if not self.manual_clock:
            raise Unsupported("setClock: this server runs on the wall clock (start it "
                              "with --clock manual)")
        out = {"expired": 0, "reclaimed": 0, "reaped": 0}
        for r in self.mgr.advance_to(now_ns):
            self._note_tick(r, out)
        return out | {"now_ns": self.clock.now_ns()}

    def _note_tick(self, rep: TickReport, out: dict[str, int] | None = None) -> None:
        """Events, counters and store records of one reclaimer run (under the lock)."""
        for ses in rep.expired:
            if self.advisor is not None:
                capacity.note_failed(self, ses.instance_id, ses.keys)
            self._emit("FinishWriteCache", ses.instance_id, write_session_id=ses.tag,
                       block_keys=[], success_count=0, expired=True)
            if self.store is not None:
                self._batch.close_session(ses.session_id)
        for r in rep.reclaims:
            if r.trigger == "storage_capacity":
                self._emit("CacheReclaimSubmit", r.storage, storage=r.storage,
                           trigger=r.trigger, blocks=r.blocks, freed_bytes=r.freed,
                           used=r.used, capacity=r.capacity)
            elif r.trigger == "storage_type":
                self._emit("CacheReclaimSubmit", r.group, group=r.group, trigger=r.trigger,
                           storage_type=W.TYPE_ENUM.get(r.storage_type, r.storage_type),
                           blocks=r.blocks, freed_bytes=r.freed, used=r.used,
                           capacity=r.capacity, quota=r.limit)
            elif r.trigger == "max_key_count":
                self._emit("CacheReclaimSubmit", r.group, group=r.group, trigger=r.trigger,
                           blocks=r.blocks, used=r.used, capacity=r.capacity,
                           max_key_count=r.limit)
            else:
                self._emit("CacheReclaimSubmit", r.group, group=r.group, trigger=r.trigger,
                           blocks=r.blocks, used=r.used, capacity=r.capacity)
        self.expired_sessions += len(rep.expired)
        self.reclaimed_blocks += rep.reclaimed
        if out is not None:
            out["expired"] += len(rep.expired)
            out["reclaimed"] += rep.reclaimed
            out["reaped"] += rep.reaped

    @property
    def evicted_by_trigger(self) -> dict[str, int]:
        """Blocks evicted per reclaim trigger (the core's counters)."""
        return dict(self.mgr.evicted_by_trigger)

    def start_background(self, interval_s: float = 0.5) -> None:
        """Run :meth:`tick` on a daemon thread: every ``reclaim.interval_ms`` of wall time
        (the reclaimer's cadence) when the config sets one, else every ``interval_s``
        seconds (the writes keep the watermark themselves then)."""
        if self._thread is not None:
            return
        if self.mgr.reclaim_interval_ms > 0:
            interval_s = self.mgr.reclaim_interval_ms / 1000
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.tick()
                except Exception:  # pragma: no cover - a bug; keep ticking
                    log.exception("background tick failed")

        self._thread = threading.Thread(target=loop, name="kvsim-tick", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread and flush/close the event log and the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.events is not None:
            self.events.close()
        self.auth.close()
        if self.elector is not None:
            self.elector.stop()
        if self.store is not None:
            self._flush_recency()
            self.store.close()

    # ------------------------------------------------------------ recency (write-behind)
    def _mark_read(self, rows: np.ndarray) -> None:
        """Note the table rows a read refreshed; the tick persists their recency.

        A read only appends its rows array (it is not modified afterwards); every
        ``_READ_LOG_FOLD`` reads, and at the flush, they are folded into the bitmap.
        """
        if self.store is None or not rows.shape[0]:
            return
        log_ = self._read_log
        log_.append(rows)
        if len(log_) >= _READ_LOG_FOLD:
            self._fold_reads()

    def _fold_reads(self) -> None:
        """Move the logged read rows into the ``_read_rows`` bitmap (under the lock)."""
        if not self._read_log:
            return
        rows = np.concatenate(self._read_log)
        self._read_log.clear()
        n = self.mgr.row_capacity
        if self._read_rows.shape[0] < n:
            grown = np.zeros(n, dtype=bool)
            grown[: self._read_rows.shape[0]] = self._read_rows
            self._read_rows = grown
        self._read_rows[rows] = True

    def _flush_recency(self) -> int:
        """Write the current access time and count of every block read since the last
        flush (SERVING rows only) to the store; returns how many blocks.

        The rows are collected under the lock (a bitmap scan, no per-read log), the store
        is written outside it; the store only updates blocks that still exist, so a
        block deleted meanwhile is not revived.
        """
        if self.store is None:
            return 0
        with self._lock:
            if self.elector is not None and not self.elector.is_leader:
                self._read_log.clear()
                self._read_rows[:] = False
                return 0
            self._fold_reads()
            marked = self._read_rows
            rows = np.flatnonzero(marked)
            if not rows.shape[0]:
                return 0
            marked[rows] = False
            parts = self.mgr.recency(rows)
        try:
            for name, keys, ta, acc in parts:
                self.store.write_recency(name, keys, ta, acc)
        except Exception:
            self.store_errors += 1
            log.exception("state store: recency write failed")
        return sum(int(k.shape[0]) for _, k, _, _ in parts)

    # ================================================================ registry state
    def _reset_registry(self) -> None:
        # per-block events feed the state store (evictions and removals)
        self.mgr = CacheManager(self.clock, rows=1 << 14,
                                event_level=2 if self.store is not None else 0,
                                slot_counts=True,
                                reclaim_interval_ms=self._config.reclaim.interval_ms)
        self.mgr.step_keys = STEP_KEYS  # a long call pauses between ~1 ms steps
        self._storage_cfg: dict[str, dict[str, Any]] = {}
        self._loc_gen = getattr(self, "_loc_gen", 0) + 1  # drops cached locations
        self._group_cfg: dict[str, dict[str, Any]] = {}
        self._inst: dict[str, _Instance] = {}
        self._read_rows = np.zeros(0, dtype=bool)  # rows read since the last recency flush
        self._read_log: list[np.ndarray] = []  # reads' hit rows not yet in _read_rows
        self._encoder = None  # per call (see call)
        # storage health is runtime state (the core's registry): every storage starts
        # healthy and is re-probed
        self._next_probe_ns = 0

    def _load_config(self, config: KVSimConfig) -> None:
        for st in config.storages:
            self._put_storage(self._storage_to_wire(st), st)
        for g in config.groups:
            self.mgr.create_group(g)
            self._group_cfg[g.name] = self._group_to_wire(g, {})
        for s in config.instances:
            self._check_sized(self.mgr.group(s.group), [s], f"instances: {s.instance_id!r}")
            self.mgr.register_instance(s)
            self._inst[s.instance_id] = self._instance_record(s, {}, [])

    def _persist(self, op: str, payload: dict[str, Any]) -> None:
        if self._restoring:
            return
        self._registry_dirty = True

    # ------------------------------------------------------------ durable state
    def _save(self) -> None:
        """Write the pending changes to the store now (under the service lock).

        Raises:
            _IOError: the store failed; the changes stay queued and are written before
                the next ones.
        """
        b = self._collect()
        if b is not None:
            with self._store_lock:
                self._apply_in_order(b)
            self._wait_durable()

    def _wait_durable(self) -> None:
        """Wait until this thread's store writes are durable, when the store syncs
        apart from its writes (the journal's ``fsync=always`` group commit)."""
        wait = getattr(self.store, "wait_durable", None)
        if wait is not None:
            wait()

    def _apply_in_order(self, bs: list[StoreBatch]) -> None:
        """Apply ``bs`` in order after every batch that failed before them (under
        ``_store_lock``).

        Raises:
            _IOError: the store failed; ``bs`` (and any older ones) stay queued.
        """
        assert self.store is not None
        q = self._store_queue
        q.extend(bs)
        while q:
            if self.elector is not None and not self.elector.is_leader:
                # fencing: the lease lapsed (say this process was paused) since the batch
                # was taken; another node may lead now, so this one writes nothing
                q.clear()
                raise NotLeader(f"this node ({self.node_id}) lost the leader lease before "
                                "its changes were saved; they are dropped")
            try:
                self.store.apply(q[0])
            except Exception as e:
                self.store_errors += 1
                log.exception("state store: write failed")
                raise _IOError(f"state store {self.store.url}: {type(e).__name__}: "
                               f"{e}") from None
            q.pop(0)

    def _collect(self) -> list[StoreBatch] | None:
        """Take this call's changes as batches to write in order (under the service
        lock): the carries of long finishes first (:func:`bigcalls.save_finish`; only with
        changes of its own, or a finish's last), then its own batch. None when there is
        nothing to write (or this node is a follower: it never writes)."""
        if self.store is None:
            return None
        if self.elector is not None and not self.elector.is_leader:
            self.mgr.events.clear()  # a follower never writes the shared state
            self._batch = StoreBatch()
            self._registry_dirty = False
            self._carries.clear()
            return None
        b = self._batch
        ev = self.mgr.events
        a = ev.arrays  # the recorded columns, read in place (one pass, then cleared)
        n = int(a.meta[0])
        if n:
            gone = _GONE_KINDS[a.kind[:n]].nonzero()[0]  # evicted or removed blocks
            inst, keys = a.inst[gone], a.key[gone]  # copies: the buffer is reused
            ev.clear()
            if gone.shape[0]:
                i0 = int(inst[0])  # one instance (the common case): no sort
                groups: Any = (((i0, keys),) if (inst == i0).all() else
                               ((int(i), keys[inst == i]) for i in np.unique(inst)))
                for i, k in groups:
                    try:
                        name = self.mgr.instance_name(i)
                    except IndexError:  # pragma: no cover - defensive
                        continue
                    b.delete_blocks(name, k)
        if self._registry_dirty:
            # the registry is small and changes rarely: its journal is one snapshot
            snap = self.snapshot()
            snap["storage_slots"] = [st.name if st is not None else None
                                     for st in self.mgr.storage.slot_specs()]
            b.set_registry("snapshot", snap)
        self._registry_dirty = False
        out = take_carries(self._carries, bool(b))
        if b:  # (a read has nothing: its empty batch stays for the next call)
            self._batch = StoreBatch()
            out.append(b)
        return out or None

    def _load_store(self) -> bool:
        """Rebuild registry, blocks and sessions from the store; False when it is empty."""
        assert self.store is not None
        records = self.store.load_records()
        snaps = [p for op, p in records if op == "snapshot"]
        if not snaps:
            return False
        snap = snaps[-1]
        self._restoring = True
        try:
            self._apply_snapshot(snap)
            remap = self.mgr.storage.restore_slots(snap.get("storage_slots") or [])
            known = {s.instance_id for s in self.mgr.instances()}
            recs = [r for r in self.store.load_blocks() if r.instance_id in known]
            # size the block table once (not by doubling as chunks are restored)
            self.mgr.reserve_rows(sum(int(r.keys.shape[0]) for r in recs))
            for rec in recs:
                loc = np.where(rec.loc < remap.shape[0], remap[np.minimum(rec.loc,
                               remap.shape[0] - 1)], 0)
                self.mgr.restore_blocks(rec.instance_id, rec.keys, t_write=rec.t_write,
                                        t_access=rec.t_access,
                                        access_count=rec.access_count, loc=loc)
            for ses in self.store.load_sessions():
                if ses.instance_id not in known:
                    continue
                sloc = int(remap[ses.loc]) if 0 <= ses.loc < remap.shape[0] else 0
                token = ses.extra.get("token")
                if not isinstance(token, str) or not token:
                    token = str(ses.session_id)  # saved before session ids were random
                self.mgr.restore_session(
                    ses.instance_id, ses.keys, session_id=ses.session_id,
                    deadline_ns=ses.deadline_ns, loc=sloc,
                    request_keys=np.asarray(ses.extra.get("keys", ses.keys.tolist()),
                                            dtype=np.int64),
                    is_new=np.asarray(ses.extra.get("is_new", [True] * len(ses.keys)),
                                      dtype=bool),
                    tag=token, done=int(ses.extra.get("done", 0)))
            self.mgr.events.clear()  # restoring is not a change to save
        finally:
            self._restoring = False
        log.info("state restored from %s: %d blocks, %d write sessions", self.store.url,
                 sum(u.serving_blocks for u in self.mgr.usage()), self.mgr.pending_sessions())
        return True

    def reload(self) -> None:
        """Drop the in-memory state and rebuild it from the store (a new leader)."""
        if self.store is None:
            return
        with self._lock:
            self._reset_registry()
            self._batch = StoreBatch()
            self._carries.clear()
            self._registry_dirty = False
            if not self._load_store():
                self._load_config(self._config)
                self._registry_dirty = True
                self._save()

    def _emit(self, kind: str, source: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.append({"type": kind, "source": source,
                                "trigger_time_us": self.clock.now_ns() // 1000, **fields})

    # ------------------------------------------------------------ storage rules
    # Every cache rule (usability, placement, per-type quotas, storage capacity,
    # max_key_count, the reclaim triggers) lives in the core (CacheManager); the
    # service checks only what the wire needs before it reaches the core.
    def _check_sized(self, g: GroupSpec, specs: list[InstanceSpec], where: str) -> None:
        """Per-storage-type quotas count bytes: the group's instances need block sizes."""
        if not g.storage_type_quotas:
            return
        for spec in specs:
            if spec.block_bytes <= 0:
                raise W.WireError(
                    f"{where}: instance {spec.instance_id!r} has no location_spec_infos "
                    f"sizes, but group {g.name!r} has per-storage-type quotas "
                    "(quota.quota_config, bytes)")

    def probe_storages(self) -> dict[str, bool]:
        """Probe every ``file`` storage now: write a small file in its root, fsync, read
        it back and delete it. A failing storage becomes unhealthy (not usable: writes
        avoid it, reads treat its blocks as misses) until a probe succeeds again; each
        change is logged and emitted as a ``StorageHealthChange`` event. Other storage
        types are location descriptors: always healthy (usable per enable/disable).

        The probes run outside the service lock (a hung mount does not stall calls).

        Returns:
            Health per probed storage.
        """
        with self._probe_lock:
            with self._lock:
                self._next_probe_ns = self.clock.now_ns() + self.probe_interval_ns
                todo = [(s.name, s.uri) for s in self.mgr.storages() if s.type == "file"]
            results = {name: probe_directory(root) for name, root in todo}
            with self._lock:
                reg = self.mgr.storage
                for name, err in results.items():
                    if reg.find(name) is None:
                        continue
                    was = reg.health(name)
                    if err is None and was is not None:
                        log.warning("storage %s is healthy again", name)
                    elif err is not None and was is None:
                        log.warning("storage %s is unhealthy: %s", name, err)
                    if (self.mgr.set_storage_health(name, err is None, err or "")
                            and (was is None) != (err is None)):
                        self._emit("StorageHealthChange", name, storage=name,
                                   healthy=err is None, **({} if err is None
                                                           else {"reason": err}))
            return {name: err is None for name, err in results.items()}

    # ------------------------------------------------------------ storages
    def _storage_root(self, spec: StorageSpec) -> str:
        if spec.type != "file":
            return spec.uri
        root = Path(spec.uri) if spec.uri else self.data_dir / spec.name
        if not root.is_absolute():
            root = self.data_dir / root
        return str(root)

    def _storage_to_wire(self, st: StorageSpec) -> dict[str, Any]:
        field = W.TYPE_SPEC_FIELD[st.type]
        if st.type == "file":
            spec: dict[str, Any] = {"root_path": self._storage_root(st), "key_count_per_file": 1}
        elif st.type == "hf3fs":
            spec = {"cluster_name": st.name, "mountpoint": st.uri, "root_dir": ""}
        elif st.type == "mooncake":
            spec = {"master_service_entry": st.uri}
        elif st.type == "pace":
            spec = {"domain": st.uri}
        else:
            spec = {}
        return {"global_unique_name": st.name, field: spec,
                "check_storage_available_when_open": False,
                "capacity_bytes": st.capacity_bytes}

    def _storage_from_wire(self, body: dict[str, Any]) -> tuple[dict[str, Any], StorageSpec]:
        cfg = W.get_dict(body, "storage")
        if not cfg:
            raise W.WireError("storage: required (a StorageConfig object)")
        name = W.check_name(W.get_str(cfg, "global_unique_name", required=True,
                                      where="storage."), "storage.global_unique_name")
        fields = [f for f in W.SPEC_FIELD_TYPE if cfg.get(f) is not None]
        if len(fields) != 1:
            raise W.WireError(
                "storage: give exactly one of " + ", ".join(W.SPEC_FIELD_TYPE)
                + (f" (got {', '.join(fields)})" if fields else ""))
        field = fields[0]
        spec = W.get_dict(cfg, field, where="storage.")
        stype = W.SPEC_FIELD_TYPE[field]
        where = f"storage.{field}."
        if stype == "file":
            uri = W.get_str(spec, "root_path", where=where)
            if not os.path.isabs(uri) and ".." in Path(uri).parts:
                raise W.WireError(f"{where}root_path: a relative root must stay inside the "
                                  f"data directory (no '..'), got {uri[:60]!r}")
            _check_path_size(uri, f"{where}root_path")
        elif stype == "hf3fs":
            uri = os.path.join(W.get_str(spec, "mountpoint", where=where),
                               W.get_str(spec, "root_dir", where=where))
        elif stype == "mooncake":
            uri = W.get_str(spec, "master_service_entry", where=where)
        elif stype == "pace":
            uri = W.get_str(spec, "domain", where=where)
        else:
            uri = W.get_str(spec, "root_path", where=where)
        cap = W.get_int(cfg, "capacity_bytes", 0, low=0, where="storage.")
        st = StorageSpec(name=name, type=stype, capacity_bytes=cap, uri=uri)
        if stype == "file":
            st = replace(st, uri=self._storage_root(st))
        wire: dict[str, Any] = {"global_unique_name": name, field: dict(spec),
                "check_storage_available_when_open": W.get_bool(
                    cfg, "check_storage_available_when_open", where="storage."),
                "capacity_bytes": cap}
        if stype == "file":
            wire[field]["root_path"] = st.uri
        return wire, st

    def _put_storage(self, wire: dict[str, Any], st: StorageSpec) -> None:
        self._loc_gen += 1
        if not self.mgr.storage.slot(st.name) and len(self.mgr.storage.slot_specs()) >= 127:
            raise W.WireError("too many storages (at most 126)")
        if st.type == "file":
            try:
                Path(st.uri).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _IOError(f"storage {st.name!r}: cannot create {st.uri}: "
                               f"{e.strerror or e}") from None
        self.mgr.add_storage(st)
        self._storage_cfg[st.name] = wire

    def _add_storage(self, body: dict[str, Any]) -> dict[str, Any]:
        wire, st = self._storage_from_wire(body)
        old = {s.name: s for s in self.mgr.storages()}.get(st.name)
        if old is not None:
            if replace(old, available=True) == replace(st, available=True):
                return {}
            raise DuplicateEntity(f"storage {st.name!r} exists with a different definition")
        self._put_storage(wire, st)
        self._persist("addStorage", wire)
        return {}

    def _update_storage(self, body: dict[str, Any]) -> dict[str, Any]:
        wire, st = self._storage_from_wire(body)
        old = {s.name: s for s in self.mgr.storages()}.get(st.name)
        if old is None:
            raise NotFound(f"storage {st.name!r} does not exist")
        self.mgr.update_storage(st)  # keeps the admin state; healthy until probed
        self._loc_gen += 1
        self._storage_cfg[st.name] = wire
        self._persist("updateStorage", wire)
        return {}

    def _enable_storage(self, body: dict[str, Any], on: bool) -> dict[str, Any]:
        name = W.get_str(body, "storage_unique_name", required=True)
        self.mgr.set_storage_available(name, on)
        self._persist("enableStorage" if on else "disableStorage", {"name": name})
        return {}

    def _remove_storage(self, body: dict[str, Any]) -> dict[str, Any]:
        name = W.get_str(body, "storage_unique_name", required=True)
        self.mgr.remove_storage(name)
        self._loc_gen += 1
        del self._storage_cfg[name]
        self._persist("removeStorage", {"name": name})
        return {}

    def _list_storage(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every storage with ``available`` (admin enable/disable) and ``healthy`` (the
        last probe; non-file storages are always healthy) and, when unhealthy,
        ``health_message``; a storage is used only when both are true."""
        reg = self.mgr.storage
        out = []
        for n in sorted(self._storage_cfg):
            why = reg.health(n)
            out.append(self._storage_cfg[n] | {"available": reg.get(n).available,
                                               "healthy": why is None}
                       | ({"health_message": why} if why is not None else {}))
        return {"storage": out}

    # ------------------------------------------------------------ groups
    def _group_to_wire(self, g: GroupSpec, extra: dict[str, Any]) -> dict[str, Any]:
        rev = {v: k for k, v in W.POLICY_OF.items() if k != "POLICY_UNSPECIFIED"}
        return {
            "name": g.name,
            "storage_candidates": list(g.storage_candidates),
            "global_quota_group_name": extra.get("global_quota_group_name", g.name),
            "max_instance_count": g.max_instance_count,
            "quota": {"capacity": g.quota_bytes, "capacity_blocks": g.quota_blocks,
                      "quota_config": extra.get("quota_config") or [
                          {"storage_type": W.TYPE_ENUM[t], "capacity": c}
                          for t, c in g.storage_type_quotas]},
            "cache_config": {
                "reclaim_strategy": {
                    "reclaim_policy": rev.get(g.eviction.policy, "POLICY_UNSPECIFIED"),
                    "trigger_strategy": {"used_percentage": extra.get("used_percentage",
                                                                      g.used_percentage)},
                    "delay_before_delete_ms": g.delay_before_delete_ms,
                    "eviction": {"policy": g.eviction.policy, "params": g.eviction.params,
                                 "mode": g.eviction.mode, "batch_size": g.eviction.batch_size},
                },
                "data_storage_strategy": extra.get("data_storage_strategy", "CPS_UNSPECIFIED"),
                "meta_indexer_config": extra.get("meta_indexer_config") or (
                    {"max_key_count": g.max_key_count} if g.max_key_count else {}),
            },
            "user_data": g.user_data,
            "version": g.version,
        }

    def _group_from_wire(self, g: dict[str, Any]) -> tuple[GroupSpec, dict[str, Any]]:
        p = "instance_group."
        name = W.get_str(g, "name", required=True, where=p)
        cands = W.get_str_list(g, "storage_candidates", where=p)
        # as in KVCM, a candidate may name a storage not added (yet): writes skip it
        quota = W.get_dict(g, "quota", where=p)
        qbytes = W.get_int(quota, "capacity", 0, low=0, where=f"{p}quota.")
        qblocks = W.get_int(quota, "capacity_blocks", 0, low=0, where=f"{p}quota.")
        if qbytes and qblocks:
            raise W.WireError(f"{p}quota: give capacity (bytes) or capacity_blocks, not both")
        qconf = W.get_list(quota, "quota_config", where=f"{p}quota.")
        norm_qconf = []
        type_quotas: dict[str, tuple[int, int]] = {}  # kvsim type -> (capacity, entry)
        for i, q in enumerate(qconf):
            w = f"{p}quota.quota_config[{i}]."
            if not isinstance(q, dict):
                raise W.WireError(f"{w[:-1]}: expected an object")
            ste = W.get_enum(q, "storage_type", W.STORAGE_TYPES, "ST_UNSPECIFIED", where=w)
            stype = W.ENUM_TYPE.get(ste)
            if stype is None:
                raise W.WireError(f"{w}storage_type: required, one of "
                                  f"{', '.join(sorted(W.ENUM_TYPE))}, got {ste}")
            if stype in type_quotas:
                raise W.WireError(f"{w}storage_type: {ste} has a quota already "
                                  f"(quota_config[{type_quotas[stype][1]}])")
            cap = W.get_int(q, "capacity", 0, low=0, where=w)
            if cap <= 0:
                raise W.WireError(f"{w}capacity: must be > 0 bytes (leave the storage type "
                                  f"out for no limit), got {cap}")
            type_quotas[stype] = (cap, i)
            norm_qconf.append({"storage_type": ste, "capacity": cap})
        cc = W.get_dict(g, "cache_config", where=p)
        rs = W.get_dict(cc, "reclaim_strategy", where=f"{p}cache_config.")
        w = f"{p}cache_config.reclaim_strategy."
        rp = W.get_enum(rs, "reclaim_policy", W.RECLAIM_POLICIES, "POLICY_UNSPECIFIED", where=w)
        ts = W.get_dict(rs, "trigger_strategy", where=w)
        # above 1 (KVCM's "never trigger", e.g. 3.2) the reclaimer waits for the limit
        # itself, which writes never pass: the core gets 1, the wire keeps the value
        up = W.get_float(ts, "used_percentage", 0.0, low=0.0, high=1e6,
                         where=f"{w}trigger_strategy.")
        delay = W.get_int(rs, "delay_before_delete_ms", 0, low=0, high=W.INT32_MAX, where=w)
        ev = W.get_dict(rs, "eviction", where=w)
        policy = W.get_str(ev, "policy", W.POLICY_OF[rp], where=f"{w}eviction.")
        if policy not in POLICIES:
            raise W.WireError(f"{w}eviction.policy: unknown policy {policy!r} "
                              f"(one of {', '.join(sorted(POLICIES))})")
        mode = W.get_str(ev, "mode", "group_precise", where=f"{w}eviction.")
        if mode not in EVICTION_MODES:
            raise W.WireError(f"{w}eviction.mode: {mode!r} is not one of "
                              f"{', '.join(EVICTION_MODES)}")
        params = W.get_dict(ev, "params", where=f"{w}eviction.")
        mic = dict(W.get_dict(cc, "meta_indexer_config", where=f"{p}cache_config."))
        max_keys = W.get_int(mic, "max_key_count", 0, low=0,
                             where=f"{p}cache_config.meta_indexer_config.")
        if "max_key_count" in mic:
            mic["max_key_count"] = max_keys
        spec = GroupSpec(
            name=name, quota_blocks=qblocks, quota_bytes=qbytes,
            used_percentage=min(up, 1.0) if up > 0 else 1.0,
            storage_candidates=tuple(cands),
            eviction=EvictionSpec(policy=policy, params=dict(params), mode=mode,
                                  batch_size=W.get_int(ev, "batch_size", 100, low=1,
                                                       high=W.INT32_MAX, where=f"{w}eviction.")),
            delay_before_delete_ms=delay,
            max_instance_count=W.get_int(g, "max_instance_count", 0, low=0, where=p),
            user_data=W.get_str(g, "user_data", where=p),
            version=W.get_int(g, "version", 1, low=0, where=p),
            storage_type_quotas=tuple((t, c) for t, (c, _) in type_quotas.items()),
            max_key_count=max_keys,
        )
        extra: dict[str, Any] = {
            "global_quota_group_name": W.get_str(g, "global_quota_group_name", name, where=p),
            "quota_config": norm_qconf,
            "data_storage_strategy": W.get_enum(cc, "data_storage_strategy",
                                                W.PREFER_STRATEGIES, "CPS_UNSPECIFIED",
                                                where=f"{p}cache_config."),
            "meta_indexer_config": mic,
        }
        if up > 1:
            extra["used_percentage"] = up
        return spec, extra

    def _create_group(self, body: dict[str, Any]) -> dict[str, Any]:
        g = W.get_dict(body, "instance_group")
        if not g:
            raise W.WireError("instance_group: required (an InstanceGroup object)")
        spec, extra = self._group_from_wire(g)
        self._check_sized(spec, [s for s in self.mgr.instances() if s.group == spec.name],
                          "instance_group.quota.quota_config")
        self.mgr.create_group(spec)
        self._group_cfg[spec.name] = self._group_to_wire(spec, extra)
        self._persist("createInstanceGroup", self._group_cfg[spec.name])
        return {}

    def _update_group(self, body: dict[str, Any]) -> dict[str, Any]:
        g = W.get_dict(body, "instance_group")
        if not g:
            raise W.WireError("instance_group: required (an InstanceGroup object)")
        spec, extra = self._group_from_wire(g)
        old = self.mgr.group(spec.name)
        current = W.get_int(body, "current_version", -1)
        if "current_version" not in body:
            raise W.WireError("current_version: required (the stored version)")
        if current != old.version:
            raise InvalidArgument(f"version conflict: instance group {spec.name!r} is at "
                                  f"version {old.version}, current_version is {current}")
        if spec.version <= old.version:
            raise InvalidArgument(f"instance_group.version: must be larger than the stored "
                                  f"version {old.version}, got {spec.version}")
        self._check_sized(spec, [s for s in self.mgr.instances() if s.group == spec.name],
                          "instance_group.quota.quota_config")
        self.mgr.update_group(spec)
        self._group_cfg[spec.name] = self._group_to_wire(spec, extra)
        self._persist("updateInstanceGroup", self._group_cfg[spec.name])
        return {}

    def _remove_group(self, body: dict[str, Any]) -> dict[str, Any]:
        name = W.get_str(body, "name", required=True)
        self.mgr.remove_group(name)
        del self._group_cfg[name]
        self._persist("removeInstanceGroup", {"name": name})
        return {}

    def _get_group(self, body: dict[str, Any]) -> dict[str, Any]:
        name = W.get_str(body, "name", required=True)
        self.mgr.group(name)
        return {"instance_group": self._group_cfg[name]}

    def _list_groups(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"instance_group": [self._group_cfg[n] for n in sorted(self._group_cfg)]}

    # ------------------------------------------------------------ instances
    def _instance_record(self, spec: InstanceSpec, md: dict[str, Any],
                         groups: list[dict[str, Any]]) -> _Instance:
        infos = [{"name": s.name, "size": s.size} for s in spec.location_specs]
        if not md:
            md = {"model_name": spec.model_name, "dtype": spec.dtype}
        info = {
            "quota_group_name": self._group_cfg.get(spec.group, {}).get(
                "global_quota_group_name", spec.group),
            "instance_group_name": spec.group,
            "instance_id": spec.instance_id,
            "block_size": spec.block_size,
            "location_spec_infos": infos,
            "model_deployment": md,
            "location_spec_groups": groups,
        }
        names = [s.name for s in spec.location_specs] or ["default"]
        sizes = [s.size for s in spec.location_specs] or [0]
        return _Instance(info, names, sizes, {g["name"]: g["spec_names"] for g in groups})

    def _register_instance(self, body: dict[str, Any]) -> dict[str, Any]:
        group = W.get_str(body, "instance_group", required=True)
        iid = W.check_name(W.get_str(body, "instance_id", required=True), "instance_id")
        bs = W.get_int(body, "block_size", 0, low=1, high=W.INT32_MAX)
        specs = []
        lim = self.limits
        infos = W.get_list(body, "location_spec_infos")
        if len(infos) > lim.max_location_specs:
            raise W.over_limit("location_spec_infos", len(infos), "max_location_specs",
                               lim.max_location_specs)
        for i, s in enumerate(infos):
            w = f"location_spec_infos[{i}]."
            if not isinstance(s, dict):
                raise W.WireError(f"location_spec_infos[{i}]: expected an object")
            size = W.get_int(s, "size", 0, low=0, where=w)
            if size > lim.max_spec_bytes:
                raise W.over_limit(f"{w}size", size, "max_spec_bytes", lim.max_spec_bytes)
            specs.append(LocationSpec(W.check_name(W.get_str(s, "name", required=True,
                                                             where=w), f"{w}name"), size))
        total = sum(sp.size for sp in specs)
        if total > MAX_BLOCK_BYTES:
            raise W.over_limit("location_spec_infos (sum of sizes)", total, "MAX_BLOCK_BYTES",
                               MAX_BLOCK_BYTES)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise W.WireError("location_spec_infos: duplicate spec names")
        md_in = W.get_dict(body, "model_deployment")
        w = "model_deployment."
        md: dict[str, Any] = {
            "model_name": W.get_str(md_in, "model_name", required=True, where=w),
            "dtype": W.get_str(md_in, "dtype", required=True, where=w),
            "use_mla": W.get_bool(md_in, "use_mla", where=w),
            "tp_size": W.get_int(md_in, "tp_size", 0, low=0, high=W.INT32_MAX, where=w),
            "dp_size": W.get_int(md_in, "dp_size", 0, low=0, high=W.INT32_MAX, where=w),
            "lora_name": W.get_str(md_in, "lora_name", where=w),
            "pp_size": W.get_int(md_in, "pp_size", 0, low=0, high=W.INT32_MAX, where=w),
            "extra": W.get_str(md_in, "extra", where=w),
        }
        groups = []
        for i, g in enumerate(W.get_list(body, "location_spec_groups")):
            w = f"location_spec_groups[{i}]."
            if not isinstance(g, dict):
                raise W.WireError(f"location_spec_groups[{i}]: expected an object")
            sn = W.get_str_list(g, "spec_names", where=w)
            for j, n in enumerate(sn):
                if n not in names:
                    raise W.WireError(f"{w}spec_names[{j}]: unknown spec {n!r}")
            groups.append({"name": W.get_str(g, "name", required=True, where=w),
                           "spec_names": sn})
        spec = InstanceSpec(
            instance_id=iid, group=group, block_size=bs, location_specs=tuple(specs),
            model_name=md["model_name"], dtype=md["dtype"],
            extra={k: md[k] for k in ("use_mla", "tp_size", "dp_size", "lora_name", "pp_size",
                                      "extra")} | {"location_spec_groups": groups},
        )
        if iid in self._inst:
            self.mgr.register_instance(spec)  # identical -> no-op, else DuplicateEntity
        else:
            self._check_sized(self.mgr.group(group), [spec], "location_spec_infos")
            self.mgr.register_instance(spec)
            md["user_data"] = W.get_str(md_in, "user_data", where="model_deployment.")
            self._inst[iid] = self._instance_record(spec, md, groups)
            self._persist("registerInstance", self._inst[iid].info)
        gspec = self.mgr.group(group)
        names_st = list(gspec.storage_candidates) or sorted(self._storage_cfg)
        return {"storage_configs": json.dumps([
            storage_config_entry(self._storage_cfg[n], self.mgr.storage.usable(n))
            for n in names_st if n in self._storage_cfg])}

    def _need_instance(self, body: dict[str, Any]) -> tuple[str, InstanceSpec, _Instance]:
        iid = W.get_str(body, "instance_id", required=True)
        spec = self.mgr.instance(iid)  # InstanceNotFound -> INSTANCE_NOT_EXIST
        return iid, spec, self._inst[iid]

    def _get_instance_info(self, body: dict[str, Any]) -> dict[str, Any]:
        _, spec, rec = self._need_instance(body)
        return {"instance_group": spec.group, "instance_info": rec.info}

    def _remove_instance(self, body: dict[str, Any]) -> dict[str, Any]:
        iid, _, _ = self._need_instance(body)
        self.mgr.remove_instance(iid)
        del self._inst[iid]
        if self.store is not None:
            self._batch.drop_instance(iid)
        self._persist("removeInstance", {"instance_id": iid})
        return {}

    def _list_instances(self, body: dict[str, Any]) -> dict[str, Any]:
        group = W.get_str(body, "instance_group_name")
        return {"instance_info": [r.info for i, r in sorted(self._inst.items())
                                  if not group or r.info["instance_group_name"] == group]}

    # ------------------------------------------------------------ accounts
    def _add_account(self, body: dict[str, Any]) -> dict[str, Any]:
        user = W.get_str(body, "user_name", required=True)
        if ":" in user:
            raise W.WireError("user_name: must not contain ':'")
        password = W.get_str(body, "password", required=True)
        role = W.get_enum(body, "role", W.ROLES, "ROLE_USER")
        if user in self.accounts:
            raise DuplicateEntity(f"account {user!r} exists")
        self.accounts.add(user, password, role)
        acc = next(a for a in self.accounts.list() if a.user_name == user)
        self._persist("addAccount", acc.to_json())
        return {}

    def _delete_account(self, body: dict[str, Any]) -> dict[str, Any]:
        user = W.get_str(body, "user_name", required=True)
        admins = [a.user_name for a in self.accounts.list() if a.role == "ROLE_ADMIN"]
        if admins == [user]:
            raise InvalidArgument(f"account {user!r} is the last admin")
        if not self.accounts.delete(user):
            raise NotFound(f"account {user!r} does not exist")
        self._persist("deleteAccount", {"user_name": user})
        return {}

    def _list_accounts(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"accounts": [{"user_name": a.user_name, "role": a.role}
                             for a in self.accounts.list()]}

    # ------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """The whole registry (storages, groups, instances, accounts) as one JSON object."""
        return {
            "kvsim_snapshot": 1,
            "storages": [self._storage_cfg[n] | {"available": s.available}
                         for n, s in ((s.name, s) for s in self.mgr.storages())],
            "instance_groups": [self._group_cfg[n] for n in sorted(self._group_cfg)],
            "instances": [r.info for _, r in sorted(self._inst.items())],
            "accounts": [a.to_json() for a in self.accounts.list()],
        }

    def _gen_snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"config_snapshot": json.dumps(self.snapshot())}

    def _load_snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        text = W.get_str(body, "config_snapshot", required=True)
        try:
            snap = json.loads(text)
        except ValueError as e:
            raise W.WireError(f"config_snapshot: not valid JSON: {e}") from None
        if not isinstance(snap, dict):
            raise W.WireError("config_snapshot: expected a JSON object")
        saved = (self.mgr, self._storage_cfg, self._group_cfg, self._inst, self.accounts)
        try:
            self._reset_registry()
            self._apply_snapshot(snap)
            if self.store is not None:
                self._batch = StoreBatch()
                self._batch.drop_everything()
                self._carries.clear()
        except BaseException:
            (self.mgr, self._storage_cfg, self._group_cfg, self._inst, self.accounts) = saved
            raise
        self._persist("loadConfigSnapshot", snap)
        return {}

    def _apply_snapshot(self, snap: dict[str, Any]) -> None:
        for i, st in enumerate(W.get_list(snap, "storages", where="config_snapshot.")):
            if not isinstance(st, dict):
                raise W.WireError(f"config_snapshot.storages[{i}]: expected an object")
            wire, spec = self._storage_from_wire({"storage": st})
            self._put_storage(wire, spec)
            if st.get("available") is False:
                self.mgr.set_storage_available(spec.name, False)
        for i, g in enumerate(W.get_list(snap, "instance_groups", where="config_snapshot.")):
            if not isinstance(g, dict):
                raise W.WireError(f"config_snapshot.instance_groups[{i}]: expected an object")
            self._create_group({"instance_group": g})
        for i, inst in enumerate(W.get_list(snap, "instances", where="config_snapshot.")):
            if not isinstance(inst, dict):
                raise W.WireError(f"config_snapshot.instances[{i}]: expected an object")
            self._register_instance(inst | {"instance_group": inst.get("instance_group_name")})
        accounts = W.get_list(snap, "accounts", where="config_snapshot.")
        if accounts:
            acc = Accounts()
            for i, a in enumerate(accounts):
                w = f"config_snapshot.accounts[{i}]."
                if not isinstance(a, dict):
                    raise W.WireError(f"{w[:-1]}: expected an object")
                try:
                    acc.add_hashed(Account(
                        W.get_str(a, "user_name", required=True, where=w),
                        W.get_enum(a, "role", W.ROLES, "ROLE_USER", where=w),
                        bytes.fromhex(W.get_str(a, "salt", required=True, where=w)),
                        bytes.fromhex(W.get_str(a, "scrypt", required=True, where=w))))
                except ValueError:
                    raise W.WireError(f"{w}salt/scrypt: expected hex strings") from None
            if not any(a.role == "ROLE_ADMIN" for a in acc.list()):
                raise W.WireError("config_snapshot.accounts: no admin account")
            self.accounts = acc

    # ------------------------------------------------------------ monitoring
    def metrics(self) -> list[tuple[str, float, dict[str, str]]]:
        """(name, value, tags) of every metric (group usage, key counts and per-type
        bytes, storage availability and health, evictions per trigger, calls,
        sessions)."""
        out: list[tuple[str, float, dict[str, str]]] = []
        for u in self.mgr.usage():
            tags = {"group": u.name, "unit": u.unit}
            out += [("kvsim_group_used", u.used, tags), ("kvsim_group_quota", u.quota, tags),
                    ("kvsim_group_capacity", u.capacity, tags),
                    ("kvsim_group_serving_blocks", u.serving_blocks, tags),
                    ("kvsim_group_pending_blocks", u.pending_blocks, tags),
                    ("kvsim_group_evicted_blocks", u.evicted_blocks, tags)]
        for g in self.mgr.groups():
            if g.max_key_count > 0:
                held, _ = self.mgr.key_count(g.name)
                out += [("kvsim_group_keys", held, {"group": g.name}),
                        ("kvsim_group_max_key_count", g.max_key_count, {"group": g.name})]
            if g.storage_type_quotas:
                used, _ = self.mgr.slot_usage(g.name, self.mgr.inst_bytes())
                for stype, cap in g.storage_type_quotas:
                    tags = {"group": g.name, "storage_type": W.TYPE_ENUM.get(stype, stype)}
                    out += [("kvsim_storage_type_used_bytes",
                             int(used[self.mgr.storage.type_slots(stype)].sum()), tags),
                            ("kvsim_storage_type_quota_bytes", cap, tags)]
        avail = {s.name: s.available for s in self.mgr.storages()}
        reg = self.mgr.storage
        on_slot = self.mgr.held_bytes() if avail else None
        for st in sorted(self.mgr.storages(), key=lambda x: x.name):
            name, tags = st.name, {"storage": st.name}
            out += [("kvsim_storage_available", int(avail[name]), tags),
                    ("kvsim_storage_healthy", int(reg.health(name) is None), tags)]
            if on_slot is not None and reg.slot(name):
                out.append(("kvsim_storage_used_bytes", int(on_slot[reg.slot(name)]), tags))
            if st.capacity_bytes:
                out.append(("kvsim_storage_capacity_bytes", st.capacity_bytes, tags))
        for trig, n in sorted(self.evicted_by_trigger.items()):
            out.append(("kvsim_evicted_blocks", n, {"trigger": trig}))
        out.append(("kvsim_write_sessions", self.mgr.pending_sessions(), {}))
        out.append(("kvsim_expired_sessions", self.expired_sessions, {}))
        out.append(("kvsim_reclaimed_blocks", self.reclaimed_blocks, {}))
        out.append(("kvsim_instances", len(self._inst), {}))
        if self.advisor is not None:
            out += self.advisor.metrics(self.clock.now_ns())
        for (api, method, code), n in sorted(self.calls.items()):
            out.append(("kvsim_calls", n, {"api": api, "method": method, "code": code}))
        for (api, method), (count, secs, per_bucket) in sorted(self.latency.items()):
            tags = {"api": api, "method": method}
            cum = 0
            for le, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), per_bucket, strict=True):
                cum += n
                out.append(("kvsim_call_seconds_bucket", cum, tags | {"le": le}))
            out.append(("kvsim_call_seconds_sum", secs, tags))
            out.append(("kvsim_call_seconds_count", count, tags))
        return out

    def locked_metrics(self) -> list[tuple[str, float, dict[str, str]]]:
        """:meth:`metrics` under the service lock (for scrapers on other threads)."""
        with self._lock:
            return self.metrics()

    def _get_metrics(self, body: dict[str, Any]) -> dict[str, Any]:
        def value(v: float) -> dict[str, Any]:
            return {"int_value": int(v)} if float(v).is_integer() else {"float_value": float(v)}

        return {"timestamp": self.clock.now_ns() // 1000,
                "metrics": [{"metric_name": n, "metric_value": value(v),
                             "metric_tags": [{"tag_key": k, "tag_value": t}
                                             for k, t in tags.items()]}
                            for n, v, tags in self.metrics()]}

    def _check_health(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"is_leader": self.elector is None or bool(self.elector.is_leader),
                "is_health": True,
                "elector_last_loop_time_ms": self.clock.now_ns() // 1_000_000}

    def _cluster_info(self, body: dict[str, Any]) -> dict[str, Any]:
        ep = {"node_id": self.node_id, "host": self.endpoints.get("host", "127.0.0.1")} | {
            k: int(self.endpoints.get(k) or 0)
            for k in ("meta_rpc_port", "meta_http_port", "admin_rpc_port", "admin_http_port")}
        leader = self.node_id
        if self.elector is not None and not self.elector.is_leader:
            leader = self.elector.lease.holder() or ""
            ep = {}
        return {"info_updated_time": self.started_ns // 1_000_000,
                "self_leader_expiration_time": 0, "self_node_id": self.node_id,
                "leader_node_id": leader, "leader_endpoint": ep}

    def _leader_demote(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.elector is None:
            raise Unsupported("leaderDemote: single-node manager (no leader election "
                              "configured), there is no other node to lead")
        self.elector.demote()
        return {}

    # ================================================================ meta: reads
    def _keys(self, body: dict[str, Any], spec: InstanceSpec) -> np.ndarray:
        keys = body.get("block_keys")
        if isinstance(keys, np.ndarray):  # converted before the lock (_preparse)
            return keys
        if keys:
            return _int64_list(keys, "block_keys")
        tokens = body.get("token_ids")
        if tokens:
            t = _int64_list(tokens, "token_ids")
            return kvcm_token_keys(t, spec.block_size)  # upstream KVCM's GenKeyVector keys
        if keys is not None and not isinstance(keys, list):
            raise W.WireError(f"block_keys: expected a list, got {W._show(keys)}")
        if tokens is not None and not isinstance(tokens, list):
            raise W.WireError(f"token_ids: expected a list, got {W._show(tokens)}")
        return np.zeros(0, dtype=np.int64)

    def _location(self, rec: _Instance, iid: str, key: int, st: StorageSpec | None,
                  only: set[str] | None, allowed: list[str] | None = None) -> dict[str, Any]:
        return self._locations(rec, iid, [key], [st], only, allowed)[0]

    def _locations(self, rec: _Instance, iid: str, keys: list[int],
                   sts: list[StorageSpec | None], only: set[str] | None,
                   allowed: list[str] | None = None) -> list[dict[str, Any]]:
        """One location per key: one URI per (spec, key) on the key's storage.

        URIs: ``file://<storage><root>/<instance>/<key as 16 hex>.<spec>?size=<bytes>``
        for ``file`` storages (a real path under the storage root), else
        ``<scheme>://<storage>/<instance>/<key>.<spec>?size=<bytes>``.
        """
        # every key as 16 hex digits, in one C call
        hexes = np.asarray(keys, dtype=np.int64).astype(">i8").tobytes().hex()
        templates: dict[str, tuple[str, str, list[tuple[str, str]]]] = {}

        def template(st: StorageSpec) -> tuple[str, str, list[tuple[str, str]]]:
            t = templates.get(st.name)
            if t is None:
                if st.type == "file":
                    base = f"file://{st.name}{st.uri}/{iid}/"
                else:
                    base = f"{_URI_SCHEME.get(st.type, st.type)}://{st.name}/{iid}/"
                specs = [(n, f".{n}?size={sz}")
                         for n, sz in zip(rec.spec_names, rec.spec_sizes, strict=True)
                         if (only is None or n in only) and (allowed is None or n in allowed)]
                t = templates[st.name] = (W.TYPE_ENUM.get(st.type, "ST_UNSPECIFIED"), base, specs)
            return t

        first = sts[0] if sts else None
        if first is not None and all(x is first for x in sts):  # the common case: one storage
            typ, base, specs = template(first)
            ns = len(specs)
            heads = [base + hexes[i: i + 16] for i in range(0, 16 * len(sts), 16)]
            if ns == 1:
                name, suf = specs[0]
                return [{"type": typ, "spec_size": 1,
                         "location_specs": [{"name": name, "uri": h + suf}]} for h in heads]
            return [{"type": typ, "spec_size": ns,
                     "location_specs": [{"name": n, "uri": h + suf} for n, suf in specs]}
                    for h in heads]
        out: list[dict[str, Any]] = []
        for j, st in enumerate(sts):
            if st is None:
                out.append(_PLACEHOLDER)
                continue
            typ, base, specs = template(st)
            head = base + hexes[16 * j: 16 * j + 16]
            out.append({"type": typ, "spec_size": len(specs),
                        "location_specs": [{"name": n, "uri": head + suf} for n, suf in specs]})
        return out

    def _locations_json(self, rec: _Instance, iid: str, keys: np.ndarray,
                        st: StorageSpec) -> Any:
        """:meth:`_locations` of ``keys`` on ``st`` as one pre-encoded JSON array
        (:func:`bigcalls.locations_json`: byte-identical, no dict per key)."""
        return locations_json(lambda k: self._locations(rec, iid, [k], [st], None)[0], keys,
                              (st.uri, st.name, iid, *rec.spec_names))

    def _storages_of_rows(self, rows: np.ndarray) -> list[StorageSpec | None]:
        at = self.mgr.storage.at
        return [at(i) if i >= 0 else None for i in self.mgr.rows_slots(rows).tolist()]

    def _row_locations(self, rec: _Instance, iid: str, keys: np.ndarray, rows: np.ndarray,
                       only: set[str] | None) -> list[dict[str, Any]]:
        """The locations of ``keys`` held at table ``rows`` (a row < 0: the placeholder).

        The read path's common case (every block on one storage, no spec filter) reuses
        location dicts built for earlier replies: a key's location depends only on the
        instance, the storage and the key, so each is built once and shared (replies
        are serialized, never mutated). The cache is per instance record (a re-register
        starts a new one), bounded by ``_LOC_CACHE_MAX`` keys per storage, and dropped
        whenever a storage is added, updated or removed.
        """
        if keys.shape[0] == 0:
            return []
        s0 = self.mgr.rows_slot(rows)  # -1: not all rows on one slot
        st = self.mgr.storage.at(s0)
        if only is not None or st is None:
            return self._locations(rec, iid, keys.tolist(), self._storages_of_rows(rows), only)
        if rec.loc_gen != self._loc_gen:
            rec.loc_cache.clear()
            rec.loc_gen = self._loc_gen
        enc = self._encoder
        ck = s0 if enc is None else (s0, enc)
        cache = rec.loc_cache.get(ck)
        if cache is None:
            cache = rec.loc_cache[ck] = {}
        kl = keys.tolist()
        out: list[Any] = list(map(cache.get, kl))
        if None in out:
            miss = [j for j, v in enumerate(out) if v is None]
            built = self._locations(rec, iid, [kl[j] for j in miss], [st] * len(miss), None)
            if len(cache) + len(miss) > _LOC_CACHE_MAX:
                cache.clear()
            for j, loc in zip(miss, built, strict=True):
                out[j] = cache[kl[j]] = loc if enc is None else enc(loc)
        return out

    def _read_args(self, body: dict[str, Any]
                   ) -> tuple[str, InstanceSpec, _Instance, np.ndarray, np.ndarray | None]:
        iid, spec, rec = self._need_instance(body)
        keys = self._keys(body, spec)
        return iid, spec, rec, keys, _mask(body, "block_mask", keys.shape[0])

    def _query(self, body: dict[str, Any]) -> tuple[str, str, int]:
        qt = W.get_enum(body, "query_type", W.QUERY_TYPES, "QT_PREFIX_MATCH")
        query = {"QT_UNSPECIFIED": QUERY_PREFIX, "QT_PREFIX_MATCH": QUERY_PREFIX,
                 "QT_BATCH_GET": QUERY_BATCH, "QT_REVERSE_ROLL_SW_MATCH": QUERY_SW}[qt]
        sw = W.get_int(body, "sw_size", 0, low=-W.INT32_MAX, high=W.INT32_MAX)
        return qt, query, sw

    def _get_cache_location(self, body: dict[str, Any]) -> dict[str, Any]:
        """Locations of the keys' blocks under the query rule.

        The wire contract says reads prefer available replicas; kvsim keeps one location
        per key, so the rule reduces to: a block on an unusable storage (disabled by the
        admin, or failing its health probe) is not handed out. A prefix match stops
        before it (a miss), a batch get answers the placeholder location for it, and a
        sliding window counts it as a miss.
        """
        iid, spec, rec, keys, mask = self._read_args(body)
        qt, query, sw = self._query(body)
        names = W.get_str_list(body, "location_spec_names")
        only = set(names) if names else None
        res = self.mgr.client_read(iid, keys, query=query, mask=mask, sw_size=sw)
        rows = res.rows
        if query == QUERY_PREFIX:
            if mask is None:  # the common read: the hits are the first hit_blocks keys
                hk, hr = keys[:res.hit_blocks], rows[:res.hit_blocks]
            else:
                hit = rows >= 0
                hk, hr = keys[hit], rows[hit]
            locs = self._row_locations(rec, iid, hk, hr, only)
            self._mark_read(hr)
            if self.advisor is not None:
                capacity.note_read(self, spec.group, iid, keys, mask, res.hit_blocks)
        else:
            locs = self._row_locations(rec, iid, keys, rows, only)
            self._mark_read(rows[rows >= 0])
        self._emit("GetCacheLocation", iid, trace_id=_trace_id(body), query_type=qt,
                   block_keys=keys, sw_size=sw, hit_blocks=res.hit_blocks,
                   **({} if mask is None else {"block_mask": mask.tolist()}))
        return {"locations": locs}

    def _get_cache_location_len(self, body: dict[str, Any]) -> dict[str, Any]:
        iid, _, _, keys, mask = self._read_args(body)
        _, query, sw = self._query(body)
        res = self.mgr.client_read(iid, keys, query=query, mask=mask, sw_size=sw, touch=False)
        return {"cache_location_len": int(np.count_nonzero(res.rows >= 0))}

    def _get_cache_meta(self, body: dict[str, Any]) -> dict[str, Any]:
        iid, _, rec, keys, mask = self._read_args(body)
        detail = W.get_int(body, "detail_level", 0, low=0, high=W.INT32_MAX)
        sel = keys if mask is None else keys[~mask]
        infos = self.mgr.block_info(iid, sel)
        reg = self.mgr.storage
        locs, metas = [], []
        for info in infos:
            status = _STATUS_NAMES[info["status"]]
            meta: dict[str, Any] = {"id": str(info["key"]), "status": status}
            st = reg.at(info["slot"]) if "slot" in info else None
            if "slot" in info and not reg.ok_mask[info["slot"] % STORAGE_SLOTS]:
                st = None  # on an unusable storage: not handed out
            locs.append(self._location(rec, iid, info["key"], st if status != "CLS_NOT_FOUND"
                                       else None, None))
            if detail >= 1 and "row" in info:
                meta |= {"write_time_us": info["write_time_ns"] // 1000,
                         "last_access_time_us": info["last_access_ns"] // 1000,
                         "access_count": info["access_count"]}
            metas.append(json.dumps(meta))
        return {"locations": locs, "metas": metas}

    # ================================================================ meta: writes
    def _start_write(self, body: dict[str, Any]) -> dict[str, Any]:
        """Reserve WRITING blocks for the keys that have none and hand out their URIs.

        The core's ``start_write`` applies every rule (keys held on an unusable storage
        are written again, ``max_key_count`` refuses, placement by candidate order
        within the type quotas and storage capacities, the group quota); any of them
        refusing is ``REACH_MAX_ENTITY_CAPACITY``.
        """
        iid, spec, rec = self._need_instance(body)
        keys = self._keys(body, spec)
        n = keys.shape[0]
        gnames = W.get_str_list(body, "location_spec_group_names")
        if gnames and len(gnames) != n:
            raise W.WireError(f"location_spec_group_names: {len(gnames)} names for {n} keys "
                              "(give none or one per key)")
        for i, g in enumerate(gnames):
            if g not in rec.spec_groups:
                raise W.WireError(f"location_spec_group_names[{i}]: unknown spec group {g!r}")
        timeout = W.get_int(body, "write_timeout_seconds", 0, low=0, high=W.INT32_MAX)
        if timeout > self.limits.max_write_timeout_seconds:
            raise W.over_limit("write_timeout_seconds", timeout, "max_write_timeout_seconds",
                               self.limits.max_write_timeout_seconds)
        token = new_session_token()
        # every cache rule (usable storages, max_key_count, placement within the type
        # quotas and storage capacities, the group quota) is the core's
        mgr = self.mgr
        ws = mgr.start_write(iid, keys, timeout_s=float(timeout or DEFAULT_WRITE_TIMEOUT_S),
                             tag=token, pause=self._pause)
        self._same_manager(mgr)
        st = self.mgr.storage.at(ws.slot)
        if self.store is not None:
            self._batch.open_session(SessionRecord(
                ws.session_id, iid, ws.new_keys, ws.deadline_ns, ws.slot,
                {"keys": keys.copy(), "is_new": ws.is_new.copy(), "token": token}))
        held = ~ws.is_new
        n_held = int(np.count_nonzero(held))
        if n_held == 0 or (held[:n_held].all()):
            mask_out: dict[str, Any] = {"offset": n_held}
        else:
            mask_out = {"bool_masks": {"values": held.tolist()}}
        locs: Any
        if gnames:
            locs = [self._location(rec, iid, int(keys[j]), st, None, rec.spec_groups[gnames[j]])
                    for j in np.flatnonzero(ws.is_new).tolist()]
        elif self._encoder is json_fragment and st is not None:
            # the HTTP reply's JSON, built after the lock is released in slices (the GIL
            # is let go between two): it depends only on values taken here
            new_arr = keys[ws.is_new]
            locs = _Later(lambda: self._locations_json(rec, iid, new_arr, st))
        else:
            # built after the lock is released: they depend only on values taken here
            new_keys = keys[ws.is_new].tolist()
            locs = _Later(lambda: self._locations(rec, iid, new_keys, [st] * len(new_keys),
                                                  None))
        self._emit("StartWriteCache", iid, trace_id=_trace_id(body),
                   write_session_id=token, block_keys=keys,
                   new_blocks=int(ws.new_keys.shape[0]),
                   block_mask=~ws.is_new)
        return {"write_session_id": token, "block_mask": mask_out, "locations": locs}

    def _finish_write(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("write_session_id")
        if isinstance(token, int) and not isinstance(token, bool):
            token = str(token)
        if not isinstance(token, str) or not token:
            raise W.WireError("write_session_id: required (the id startWriteCache returned)")
        # the owner must name itself (upstream KVCM's clients always send instance_id)
        iid = W.get_str(body, "instance_id", required=True)
        ses = self.mgr.find_session(token)
        if ses is None or ses.instance_id != iid:
            # the same answer whether the session does not exist or is another
            # instance's: a session id reveals nothing to a non-owner
            raise NotFound(f"write_session_id: session {token[:40]!r} of instance {iid!r} is "
                           "unknown, finished or expired")
        n_new = ses.done + int(ses.keys.shape[0])  # as the start answered (see done)
        if body.get("success_blocks") is None:
            raise W.WireError("success_blocks: required ({\"offset\": n} or bool masks)")
        ok = _mask(body, "success_blocks", n_new, clamp=False)
        assert ok is not None
        # commits, refreshes the keys the write found held, and (reclaim interval 0)
        # runs the reclaimer
        mgr = self.mgr
        fin = mgr.finish_write(ses.session_id, ok, instance_id=iid, pause=self._pause)
        self._same_manager(mgr)
        held = fin.held_keys
        ok = ok[ses.done:]  # the new keys still open (see SessionInfo.done)
        if self.store is not None:
            save_finish(self, ses, ok, held)
        if self.advisor is not None:
            capacity.note_write(self, ses, held, ok)
        self._emit("FinishWriteCache", iid, trace_id=_trace_id(body),
                   write_session_id=token, block_keys=held,
                   success_count=int(np.count_nonzero(ok)))
        if fin.tick is not None:
            self._note_tick(fin.tick)
        return {}

    def _remove_cache(self, body: dict[str, Any]) -> dict[str, Any]:
        iid, _, _, keys, mask = self._read_args(body)
        mgr = self.mgr
        mgr.remove(iid, keys, mask=mask, pause=self._pause)
        self._same_manager(mgr)
        return {}

    def _trim_cache(self, body: dict[str, Any]) -> dict[str, Any]:
        iid, _, _ = self._need_instance(body)
        strategy = W.get_enum(body, "strategy", W.TRIM_STRATEGIES, "TS_UNSPECIFIED")
        if strategy == "TS_UNSPECIFIED":
            raise W.WireError("strategy: required (TS_REMOVE_ALL_CACHE, TS_REMOVE_ALL_META or "
                              "TS_TIMESTAMP)")
        if strategy == "TS_TIMESTAMP":
            begin = W.get_int(body, "begin_timestamp", 0, low=0)
            end = W.get_int(body, "end_timestamp", 0, low=0)
            if end <= begin:
                raise W.WireError(f"end_timestamp: must be > begin_timestamp ({begin}), "
                                  f"got {end}")
            self.mgr.trim(iid, begin_ns=begin * 10**9, end_ns=min(end, 2**62 // 10**9) * 10**9,
                          pause=self._pause)
        else:
            self.mgr.trim(iid, pause=self._pause)
        return {}

    def _same_manager(self, mgr: CacheManager) -> None:
        """After a long call's pauses: the state it changed is still the service's (a
        ``loadConfigSnapshot`` or a new leader's reload in between replaces it)."""
        if self.mgr is not mgr:
            raise NotFound("the state was replaced (loadConfigSnapshot or a leader change) "
                           "while this call ran; its changes are gone")


class NotLeader(KVSimError):
    code = "SERVER_NOT_LEADER"


# calls a follower still answers
_FOLLOWER_CALLS = frozenset({"checkHealth", "getManagerClusterInfo", "getMetrics",
                             "getLeaderElectorConfig", "updateLeaderElectorConfig",
                             "updateLogger"})
_DURABLE_EVENTS = frozenset({"startWriteCache", "finishWriteCache"})  # logged before replies
_GONE_KINDS = np.isin(np.arange(256), [EV_EVICTED, EV_REMOVED])  # by kind: block left


class _IOError(KVSimError):
    code = "IO_ERROR"


#: Longest path and path component a ``file`` storage root may have, in UTF-8 bytes
#: (Linux's PATH_MAX and NAME_MAX): a root that cannot be created is refused when it is
#: given, never found out at a restart, which must load every persisted storage.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def _check_path_size(path: str, field: str) -> None:
    """Refuse (``INVALID_ARGUMENT`` naming ``field``) a path the file system cannot hold.

    Example:
        >>> _check_path_size("/srv/kv/" + "a" * 255, "root_path")
        >>> _check_path_size("/srv/" + "é" * 128, "root_path")
        Traceback (most recent call last):
        ...
        kvsim.server.wire.WireError: root_path: a path component is 256 bytes long (at most 255)
    """
    raw = path.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PATH_BYTES:
        raise W.WireError(f"{field}: {len(raw)} bytes long (at most {MAX_PATH_BYTES})")
    longest = max((len(c) for c in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise W.WireError(f"{field}: a path component is {longest} bytes long "
                          f"(at most {MAX_NAME_BYTES})")


def probe_directory(root: str | os.PathLike[str]) -> str | None:
    """Probe a ``file`` storage root: write a small file, fsync, read it back, delete it.

    The root must exist (a missing mount is a failure; the probe never creates it).

    Returns:
        None when the storage works, else the reason it failed.

    Example:
        >>> d = tempfile.mkdtemp()
        >>> probe_directory(d) is None, os.listdir(d)
        (True, [])
        >>> probe_directory(os.path.join(d, "missing"))
        'FileNotFoundError: No such file or directory'
    """
    path = os.path.join(root, f".kvsim-probe-{uuid.uuid4().hex}")
    data = f"kvsim storage probe {uuid.uuid4().hex}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            back = f.read()
        os.unlink(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return f"{type(e).__name__}: {e.strerror or e}"
    if back != data:
        return "the probe file read back differs from what was written"
    return None


def _trace_id(body: dict[str, Any]) -> str:
    t = body.get("trace_id")
    return t if isinstance(t, str) else ""


def _int64_list(v: Any, field: str) -> np.ndarray:
    if not isinstance(v, list):
        raise W.WireError(f"{field}: expected a list of int64, got {W._show(v)}")
    if set(map(type, v)) <= {int}:
        try:
            return np.array(v, dtype=np.int64)
        except OverflowError:
            pass
    return np.array([W.to_int(x, f"{field}[{i}]") for i, x in enumerate(v)], dtype=np.int64)


def _mask(body: dict[str, Any], field: str, n: int, *, clamp: bool = True
          ) -> np.ndarray | None:
    """A BlockMask field as bool[n] (None when absent or empty)."""
    m = body.get(field)
    if m is None:
        return None
    if not isinstance(m, dict):
        raise W.WireError(f"{field}: expected {{\"offset\": n}} or "
                          f"{{\"bool_masks\": {{\"values\": [...]}}}}, got {W._show(m)}")
    has_off = m.get("offset") is not None
    has_bool = m.get("bool_masks") is not None
    if has_off and has_bool:
        raise W.WireError(f"{field}: give offset or bool_masks, not both")
    if has_off:
        off = W.get_int(m, "offset", 0, low=0, high=W.INT32_MAX, where=f"{field}.")
        if off > n and not clamp:
            raise W.WireError(f"{field}.offset: {off} is more than the {n} blocks")
        out = np.zeros(n, dtype=bool)
        out[: min(off, n)] = True
        return out
    if has_bool:
        bm = W.get_dict(m, "bool_masks", where=f"{field}.")
        vals = W.get_list(bm, "values", where=f"{field}.bool_masks.")
        if len(vals) != n or any(not isinstance(x, bool) for x in vals):
            raise W.WireError(f"{field}.bool_masks.values: expected {n} booleans (one per "
                              f"block), got {W._show(vals)}")
        return np.array(vals, dtype=bool)
    if not clamp:
        raise W.WireError(f"{field}: expected {{\"offset\": n}} or bool_masks")
    return None

"""The one configuration schema of kvsim: replay, tune and serve all load it.

A config (YAML or JSON) lists storages, instance groups and instances, plus
replay options. Every problem is reported with the file and the dotted path of
the field (``cfg.yaml: instance_groups[0].eviction.policy: unknown policy 'lrx'``).

Example:
    >>> cfg = KVSimConfig.from_dict({
    ...     "instance_groups": [{"name": "g", "quota": {"blocks": 100},
    ...                          "eviction": {"policy": "lru"}}],
    ...     "instances": [{"instance_id": "i0", "group": "g", "block_size": 16}]})
    >>> cfg.groups[0].quota_blocks, cfg.instances[0].block_size
    (100, 16)
    >>> KVSimConfig.single_cache(capacity_blocks=5859, policy="lru").groups[0].quota_blocks
    5859
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kvsim.core.policies import POLICIES
from kvsim.core.spec import (
    EVICTION_MODES,
    STORAGE_TYPES,
    EvictionSpec,
    GroupSpec,
    InstanceSpec,
    LocationSpec,
    StorageSpec,
)


class ConfigError(ValueError):
    """A config problem; the message names the file and the field."""


@dataclass(frozen=True)
class ReplayOptions:
    """How a trace is replayed.

    Attributes:
        match: ``prefix`` (the contract) or ``batch`` (each block on its own, as a
            flattened block stream).
        tail: ``drop`` (only full blocks, the contract) or ``keep``.
        default_group: group for trace instances the config does not list (when not
            given: ``default`` if the config has it, else its first group).
        block_size: tokens per block for trace instances the config does not list
            (0 = the trace's own block size).
    """

    match: str = "prefix"
    tail: str = "drop"
    default_group: str = "default"
    block_size: int = 0


@dataclass(frozen=True)
class HealthChange:
    """A scheduled change of a storage's health in a replay (an outage to simulate).

    Attributes:
        storage: the storage's name.
        at_ms: when, in ms after the trace's first request.
        healthy: its health from then on.
    """

    storage: str
    at_ms: int
    healthy: bool = False


@dataclass(frozen=True)
class ReclaimOptions:
    """The reclaimer's cadence (the top-level ``reclaim:`` section), one for every mode.

    Attributes:
        interval_ms: 0 evicts at each write (the replay contract); N > 0 runs the
            reclaimer every N ms of the manager's clock: wall time in ``kvsim serve``,
            trace time in ``replay``, ``simulate`` and ``tune``.
        storage_health: health changes applied at trace times in ``replay``/``tune``
            (health is runtime state in ``kvsim serve``, set by its probes).
    """

    interval_ms: int = 0
    storage_health: tuple[HealthChange, ...] = ()


WRITE_MODES = ("at_end", "two_phase")
WRITE_POLICIES = ("through", "back", "selective")
TIER_SCOPES = ("local", "pool")
ROUTING_POLICIES = ("trace", "round_robin", "prefix", "load", "least_loaded", "random")
MAX_TIERS = 3
#: the largest quota or capacity a config takes (bytes or blocks): sums of a few stay
#: inside int64 in the core's arithmetic
MAX_CONFIG_BYTES = 1 << 62


@dataclass(frozen=True)
class TimingOptions:
    """Virtual-time parameters of ``kvsim simulate`` (all zero = the plain replay).

    Attributes:
        prefill_tokens_per_s: prefill throughput of one instance (0 = infinite).
        decode_ms_per_token: decode time per output token (0 = none).
        block_bytes: bytes of one KV block (traffic and bandwidth time; 0 = none).
        write: ``at_end`` (every key written at prefill end, as the replay contract
            writes) or ``two_phase`` (``start_write`` at read time, ``finish_write``
            at prefill end, as the server does).
        write_timeout_s: two-phase write sessions expire after this long.
        reclaim_interval_ms: reclaimer cadence (expire sessions, reclaim, reap);
            0 = evict to capacity after every write, as the replay does. Superseded by
            the top-level ``reclaim.interval_ms`` when that is set.
        session_outputs: at decode end, write the previous turn's output blocks
            (the next turn's keys that cover prompt + output) when the trace has sessions.
    """

    prefill_tokens_per_s: float = 0.0
    decode_ms_per_token: float = 0.0
    block_bytes: int = 0
    write: str = "at_end"
    write_timeout_s: float = 30.0
    reclaim_interval_ms: float = 0.0
    session_outputs: bool = False


@dataclass(frozen=True)
class TierSpec:
    """One cache tier: per instance (``local``) or shared by all (``pool``).

    Attributes:
        name: tier name (``gpu``, ``host``, ``pool``...).
        scope: ``local`` (one cache per instance) or ``pool`` (one shared cache).
        capacity_blocks: per instance for a local tier, in total for the pool (0 = unbounded).
        policy: eviction policy.
        read_bytes_per_s: load bandwidth (0 = infinite).
        write_bytes_per_s: store bandwidth (0 = infinite).
        latency_us: fixed cost of one load from the tier.
    """

    name: str
    scope: str = "local"
    capacity_blocks: int = 0
    policy: str = "lru"
    read_bytes_per_s: float = 0.0
    write_bytes_per_s: float = 0.0
    latency_us: float = 0.0


@dataclass(frozen=True)
class TiersOptions:
    """Cache tiers in read order (local tiers first, then at most one pool).

    Attributes:
        levels: the tiers; empty = one tier made of the config's groups.
        write_policy: ``through`` (every tier gets every block), ``back`` (the first
            tier only; evicted blocks are demoted to the next tier) or ``selective``
            (local tiers get every block, the pool only blocks reused at least
            ``selective_min_reuse`` times in the first tier).
        selective_min_reuse: the reuse threshold of ``selective``.
    """

    levels: tuple[TierSpec, ...] = ()
    write_policy: str = "through"
    selective_min_reuse: int = 1


@dataclass(frozen=True)
class RoutingOptions:
    """How requests are spread over instances.

    Attributes:
        policy: ``trace`` (the trace's own instance), ``round_robin``, ``prefix`` (the
            instance with the most cached prefix; ties to the shortest queue, then the
            least busy time so far) or ``load`` (least estimated time to first token:
            queue + load + prefill of the input minus ``prefix_bonus`` x cached tokens),
            ``least_loaded`` (cache-blind: the shortest queue, ties to the least busy
            time so far) or ``random`` (uniform, seeded by ``seed``).
        instances: number of instances for the policies other than ``trace``.
        prefix_bonus: weight of cached tokens in ``load`` (1 = their full prefill time).
        seed: seed of ``random`` routing (same seed, same choices).
    """

    policy: str = "trace"
    instances: int = 1
    prefix_bonus: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of ``kvsim serve`` (the ``server.limits:`` section).

    Every request over a limit is answered ``INVALID_ARGUMENT`` with a message naming
    the limit (HTTP: status 413 for a body over ``max_body_bytes``, 408 for one not
    received within ``body_timeout_seconds``; the connection is closed).

    Attributes:
        max_keys_per_request: ``block_keys`` (and per-key lists) per call.
        max_tokens_per_request: ``token_ids`` per call.
        max_body_bytes: request body (HTTP) or message (gRPC) size.
        body_timeout_seconds: a request must arrive whole (headers and body) within this.
        max_spec_bytes: one ``location_spec_infos[].size`` (their sum is at most the
            core's ``MAX_BLOCK_BYTES``, 2^32).
        max_location_specs: ``location_spec_infos`` per instance.
        max_write_timeout_seconds: the largest ``write_timeout_seconds``.
        auth_failures_per_second: failed admin credentials accepted per client
            address per second (token bucket of that size); beyond it a credential is
            refused without being checked.
        auth_workers: threads that verify passwords (scrypt), off the event loop.
    """

    max_keys_per_request: int = 131072
    max_tokens_per_request: int = 2097152
    max_body_bytes: int = 32 << 20
    body_timeout_seconds: float = 10.0
    max_spec_bytes: int = 1 << 32
    max_location_specs: int = 64
    max_write_timeout_seconds: int = 3600
    auth_failures_per_second: float = 5.0
    auth_workers: int = 2


@dataclass(frozen=True)
class ServerOptions:
    """How ``kvsim serve`` runs (the optional ``server:`` section; flags override it).

    Attributes:
        host: address the listeners bind to.
        http_port: meta service HTTP port.
        admin_http_port: admin service HTTP port.
        grpc_port: meta service gRPC port (0 = no gRPC).
        admin_grpc_port: admin service gRPC port.
        data_dir: file storage roots (relative ones) and the event log.
        tick_seconds: period of the background tick (session expiry, reclaim).
        event_log: write ``<data_dir>/events.jsonl``.
        admin_user: the bootstrap admin account (its password comes from
            ``--admin-password`` or ``$KVSIM_ADMIN_PASSWORD``, never the config).
        state: durable state: ``journal`` (the default: an append-only journal with
            snapshots in ``<data_dir>/kvsim-journal``; ``journal:///DIR?fsync=none|
            always|interval``), ``sqlite`` (``<data_dir>/kvsim-state.db``),
            ``sqlite:///PATH``, ``redis://HOST:PORT/DB?prefix=NAME`` or ``none``
            (memory only).
        leader: leader election: ``auto`` (a Redis lease with a Redis state, else a
            lock file in the data dir), ``file``, ``redis`` or ``none``.
        leader_lease_ms: the lease; a dead leader is replaced within it.
        storage_probe_seconds: how often the tick probes each ``file`` storage (write,
            fsync, read back, delete a small file); 0 = never.
        event_log_max_bytes: rotate the event log past this size (0 = never):
            ``events.jsonl`` is renamed ``events-NNNNNN.jsonl`` (next number, 6 digits).
        limits: per-request limits (:class:`ServerLimits`).
        advisor_sample_rate: the capacity advisor's key sampling rate (1 = exact LRU
            curves; 0 = no advisor); see :mod:`kvsim.server.advisor`.
    """

    host: str = "127.0.0.1"
    http_port: int = 6382
    admin_http_port: int = 6492
    grpc_port: int = 6381
    admin_grpc_port: int = 6491
    data_dir: str = "kvsim-data"
    tick_seconds: float = 0.5
    event_log: bool = True
    admin_user: str = "admin"
    state: str = "journal"
    leader: str = "auto"
    leader_lease_ms: int = 3000
    storage_probe_seconds: float = 5.0
    event_log_max_bytes: int = 256 << 20
    limits: ServerLimits = field(default_factory=ServerLimits)
    advisor_sample_rate: float = 0.01


@dataclass(frozen=True)
class KVSimConfig:
    """Storages, groups, instances, replay options, (for ``kvsim serve``) server options and
    the optional simulation sections (``kvsim simulate``)."""

    storages: tuple[StorageSpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    instances: tuple[InstanceSpec, ...] = ()
    replay: ReplayOptions = field(default_factory=ReplayOptions)
    source: str = "<config>"
    server: ServerOptions = field(default_factory=ServerOptions)
    timing: TimingOptions = field(default_factory=TimingOptions)
    tiers: TiersOptions = field(default_factory=TiersOptions)
    routing: RoutingOptions = field(default_factory=RoutingOptions)
    reclaim: ReclaimOptions = field(default_factory=ReclaimOptions)

    # ------------------------------------------------------------ constructors
    @staticmethod
    def single_cache(
        *,
        capacity_blocks: int = 0,
        capacity_bytes: int = 0,
        policy: str = "lru",
        params: dict[str, Any] | None = None,
        mode: str = "group_precise",
        batch_size: int = 1,
        used_percentage: float = 1.0,
        match: str = "prefix",
        tail: str = "drop",
        block_size: int = 0,
    ) -> KVSimConfig:
        """One group ``default`` that every trace instance writes into."""
        cfg = KVSimConfig.from_dict({
            "instance_groups": [{
                "name": "default",
                "quota": {"blocks": capacity_blocks, "bytes": capacity_bytes},
                "used_percentage": used_percentage,
                "eviction": {"policy": policy, "params": params or {}, "mode": mode,
                             "batch_size": batch_size},
            }],
            "replay": {"match": match, "tail": tail, "block_size": block_size},
        }, source="<flags>")
        return cfg

    @staticmethod
    def load(path: str | os.PathLike[str]) -> KVSimConfig:
        """Read a YAML or JSON file (kvsim's schema, or a Tair KVCM optimizer config,
        converted as ``kvsim config import`` does)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}"
                              ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        from kvsim.optimizer.kvcm_config import KvcmConfigError, import_kvcm, is_kvcm_config

        if is_kvcm_config(data):  # Tair KVCM's optimizer config: converted on the fly
            try:
                data = import_kvcm(data)[0]
            except KvcmConfigError as e:
                raise ConfigError(f"{p}: {e}") from None
        return KVSimConfig.from_dict(data, source=str(p))

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "<config>") -> KVSimConfig:
        """Validate and build from a mapping; errors name ``source`` and the field."""
        r = _Reader(source)
        r.known(data, "", {"storages", "instance_groups", "instances", "replay", "server",
                           "timing", "tiers", "routing", "reclaim"})
        storages = tuple(r.storage(s, f"storages[{i}]")
                         for i, s in enumerate(r.list_of(data, "storages", "")))
        groups = tuple(r.group(g, f"instance_groups[{i}]")
                       for i, g in enumerate(r.list_of(data, "instance_groups", "")))
        instances = tuple(r.instance(s, f"instances[{i}]")
                          for i, s in enumerate(r.list_of(data, "instances", "")))
        replay = r.replay(data.get("replay") or {}, "replay")
        server = r.server(data.get("server") or {}, "server")
        names = [g.name for g in groups]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise ConfigError(f"{source}: instance_groups[{i}].name: duplicate group {n!r}")
        snames = {s.name for s in storages}
        for i, g in enumerate(groups):
            for j, c in enumerate(g.storage_candidates):
                if c not in snames:
                    raise ConfigError(f"{source}: instance_groups[{i}].storage_candidates[{j}]: "
                                      f"unknown storage {c!r}")
        for i, s in enumerate(instances):
            if s.group not in names:
                raise ConfigError(f"{source}: instances[{i}].group: unknown group {s.group!r}")
        rd = data.get("replay") or {}
        if groups and "default_group" not in rd and replay.default_group not in names:
            # not given: "default" when there is one, else the first group
            replay = replace(replay, default_group=names[0])
        if groups and replay.default_group not in names:
            raise ConfigError(
                f"{source}: replay.default_group: unknown group {replay.default_group!r}"
            )
        timing = r.timing(data.get("timing") or {}, "timing")
        tiers = r.tiers(data.get("tiers") or {}, "tiers")
        routing = r.routing(data.get("routing") or {}, "routing")
        if tiers.write_policy == "back" and timing.write == "two_phase":
            raise ConfigError(f"{source}: tiers.write_policy: 'back' needs timing.write 'at_end'")
        reclaim = r.reclaim(data.get("reclaim") or {}, "reclaim")
        for i, h in enumerate(reclaim.storage_health):
            if h.storage not in snames:
                raise ConfigError(f"{source}: reclaim.storage_health[{i}].storage: unknown "
                                  f"storage {h.storage!r}")
        return KVSimConfig(storages, groups, instances, replay, source, server=server,
                           timing=timing, tiers=tiers, routing=routing, reclaim=reclaim)

    # ------------------------------------------------------------ output
    def storage_rules(self) -> list[str]:
        """The config fields that set a storage rule: a storage's ``capacity_bytes`` or
        ``available: false``, a group's per-type quota (``quota.storage_types``) or
        ``max_key_count``, a ``reclaim.storage_health`` schedule. The client flow
        (``replay --flow client``, the server) honours them; the contract's combined
        flow has no storages and would ignore them (``delay_before_delete_ms`` changes
        no hit: evicted blocks are unreadable either way).

        Example:
            >>> KVSimConfig.from_dict({"storages": [{"name": "s", "capacity_bytes": 8}],
            ...     "instance_groups": [{"name": "g"}]}).storage_rules()
            ['storages[0].capacity_bytes']
        """
        out = []
        for i, st in enumerate(self.storages):
            if st.capacity_bytes:
                out.append(f"storages[{i}].capacity_bytes")
            if not st.available:
                out.append(f"storages[{i}].available")
        for i, g in enumerate(self.groups):
            if g.storage_type_quotas:
                out.append(f"instance_groups[{i}].quota.storage_types")
            if g.max_key_count:
                out.append(f"instance_groups[{i}].max_key_count")
        if self.reclaim.storage_health:
            out.append("reclaim.storage_health")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as the mapping :meth:`from_dict` reads."""
        return {
            "storages": [
                {"name": s.name, "type": s.type, "capacity_bytes": s.capacity_bytes,
                 "available": s.available, "uri": s.uri} for s in self.storages
            ],
            "instance_groups": [
                {
                    "name": g.name,
                    "quota": {"blocks": g.quota_blocks, "bytes": g.quota_bytes}
                    | ({"storage_types": dict(g.storage_type_quotas)}
                       if g.storage_type_quotas else {}),
                    "used_percentage": g.used_percentage,
                    "storage_candidates": list(g.storage_candidates),
                    "eviction": asdict(g.eviction),
                    "delay_before_delete_ms": g.delay_before_delete_ms,
                    "max_instance_count": g.max_instance_count,
                } | ({"max_key_count": g.max_key_count} if g.max_key_count else {})
                for g in self.groups
            ],
            "instances": [
                {"instance_id": s.instance_id, "group": s.group, "block_size": s.block_size,
                 "location_spec_infos": [{"name": x.name, "size": x.size}
                                         for x in s.location_specs],
                 "model_name": s.model_name, "dtype": s.dtype} for s in self.instances
            ],
            "replay": asdict(self.replay),
        } | ({"server": asdict(self.server)} if self.server != ServerOptions() else {}) \
          | self._sim_dict()

    def _sim_dict(self) -> dict[str, Any]:
        """The simulation sections that differ from their defaults."""
        out: dict[str, Any] = {}
        if self.timing != TimingOptions():
            out["timing"] = asdict(self.timing)
        if self.tiers != TiersOptions():
            t = asdict(self.tiers)
            t["levels"] = [asdict(x) for x in self.tiers.levels]
            out["tiers"] = t
        if self.routing != RoutingOptions():
            out["routing"] = asdict(self.routing)
        if self.reclaim != ReclaimOptions():
            rc = asdict(self.reclaim)
            rc["storage_health"] = [asdict(h) for h in self.reclaim.storage_health]
            out["reclaim"] = rc
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write YAML (or JSON for a ``.json`` path) atomically."""
        p = Path(path)
        text = (json.dumps(self.to_dict(), indent=2) if p.suffix == ".json"
                else yaml.safe_dump(self.to_dict(), sort_keys=False))
        atomic_write_text(p, text)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Reader:
    """Field-by-field validation with error paths."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}")

    def known(self, d: Any, path: str, names: set[str]) -> None:
        if not isinstance(d, dict):
            raise self.fail(path, "expected a mapping")
        extra = sorted(set(d) - names)
        if extra:
            where = f"{path}." if path else ""
            known = ", ".join(sorted(names))
            raise self.fail(f"{where}{extra[0]}", f"unknown field (known: {known})")

    def list_of(self, d: dict[str, Any], name: str, path: str) -> list[Any]:
        v = d.get(name) or []
        if not isinstance(v, list):
            raise self.fail(f"{path}{name}", "expected a list")
        return v

    def num(self, d: dict[str, Any], name: str, path: str, default: float, *, integer: bool,
            low: float | None = None, high: float | None = None) -> Any:
        v = d.get(name, default)
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        if ok and integer and isinstance(v, float):
            ok = v.is_integer()
            v = int(v) if ok else v
        if not ok:
            kind = "an integer" if integer else "a number"
            raise self.fail(f"{path}.{name}", f"expected {kind}, got {v!r}")
        if (low is not None and v < low) or (high is not None and v > high):
            raise self.fail(f"{path}.{name}", f"{v} is outside [{low}, {high}]")
        return int(v) if integer else float(v)

    def text(self, d: dict[str, Any], name: str, path: str, default: str | None = None) -> str:
        v = d.get(name, default)
        if not isinstance(v, str) or (not v and default is None):
            raise self.fail(f"{path}.{name}", f"expected a non-empty string, got {v!r}")
        return v

    def choice(self, d: dict[str, Any], name: str, path: str, default: str,
               choices: list[str]) -> str:
        v = self.text(d, name, path, default)
        if v not in choices:
            raise self.fail(f"{path}.{name}", f"{v!r} is not one of {', '.join(choices)}")
        return v

    def storage(self, d: Any, path: str) -> StorageSpec:
        self.known(d, path, {"name", "type", "capacity_bytes", "available", "uri"})
        return StorageSpec(
            name=self.text(d, "name", path),
            type=self.choice(d, "type", path, "file", list(STORAGE_TYPES)),
            capacity_bytes=self.num(d, "capacity_bytes", path, 0, integer=True, low=0,
                                    high=MAX_CONFIG_BYTES),
            available=bool(d.get("available", True)),
            uri=self.text(d, "uri", path, ""),
        )

    def group(self, d: Any, path: str) -> GroupSpec:
        self.known(d, path, {"name", "quota", "used_percentage", "storage_candidates",
                             "eviction", "delay_before_delete_ms", "max_instance_count",
                             "user_data", "version", "max_key_count"})
        quota = d.get("quota") or {}
        self.known(quota, f"{path}.quota", {"blocks", "bytes", "storage_types"})
        blocks = self.num(quota, "blocks", f"{path}.quota", 0, integer=True, low=0,
                          high=MAX_CONFIG_BYTES)
        nbytes = self.num(quota, "bytes", f"{path}.quota", 0, integer=True, low=0,
                          high=MAX_CONFIG_BYTES)
        if blocks and nbytes:
            raise self.fail(f"{path}.quota", "give blocks or bytes, not both")
        per_type = quota.get("storage_types") or {}
        if not isinstance(per_type, dict):
            raise self.fail(f"{path}.quota.storage_types",
                            "expected a mapping of storage type to bytes")
        type_quotas = []
        for stype in per_type:
            tp = f"{path}.quota.storage_types"
            if stype not in STORAGE_TYPES:
                raise self.fail(f"{tp}.{stype}", f"unknown storage type (one of "
                                f"{', '.join(STORAGE_TYPES)})")
            type_quotas.append((stype, int(self.num(per_type, stype, tp, 0, integer=True,
                                                    low=1, high=MAX_CONFIG_BYTES))))
        ev = d.get("eviction") or {}
        self.known(ev, f"{path}.eviction", {"policy", "params", "mode", "batch_size"})
        policy = self.choice(ev, "policy", f"{path}.eviction", "lru", sorted(POLICIES))
        params = ev.get("params") or {}
        if not isinstance(params, dict):
            raise self.fail(f"{path}.eviction.params", "expected a mapping")
        try:
            POLICIES[policy].params_cls.from_dict(params)
        except (TypeError, ValueError) as e:
            raise self.fail(f"{path}.eviction.params", str(e)) from None
        cands = d.get("storage_candidates") or []
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise self.fail(f"{path}.storage_candidates", "expected a list of storage names")
        return GroupSpec(
            name=self.text(d, "name", path),
            quota_blocks=blocks,
            quota_bytes=nbytes,
            used_percentage=self.num(d, "used_percentage", path, 1.0, integer=False,
                                     low=1e-9, high=1.0),
            storage_candidates=tuple(cands),
            eviction=EvictionSpec(
                policy=policy,
                params=dict(params),
                mode=self.choice(ev, "mode", f"{path}.eviction", "group_precise",
                                 list(EVICTION_MODES)),
                batch_size=self.num(ev, "batch_size", f"{path}.eviction", 100, integer=True,
                                    low=1),
            ),
            delay_before_delete_ms=self.num(d, "delay_before_delete_ms", path, 0, integer=True,
                                            low=0),
            max_instance_count=self.num(d, "max_instance_count", path, 0, integer=True, low=0),
            user_data=str(d.get("user_data", "")),
            version=self.num(d, "version", path, 1, integer=True, low=0),
            storage_type_quotas=tuple(type_quotas),
            max_key_count=self.num(d, "max_key_count", path, 0, integer=True, low=0),
        )

    def instance(self, d: Any, path: str) -> InstanceSpec:
        self.known(d, path, {"instance_id", "group", "block_size", "location_spec_infos",
                             "model_name", "dtype"})
        specs = []
        for j, s in enumerate(self.list_of(d, "location_spec_infos", f"{path}.")):
            sp = f"{path}.location_spec_infos[{j}]"
            self.known(s, sp, {"name", "size"})
            specs.append(LocationSpec(self.text(s, "name", sp),
                                      self.num(s, "size", sp, 0, integer=True, low=1)))
        return InstanceSpec(
            instance_id=self.text(d, "instance_id", path),
            group=self.text(d, "group", path, "default"),
            block_size=self.num(d, "block_size", path, 16, integer=True, low=1),
            location_specs=tuple(specs),
            model_name=self.text(d, "model_name", path, ""),
            dtype=self.text(d, "dtype", path, ""),
        )

    def server(self, d: Any, path: str) -> ServerOptions:
        self.known(d, path, {f.name for f in fields(ServerOptions)})

        def port(name: str, default: int) -> int:
            return int(self.num(d, name, path, default, integer=True, low=0, high=65535))

        ev = d.get("event_log", True)
        if not isinstance(ev, bool):
            raise self.fail(f"{path}.event_log", f"expected true or false, got {ev!r}")
        return ServerOptions(
            host=self.text(d, "host", path, "127.0.0.1"),
            http_port=port("http_port", 6382),
            admin_http_port=port("admin_http_port", 6492),
            grpc_port=port("grpc_port", 6381),
            admin_grpc_port=port("admin_grpc_port", 6491),
            data_dir=self.text(d, "data_dir", path, "kvsim-data"),
            tick_seconds=self.num(d, "tick_seconds", path, 0.5, integer=False, low=0.01,
                                  high=3600),
            event_log=ev,
            admin_user=self.text(d, "admin_user", path, "admin"),
            state=self.text(d, "state", path, "journal"),
            leader=self.choice(d, "leader", path, "auto", ["auto", "file", "redis", "none"]),
            leader_lease_ms=int(self.num(d, "leader_lease_ms", path, 3000, integer=True,
                                         low=100, high=600_000)),
            storage_probe_seconds=self.num(d, "storage_probe_seconds", path, 5.0,
                                           integer=False, low=0, high=86400),
            event_log_max_bytes=int(self.num(d, "event_log_max_bytes", path, 256 << 20,
                                             integer=True, low=0)),
            limits=self.limits(d.get("limits") or {}, f"{path}.limits"),
            advisor_sample_rate=self.num(d, "advisor_sample_rate", path, 0.01,
                                         integer=False, low=0, high=1),
        )

    def limits(self, d: Any, path: str) -> ServerLimits:
        self.known(d, path, {f.name for f in fields(ServerLimits)})
        df = ServerLimits()

        def whole(name: str, low: int, high: int) -> int:
            return int(self.num(d, name, path, getattr(df, name), integer=True, low=low,
                                high=high))

        return ServerLimits(
            max_keys_per_request=whole("max_keys_per_request", 1, 1 << 24),
            max_tokens_per_request=whole("max_tokens_per_request", 1, 1 << 28),
            max_body_bytes=whole("max_body_bytes", 1024, 1 << 31),
            body_timeout_seconds=self.num(d, "body_timeout_seconds", path,
                                          df.body_timeout_seconds, integer=False, low=0.1,
                                          high=3600),
            max_spec_bytes=whole("max_spec_bytes", 1, 1 << 32),
            max_location_specs=whole("max_location_specs", 1, 4096),
            max_write_timeout_seconds=whole("max_write_timeout_seconds", 1, 7 * 86400),
            auth_failures_per_second=self.num(d, "auth_failures_per_second", path,
                                              df.auth_failures_per_second, integer=False,
                                              low=0.1, high=1e6),
            auth_workers=whole("auth_workers", 1, 64),
        )

    def replay(self, d: Any, path: str) -> ReplayOptions:
        self.known(d, path, {"match", "tail", "default_group", "block_size"})
        return ReplayOptions(
            match=self.choice(d, "match", path, "prefix", ["prefix", "batch"]),
            tail=self.choice(d, "tail", path, "drop", ["drop", "keep"]),
            default_group=self.text(d, "default_group", path, "default"),
            block_size=self.num(d, "block_size", path, 0, integer=True, low=0),
        )

    def timing(self, d: Any, path: str) -> TimingOptions:
        self.known(d, path, {"prefill_tokens_per_s", "decode_ms_per_token", "block_bytes",
                             "write", "write_timeout_s", "reclaim_interval_ms",
                             "session_outputs"})
        so = d.get("session_outputs", False)
        if not isinstance(so, bool):
            raise self.fail(f"{path}.session_outputs", f"expected true or false, got {so!r}")
        return TimingOptions(
            prefill_tokens_per_s=self.num(d, "prefill_tokens_per_s", path, 0.0, integer=False,
                                          low=0),
            decode_ms_per_token=self.num(d, "decode_ms_per_token", path, 0.0, integer=False,
                                         low=0),
            block_bytes=self.num(d, "block_bytes", path, 0, integer=True, low=0),
            write=self.choice(d, "write", path, "at_end", list(WRITE_MODES)),
            write_timeout_s=self.num(d, "write_timeout_s", path, 30.0, integer=False, low=1e-9),
            reclaim_interval_ms=self.num(d, "reclaim_interval_ms", path, 0.0, integer=False,
                                         low=0),
            session_outputs=so,
        )

    def tier(self, d: Any, path: str) -> TierSpec:
        self.known(d, path, {"name", "scope", "capacity_blocks", "policy", "read_bytes_per_s",
                             "write_bytes_per_s", "latency_us"})
        return TierSpec(
            name=self.text(d, "name", path),
            scope=self.choice(d, "scope", path, "local", list(TIER_SCOPES)),
            capacity_blocks=self.num(d, "capacity_blocks", path, 0, integer=True, low=0),
            policy=self.choice(d, "policy", path, "lru", sorted(POLICIES)),
            read_bytes_per_s=self.num(d, "read_bytes_per_s", path, 0.0, integer=False, low=0),
            write_bytes_per_s=self.num(d, "write_bytes_per_s", path, 0.0, integer=False, low=0),
            latency_us=self.num(d, "latency_us", path, 0.0, integer=False, low=0),
        )

    def tiers(self, d: Any, path: str) -> TiersOptions:
        self.known(d, path, {"levels", "write_policy", "selective_min_reuse"})
        levels = tuple(self.tier(x, f"{path}.levels[{i}]")
                       for i, x in enumerate(self.list_of(d, "levels", f"{path}.")))
        if len(levels) > MAX_TIERS:
            raise self.fail(f"{path}.levels", f"at most {MAX_TIERS} tiers, got {len(levels)}")
        names = [x.name for x in levels]
        for i, x in enumerate(levels):
            if names.index(x.name) != i:
                raise self.fail(f"{path}.levels[{i}].name", f"duplicate tier {x.name!r}")
            if x.scope == "pool" and i != len(levels) - 1:
                raise self.fail(f"{path}.levels[{i}].scope", "the pool must be the last tier")
        return TiersOptions(
            levels=levels,
            write_policy=self.choice(d, "write_policy", path, "through", list(WRITE_POLICIES)),
            selective_min_reuse=self.num(d, "selective_min_reuse", path, 1, integer=True, low=0),
        )

    def reclaim(self, d: Any, path: str) -> ReclaimOptions:
        self.known(d, path, {"interval_ms", "storage_health"})
        changes = []
        for i, h in enumerate(self.list_of(d, "storage_health", f"{path}.")):
            hp = f"{path}.storage_health[{i}]"
            self.known(h, hp, {"storage", "at_ms", "healthy"})
            ok = h.get("healthy", False)
            if not isinstance(ok, bool):
                raise self.fail(f"{hp}.healthy", f"expected true or false, got {ok!r}")
            changes.append(HealthChange(self.text(h, "storage", hp),
                                        int(self.num(h, "at_ms", hp, 0, integer=True, low=0)),
                                        ok))
        return ReclaimOptions(
            interval_ms=int(self.num(d, "interval_ms", path, 0, integer=True, low=0,
                                     high=86_400_000)),
            storage_health=tuple(sorted(changes, key=lambda h: h.at_ms)),
        )

    def routing(self, d: Any, path: str) -> RoutingOptions:
        self.known(d, path, {"policy", "instances", "prefix_bonus", "seed"})
        return RoutingOptions(
            policy=self.choice(d, "policy", path, "trace", list(ROUTING_POLICIES)),
            instances=self.num(d, "instances", path, 1, integer=True, low=1),
            prefix_bonus=self.num(d, "prefix_bonus", path, 1.0, integer=False, low=0),
            seed=self.num(d, "seed", path, 0, integer=True, low=0, high=2**63 - 1),
        )

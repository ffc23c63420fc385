"""The KV-cache metadata manager: the one core behind the simulator and the server.

:class:`CacheManager` owns the block table, the registry of groups, instances and
storages, the write sessions and the event buffer. Every call is a thin Python
layer over the numba kernels of :mod:`kvsim.core.kernels`; time comes from an
injected :class:`~kvsim.core.clock.Clock` and calls return small frozen results.

Example:
    >>> from kvsim.core.clock import ManualClock
    >>> from kvsim.core.spec import GroupSpec, InstanceSpec
    >>> m = CacheManager(ManualClock())
    >>> m.create_group(GroupSpec("g", quota_blocks=2))
    >>> _ = m.register_instance(InstanceSpec("i0", "g"))
    >>> w = m.start_write("i0", [1, 2, 3])
    Traceback (most recent call last):
    ...
    kvsim.core.errors.QuotaExceeded: group 'g': writing 3 blocks would pass its quota of 2
    >>> w = m.start_write("i0", [1, 2]); m.finish_write(w.session_id, [True, True]).committed
    2
    >>> m.match("i0", [1, 2, 9]).hit_blocks
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType

import numpy as np

from kvsim.core import kernels as K
from kvsim.core.clock import Clock
from kvsim.core.errors import (
    DuplicateEntity,
    InstanceNotFound,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
)
from kvsim.core.events import EV_EXPIRED, EV_WRITE_STARTED, Event, EventBuffer, emit
from kvsim.core.loader import KernelLoader
from kvsim.core.policies import DEFAULT_POLICY, get_policy
from kvsim.core.spec import (
    EVICTION_MODES,
    STORAGE_TYPES,
    GroupSpec,
    InstanceSpec,
    StorageSpec,
)
from kvsim.core.specialize import kernels_for
from kvsim.core.storage import StorageRegistry
from kvsim.core.table import (
    M_HWM,
    M_SLOT_COUNTS,
    M_STAMP,
    SERVING,
    STORAGE_SLOTS,
    WRITING,
    BlockTable,
    lookup,
)

QUERY_PREFIX = "prefix"
QUERY_BATCH = "batch"
QUERY_SW = "sw"
_QUERY_CODES = {QUERY_PREFIX: K.Q_PREFIX, QUERY_BATCH: K.Q_BATCH, QUERY_SW: K.Q_SW}

_UNLIMITED = np.iinfo(np.int64).max // 4
_NEVER = np.iinfo(np.int64).max
#: The largest block (sum of an instance's location spec sizes, bytes) the core accepts.
#: With int32 rows, any group's usage (blocks x bytes) then stays below 2^63.
MAX_BLOCK_BYTES = 1 << 32
_RESTORE_CHUNK = 4096
#: Keys per step of a long write, finish or removal (:attr:`CacheManager.step_keys`).
STEP_KEYS = 8192
#: A caller's hook run between two steps of a long call (see :attr:`CacheManager.step_keys`).
Pause = Callable[[], None]


@dataclass(frozen=True)
class MatchResult:
    """Outcome of a read.

    Attributes:
        hit_blocks: blocks available to the engine (masked ones included).
        rows: per key, the table row (or -2 masked, -1 absent) - for adapters that
            build locations.
        window_start: for sliding-window reads, the first block of the window (-1 none).
        prefix: a prefix read: the hits are exactly the first ``hit_blocks`` keys.
    """

    hit_blocks: int
    rows: np.ndarray
    window_start: int = -1
    prefix: bool = False

    @cached_property
    def found(self) -> np.ndarray:
        """bool per key: available (masked or SERVING, within the match rule); built on
        first use (the server's read path never needs it)."""
        if self.prefix:
            f = np.zeros(self.rows.shape[0], dtype=bool)
            f[: self.hit_blocks] = True
            return f
        return self.rows != -1


@dataclass(frozen=True)
class WriteStart:
    """Outcome of ``start_write``: the session and which keys it must write."""

    session_id: int
    is_new: np.ndarray  # bool per requested key
    new_keys: np.ndarray  # int64, the keys of this session, in order
    deadline_ns: int
    storage: str  # the storage the new blocks go to ("" without storages)
    slot: int = 0  # its storage slot
    tag: str = ""  # the caller's name for the session (e.g. the wire's session token)


@dataclass(frozen=True)
class SessionInfo:
    """A write session: the one record of it (persistence stores it, the server reads
    it to answer ``finishWriteCache``).

    Attributes:
        session_id: the core's id.
        instance_id: the writer.
        keys: the keys the session writes (the new ones), in order.
        deadline_ns: when it expires as all-failed.
        request_keys: every key of the start request (held ones too), in order.
        is_new: bool per ``request_keys``: written by this session.
        slot: the storage slot of its blocks.
        tag: the caller's name for it ("" none).
        done: new keys of the session's start that a finish interrupted by a restart
            had already made final (committed and saved, or dropped): they precede
            ``keys``; a finish gives a mask of ``done + len(keys)`` entries (the start's
            count) and the first ``done`` are ignored (:meth:`CacheManager.restore_session`).
    """

    session_id: int
    instance_id: str
    keys: np.ndarray
    deadline_ns: int
    request_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    is_new: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    slot: int = 0
    tag: str = ""
    done: int = 0


@dataclass(frozen=True)
class Reclaim:
    """One reclaim trigger that fired (see :meth:`CacheManager.tick`).

    Attributes:
        trigger: ``quota``, ``max_key_count``, ``storage_type`` or ``storage_capacity``.
        group: the group (``""`` for ``storage_capacity``).
        storage: the storage (``storage_capacity`` only).
        storage_type: the storage type (``storage_type`` only).
        blocks: blocks evicted.
        freed: bytes freed (the byte triggers).
        used: usage when it fired (the trigger's unit).
        capacity: the target it reclaims to.
        limit: ``max_key_count`` or the type's byte quota (0 otherwise).
    """

    trigger: str
    group: str = ""
    storage: str = ""
    storage_type: str = ""
    blocks: int = 0
    freed: int = 0
    used: int = 0
    capacity: int = 0
    limit: int = 0


@dataclass(frozen=True)
class TickReport:
    """What one run of the reclaimer did (:meth:`CacheManager.tick`)."""

    now_ns: int
    expired: tuple[SessionInfo, ...] = ()
    reclaims: tuple[Reclaim, ...] = ()
    reaped: int = 0

    @property
    def reclaimed(self) -> int:
        """Blocks evicted by every trigger."""
        return sum(r.blocks for r in self.reclaims)


@dataclass(frozen=True)
class WriteFinish:
    """Outcome of ``finish_write``.

    Attributes:
        committed: blocks now SERVING.
        failed: blocks dropped.
        session: the finished session's record (None for a restore).
        held_keys: the request's keys the instance holds now (held before, or committed),
            in request order.
        tick: at ``reclaim_interval_ms`` 0, the reclaimer run that followed the write.
    """

    committed: int
    failed: int
    session: SessionInfo | None = None
    held_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tick: TickReport | None = None


@dataclass(frozen=True)
class AccessResult:
    """Outcome of one request (combined, or the client flow; the replay unit)."""

    hit_blocks: int
    internal_hits: int
    internal_reads: int
    evicted: int
    cached_blocks: int
    group_used: int = 0


@dataclass
class _Session:
    inst: int
    rows: np.ndarray
    keys: np.ndarray
    deadline_ns: int
    request_keys: np.ndarray
    is_new: np.ndarray
    slot: int
    tag: str
    # "open"; "starting" / "finishing": a start or finish made in steps is under way
    # (not found, never expired; a removed instance's cleanup still drops its rows)
    phase: str = "open"
    done: int = 0  # new keys an interrupted finish made final before a restart


@dataclass(frozen=True)
class BlockDump:
    """Columns of every block of some instances (see :meth:`CacheManager.export_blocks`)."""

    instance_id: tuple[str, ...]  # per block
    key: np.ndarray
    state: np.ndarray  # int8: WRITING 1, SERVING 2, DELETING 3
    t_write: np.ndarray
    t_access: np.ndarray
    access_count: np.ndarray
    loc: np.ndarray  # int8 storage slot


@dataclass(frozen=True)
class GroupUsage:
    """Usage of one group in its unit (blocks or bytes)."""

    name: str
    unit: str
    used: int
    capacity: int
    quota: int
    serving_blocks: int
    pending_blocks: int
    evicted_blocks: int


class CacheManager:
    """KV-cache metadata manager over the numba block table.

    Args:
        clock: the time source (``ManualClock`` in simulation and tests, a monotonic
            clock when serving).
        rows: initial block rows (the table doubles as needed).
        event_level: 0 records nothing, 1 per-call events, 2 also per-block events.
        slot_counts: keep per-instance block counts by storage slot as blocks come and
            go, so :meth:`slot_usage` costs O(instances), not a pass over the table (the
            server's per-storage limits ask on every write; replay does not need them).
        reclaim_interval_ms: the reclaimer's cadence on ``clock``: 0 runs it after every
            write (:meth:`finish_write`; the replay contract evicts at each write), N > 0
            every N ms (:meth:`advance_to` on a manual clock, the server's timer on a
            wall clock).
        kernel_loader: turns generated kernel source into modules
            (:mod:`kvsim.core.specialize`); ``None`` = the process-wide one that
            ``import kvsim`` installs (files in numba's cache directory).

    Long calls in steps: :meth:`start_write`, :meth:`finish_write`, :meth:`remove` and
    :meth:`trim` with more than :attr:`step_keys` keys (or rows) run their kernels on
    slices of at most that many, in the order the whole call would, and call their
    ``pause`` hook between two slices (a server releases its lock there, so short calls
    are answered while a 100k-key write runs). Run without anything in between, the
    steps give exactly the state, events and results of the whole call. Whatever must
    see the whole request (placement, ``max_key_count``, the quota test and its
    eviction) is decided once, before the first slice; when calls in between take the
    room a later slice needs, that slice is refused and the slices before it are
    dropped (all or nothing, as before). A start in progress is not yet a session
    (:meth:`find_session` does not see it), a finish in progress no longer is one.

    Attributes:
        storage: the storage registry (slots, admin state, health).
        evicted_by_trigger: blocks evicted per reclaim trigger since the start (the
            tick's ``quota``/``max_key_count``/``storage_type``/``storage_capacity`` and
            the write-time ``write_storage_type``/``write_storage_capacity``).
    """

    def __init__(self, clock: Clock, *, rows: int = 1024, event_level: int = 1,
                 slot_counts: bool = False, reclaim_interval_ms: int = 0,
                 kernel_loader: KernelLoader | None = None) -> None:
        self.clock = clock
        self._kernel_loader = kernel_loader
        self.table = BlockTable.create(rows=rows)
        self.table.t.meta[M_SLOT_COUNTS] = int(slot_counts)
        self.events = EventBuffer(level=event_level)
        self.storage = StorageRegistry()
        self.evicted_by_trigger: dict[str, int] = {}
        self.step_keys = STEP_KEYS
        self.reclaim_interval_ms = 0
        self.set_reclaim_interval(reclaim_interval_ms)
        self._groups: dict[str, tuple[int, GroupSpec]] = {}
        self._instances: dict[str, tuple[int, InstanceSpec]] = {}
        self._inst_names: list[str] = []
        self._sessions: dict[int, _Session] = {}
        self._tags: dict[str, int] = {}
        self._next_deadline_ns = _NEVER  # no open session expires before this
        self._next_sid = 1
        self._next_tmp = 0  # keys (< 0) of writes in progress in _sessions
        self._free_group_slots: list[int] = []
        self._n_group_slots = 0
        self._policy_names: set[str] = set()
        self._kernels: ModuleType | None = None

    @property
    def kernels(self) -> ModuleType:
        """The core kernels (:mod:`kvsim.core.kernels`) specialised to the policies this
        manager's groups have used (:func:`kvsim.core.specialize.kernels_for`): only
        those policies are compiled. A group with a new policy switches to the kernels
        of the larger set (compiled, or loaded from the disk cache, on first use)."""
        k = self._kernels
        if k is None:
            k = self._kernels = kernels_for(self._policy_names or (DEFAULT_POLICY,),
                                            self._kernel_loader)
        return k

    def use_policies(self, names: Sequence[str] | set[str]) -> None:
        """Include ``names`` in the policies this manager's kernels are specialised to
        (before their groups exist: a server warms the set its config names once,
        instead of compiling a larger set when a group with another policy arrives)."""
        new = {get_policy(n).name for n in names} - self._policy_names
        if new:
            self._policy_names |= new
            self._kernels = None

    def set_reclaim_interval(self, interval_ms: int) -> None:
        """Change the reclaimer's cadence (see the class docstring)."""
        if interval_ms < 0:
            raise InvalidArgument(f"reclaim interval_ms must be >= 0, got {interval_ms}")
        self.reclaim_interval_ms = int(interval_ms)

    # ================================================================ registry
    def add_storage(self, spec: StorageSpec) -> None:
        """Add a storage; an existing name with a different definition is a duplicate."""
        self.storage.add(spec)

    def update_storage(self, spec: StorageSpec) -> None:
        """Replace a storage's definition (keeps its admin state; healthy until probed)."""
        self.storage.update(spec)

    def set_storage_available(self, name: str, available: bool) -> None:
        """Enable or disable a storage (writes avoid unusable storages, reads treat their
        blocks as misses)."""
        self.storage.set_enabled(name, available)

    def set_storage_health(self, name: str, healthy: bool, reason: str = "") -> bool:
        """Mark a storage healthy or unhealthy (runtime state: a probe, or a replay's
        scheduled outage); returns whether it changed."""
        return self.storage.set_health(name, healthy, reason)

    def remove_storage(self, name: str) -> None:
        """Remove a storage (no group may list it as a candidate)."""
        self.storage.get(name)
        users = [g.name for _, g in self._groups.values() if name in g.storage_candidates]
        if users:
            raise InvalidArgument(f"storage {name!r} is a candidate of groups {users}; "
                                  "update them first")
        self.storage.remove(name)

    def storages(self) -> list[StorageSpec]:
        """All storages."""
        return self.storage.specs()

    def _need_storage(self, name: str) -> StorageSpec:
        return self.storage.get(name)

    def create_group(self, spec: GroupSpec) -> None:
        """Create an instance group (idempotent for an identical spec)."""
        old = self._groups.get(spec.name)
        if old is not None:
            if old[1] == spec:
                return
            raise DuplicateEntity(f"instance group {spec.name!r} exists")
        self._validate_group(spec)
        if self._free_group_slots:
            gi = self._free_group_slots.pop()
        else:
            gi = self._n_group_slots
            self._n_group_slots += 1
            self.table.ensure_groups(self._n_group_slots)
        t = self.table.t
        t.g_used[gi] = 0
        t.g_rr[gi] = 0
        t.g_evicted[gi] = 0
        t.g_pol[gi] = 0
        t.g_polf[gi] = 0.0
        self.table.set_ghost(gi, 0, 0, 0)  # a reused slot forgets the old group's ghosts
        self._groups[spec.name] = (gi, spec)
        self._apply_group(gi, spec)

    def update_group(self, spec: GroupSpec) -> None:
        """Change a group's quota or eviction settings in place.

        The policy may change only while the group holds no blocks (its order
        structures belong to the old policy).
        """
        gi, old = self._need_group(spec.name)
        self._validate_group(spec)
        if old.unit != spec.unit and self._group_blocks(gi) > 0:
            raise InvalidArgument(f"group {spec.name!r}: cannot change quota unit while in use")
        if old.eviction.policy != spec.eviction.policy and self._group_blocks(gi) > 0:
            raise InvalidArgument(
                f"group {spec.name!r}: cannot change policy while it holds blocks; trim first"
            )
        self._groups[spec.name] = (gi, spec)
        self._apply_group(gi, spec)

    def remove_group(self, name: str) -> None:
        """Remove a group that has no instances."""
        gi, _ = self._need_group(name)
        users = [i for i, (_, s) in self._instances.items() if s.group == name]
        if users:
            raise InvalidArgument(f"group {name!r} still has instances: {users}")
        del self._groups[name]
        self._free_group_slots.append(gi)

    def group(self, name: str) -> GroupSpec:
        """The spec of group ``name``."""
        return self._need_group(name)[1]

    def groups(self) -> list[GroupSpec]:
        """All groups."""
        return [s for _, s in self._groups.values()]

    def _validate_group(self, spec: GroupSpec) -> None:
        pol = get_policy(spec.eviction.policy)
        try:
            pol.params_cls.from_dict(spec.eviction.params)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"group {spec.name!r}: eviction.params: {e}") from None
        if spec.eviction.mode not in EVICTION_MODES:
            raise InvalidArgument(
                f"group {spec.name!r}: eviction.mode {spec.eviction.mode!r} is not one of "
                f"{sorted(EVICTION_MODES)}"
            )
        if not 0 < spec.used_percentage <= 1:
            raise InvalidArgument(f"group {spec.name!r}: used_percentage must be in (0, 1]")
        if spec.quota_blocks < 0 or spec.quota_bytes < 0:
            raise InvalidArgument(f"group {spec.name!r}: quota must be >= 0")
        if spec.max_key_count < 0:
            raise InvalidArgument(f"group {spec.name!r}: max_key_count must be >= 0")
        seen: set[str] = set()
        for i, (stype, cap) in enumerate(spec.storage_type_quotas):
            if stype not in STORAGE_TYPES:
                raise InvalidArgument(f"group {spec.name!r}: storage_type_quotas[{i}]: "
                                      f"unknown storage type {stype!r}")
            if stype in seen:
                raise InvalidArgument(f"group {spec.name!r}: storage_type_quotas[{i}]: "
                                      f"storage type {stype!r} listed twice")
            seen.add(stype)
            if cap <= 0:
                raise InvalidArgument(f"group {spec.name!r}: storage_type_quotas[{i}]: "
                                      f"capacity must be > 0 bytes, got {cap}")

    def _apply_group(self, gi: int, spec: GroupSpec) -> None:
        t = self.table.t
        pol = get_policy(spec.eviction.policy)
        params = pol.params_cls.from_dict(spec.eviction.params)
        quota = spec.quota_units()
        t.g_quota[gi] = quota if quota > 0 else _UNLIMITED
        cap = spec.capacity_units()
        t.g_cap[gi] = cap if quota > 0 else _UNLIMITED
        if t.g_policy[gi] != pol.code:
            t.g_pol[gi] = 0
            t.g_polf[gi] = 0.0
        t.g_policy[gi] = pol.code
        if pol.name not in self._policy_names:
            self._policy_names.add(pol.name)
            self._kernels = None
        t.g_mode[gi] = spec.eviction.mode_code
        t.g_batch[gi] = max(1, spec.eviction.batch_size)
        t.g_params[gi] = params.to_vector()
        seed = int(spec.eviction.params.get("seed", 0))
        t.g_rng[gi] = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) % (1 << 64))
        for name, (ii, ispec) in self._instances.items():
            if ispec.group == spec.name:
                t.i_cost[ii] = self._cost(ispec, spec, name)
        self._sync_ghost(gi, spec)

    def _sync_ghost(self, gi: int, spec: GroupSpec) -> None:
        """Size the group's ghost storage from its capacity in blocks (policies with ghosts)."""
        t = self.table.t
        pol = get_policy(spec.eviction.policy)
        cap = 0
        if spec.quota_units() > 0:
            costs = [int(t.i_cost[ii]) for ii, s in self._instances.values()
                     if s.group == spec.name]
            cap = int(spec.capacity_units()) // max(1, min(costs, default=1))
        rings, ring_len = (0, 0)
        if pol.ghost_rings is not None:
            rings, ring_len = pol.ghost_rings(pol.params_cls.from_dict(spec.eviction.params), cap)
        self.table.set_ghost(gi, rings, ring_len, cap)

    def _group_blocks(self, gi: int) -> int:
        t = self.table.t
        return int(sum(t.i_blocks[ii] + t.i_pending[ii] for ii, s in self._instances.values()
                       if self._groups[s.group][0] == gi))

    def _need_group(self, name: str) -> tuple[int, GroupSpec]:
        try:
            return self._groups[name]
        except KeyError:
            raise NotFound(f"instance group {name!r} does not exist") from None

    @staticmethod
    def _cost(ispec: InstanceSpec, gspec: GroupSpec, name: str) -> int:
        if gspec.unit == "bytes":
            if ispec.block_bytes <= 0:
                raise InvalidArgument(
                    f"instance {name!r}: group {gspec.name!r} has a byte quota, so the instance "
                    "needs location_spec_infos with sizes"
                )
            return ispec.block_bytes
        return 1

    def register_instance(self, spec: InstanceSpec) -> int:
        """Register an instance; idempotent for an identical spec. Returns its index."""
        old = self._instances.get(spec.instance_id)
        if old is not None:
            if old[1] == spec:
                return old[0]
            raise DuplicateEntity(
                f"instance {spec.instance_id!r} is registered with a different deployment"
            )
        if spec.block_size <= 0:
            raise InvalidArgument(f"instance {spec.instance_id!r}: block_size must be > 0")
        if spec.block_bytes > MAX_BLOCK_BYTES or any(s.size < 0 for s in spec.location_specs):
            raise InvalidArgument(
                f"instance {spec.instance_id!r}: location_spec_infos sizes must be >= 0 and "
                f"sum to at most {MAX_BLOCK_BYTES} bytes (MAX_BLOCK_BYTES), got "
                f"{spec.block_bytes}")
        gi, gspec = self._need_group(spec.group)
        if gspec.max_instance_count and sum(
            1 for _, s in self._instances.values() if s.group == spec.group
        ) >= gspec.max_instance_count:
            raise QuotaExceeded(f"group {spec.group!r} has its maximum number of instances")
        cost = self._cost(spec, gspec, spec.instance_id)
        ii = len(self._inst_names)
        self.table.ensure_instances(ii + 1)
        t = self.table.t
        t.i_group[ii] = gi
        t.i_cost[ii] = cost
        self._instances[spec.instance_id] = (ii, spec)
        self._inst_names.append(spec.instance_id)
        self._sync_ghost(gi, gspec)
        return ii

    def remove_instance(self, instance_id: str) -> None:
        """Remove an instance and all its blocks."""
        ii, _ = self._need_instance(instance_id)
        self.trim(instance_id)
        for sid in [s for s, ses in self._sessions.items() if ses.inst == ii]:
            self._finish(sid, np.zeros(self._sessions[sid].keys.shape[0], dtype=bool))
        self.table.t.i_group[ii] = -1
        del self._instances[instance_id]

    def instance(self, instance_id: str) -> InstanceSpec:
        """The spec of a registered instance."""
        return self._need_instance(instance_id)[1]

    def instances(self) -> list[InstanceSpec]:
        """All registered instances."""
        return [s for _, s in self._instances.values()]

    def instance_index(self, instance_id: str) -> int:
        """The table index of an instance."""
        return self._need_instance(instance_id)[0]

    def instance_name(self, index: int) -> str:
        """The id of the instance at table index ``index`` (as events record it)."""
        return self._inst_names[index]

    def _need_instance(self, instance_id: str) -> tuple[int, InstanceSpec]:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise InstanceNotFound(f"instance {instance_id!r} is not registered") from None

    # ================================================================ reads
    def match(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        query: str = QUERY_PREFIX,
        mask: np.ndarray | None = None,
        sw_size: int = 0,
        touch: bool = True,
        slot_ok: np.ndarray | None = None,
    ) -> MatchResult:
        """Find which keys are cached; a hit refreshes recency unless ``touch=False``.

        ``slot_ok`` (bool per storage slot, :data:`STORAGE_SLOTS`) makes a SERVING block
        whose slot is False count as a miss under every query rule (the server's
        unusable storages); None = every slot counts.
        """
        ii, _ = self._need_instance(instance_id)
        k = _keys(keys)
        n_keys = k.shape[0]
        m, has = _mask(mask, n_keys)
        if slot_ok is not None:
            rows = np.full(n_keys, -1, dtype=np.int32)
            hit, start = self._match_filtered(ii, k, m, has, query, sw_size, rows,
                                              np.asarray(slot_ok, dtype=bool))
            if touch:
                sel = rows[rows >= 0].astype(np.int32)
                self.kernels.touch_rows(self.table.t, sel, sel.shape[0], self.clock.now_ns())
            return MatchResult(hit_blocks=hit, rows=rows, window_start=start,
                               prefix=query == QUERY_PREFIX)
        code = _QUERY_CODES.get(query)
        if code is None:
            raise InvalidArgument(f"unknown query type {query!r}")
        if code == K.Q_SW and not 1 <= sw_size <= n_keys:
            raise InvalidArgument(
                f"sw_size must be in 1..{n_keys} (the number of keys), got {sw_size}"
            )
        rows = np.full(n_keys, -1, dtype=np.int32)
        res = int(self.kernels.match_and_touch(self.table.t, ii, k, m, has, code, int(sw_size),
                                               rows, self.clock.now_ns() if touch else 0, touch))
        if code == K.Q_PREFIX:
            return MatchResult(hit_blocks=res, rows=rows, prefix=True)
        if code == K.Q_BATCH:
            return MatchResult(hit_blocks=res, rows=rows)
        return MatchResult(hit_blocks=int(np.count_nonzero(rows != -1)), rows=rows,
                           window_start=res)

    def _match_filtered(self, ii: int, k: np.ndarray, m: np.ndarray, has: bool, query: str,
                        sw_size: int, rows: np.ndarray, slot_ok: np.ndarray
                        ) -> tuple[int, int]:
        """:meth:`match` with blocks on unusable slots as misses (``rows`` is filled):
        (hit blocks, window start)."""
        if query not in (QUERY_PREFIX, QUERY_BATCH, QUERY_SW):
            raise InvalidArgument(f"unknown query type {query!r}")
        n = k.shape[0]
        if query == QUERY_SW and not 1 <= sw_size <= n:
            raise InvalidArgument(f"sw_size must be in 1..{n} (the number of keys), got {sw_size}")
        t = self.table.t
        self.kernels.match_batch(t, ii, k, m, has, rows)
        srv = rows >= 0
        ok = rows == K.MASKED
        ok[srv] = slot_ok[t.loc[rows[srv]].astype(np.int64) % STORAGE_SLOTS]
        rows[~ok] = -1
        if query == QUERY_PREFIX:
            bad = np.flatnonzero(~ok)
            cut = int(bad[0]) if bad.shape[0] else n
            rows[cut:] = -1
            return cut, -1
        if query == QUERY_BATCH:
            return int(np.count_nonzero(rows != -1)), -1
        run = np.concatenate(([0], np.cumsum(ok, dtype=np.int64)))
        full = np.flatnonzero(run[sw_size:] - run[:-sw_size] == sw_size)
        start = int(full[-1]) if full.shape[0] else -1
        keep = np.zeros(n, dtype=bool)
        if start >= 0:
            keep[start:start + sw_size] = True
        rows[~keep] = -1
        return int(np.count_nonzero(keep)), start

    def block_info(self, instance_id: str, keys: Sequence[int] | np.ndarray) -> list[dict]:
        """Per key: state and, when present, write time, last access and access count."""
        ii, _ = self._need_instance(instance_id)
        t = self.table.t
        out = []
        for key in _keys(keys):
            r = lookup(t, ii, int(key))
            if r < 0:
                out.append({"key": int(key), "status": "not_found"})
                continue
            st = int(t.state[r])
            out.append({
                "key": int(key),
                "status": {1: "writing", 2: "serving", 3: "deleting"}.get(st, "not_found"),
                "row": int(r),
                "slot": int(t.loc[r]),
                "write_time_ns": int(t.t_write[r]),
                "last_access_ns": int(t.t_access[r]),
                "access_count": int(t.acc[r]),
            })
        return out

    # ================================================================ writes
    def start_write(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        timeout_s: float = 30.0,
        tag: str = "",
        pause: Pause | None = None,
    ) -> WriteStart:
        """Phase one: reserve WRITING blocks for the keys that have none.

        In order: keys held on an unusable storage are forgotten (so this write places
        them again), the group's ``max_key_count`` is checked (refused, never evicted
        for: the reclaimer frees room, as in KVCM), the storage is chosen
        (:meth:`_place`: usable, within the per-type quota and the storage capacity, by
        candidate order, evicting this group's blocks there when needed), then the
        group quota (evicting in the group's order and mode).

        Args:
            instance_id: the writer.
            keys: the request's keys.
            timeout_s: the session expires (all-failed) after this long.
            tag: the caller's name for the session (unique among open sessions; found
                again with :meth:`find_session`).
            pause: run between two steps of a write of more than :attr:`step_keys`
                keys (see the class docstring).

        Raises:
            QuotaExceeded: a limit refuses the write (group quota even after eviction,
                ``max_key_count``, no usable storage, no room on any storage).
            InstanceNotFound: the instance was removed during a ``pause``.
        """
        ii, ispec = self._need_instance(instance_id)
        if timeout_s <= 0:
            raise InvalidArgument("write_timeout_seconds must be > 0")
        if tag and tag in self._tags:
            raise DuplicateEntity(f"write session tag {tag[:40]!r} is in use")
        k = _keys(keys)
        if ispec.block_bytes > MAX_BLOCK_BYTES:
            raise InvalidArgument(
                f"instance {instance_id!r}: a block of {ispec.block_bytes} bytes is over the "
                f"maximum of {MAX_BLOCK_BYTES} (MAX_BLOCK_BYTES)")
        gspec = self._groups[ispec.group][1]
        if not self.storage.all_ok:
            self._relocate_unusable(instance_id, k)
        if gspec.max_key_count > 0:
            self._check_key_room(instance_id, gspec, k)
        slot = self._place(instance_id, ispec, gspec, k)
        rows = np.full(k.shape[0], -1, dtype=np.int32)
        isnew = first_occurrence(k)
        now = self.clock.now_ns()
        deadline = now + int(timeout_s * 1e9)
        if k.shape[0] <= self.step_keys:
            self.table.ensure_rows(k.shape[0])
            self.events.reserve(2 * k.shape[0] + 16)
            n_new = self.kernels.start_write(self.table.t, self.events.arrays, ii, k, now, rows,
                                             isnew, gspec.delay_before_delete_ms == 0, -1)
            if n_new < 0:
                raise QuotaExceeded(
                    f"group {gspec.name!r}: writing {int(np.count_nonzero(isnew))} blocks would "
                    f"pass its quota of {gspec.quota_units()}"
                )
            new_rows = rows[isnew].copy()
            if new_rows.shape[0]:
                self.set_loc(new_rows, slot)
        else:  # placed slice by slice
            self._next_tmp -= 1  # the write's key in _sessions until it is one
            n_new = self._start_in_steps(self._next_tmp, ii, instance_id, k, rows, isnew, now,
                                         deadline, slot, tag, pause)
            new_rows = rows[isnew].copy()
        sid = self._next_sid
        self._next_sid += 1
        self._sessions[sid] = _Session(ii, new_rows, k[isnew].copy(), deadline, k.copy(),
                                       isnew.copy(), slot, tag)
        self._next_deadline_ns = min(self._next_deadline_ns, deadline)
        if tag:
            self._tags[tag] = sid
        emit(self.events.arrays, EV_WRITE_STARTED, ii, n_new, now, sid)
        st = self.storage.at(slot)
        return WriteStart(sid, isnew, k[isnew].copy(), deadline, st.name if st else "", slot,
                          tag)

    def _start_in_steps(self, tmp: int, ii: int, iid: str, k: np.ndarray, rows: np.ndarray,
                        isnew: np.ndarray, now: int, deadline: int, slot: int, tag: str,
                        pause: Pause | None) -> int:
        """The kernel part of :meth:`start_write` on slices of :attr:`step_keys` keys
        (``pause`` between two): count the new blocks, make room for all of them at
        once (the whole call's quota test and eviction), then reserve slice by slice.
        Fills ``rows`` and ``isnew``; returns the new blocks. While it runs the write is
        a session in phase ``starting`` (so removing the instance drops its rows)."""
        step = self.step_keys
        n = k.shape[0]
        entry = self._instances[iid]
        ses = _Session(ii, np.full(n, -1, dtype=np.int32), k, deadline, k, isnew, slot, tag,
                       phase="starting")
        self._sessions[tmp] = ses

        def between() -> None:
            if pause is not None:
                pause()
            if self._sessions.get(tmp) is not ses or self._instances.get(iid) is not entry:
                self._sessions.pop(tmp, None)
                raise InstanceNotFound(f"instance {iid!r} was removed during its write")

        try:
            # 1. the new blocks of the whole call (what its quota test counts); a key
            # held now stays held for this write even if the quota's eviction drops it
            # (as in one kernel call); a slice re-checks its keys (calls in between)
            n_fresh = 0
            for a in range(0, n, step):
                if a:
                    between()
                n_fresh += int(self.kernels.mark_fresh(self.table.t, ii, k[a:a + step],
                                                       isnew[a:a + step]))
            between()
            gi, gspec = self._groups[self._instances[iid][1].group]
            t = self.table.t
            delete_now = gspec.delay_before_delete_ms == 0
            # 2. the whole call's quota test, as the kernel makes it for one call
            need = n_fresh * int(t.i_cost[ii])
            if t.g_quota[gi] > 0 and need > int(t.g_quota[gi]) - int(t.g_used[gi]):
                self.events.reserve(int(self.table.used_rows) + 4)
                self.kernels.evict_to(t, self.events.arrays, gi, ii,
                                      int(t.g_quota[gi]) - need, now, delete_now)
                if need > int(t.g_quota[gi]) - int(t.g_used[gi]):
                    raise QuotaExceeded(
                        f"group {gspec.name!r}: writing {n_fresh} blocks would pass its "
                        f"quota of {gspec.quota_units()}")
            # 3. reserve, slice by slice (a slice refused: calls in between took the room)
            n_new = 0
            for a in range(0, n, step):
                if a:
                    between()
                b = min(n, a + step)
                self.table.ensure_rows(b - a)
                self.events.reserve(2 * (b - a) + 16)
                got = int(self.kernels.start_write(
                    self.table.t, self.events.arrays, ii, k[a:b], now, rows[a:b],
                    isnew[a:b], delete_now, int(rows[a - 1]) if a else -1))
                if got < 0:
                    raise QuotaExceeded(
                        f"group {gspec.name!r}: writing {n_fresh} blocks would pass its quota "
                        f"of {gspec.quota_units()} (blocks written meanwhile took the room)")
                ses.rows[a:b] = np.where(isnew[a:b], rows[a:b], -1)
                placed = rows[a:b][isnew[a:b]]
                if placed.shape[0]:
                    self.set_loc(placed, slot)
                n_new += got
            return n_new
        except BaseException:
            if self._sessions.get(tmp) is ses:  # drop the slices reserved so far
                del self._sessions[tmp]
                mine = ses.rows >= 0
                self.events.reserve(int(np.count_nonzero(mine)) + 4)
                self.kernels.finish_write(self.table.t, self.events.arrays, ii, ses.rows[mine],
                                          k[mine], np.zeros(int(np.count_nonzero(mine)),
                                                            dtype=bool), now)
            raise
        finally:
            if self._sessions.get(tmp) is ses:
                del self._sessions[tmp]

    def find_session(self, tag: str) -> SessionInfo | None:
        """The open session started with ``tag``, or None."""
        sid = self._tags.get(tag)
        return None if sid is None or self._sessions[sid].phase != "open" else self._info(sid)

    def _info(self, sid: int) -> SessionInfo:
        s = self._sessions[sid]
        return SessionInfo(sid, self._inst_names[s.inst], s.keys, s.deadline_ns,
                           s.request_keys, s.is_new, s.slot, s.tag, s.done)

    def finish_write(
        self, session_id: int, success: Sequence[bool] | np.ndarray, *,
        instance_id: str | None = None, pause: Pause | None = None,
    ) -> WriteFinish:
        """Phase two: commit the successful blocks of a session, drop the others, then
        refresh the keys the write found held (after the new ones: the replay contract's
        tail-first write, the new keys being the request's tail). At
        ``reclaim_interval_ms`` 0 the reclaimer runs next (:meth:`tick`).

        Args:
            session_id: the session.
            success: bool per new key (a restored session with ``done`` keys: per new
                key of its start, the first ``done`` ignored; see :class:`SessionInfo`).
            instance_id: when given, the session must be this instance's (else it is
                reported as unknown: an id reveals nothing to a non-owner).
            pause: run between two steps of a session of more than :attr:`step_keys`
                keys (see the class docstring).

        Raises:
            NotFound: no such open session (or the instance was removed during a
                ``pause``).
        """
        sid = int(session_id)
        ses = self._sessions.get(sid)
        if ses is None or ses.phase != "open" or (
                instance_id is not None and self._inst_names[ses.inst] != instance_id):
            raise NotFound(f"write session {session_id} is unknown, finished or expired")
        ok = np.asarray(success, dtype=bool)
        if ses.done and ok.ndim == 1 and ok.shape[0] == ses.done + ses.keys.shape[0]:
            ok = ok[ses.done:]  # the start's count: its first done keys are final
        if ok.shape != ses.keys.shape:
            raise InvalidArgument(
                f"success_blocks has {ok.shape[0] if ok.ndim else 0} entries; the session "
                f"wrote {ses.done + ses.keys.shape[0]} new blocks"
            )
        info = self._info(sid)
        iid = info.instance_id
        entry = self._instances[iid]
        res = self._finish(sid, ok, pause)
        old = ses.request_keys[~ses.is_new]
        step = self.step_keys
        # touched in the policy's commit order, as one call would (tail first: last slice
        # first)
        for j, a in enumerate(self._slice_starts(old.shape[0], ses.inst)):
            if j and pause is not None:
                pause()
                if self._instances.get(iid) is not entry:
                    raise NotFound(f"write session {session_id}: its instance was removed")
            self.match(iid, old[a:a + step], query=QUERY_BATCH, touch=True)
        keep = ~ses.is_new
        keep[np.flatnonzero(ses.is_new)[ok]] = True
        tick = self.tick() if self.reclaim_interval_ms == 0 else None
        return WriteFinish(res.committed, res.failed, info, ses.request_keys[keep], tick)

    def _finish(self, sid: int, ok: np.ndarray, pause: Pause | None = None) -> WriteFinish:
        """Commit/drop a session's blocks; over :attr:`step_keys` of them, in slices in
        the kernel's own order (tail first for a tail-first policy), ``pause`` between
        two (the session is in phase ``finishing`` meanwhile)."""
        ses = self._sessions[sid]
        if ses.tag:
            self._tags.pop(ses.tag, None)
        n = ses.keys.shape[0]
        step = self.step_keys
        now = self.clock.now_ns()
        if n <= step:
            del self._sessions[sid]
            self.events.reserve(n + 4)
            done = self.kernels.finish_write(self.table.t, self.events.arrays, ses.inst,
                                             ses.rows, ses.keys, ok, now)
            return WriteFinish(committed=int(done), failed=int(n - done))
        ses.phase = "finishing"
        starts = self._slice_starts(n, ses.inst)
        done = 0
        try:
            for j, a in enumerate(starts):
                if j and pause is not None:
                    pause()
                    if self._sessions.get(sid) is not ses:  # its instance was removed
                        raise NotFound(f"write session {sid}: its instance was removed")
                b = min(n, a + step)
                self.events.reserve(b - a + 4)
                done += int(self.kernels.finish_write(self.table.t, self.events.arrays,
                                                      ses.inst, ses.rows[a:b], ses.keys[a:b],
                                                      ok[a:b], now))
        finally:
            if self._sessions.get(sid) is ses:
                del self._sessions[sid]
        return WriteFinish(committed=done, failed=n - done)

    def _slice_starts(self, n: int, inst: int) -> list[int]:
        """Where the :attr:`step_keys` slices of ``n`` keys of instance index ``inst``
        begin, in the order its policy commits and touches (tail first: the last slice
        first; each kernel call runs its own slice in that order too)."""
        starts = list(range(0, n, self.step_keys))
        g = int(self.table.t.i_group[inst])
        pname = next((sp.eviction.policy for gi, sp in self._groups.values() if gi == g),
                     DEFAULT_POLICY)
        if get_policy(pname).tail_first:
            starts.reverse()
        return starts

    def pending_sessions(self) -> int:
        """Write sessions not yet finished."""
        return len(self._sessions)

    def expire_sessions(self) -> int:
        """Finish every session past its deadline as all-failed; returns how many."""
        return len(self._expire())

    def _expire(self) -> list[SessionInfo]:
        now = self.clock.now_ns()
        if now < self._next_deadline_ns:  # no session can be due (the reclaimer runs at
            return []                     # every write at interval 0: keep it O(1))
        late = [sid for sid, s in self._sessions.items()
                if s.deadline_ns <= now and s.phase == "open"]
        self._next_deadline_ns = min((s.deadline_ns for sid, s in self._sessions.items()
                                      if s.deadline_ns > now and s.phase == "open"),
                                     default=_NEVER)
        out = []
        for sid in late:
            ses = self._sessions[sid]
            out.append(self._info(sid))
            emit(self.events.arrays, EV_EXPIRED, ses.inst, ses.keys.shape[0], now, sid)
            self._finish(sid, np.zeros(ses.keys.shape[0], dtype=bool))
        return out

    # ------------------------------------------------------------ write-time rules
    def _relocate_unusable(self, iid: str, keys: np.ndarray) -> None:
        """Forget the request's blocks held on unusable storages, so the write places
        them again on a usable one (their one location cannot be read)."""
        rows = self.match(iid, keys, query=QUERY_BATCH, touch=False).rows
        srv = rows >= 0
        if not srv.any():
            return
        bad = np.zeros(rows.shape[0], dtype=bool)
        bad[srv] = ~self.storage.ok_mask[self.table.t.loc[rows[srv]].astype(np.int64)
                                         % STORAGE_SLOTS]
        if bad.any():
            self.remove(iid, keys[bad])

    def _check_key_room(self, iid: str, g: GroupSpec, keys: np.ndarray) -> None:
        """Refuse a write whose new keys would pass the group's ``max_key_count`` (as in
        KVCM the write does not evict: the tick's ``max_key_count`` trigger at
        ``max_key_count x used_percentage`` makes room)."""
        limit = g.max_key_count
        held, serving = self.key_count(g.name)
        n_new = self.count_new(iid, keys)
        if held + n_new > limit:
            raise QuotaExceeded(
                f"instance group {g.name!r}: writing {n_new} new blocks would pass its "
                f"max_key_count of {limit} ({serving} blocks serving, {held - serving} "
                f"being written); the reclaimer frees blocks above max_key_count x "
                f"used_percentage")

    def _count_evicted(self, trigger: str, n: int) -> None:
        if n:
            self.evicted_by_trigger[trigger] = self.evicted_by_trigger.get(trigger, 0) + n

    def inst_bytes(self) -> np.ndarray:
        """Bytes of one block per instance index (what the byte limits count)."""
        w = np.zeros(max(1, self.table.t.i_group.shape[0]), dtype=np.int64)
        for ii, spec in self._instances.values():
            w[ii] = spec.block_bytes
        return w

    def _limits(self, g: GroupSpec, slot: int) -> list[tuple[str, np.ndarray, int, bool]]:
        """The byte limits a write of group ``g`` to storage ``slot`` must keep:
        ``(name, slots, cap, all_groups)``: the group's quota for the storage's type
        and the storage's own ``capacity_bytes`` (every group's blocks on it)."""
        st = self.storage.at(slot)
        if st is None:
            return []
        out: list[tuple[str, np.ndarray, int, bool]] = []
        tq = g.type_quota(st.type)
        if tq:
            out.append((f"storage type {st.type!r} quota of group {g.name!r}",
                        self.storage.type_slots(st.type), tq, False))
        if st.capacity_bytes:
            one = np.zeros(STORAGE_SLOTS, dtype=bool)
            one[slot] = True
            out.append((f"capacity of storage {st.name!r}", one, st.capacity_bytes, True))
        return out

    def held_bytes(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Bytes (or ``weights`` per instance index) per storage slot of every group's
        blocks, WRITING + SERVING."""
        if weights is None:
            weights = self.inst_bytes()
        held = np.zeros(STORAGE_SLOTS, dtype=np.int64)
        for name in self._groups:
            held += self.slot_usage(name, weights)[0]
        return held

    def _over_limit(self, g: GroupSpec, limits: list[tuple[str, np.ndarray, int, bool]],
                    need: int, weights: np.ndarray
                    ) -> tuple[np.ndarray, int, int, int, bool] | None:
        """The first of ``limits`` that ``need`` more bytes would pass, as ``(slots, cap,
        used, evictable, all_groups)``, or None when they fit."""
        if not limits:
            return None
        mine, mine_srv = self.slot_usage(g.name, weights)
        every = self.held_bytes(weights) if any(a for *_, a in limits) else mine
        for _, slots, cap, all_groups in limits:
            used = int((every if all_groups else mine)[slots].sum())
            if used + need > cap:
                return slots, cap, used, int(mine_srv[slots].sum()), all_groups
        return None

    def _place(self, iid: str, ispec: InstanceSpec, g: GroupSpec, keys: np.ndarray) -> int:
        """The storage slot of a write's new blocks.

        The first usable storage in the group's ``storage_candidates`` order (every
        storage when it lists none) where the new blocks' bytes fit both the group's
        quota for the storage's type and the storage's ``capacity_bytes`` (counting
        every group's blocks on it); when none has room as it is, the first one where
        evicting this group's blocks (policy rank order, only blocks on that type or
        that storage) makes room, after that eviction. Another group's blocks are never
        evicted to make room.

        Raises:
            QuotaExceeded: no candidate is usable, or none has room even after eviction.
        """
        reg = self.storage
        cands = list(g.storage_candidates) or [s.name for s in reg.specs()]
        if not cands:
            return 0
        usable = [c for c in cands if reg.usable(c)]
        if not usable:
            why = ", ".join(f"{c}: unhealthy ({reg.health(c)})" if reg.health(c) is not None
                            else f"{c}: disabled" if reg.slot(c) else f"{c}: not added"
                            for c in cands)
            raise QuotaExceeded(f"instance group {g.name!r}: no usable storage among "
                                f"{cands} ({why})")
        limits = {c: self._limits(g, reg.slot(c)) for c in usable}
        first = usable[0]
        if not limits[first]:
            return reg.slot(first)
        n_new = self.count_new(iid, keys)
        need = n_new * ispec.block_bytes
        if need == 0:
            return reg.slot(first)
        weights = self.inst_bytes()
        for c in usable:
            if self._over_limit(g, limits[c], need, weights) is None:
                return reg.slot(c)
        for c in usable:
            while True:
                need = self.count_new(iid, keys) * ispec.block_bytes
                over = self._over_limit(g, limits[c], need, weights)
                if over is None:
                    return reg.slot(c)
                slots, cap, used, evictable, all_groups = over
                if used - evictable + need > cap:
                    break
                n, _ = self.evict_on_slots(g.name, slots, used + need - cap, weights)
                self._count_evicted("write_storage_capacity" if all_groups
                                    else "write_storage_type", n)
                if n == 0:  # pragma: no cover - defensive
                    break
        why = "; ".join(f"{c}: " + ", ".join(f"{name} ({cap} bytes)"
                                             for name, _, cap, _ in limits[c])
                        for c in usable if limits[c])
        raise QuotaExceeded(f"instance group {g.name!r}: no room for {n_new} new blocks "
                            f"({need} bytes) on any usable storage ({why})")

    # ================================================================ removal
    def remove(
        self, instance_id: str, keys: Sequence[int] | np.ndarray, *,
        mask: np.ndarray | None = None, pause: Pause | None = None,
    ) -> int:
        """Delete the keys' blocks (masked keys are kept); returns the number removed.

        Over :attr:`step_keys` keys, in slices with ``pause`` between two.

        Raises:
            InstanceNotFound: the instance is unknown (or was removed during a ``pause``).
        """
        ii, _ = self._need_instance(instance_id)
        entry = self._instances[instance_id]
        k = _keys(keys)
        m, has = _mask(mask, k.shape[0])
        now = self.clock.now_ns()
        step = self.step_keys
        n = 0
        for a in range(0, max(1, k.shape[0]), step):
            if a and pause is not None:
                pause()
                if self._instances.get(instance_id) is not entry:
                    raise InstanceNotFound(f"instance {instance_id!r} was removed during "
                                           "the removal")
            b = min(k.shape[0], a + step)
            self.events.reserve(b - a + 4)
            n += int(self.kernels.remove_keys(self.table.t, self.events.arrays, ii, k[a:b],
                                              m[a:b] if has else m, has, now))
        return n

    def trim(
        self,
        instance_id: str | None = None,
        *,
        begin_ns: int | None = None,
        end_ns: int | None = None,
        pause: Pause | None = None,
    ) -> int:
        """Remove blocks (of one instance, or all) written in ``[begin_ns, end_ns)``.

        With ``pause``, the table is scanned in slices of rows (those in use when the
        trim began), ``pause`` between two.

        Raises:
            InstanceNotFound: the instance is unknown (or was removed during a ``pause``).
        """
        ii = -1 if instance_id is None else self._need_instance(instance_id)[0]
        entry = None if instance_id is None else self._instances[instance_id]
        lo = np.iinfo(np.int64).min if begin_ns is None else int(begin_ns)
        hi = np.iinfo(np.int64).max if end_ns is None else int(end_ns)
        now = self.clock.now_ns()
        hwm = int(self.table.t.meta[M_HWM])
        step = hwm if pause is None else max(1, self.step_keys * 8)
        n = 0
        for r0 in range(0, max(1, hwm), max(1, step)):
            if r0 and pause is not None:
                pause()
                if instance_id is not None and self._instances.get(instance_id) is not entry:
                    raise InstanceNotFound(f"instance {instance_id!r} was removed during "
                                           "the trim")
            r1 = min(hwm, r0 + step)
            self.events.reserve(r1 - r0 + 4)
            n += int(self.kernels.trim(self.table.t, self.events.arrays, ii, lo, hi, now, r0,
                                       r1))
        return n

    # ================================================================ reclaim
    def reclaim(self, group: str | None = None) -> int:
        """Evict every group (or one) down to quota x used_percentage; returns blocks."""
        names = [group] if group is not None else list(self._groups)
        total = 0
        now = self.clock.now_ns()
        for name in names:
            gi, spec = self._need_group(name)
            self.events.reserve(int(self.table.used_rows) + 4)
            n = self.kernels.evict_to(self.table.t, self.events.arrays, gi, -1,
                                      int(self.table.t.g_cap[gi]), now,
                                      spec.delay_before_delete_ms == 0)
            total += int(n)
        return total

    def reap(self) -> int:
        """Free blocks whose delayed deletion is due (each group's ``delay_before_delete_ms``)."""
        now = self.clock.now_ns()
        delays = [s.delay_before_delete_ms for _, s in self._groups.values()]
        if not delays or max(delays) == 0:
            return 0
        t = self.table.t
        cutoff = np.full(t.g_used.shape[0], now, dtype=np.int64)
        for gi, spec in self._groups.values():
            cutoff[gi] = now - spec.delay_before_delete_ms * 1_000_000
        return int(self.kernels.reap_deleting_by_group(t, cutoff, now))

    # ================================================================ the reclaimer
    def tick(self) -> TickReport:
        """Run the reclaimer once, at the clock's time: expire overdue write sessions,
        run every reclaim trigger, reap delayed deletions.

        Triggers, each down to its limit x the group's ``used_percentage``:

        * ``quota``: the group's usage (its unit) passed ``quota x used_percentage``;
          evicts in the group's eviction order and mode.
        * ``max_key_count``: the group's keys (blocks WRITING or SERVING) passed
          ``max_key_count x used_percentage``; evicts that many blocks in the group's
          order and mode (never more in the precise modes).
        * ``storage_type``: the bytes of the group's blocks on storages of one type
          passed that type's quota x ``used_percentage``; evicts only blocks on that
          type, in the policy's rank order (:meth:`evict_on_slots`).
        * ``storage_capacity``: every group's bytes on one storage passed its
          ``capacity_bytes`` (no watermark); each group with blocks there gives back its
          share of the excess (by its serving bytes there, rounded up).

        DELETING blocks count as freed.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock(), reclaim_interval_ms=1000)
            >>> m.create_group(GroupSpec("g", quota_blocks=10, used_percentage=0.5))
            >>> _ = m.register_instance(InstanceSpec("i", "g"))
            >>> w = m.start_write("i", range(8)); _ = m.finish_write(w.session_id, [True] * 8)
            >>> r = m.tick(); r.reclaimed, r.reclaims[0].trigger, m.usage()[0].used
            (3, 'quota', 5)
        """
        now = self.clock.now_ns()
        expired = self._expire()
        reclaims: list[Reclaim] = []
        t = self.table.t
        for name, (gi, spec) in self._groups.items():
            used, cap = int(t.g_used[gi]), spec.capacity_units()
            if spec.quota_units() > 0 and used > cap:
                n = self.reclaim(name)
                self._count_evicted("quota", n)
                reclaims.append(Reclaim("quota", group=name, blocks=n, used=used, capacity=cap))
        reclaims += self._reclaim_keys_and_types()
        reclaims += self._reclaim_storage_capacity()
        reaped = self.reap()
        return TickReport(now, tuple(expired), tuple(reclaims), reaped)

    def advance_to(self, now_ns: int) -> list[TickReport]:
        """Move a manual clock forward to ``now_ns``, running the reclaimer at each due
        time on the way (``reclaim_interval_ms`` N > 0: at every multiple of N ms, so
        two managers moved through the same times tick at the same times). Ticks with
        nothing between them but time reduce to the first and the last (the ones between
        would find nothing over its limit and the last one's expiry and reaping cover
        theirs). A time in the past changes nothing.

        Raises:
            InvalidArgument: the clock cannot be set (a wall clock).
        """
        clock = self.clock
        set_ = getattr(clock, "set", None)
        if set_ is None:
            raise InvalidArgument("advance_to needs a manual clock")
        cur = clock.now_ns()
        out: list[TickReport] = []
        iv = self.reclaim_interval_ms * 1_000_000
        if iv > 0 and now_ns > cur:
            first = (cur // iv + 1) * iv
            if first <= now_ns:
                last = now_ns // iv * iv
                for due in ((first,) if last == first else (first, last)):
                    set_(due)
                    out.append(self.tick())
        if now_ns > clock.now_ns():
            set_(int(now_ns))
        return out

    def _reclaim_keys_and_types(self) -> list[Reclaim]:
        """The ``max_key_count`` and ``storage_type`` triggers (see :meth:`tick`)."""
        out: list[Reclaim] = []
        weights: np.ndarray | None = None
        for _, g in self._groups.values():
            if g.max_key_count > 0:
                held, _ = self.key_count(g.name)
                target = int(g.max_key_count * g.used_percentage)
                if held > target:
                    n = self.evict_blocks(g.name, held - target)
                    self._count_evicted("max_key_count", n)
                    out.append(Reclaim("max_key_count", group=g.name, blocks=n, used=held,
                                       capacity=target, limit=g.max_key_count))
            if g.storage_type_quotas:
                if weights is None:
                    weights = self.inst_bytes()
                used_slots, _ = self.slot_usage(g.name, weights)
                for stype, cap in g.storage_type_quotas:
                    slots = self.storage.type_slots(stype)
                    used = int(used_slots[slots].sum())
                    target = int(cap * g.used_percentage)
                    if used <= target:
                        continue
                    n, freed = self.evict_on_slots(g.name, slots, used - target, weights)
                    self._count_evicted("storage_type", n)
                    out.append(Reclaim("storage_type", group=g.name, storage_type=stype,
                                       blocks=n, freed=freed, used=used, capacity=target,
                                       limit=cap))
        return out

    def _reclaim_storage_capacity(self) -> list[Reclaim]:
        """The ``storage_capacity`` trigger (see :meth:`tick`)."""
        reg = self.storage
        limited = [st for st in reg.specs() if st.capacity_bytes]
        if not limited:
            return []
        weights = self.inst_bytes()
        usage = {name: self.slot_usage(name, weights) for name in self._groups}
        out: list[Reclaim] = []
        for st in limited:
            i = reg.slot(st.name)
            used = sum(int(held[i]) for held, _ in usage.values())
            excess = used - st.capacity_bytes
            if excess <= 0:
                continue
            share = {g: int(srv[i]) for g, (_, srv) in usage.items() if srv[i] > 0}
            serving = sum(share.values())
            if serving == 0:
                continue
            one = np.zeros(STORAGE_SLOTS, dtype=bool)
            one[i] = True
            blocks = freed = 0
            for g, b in sorted(share.items()):
                amount = min(b, -(-excess * b // serving))
                n, f = self.evict_on_slots(g, one, amount, weights)
                self._count_evicted("storage_capacity", n)
                blocks += n
                freed += f
            out.append(Reclaim("storage_capacity", storage=st.name, blocks=blocks,
                               freed=freed, used=used, capacity=st.capacity_bytes))
            if blocks:  # usage changed: recount for the next storage
                usage = {name: self.slot_usage(name, weights) for name in self._groups}
        return out

    # ================================================================ request flows
    def client_read(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        query: str = QUERY_PREFIX,
        mask: np.ndarray | None = None,
        sw_size: int = 0,
        touch: bool = True,
    ) -> MatchResult:
        """A client's read (``getCacheLocation``; a peek with ``touch=False``): :meth:`match`
        where a block on an unusable storage is a miss under every query rule.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock())
            >>> m.create_group(GroupSpec("g"))
            >>> _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.client_request("i", [1, 2])
            >>> m.client_read("i", [1, 2, 3]).hit_blocks
            2
        """
        st = self.storage
        return self.match(instance_id, keys, query=query, mask=mask, sw_size=sw_size,
                          touch=touch, slot_ok=None if st.all_ok else st.ok_mask)

    def client_request(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        mask: np.ndarray | None = None,
        read: bool = True,
        write: bool = True,
        query: str = QUERY_PREFIX,
        timeout_s: float = 30.0,
    ) -> AccessResult:
        """One request the way a client of the server makes it: a read
        (``getCacheLocation``: ``query`` match, hits refreshed), ``startWriteCache`` of
        every key, ``finishWriteCache`` with every new block written (which refreshes
        the keys it found held and, at ``reclaim_interval_ms`` 0, runs the reclaimer). A
        refused write (a limit) writes nothing, as the server's client sees
        ``REACH_MAX_ENTITY_CAPACITY``.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock())
            >>> m.create_group(GroupSpec("g", quota_blocks=3))
            >>> _ = m.register_instance(InstanceSpec("i", "g"))
            >>> [m.client_request("i", k).hit_blocks for k in ([1, 2], [1, 2, 3], [4], [1, 2])]
            [0, 2, 0, 2]
        """
        ii, ispec = self._need_instance(instance_id)
        gi = self._groups[ispec.group][0]
        t = self.table.t
        ev0 = int(t.g_evicted[gi])
        k = _keys(keys)
        hit = ihit = iread = 0
        if read:
            m = self.client_read(instance_id, k, query=query, mask=mask)
            hit = m.hit_blocks
            if mask is not None:
                iread = ihit = int(np.count_nonzero(mask))
        if write and k.shape[0]:
            try:
                ws = self.start_write(instance_id, k, timeout_s=timeout_s)
            except QuotaExceeded:
                ws = None
            if ws is not None:
                self.finish_write(ws.session_id, np.ones(ws.new_keys.shape[0], dtype=bool))
        return AccessResult(hit, ihit, iread, int(t.g_evicted[gi]) - ev0, int(t.i_blocks[ii]),
                            int(t.g_used[gi]))

    def run_combined(
        self,
        req_inst: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        keys: np.ndarray,
        mask: np.ndarray | None,
        kind: np.ndarray,
        start: int,
        end: int,
        outs: Sequence[np.ndarray],
        *,
        batch: bool = False,
    ) -> None:
        """Run requests ``[start, end)`` as the replay contract's combined request (the
        batch kernel; the table grows as needed).

        ``outs`` are six int64 arrays indexed by request: hit blocks, internal hits,
        internal reads, the instance's cached blocks after it, the group's usage after
        it and the blocks it evicted. At ``reclaim_interval_ms`` 0 every write evicts to
        the watermark (the contract); at N > 0 a write evicts only to the hard quota and
        the reclaimer runs at its due times between requests (:meth:`advance_to`; a
        manual clock), its evictions counted in no request.
        """
        tbl = self.table
        n_keys = np.diff(offsets[start:end + 1]) if end > start else np.zeros(0, np.int64)
        max_len = int(n_keys.max()) if n_keys.shape[0] else 0
        tmp_rows = np.zeros(max(1, max_len), dtype=np.int32)
        tmp_new = np.zeros(max(1, max_len), dtype=bool)
        has_mask = mask is not None
        m = mask if mask is not None else np.zeros(0, dtype=bool)
        iv = self.reclaim_interval_ms * 1_000_000
        q = start
        if end <= start:  # loads the kernel (callers time the replay without the compile)
            self.kernels.replay_requests(tbl.t, self.events.arrays, req_inst, ts, offsets, keys, m,
                              has_mask, kind, start, start, batch, True, outs[0], outs[1],
                              outs[2], outs[3], outs[4], outs[5], tmp_rows, tmp_new)
            return
        while q < end:
            stop = end
            t = tbl.t
            saved = None
            if iv > 0:
                self.advance_to(int(ts[q]))
                nxt = (self.clock.now_ns() // iv + 1) * iv
                stop = q + int(np.searchsorted(ts[q:end], nxt, side="left"))
                saved = t.g_cap.copy()
                t.g_cap[:] = t.g_quota  # writes keep the hard quota; the tick the watermark
            try:
                q2 = int(self.kernels.replay_requests(
                    t, self.events.arrays, req_inst, ts, offsets, keys, m, has_mask, kind, q,
                    stop, batch, True, outs[0], outs[1], outs[2], outs[3], outs[4], outs[5],
                    tmp_rows, tmp_new))
            finally:
                if saved is not None:
                    t.g_cap[:] = saved
            if iv > 0 and q2 > q:
                self.advance_to(int(ts[q2 - 1]))
            if q2 < stop:
                tbl.ensure_rows(tbl.rows + max_len)
            q = q2

    # ================================================================ views for adapters
    def rows_slots(self, rows: np.ndarray) -> np.ndarray:
        """The storage slot of each table row (-1 where the row is < 0)."""
        r = np.asarray(rows, dtype=np.int64)
        loc = self.table.t.loc[np.maximum(r, 0)].astype(np.int64)
        return np.where(r >= 0, loc, -1)

    def block_records(self, instance_id: str, keys: Sequence[int] | np.ndarray) -> BlockDump:
        """The SERVING blocks of ``keys`` (absent ones skipped), as persistence saves them."""
        k = _keys(keys)
        rows = self.match(instance_id, k, query=QUERY_BATCH, touch=False).rows
        sel = rows >= 0
        r = rows[sel]
        t = self.table.t
        return BlockDump(instance_id=(instance_id,) * int(r.shape[0]), key=k[sel].copy(),
                         state=t.state[r].copy(), t_write=t.t_write[r].copy(),
                         t_access=t.t_access[r].copy(), access_count=t.acc[r].astype(np.int64),
                         loc=t.loc[r].copy())

    def recency(self, rows: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """For table ``rows`` (e.g. those reads refreshed), per instance the SERVING ones'
        ``(instance_id, keys, t_access, access_count)``."""
        t = self.table.t
        r = np.asarray(rows, dtype=np.int64)
        r = r[t.state[r] == SERVING]
        inst = t.inst[r]
        out = []
        for i in np.unique(inst).tolist():
            sel = r[inst == i]
            out.append((self._inst_names[i], t.key[sel].copy(), t.t_access[sel].copy(),
                        t.acc[sel].astype(np.int64)))
        return out

    # ================================================================ server triggers
    # Key-count and per-storage-type eviction (the server's max_key_count and
    # quota_config); pure, and never on the replay path.
    def key_count(self, group: str) -> tuple[int, int]:
        """``(held, serving)`` blocks of a group: held = WRITING + SERVING (the keys a
        ``max_key_count`` limits), serving = the evictable ones."""
        self._need_group(group)
        t = self.table.t
        members = [ii for ii, s in self._instances.values() if s.group == group]
        serving = int(sum(int(t.i_blocks[i]) for i in members))
        return serving + int(sum(int(t.i_pending[i]) for i in members)), serving

    def count_new(self, instance_id: str, keys: Sequence[int] | np.ndarray) -> int:
        """How many blocks ``start_write(instance_id, keys)`` would allocate now."""
        ii, _ = self._need_instance(instance_id)
        k = _keys(keys)
        return int(self.kernels.mark_fresh(self.table.t, ii, k, first_occurrence(k)))

    def evict_blocks(self, group: str, count: int, *, writer: str | None = None) -> int:
        """Evict ``count`` blocks of a group in its eviction order and mode (fewer when
        fewer are evictable); returns how many were evicted.

        Runs the group's ordinary eviction (``evict_to``) with unit targets derived from
        the remaining block count and the group's cheapest block, so it never evicts
        more than ``count`` blocks in the precise modes (the rough modes evict whole
        batches, as they do for the quota). ``writer`` is the writing instance (the
        ``instance_*`` modes evict from it first).

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock())
            >>> m.create_group(GroupSpec("g")); _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.access("i", [1, 2, 3, 4])
            >>> m.evict_blocks("g", 3), m.cached_keys("i").tolist()
            (3, [1])
        """
        gi, spec = self._need_group(group)
        wi = -1 if writer is None else self._need_instance(writer)[0]
        t = self.table.t
        costs = [int(t.i_cost[ii]) for ii, s in self._instances.values() if s.group == group]
        if count <= 0 or not costs:
            return 0
        unit = max(1, min(costs))
        total = 0
        now = self.clock.now_ns()
        while total < count:
            self.events.reserve(int(self.table.used_rows) + 4)
            target = int(t.g_used[gi]) - (count - total) * unit
            n = int(self.kernels.evict_to(t, self.events.arrays, gi, wi, max(target, -1), now,
                               spec.delay_before_delete_ms == 0))
            if n == 0:
                break
            total += n
        return total

    def rows_slot(self, rows: np.ndarray) -> int:
        """The storage slot all of ``rows`` (table rows, e.g. a read's hits) are on, or
        -1 when there are none, one is not a row (< 0) or they are on several slots.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> from kvsim.core.spec import GroupSpec, InstanceSpec
            >>> m = CacheManager(ManualClock())
            >>> m.create_group(GroupSpec("g", quota_blocks=4))
            >>> _ = m.register_instance(InstanceSpec("i0", "g"))
            >>> w = m.start_write("i0", [1, 2]); _ = m.finish_write(w.session_id, [True, True])
            >>> m.rows_slot(m.match("i0", [1, 2]).rows), m.rows_slot(m.match("i0", [1, 5]).rows)
            (0, -1)
        """
        return int(self.kernels.common_slot(self.table.t.loc, np.asarray(rows, dtype=np.int32)))

    def slot_usage(self, group: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per storage slot, the weight of a group's blocks: ``(held, serving)``.

        From the per-slot block counts when the manager keeps them (``slot_counts``),
        else by a pass over the table (:meth:`slot_usage_scan`); both give the same.

        Args:
            group: the group.
            weights: int64 per instance index (e.g. a block's bytes).

        Returns:
            Two int64 arrays of :data:`STORAGE_SLOTS`: WRITING + SERVING, and SERVING.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock(), slot_counts=True)
            >>> m.create_group(GroupSpec("g")); _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.access("i", [1, 2, 3])
            >>> m.set_loc(m.match("i", [3], query="batch").rows, 5)   # key 3 on slot 5
            >>> held, serving = m.slot_usage("g", np.array([10]))
            >>> int(held[0]), int(held[5]), int(serving[5])
            (20, 10, 10)
        """
        t = self.table.t
        if not t.meta[M_SLOT_COUNTS]:
            return self.slot_usage_scan(group, weights)
        gi, _ = self._need_group(group)
        n = len(self._inst_names)
        idx = np.flatnonzero(t.i_group[:n] == gi)
        if idx.shape[0] == 0:
            return (np.zeros(STORAGE_SLOTS, dtype=np.int64),
                    np.zeros(STORAGE_SLOTS, dtype=np.int64))
        w = np.asarray(weights, dtype=np.int64)[idx]
        counts = t.i_slots[idx]  # [instances, slots, 2]
        return ((counts[:, :, 0] * w[:, None]).sum(axis=0),
                (counts[:, :, 1] * w[:, None]).sum(axis=0))

    def slot_usage_scan(self, group: str, weights: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`slot_usage` by a pass over the table's rows (the reference)."""
        gi, _ = self._need_group(group)
        t = self.table.t
        rows = self._group_rows(gi, serving_only=False)
        held = np.zeros(STORAGE_SLOTS, dtype=np.int64)
        serving = np.zeros(STORAGE_SLOTS, dtype=np.int64)
        if rows.shape[0]:
            loc = t.loc[rows].astype(np.int64) % STORAGE_SLOTS
            w = np.asarray(weights, dtype=np.int64)[t.inst[rows]]
            np.add.at(held, loc, w)
            srv = t.state[rows] == SERVING
            np.add.at(serving, loc[srv], w[srv])
        return held, serving

    def set_loc(self, rows: np.ndarray, loc: int | np.ndarray) -> None:
        """Put blocks (table ``rows``; rows < 0 are skipped) on storage slot ``loc`` (one
        for all, or one per row). The only way a block's slot should change: it keeps the
        per-slot counts true.

        Raises:
            InvalidArgument: a slot outside ``0..STORAGE_SLOTS-1``, or as many slots as
                neither 1 nor the rows.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock(), slot_counts=True)
            >>> m.create_group(GroupSpec("g")); _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.access("i", [1, 2])
            >>> rows = m.match("i", [1, 2], query="batch").rows
            >>> m.set_loc(rows, [3, 4])
            >>> m.table.t.loc[rows].tolist(), int(m.slot_usage("g", np.ones(1))[0][3])
            ([3, 4], 1)
        """
        r = np.ascontiguousarray(rows, dtype=np.int32)
        lc = np.ascontiguousarray(np.atleast_1d(np.asarray(loc, dtype=np.int64)))
        if lc.shape[0] not in (1, r.shape[0]):
            raise InvalidArgument(f"set_loc: {lc.shape[0]} slots for {r.shape[0]} rows")
        if ((lc < 0) | (lc >= STORAGE_SLOTS)).any():
            raise InvalidArgument(f"set_loc: storage slots are 0..{STORAGE_SLOTS - 1}")
        if r.shape[0]:
            self.kernels.set_loc(self.table.t, r, lc)

    def evict_on_slots(self, group: str, slots: np.ndarray, amount: int,
                       weights: np.ndarray) -> tuple[int, int]:
        """Evict a group's SERVING blocks whose storage slot is selected, in the policy's
        rank order, until at least ``amount`` weight is freed (or none is left).

        Only blocks on the selected slots leave (no collateral eviction elsewhere). The
        order is the policy's cross-instance rank (what ``group_precise`` compares),
        whatever the group's mode: exact for ``lru``, ``lru_head_first``, ``ttl`` and
        ``lfu``, for ``fifo`` up to blocks written in the same nanosecond and read since
        (ties go to the earlier access stamp), and the
        group-precise approximation for the other policies (sieve's visited bits,
        the leaf constraint of ``leaf_aware_lru``/``cost_aware`` are not consulted).

        Args:
            group: the group.
            slots: bool per storage slot (:data:`STORAGE_SLOTS`).
            amount: weight to free.
            weights: int64 per instance index (the unit of ``amount``).

        Returns:
            ``(blocks, weight)`` evicted.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> m = CacheManager(ManualClock())
            >>> m.create_group(GroupSpec("g")); _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.access("i", [1, 2, 3])
            >>> m.set_loc(m.match("i", [2], query="batch").rows, 1)   # key 2 on slot 1
            >>> on1 = np.zeros(STORAGE_SLOTS, dtype=bool); on1[1] = True
            >>> m.evict_on_slots("g", on1, 5, np.ones(1, dtype=np.int64))
            (1, 1)
            >>> m.cached_keys("i").tolist()
            [1, 3]
        """
        gi, spec = self._need_group(group)
        if amount <= 0:
            return 0, 0
        t = self.table.t
        hwm = int(t.meta[M_HWM])
        buf = np.empty(max(1, hwm), dtype=np.int32)
        n_rows = self.kernels.serving_rows_on_slots(t.state, t.inst, t.loc, t.i_group, hwm, gi,
                                         np.ascontiguousarray(slots, dtype=np.bool_), buf)
        if n_rows == 0:
            return 0, 0
        rows = buf[:n_rows]
        r1 = np.zeros(n_rows, dtype=np.int64)
        r2 = np.zeros(n_rows, dtype=np.int64)
        self.kernels.rank_rows(t, int(t.g_policy[gi]), rows, r1, r2)
        weights = np.asarray(weights, dtype=np.int64)
        # only the first k in rank order can be victims (each weighs at least the group's
        # lightest block): sort just the rows that can be among them, i.e. those whose
        # (r1, r2) is at most the k-th smallest pair (ties included)
        members = np.flatnonzero(t.i_group[:len(self._inst_names)] == gi)
        w_min = int(weights[members].min()) if members.shape[0] else 0
        k = n_rows if w_min <= 0 else min(n_rows, -(-int(amount) // w_min))
        if k < n_rows:
            v1 = np.partition(r1, k - 1)[k - 1]
            less = r1 < v1
            eq = r1 == v1
            j = k - int(np.count_nonzero(less)) - 1  # the k-th pair's place among r1 == v1
            v2 = np.partition(r2[eq], j)[j]
            cut = less | (eq & (r2 <= v2))
            rows, r1, r2 = rows[cut], r1[cut], r2[cut]
        # ties (fifo: one write's blocks share t_write) go to the earlier stamp (commit
        # order unless touched since), then to the lower instance index
        order = np.lexsort((rows, t.inst[rows], t.t_access[rows], r2, r1))
        rows = rows[order]
        w = weights[t.inst[rows]]
        cum = np.cumsum(w)
        k = int(np.searchsorted(cum, amount, side="left")) + 1
        rows = np.ascontiguousarray(rows[:k])
        self.events.reserve(rows.shape[0] + 4)
        n = int(self.kernels.evict_rows(t, self.events.arrays, gi, rows, self.clock.now_ns(),
                             spec.delay_before_delete_ms == 0))
        return n, int(cum[min(k, cum.shape[0]) - 1])

    def _group_rows(self, gi: int, *, serving_only: bool) -> np.ndarray:
        """Rows of group slot ``gi`` that are SERVING (or WRITING too)."""
        t = self.table.t
        hwm = int(t.meta[M_HWM])
        st = t.state[:hwm]
        rows = np.flatnonzero(st == SERVING) if serving_only else np.flatnonzero(
            (st == SERVING) | (st == WRITING))
        return rows[t.i_group[t.inst[rows]] == gi]

    # ================================================================ combined access
    def access(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        mask: np.ndarray | None = None,
        batch: bool = False,
    ) -> AccessResult:
        """One combined read+write request, exactly as the replay contract defines it."""
        ii, ispec = self._need_instance(instance_id)
        k = _keys(keys)
        m, has = _mask(mask, k.shape[0])
        self.table.ensure_rows(k.shape[0])
        self.events.reserve(3 * k.shape[0] + 16)
        out = [np.zeros(1, dtype=np.int64) for _ in range(6)]
        self.kernels.replay_requests(
            self.table.t, self.events.arrays,
            np.array([ii], dtype=np.int32), np.array([self.clock.now_ns()], dtype=np.int64),
            np.array([0, k.shape[0]], dtype=np.int64), k, m, has, np.zeros(1, dtype=np.int8),
            0, 1, batch, self._groups[ispec.group][1].delay_before_delete_ms == 0,
            out[0], out[1], out[2], out[3], out[4], out[5],
            np.zeros(max(1, k.shape[0]), dtype=np.int32), np.zeros(max(1, k.shape[0]), dtype=bool),
        )
        return AccessResult(int(out[0][0]), int(out[1][0]), int(out[2][0]), int(out[5][0]),
                            int(out[3][0]))

    # ================================================================ state
    def usage(self) -> list[GroupUsage]:
        """Per-group usage."""
        t = self.table.t
        out = []
        for name, (gi, spec) in self._groups.items():
            members = [ii for ii, s in self._instances.values() if s.group == name]
            quota = spec.quota_units()
            out.append(GroupUsage(
                name=name, unit=spec.unit, used=int(t.g_used[gi]),
                capacity=spec.capacity_units(), quota=quota,
                serving_blocks=int(sum(t.i_blocks[i] for i in members)),
                pending_blocks=int(sum(t.i_pending[i] for i in members)),
                evicted_blocks=int(t.g_evicted[gi]),
            ))
        return out

    def cached_keys(self, instance_id: str, *, serving_only: bool = True) -> np.ndarray:
        """Sorted keys the instance holds (SERVING, or also WRITING)."""
        ii, _ = self._need_instance(instance_id)
        t = self.table.t
        hwm = int(t.meta[M_HWM])
        st = t.state[:hwm]
        sel = (t.inst[:hwm] == ii) & ((st == SERVING) | (~np.bool_(serving_only) & (st == WRITING)))
        return np.sort(t.key[:hwm][sel])

    # ================================================================ persistence
    def export_blocks(self, instance_id: str | None = None) -> BlockDump:
        """Every WRITING and SERVING block (of one instance, or all), for a snapshot.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> from kvsim.core.spec import GroupSpec, InstanceSpec
            >>> m = CacheManager(ManualClock(5))
            >>> m.create_group(GroupSpec("g")); _ = m.register_instance(InstanceSpec("i", "g"))
            >>> _ = m.access("i", [1, 2])
            >>> d = m.export_blocks(); d.key.tolist(), d.t_write.tolist()
            ([1, 2], [5, 5])
        """
        t = self.table.t
        hwm = int(t.meta[M_HWM])
        st = t.state[:hwm]
        sel = (st == SERVING) | (st == WRITING)
        if instance_id is not None:
            sel &= t.inst[:hwm] == self._need_instance(instance_id)[0]
        rows = np.flatnonzero(sel)
        rows = rows[np.lexsort((t.key[rows], t.inst[rows]))]
        return BlockDump(
            instance_id=tuple(self._inst_names[int(i)] for i in t.inst[rows]),
            key=t.key[rows].copy(), state=t.state[rows].copy(), t_write=t.t_write[rows].copy(),
            t_access=t.t_access[rows].copy(), access_count=t.acc[rows].astype(np.int64),
            loc=t.loc[rows].copy(),
        )

    @property
    def row_capacity(self) -> int:
        """Rows the block table has now (row numbers are below this)."""
        return self.table.rows

    def reserve_rows(self, n: int, *, headroom: float = 0.125) -> None:
        """Make room for ``n`` more blocks in one step (a restart sizes the table from
        the persisted count instead of doubling as it restores).

        When the table is too small it grows once, to the rows in use plus ``n`` plus
        ``headroom`` of that (so the first writes after a restart do not copy the whole
        table again); when it is large enough nothing changes.
        """
        need = self.table.used_rows + max(0, int(n))
        if need > self.table.rows:
            self.table.grow_to(need + int(need * max(0.0, headroom)))

    def restore_blocks(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        t_write: Sequence[int] | np.ndarray,
        t_access: Sequence[int] | np.ndarray,
        access_count: Sequence[int] | np.ndarray | None = None,
        loc: Sequence[int] | np.ndarray | None = None,
        bulk: bool = True,
    ) -> int:
        """Re-create SERVING blocks from persisted metadata (a restart); returns how many
        were committed (a quota smaller than the set evicts the oldest again).

        Blocks enter the policy oldest access first, so recency order survives; their
        write and access times and access counts are the persisted ones (the count is
        set before the policy's insert hook, so frequency policies file the block
        under it). Keys already present are left alone. Quotas apply as for any write.
        No events are recorded.

        When the group's quota holds every block (the restart case) one kernel pass
        inserts them all (:func:`kvsim.core.kernels.restore_serving`); otherwise, or
        with ``bulk=False``, they go through ``start_write`` + ``finish_write`` in
        chunks of 4096 (a chunk that does not fit evicts first, or splits). Both give
        the same table. Call :meth:`reserve_rows` first to size the table once.

        Example:
            >>> from kvsim.core.clock import ManualClock
            >>> from kvsim.core.spec import GroupSpec, InstanceSpec
            >>> m = CacheManager(ManualClock(100))
            >>> m.create_group(GroupSpec("g", quota_blocks=2))
            >>> _ = m.register_instance(InstanceSpec("i", "g"))
            >>> m.restore_blocks("i", [7, 8, 9], t_write=[1, 2, 3], t_access=[30, 10, 20])
            3
            >>> m.cached_keys("i").tolist()   # 8, the least recent, did not fit
            [7, 9]
        """
        ii, ispec = self._need_instance(instance_id)
        k = _keys(keys)
        n = k.shape[0]
        tw = np.asarray(t_write, dtype=np.int64).reshape(-1)
        ta = np.asarray(t_access, dtype=np.int64).reshape(-1)
        acc = (np.zeros(n, np.int64) if access_count is None
               else np.asarray(access_count, dtype=np.int64).reshape(-1))
        lc = np.zeros(n, np.int8) if loc is None else np.asarray(loc, dtype=np.int8).reshape(-1)
        for name, arr in (("t_write", tw), ("t_access", ta), ("access_count", acc), ("loc", lc)):
            if arr.shape[0] != n:
                raise InvalidArgument(f"{name} has {arr.shape[0]} entries for {n} keys")
        if n == 0:
            return 0
        gspec = self._groups[ispec.group][1]
        in_order = n < 2 or bool(np.all(ta[1:] >= ta[:-1]))
        order = np.arange(n, dtype=np.int64) if in_order else access_order(ta)
        gi = self._groups[ispec.group][0]
        quota = int(self.table.t.g_quota[gi])
        room = quota - int(self.table.t.g_used[gi])
        if bulk and (quota <= 0 or n * int(self.table.t.i_cost[ii]) <= room):
            self.table.ensure_rows(n)
            if not in_order and n > _RESTORE_CHUNK:
                # one gather per column into access order, so the kernel reads them in
                # sequence (measured: 5 random reads per block cost it ~2x)
                k, tw, ta, acc, lc = (a[order] for a in (k, tw, ta, acc, lc))
                order = np.arange(n, dtype=np.int64)
            chunk = min(_RESTORE_CHUNK, n)
            return int(self.kernels.restore_serving(
                self.table.t, ii, k, tw, ta, acc, lc, order, chunk,
                np.empty(chunk, dtype=np.int32)))
        tail_first = get_policy(gspec.eviction.policy).tail_first
        done = 0
        for c0 in range(0, n, _RESTORE_CHUNK):
            done += self._restore_chunk(ii, ispec, order[c0:c0 + _RESTORE_CHUNK], k, tw, ta,
                                        acc, lc, tail_first)
        return done

    def _restore_chunk(self, ii: int, ispec: InstanceSpec, idx: np.ndarray, k: np.ndarray,
                       tw: np.ndarray, ta: np.ndarray, acc: np.ndarray, lc: np.ndarray,
                       tail_first: bool) -> int:
        """Commit ``idx`` (oldest access first) in one write; one by one if it cannot fit."""
        if tail_first:
            idx = idx[::-1]  # tail-first commit walks the batch from its end
        m = idx.shape[0]
        self.table.ensure_rows(m)
        self.events.reserve(3 * m + 16)
        rows = np.full(m, -1, dtype=np.int32)
        gspec = self._groups[ispec.group][1]
        now = int(ta[idx].max())
        kk = np.ascontiguousarray(k[idx])
        isnew = first_occurrence(kk)
        if self.kernels.start_write(self.table.t, self.events.arrays, ii, kk, now, rows, isnew,
                         gspec.delay_before_delete_ms == 0) < 0:
            if m == 1:
                return 0
            half = m // 2
            fwd = idx[::-1] if tail_first else idx
            return (self._restore_chunk(ii, ispec, fwd[:half], k, tw, ta, acc, lc, tail_first)
                    + self._restore_chunk(ii, ispec, fwd[half:], k, tw, ta, acc, lc, tail_first))
        t = self.table.t
        new = rows[isnew]
        sel = idx[isnew]
        self.set_loc(new, lc[sel])
        # the persisted count before the policy's insert hook (lfu files by it)
        t.acc[new] = np.minimum(acc[sel], np.iinfo(np.int16).max).astype(np.int16)
        done = self.kernels.finish_write(t, self.events.arrays, ii, new, kk[isnew],
                              np.ones(new.shape[0], dtype=bool), now)
        t.t_write[new] = tw[sel]
        # the persisted access times (unique when they came from this core), made
        # strictly increasing in commit order; later stamps stay above them all
        c_rows, c_sel = (new[::-1], sel[::-1]) if tail_first else (new, sel)
        if c_rows.shape[0]:
            ar = np.arange(c_sel.shape[0], dtype=np.int64)
            vals = ar + np.maximum.accumulate(ta[c_sel] - ar)
            t.t_access[c_rows] = vals
            t.meta[M_STAMP] = max(int(t.meta[M_STAMP]), int(vals[-1]))
        return int(done)

    def sessions(self) -> list[SessionInfo]:
        """Pending write sessions (for persistence and admin views)."""
        return [self._info(sid) for sid, s in self._sessions.items() if s.phase == "open"]

    def restore_session(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        session_id: int,
        deadline_ns: int,
        loc: int = 0,
        request_keys: Sequence[int] | np.ndarray | None = None,
        is_new: Sequence[bool] | np.ndarray | None = None,
        tag: str = "",
        done: int = 0,
    ) -> WriteStart:
        """Re-open a persisted write session: its keys become WRITING again under the
        same id and deadline (a past deadline expires at the next ``expire_sessions``).

        ``request_keys``/``is_new`` (the start request's keys and which were new) are
        kept when they agree with ``keys``; otherwise the request is ``keys``, all new.
        ``done``: the start's new keys before ``keys`` that a finish interrupted by the
        restart made final (see :class:`SessionInfo`): a finish then takes a mask of
        the start's count, ignoring those.

        Raises:
            DuplicateEntity: the session id (or tag) is in use.
            QuotaExceeded: the group has no room for the blocks.
        """
        ii, ispec = self._need_instance(instance_id)
        sid = int(session_id)
        if sid in self._sessions:
            raise DuplicateEntity(f"write session {sid} exists")
        if tag and tag in self._tags:
            raise DuplicateEntity(f"write session tag {tag[:40]!r} is in use")
        k = _keys(keys)
        self.table.ensure_rows(k.shape[0])
        self.events.reserve(2 * k.shape[0] + 16)
        rows = np.full(k.shape[0], -1, dtype=np.int32)
        isnew = first_occurrence(k)
        gspec = self._groups[ispec.group][1]
        if self.kernels.start_write(self.table.t, self.events.arrays, ii, k, self.clock.now_ns(),
                                    rows, isnew, gspec.delay_before_delete_ms == 0) < 0:
            raise QuotaExceeded(f"group {gspec.name!r}: no room to restore session {sid}")
        self.set_loc(rows[isnew], loc)
        new_keys = k[isnew].copy()
        rk = None if request_keys is None else _keys(request_keys)
        rn = None if is_new is None else np.asarray(is_new, dtype=bool).reshape(-1)
        if (rk is None or rn is None or rn.shape != rk.shape
                or not np.array_equal(rk[rn], new_keys)):
            rk, rn = new_keys.copy(), np.ones(new_keys.shape[0], dtype=bool)
        self._sessions[sid] = _Session(ii, rows[isnew].copy(), new_keys, int(deadline_ns),
                                       rk, rn, int(loc), tag, done=max(0, int(done)))
        self._next_deadline_ns = min(self._next_deadline_ns, int(deadline_ns))
        if tag:
            self._tags[tag] = sid
        self._next_sid = max(self._next_sid, sid + 1)
        return WriteStart(sid, isnew, k[isnew].copy(), int(deadline_ns), "", int(loc), tag)

    def drain_events(self) -> list[Event]:
        """Recorded events since the last drain."""
        return self.events.drain()


def access_order(ta: np.ndarray) -> np.ndarray:
    """The stable ascending order of int64 ``ta`` (``np.argsort(ta, kind="stable")``),
    by the core's radix sort (:func:`kvsim.core.kernels.radix_argsort`) for large
    arrays.

    Example:
        >>> access_order(np.array([30, 10, 20, 10])).tolist()
        [1, 3, 2, 0]
    """
    a = np.ascontiguousarray(ta, dtype=np.int64)
    n = a.shape[0]
    if n < 4096:
        return np.argsort(a, kind="stable")
    out = np.empty(n, np.int64)
    K.radix_argsort(a, out, np.empty(n, np.int64), np.empty(n, np.uint64),
                    np.empty(n, np.uint64), np.empty(K.RADIX_BUCKETS, np.int64))
    return out


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Bool per key: True at the first position of each distinct key (O(n log n)).

    Example:
        >>> first_occurrence(np.array([5, 3, 5, 7, 3])).tolist()
        [True, True, False, True, False]
    """
    out = np.zeros(keys.shape[0], dtype=bool)
    if keys.shape[0]:
        out[np.unique(keys, return_index=True)[1]] = True
    return out


def _keys(keys: Sequence[int] | np.ndarray) -> np.ndarray:
    try:
        k = np.asarray(keys, dtype=np.int64)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgument(f"block_keys must be int64 values: {e}") from None
    if k.ndim != 1:
        raise InvalidArgument("block_keys must be a flat list")
    return np.ascontiguousarray(k)


def _mask(mask: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    if mask is None:
        return np.zeros(0, dtype=bool), False
    m = np.asarray(mask, dtype=bool)
    if m.shape != (n,):
        raise InvalidArgument(f"block_mask has {m.shape[0] if m.ndim else 0} entries, keys {n}")
    return m, True

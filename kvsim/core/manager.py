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

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from kvsim.core.policies import DEFAULT_POLICY, get_policy
from kvsim.core.spec import (
    EVICTION_MODES,
    STORAGE_TYPES,
    GroupSpec,
    InstanceSpec,
    StorageSpec,
)
from kvsim.core.specialize import kernels_for
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
#: The largest block (sum of an instance's location spec sizes, bytes) the core accepts.
#: With int32 rows, any group's usage (blocks x bytes) then stays below 2^63.
MAX_BLOCK_BYTES = 1 << 32
_RESTORE_CHUNK = 4096


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
    storage: str


@dataclass(frozen=True)
class WriteFinish:
    """Outcome of ``finish_write``."""

    committed: int
    failed: int


@dataclass(frozen=True)
class AccessResult:
    """Outcome of one combined read+write request (the replay unit)."""

    hit_blocks: int
    internal_hits: int
    internal_reads: int
    evicted: int
    cached_blocks: int


@dataclass
class _Session:
    inst: int
    rows: np.ndarray
    keys: np.ndarray
    deadline_ns: int


@dataclass(frozen=True)
class SessionInfo:
    """A pending write session, as persistence stores it."""

    session_id: int
    instance_id: str
    keys: np.ndarray
    deadline_ns: int


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
    """

    def __init__(self, clock: Clock, *, rows: int = 1024, event_level: int = 1,
                 slot_counts: bool = False) -> None:
        self.clock = clock
        self.table = BlockTable.create(rows=rows)
        self.table.t.meta[M_SLOT_COUNTS] = int(slot_counts)
        self.events = EventBuffer(level=event_level)
        self._groups: dict[str, tuple[int, GroupSpec]] = {}
        self._instances: dict[str, tuple[int, InstanceSpec]] = {}
        self._inst_names: list[str] = []
        self._storages: dict[str, StorageSpec] = {}
        self._sessions: dict[int, _Session] = {}
        self._next_sid = 1
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
            k = self._kernels = kernels_for(self._policy_names or (DEFAULT_POLICY,))
        return k

    def use_policies(self, names: Sequence[str] | set[str]) -> None:
        """Include ``names`` in the policies this manager's kernels are specialised to
        (before their groups exist: a server warms the set its config names once,
        instead of compiling a larger set when a group with another policy arrives)."""
        new = {get_policy(n).name for n in names} - self._policy_names
        if new:
            self._policy_names |= new
            self._kernels = None

    # ================================================================ registry
    def add_storage(self, spec: StorageSpec) -> None:
        """Add a storage; an existing name with a different definition is a duplicate."""
        old = self._storages.get(spec.name)
        if old is not None and old != spec:
            raise DuplicateEntity(f"storage {spec.name!r} exists with a different definition")
        self._storages[spec.name] = spec

    def update_storage(self, spec: StorageSpec) -> None:
        """Replace a storage's definition."""
        self._need_storage(spec.name)
        self._storages[spec.name] = spec

    def set_storage_available(self, name: str, available: bool) -> None:
        """Enable or disable a storage (writes avoid unavailable storages)."""
        self._storages[name] = replace(self._need_storage(name), available=available)

    def remove_storage(self, name: str) -> None:
        """Remove a storage."""
        self._need_storage(name)
        del self._storages[name]

    def storages(self) -> list[StorageSpec]:
        """All storages."""
        return list(self._storages.values())

    def _need_storage(self, name: str) -> StorageSpec:
        try:
            return self._storages[name]
        except KeyError:
            raise NotFound(f"storage {name!r} does not exist") from None

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
        if self.table.t.i_pending[ii] > 0:
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
    ) -> WriteStart:
        """Phase one: reserve WRITING blocks for the keys that have none.

        Raises:
            QuotaExceeded: the new blocks would pass the group's quota even after
                evicting everything evictable.
        """
        ii, ispec = self._need_instance(instance_id)
        if timeout_s <= 0:
            raise InvalidArgument("write_timeout_seconds must be > 0")
        k = _keys(keys)
        storage = self._pick_storage(ispec)
        self.table.ensure_rows(k.shape[0])
        self.events.reserve(2 * k.shape[0] + 16)
        if ispec.block_bytes > MAX_BLOCK_BYTES:
            raise InvalidArgument(
                f"instance {instance_id!r}: a block of {ispec.block_bytes} bytes is over the "
                f"maximum of {MAX_BLOCK_BYTES} (MAX_BLOCK_BYTES)")
        rows = np.full(k.shape[0], -1, dtype=np.int32)
        isnew = first_occurrence(k)
        now = self.clock.now_ns()
        gspec = self._groups[ispec.group][1]
        n_new = self.kernels.start_write(self.table.t, self.events.arrays, ii, k, now, rows, isnew,
                              gspec.delay_before_delete_ms == 0)
        if n_new < 0:
            raise QuotaExceeded(
                f"group {gspec.name!r}: writing {int(np.count_nonzero(isnew))} blocks would pass "
                f"its quota of {gspec.quota_units()}"
            )
        sid = self._next_sid
        self._next_sid += 1
        deadline = now + int(timeout_s * 1e9)
        self._sessions[sid] = _Session(ii, rows[isnew].copy(), k[isnew].copy(), deadline)
        emit(self.events.arrays, EV_WRITE_STARTED, ii, n_new, now, sid)
        return WriteStart(sid, isnew, k[isnew].copy(), deadline, storage)

    def _pick_storage(self, ispec: InstanceSpec) -> str:
        gspec = self._groups[ispec.group][1]
        names = gspec.storage_candidates or tuple(self._storages)
        if not names:
            return ""
        for name in names:
            s = self._storages.get(name)
            if s is not None and s.available:
                return name
        raise QuotaExceeded(f"group {gspec.name!r}: no available storage among {list(names)}")

    def finish_write(
        self, session_id: int, success: Sequence[bool] | np.ndarray
    ) -> WriteFinish:
        """Phase two: commit the successful blocks of a session, drop the others."""
        ses = self._sessions.get(int(session_id))
        if ses is None:
            raise NotFound(f"write session {session_id} is unknown, finished or expired")
        ok = np.asarray(success, dtype=bool)
        if ok.shape != ses.keys.shape:
            raise InvalidArgument(
                f"success_blocks has {ok.shape[0] if ok.ndim else 0} entries; the session "
                f"wrote {ses.keys.shape[0]} new blocks"
            )
        return self._finish(int(session_id), ok)

    def _finish(self, sid: int, ok: np.ndarray) -> WriteFinish:
        ses = self._sessions.pop(sid)
        self.events.reserve(ses.keys.shape[0] + 4)
        done = self.kernels.finish_write(self.table.t, self.events.arrays, ses.inst, ses.rows,
                                         ses.keys, ok, self.clock.now_ns())
        return WriteFinish(committed=int(done), failed=int(ses.keys.shape[0] - done))

    def pending_sessions(self) -> int:
        """Write sessions not yet finished."""
        return len(self._sessions)

    def expire_sessions(self) -> int:
        """Finish every session past its deadline as all-failed; returns how many."""
        now = self.clock.now_ns()
        late = [sid for sid, s in self._sessions.items() if s.deadline_ns <= now]
        for sid in late:
            ses = self._sessions[sid]
            emit(self.events.arrays, EV_EXPIRED, ses.inst, ses.keys.shape[0], now, sid)
            self._finish(sid, np.zeros(ses.keys.shape[0], dtype=bool))
        return len(late)

    # ================================================================ removal
    def remove(
        self, instance_id: str, keys: Sequence[int] | np.ndarray, *, mask: np.ndarray | None = None
    ) -> int:
        """Delete the keys' blocks (masked keys are kept); returns the number removed."""
        ii, _ = self._need_instance(instance_id)
        k = _keys(keys)
        m, has = _mask(mask, k.shape[0])
        self.events.reserve(k.shape[0] + 4)
        return int(self.kernels.remove_keys(self.table.t, self.events.arrays, ii, k, m, has,
                                 self.clock.now_ns()))

    def trim(
        self,
        instance_id: str | None = None,
        *,
        begin_ns: int | None = None,
        end_ns: int | None = None,
    ) -> int:
        """Remove blocks (of one instance, or all) written in ``[begin_ns, end_ns)``."""
        ii = -1 if instance_id is None else self._need_instance(instance_id)[0]
        lo = np.iinfo(np.int64).min if begin_ns is None else int(begin_ns)
        hi = np.iinfo(np.int64).max if end_ns is None else int(end_ns)
        self.events.reserve(int(self.table.t.meta[M_HWM]) + 4)
        return int(self.kernels.trim(self.table.t, self.events.arrays, ii, lo, hi,
                                     self.clock.now_ns()))

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
        return int(self.kernels.count_new_keys(self.table.t, ii, _keys(keys)))

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

    def restore_blocks(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        t_write: Sequence[int] | np.ndarray,
        t_access: Sequence[int] | np.ndarray,
        access_count: Sequence[int] | np.ndarray | None = None,
        loc: Sequence[int] | np.ndarray | None = None,
    ) -> int:
        """Re-create SERVING blocks from persisted metadata (a restart); returns how many
        were committed (a quota smaller than the set evicts the oldest again).

        Blocks enter the policy oldest access first, so recency order survives; their
        write and access times are the persisted ones. Keys already present are left
        alone. Quotas apply as for any write.

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
        tail_first = get_policy(self._groups[ispec.group][1].eviction.policy).tail_first
        order = np.argsort(ta, kind="stable")
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
        t.acc[new] = np.minimum(acc[sel], np.iinfo(np.int16).max).astype(np.int16)
        return int(done)

    def sessions(self) -> list[SessionInfo]:
        """Pending write sessions (for persistence and admin views)."""
        return [SessionInfo(sid, self._inst_names[s.inst], s.keys.copy(), s.deadline_ns)
                for sid, s in self._sessions.items()]

    def restore_session(
        self,
        instance_id: str,
        keys: Sequence[int] | np.ndarray,
        *,
        session_id: int,
        deadline_ns: int,
        loc: int = 0,
    ) -> WriteStart:
        """Re-open a persisted write session: its keys become WRITING again under the
        same id and deadline (a past deadline expires at the next ``expire_sessions``).

        Raises:
            DuplicateEntity: the session id is in use.
            QuotaExceeded: the group has no room for the blocks.
        """
        ii, ispec = self._need_instance(instance_id)
        sid = int(session_id)
        if sid in self._sessions:
            raise DuplicateEntity(f"write session {sid} exists")
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
        self._sessions[sid] = _Session(ii, rows[isnew].copy(), k[isnew].copy(), int(deadline_ns))
        self._next_sid = max(self._next_sid, sid + 1)
        return WriteStart(sid, isnew, k[isnew].copy(), int(deadline_ns), "")

    def drain_events(self) -> list[Event]:
        """Recorded events since the last drain."""
        return self.events.drain()


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

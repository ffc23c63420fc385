"""Plain descriptions of the entities the core manages (no I/O, no parsing).

These frozen dataclasses are the one configuration schema: the config loader
(:mod:`kvsim.config`) builds them from YAML/JSON, the simulator and the server
hand them to :class:`~kvsim.core.manager.CacheManager`, and the optimizer edits
and exports them.

Example:
    >>> g = GroupSpec(name="default", quota_blocks=1000)
    >>> g.capacity_units(block_cost=1)
    1000
    >>> InstanceSpec("i0", "default", block_size=16,
    ...              location_specs=(LocationSpec("tp0", 4096),)).block_bytes
    4096
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVICTION_MODES = {
    "group_rough": 1, "instance_rough": 2, "instance_precise": 3, "group_precise": 4,
}
STORAGE_TYPES = ("file", "hf3fs", "mooncake", "pace", "memory")


@dataclass(frozen=True)
class EvictionSpec:
    """Eviction settings of an instance group.

    Attributes:
        policy: registered policy name (see ``kvsim.core.policies.POLICIES``).
        params: policy parameters by name.
        mode: ``group_precise`` (kvsim's default: exact, the policy's best victim
            over the whole group), ``instance_precise`` (exact, from the writing
            instance first), ``instance_rough`` (batches from the writer) or
            ``group_rough`` (KVCM's default: round robin, a batch per instance).
        batch_size: blocks evicted per instance per round in the rough modes.
    """

    policy: str = "lru"
    params: dict[str, Any] = field(default_factory=dict)
    mode: str = "group_precise"
    batch_size: int = 100

    @property
    def mode_code(self) -> int:
        """The kernels' integer for ``mode``."""
        return EVICTION_MODES[self.mode]


@dataclass(frozen=True)
class StorageSpec:
    """A storage backend that holds KV data (the manager hands out locations on it)."""

    name: str
    type: str = "file"
    capacity_bytes: int = 0  # 0 = unlimited
    available: bool = True
    uri: str = ""


@dataclass(frozen=True)
class GroupSpec:
    """An instance group sharing one quota.

    Give the quota in blocks (``quota_blocks``) or bytes (``quota_bytes``); 0 means
    unlimited. Eviction starts when usage passes ``quota x used_percentage``;
    writes that would pass the quota itself are refused.

    ``storage_type_quotas`` (``(storage type, bytes)`` pairs, KVCM's
    ``quota.quota_config``) and ``max_key_count`` (KVCM's
    ``cache_config.meta_indexer_config.max_key_count``, blocks WRITING or SERVING; 0 =
    unlimited) are enforced by the core (:class:`~kvsim.core.manager.CacheManager`):
    placement of writes, ``max_key_count`` refusing a write, and reclaim triggers at the
    same ``used_percentage``, for the server and for ``replay --flow client`` alike (the
    contract's combined flow has no storages: it applies the group quota only).
    """

    name: str
    quota_blocks: int = 0
    quota_bytes: int = 0
    used_percentage: float = 1.0
    storage_candidates: tuple[str, ...] = ()
    eviction: EvictionSpec = field(default_factory=EvictionSpec)
    delay_before_delete_ms: int = 0
    max_instance_count: int = 0
    user_data: str = ""
    version: int = 1
    storage_type_quotas: tuple[tuple[str, int], ...] = ()
    max_key_count: int = 0

    def type_quota(self, storage_type: str) -> int:
        """The byte quota of one storage type in this group (0 = none).

        Example:
            >>> GroupSpec("g", storage_type_quotas=(("file", 100),)).type_quota("file")
            100
        """
        return dict(self.storage_type_quotas).get(storage_type, 0)

    @property
    def unit(self) -> str:
        """``"bytes"`` when the quota is in bytes, else ``"blocks"``."""
        return "bytes" if self.quota_bytes > 0 else "blocks"

    def quota_units(self) -> int:
        """The hard quota in the group's unit (0 = unlimited)."""
        return self.quota_bytes if self.quota_bytes > 0 else self.quota_blocks

    def capacity_units(self, block_cost: int = 1) -> int:
        """The eviction target in the group's unit (0 = unlimited)."""
        q = self.quota_units()
        return int(q * self.used_percentage) if q > 0 else 0


@dataclass(frozen=True)
class LocationSpec:
    """One shard of a block (e.g. one tensor-parallel rank) and its size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class InstanceSpec:
    """One model deployment writing into a group."""

    instance_id: str
    group: str = "default"
    block_size: int = 16
    location_specs: tuple[LocationSpec, ...] = ()
    model_name: str = ""
    dtype: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: the sum of the location spec sizes (0 if none)."""
        return sum(s.size for s in self.location_specs)

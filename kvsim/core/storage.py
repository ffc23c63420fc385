"""The storage registry: which storages exist, their slots, and which are usable.

A block records its storage as a small slot number (``loc`` in the block table); slot 0
means "no storage" (a manager without storages). Each storage keeps its slot for the
manager's life (a removed storage keeps its slot and its last usability, so its blocks
stay readable as before). A storage is *usable* (takes writes, serves reads) when it is
enabled (:attr:`StorageSpec.available`, the admin's switch) and healthy (runtime state:
a failed probe, or a scheduled outage in a replay).

Example:
    >>> reg = StorageRegistry()
    >>> reg.add(StorageSpec("a")); reg.add(StorageSpec("b", type="memory"))
    >>> reg.slot("b"), reg.usable("b")
    (2, True)
    >>> reg.set_health("b", False, "probe failed")
    True
    >>> reg.usable("b"), bool(reg.ok_mask[2]), reg.type_slots("file").nonzero()[0].tolist()
    (False, False, [1])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kvsim.core.errors import DuplicateEntity, InvalidArgument, NotFound
from kvsim.core.spec import StorageSpec
from kvsim.core.table import STORAGE_SLOTS

__all__ = ["MAX_STORAGES", "StorageRegistry"]

#: Storages one manager can ever hold (slot 0 is "none"; slots are never reused).
MAX_STORAGES = STORAGE_SLOTS - 2


class StorageRegistry:
    """Storages by name, their slots, admin state and health."""

    def __init__(self) -> None:
        self._specs: dict[str, StorageSpec] = {}
        self._slot: dict[str, int] = {}
        self._slots: list[StorageSpec | None] = [None]  # index 0 = no storage
        self._health: dict[str, str] = {}  # unhealthy storage -> reason
        self.ok_mask = np.ones(STORAGE_SLOTS, dtype=bool)
        self.all_ok = True

    # ------------------------------------------------------------ changes
    def add(self, spec: StorageSpec) -> None:
        """Add a storage; an existing name with a different definition is a duplicate
        (the admin state ``available`` is not part of the definition)."""
        old = self._specs.get(spec.name)
        if old is not None:
            if replace(old, available=True) != replace(spec, available=True):
                raise DuplicateEntity(f"storage {spec.name!r} exists with a different definition")
            return
        if spec.name not in self._slot and len(self._slots) > MAX_STORAGES:
            raise InvalidArgument(f"too many storages (at most {MAX_STORAGES})")
        self._specs[spec.name] = spec
        self._put_slot(spec)
        self._refresh()

    def update(self, spec: StorageSpec) -> None:
        """Replace a storage's definition (keeps its admin state; healthy until probed)."""
        old = self.get(spec.name)
        spec = replace(spec, available=old.available)
        self._specs[spec.name] = spec
        self._put_slot(spec)
        self._health.pop(spec.name, None)
        self._refresh()

    def set_enabled(self, name: str, on: bool) -> None:
        """The admin's enable/disable."""
        spec = replace(self.get(name), available=on)
        self._specs[name] = spec
        self._put_slot(spec)
        self._refresh()

    def set_health(self, name: str, healthy: bool, reason: str = "") -> bool:
        """Mark a storage healthy or not; returns whether its health changed."""
        self.get(name)
        was = name not in self._health
        if healthy:
            self._health.pop(name, None)
        else:
            self._health[name] = reason or "unhealthy"
        if was != healthy:
            self._refresh()
            return True
        return False

    def remove(self, name: str) -> None:
        """Remove a storage (its slot keeps its last definition and usability)."""
        self.get(name)
        del self._specs[name]
        self._health.pop(name, None)

    def _put_slot(self, spec: StorageSpec) -> None:
        i = self._slot.get(spec.name)
        if i is None:
            self._slot[spec.name] = len(self._slots)
            self._slots.append(spec)
        else:
            self._slots[i] = spec

    def _refresh(self) -> None:
        ok = np.ones(STORAGE_SLOTS, dtype=bool)
        for i, st in enumerate(self._slots):
            # a removed storage keeps its last state (its blocks stay readable)
            if st is not None and (not st.available or st.name in self._health):
                ok[i] = False
        self.ok_mask = ok
        self.all_ok = bool(ok.all())

    # ------------------------------------------------------------ queries
    def get(self, name: str) -> StorageSpec:
        """The spec of a (not removed) storage."""
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(f"storage {name!r} does not exist") from None

    def find(self, name: str) -> StorageSpec | None:
        """The spec of a storage, or None."""
        return self._specs.get(name)

    def specs(self) -> list[StorageSpec]:
        """Every storage, in the order they were added."""
        return list(self._specs.values())

    def slot(self, name: str) -> int:
        """The slot of a storage (ever added), or 0."""
        return self._slot.get(name, 0)

    def at(self, slot: int) -> StorageSpec | None:
        """The storage of a slot (its last definition if removed), or None."""
        return self._slots[slot] if 0 <= slot < len(self._slots) else None

    def slot_specs(self) -> list[StorageSpec | None]:
        """The storage of every slot in use (index = slot; 0 is None)."""
        return list(self._slots)

    def usable(self, name: str) -> bool:
        """Enabled and healthy (a storage that does not exist is not usable)."""
        st = self._specs.get(name)
        return st is not None and st.available and name not in self._health

    def health(self, name: str) -> str | None:
        """Why a storage is unhealthy, or None when it is healthy."""
        return self._health.get(name)

    def unhealthy(self) -> dict[str, str]:
        """Every unhealthy storage and its reason."""
        return dict(self._health)

    def type_slots(self, stype: str) -> np.ndarray:
        """Bool per slot: the slot's storage is of type ``stype``."""
        m = np.zeros(STORAGE_SLOTS, dtype=bool)
        for i, st in enumerate(self._slots):
            if st is not None and st.type == stype:
                m[i] = True
        return m

    def restore_slots(self, names: list[str | None]) -> np.ndarray:
        """Map slots of a saved registry (``names`` per old slot) to this one's slots
        (0 for unknown), as an int64 array indexed by the old slot."""
        remap = np.zeros(max(1, len(names)), dtype=np.int64)
        for i, name in enumerate(names):
            if name is not None:
                remap[i] = self._slot.get(name, 0)
        return remap

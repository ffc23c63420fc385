"""The seam for a persistence backend (a journal, SQLite, Redis): not implemented yet.

:class:`~kvsim.server.service.Service` reports every registry change (storages,
groups, instances, accounts) through :meth:`Persistence.record` after it has been
applied. The default :class:`NullPersistence` drops them: a restart starts from
the config. A backend replays its records at start-up through
:meth:`Persistence.load` (a list of ``(op, payload)`` in order) - block metadata
is out of this seam's scope for now.

Example:
    >>> p = MemoryPersistence()
    >>> p.record("addStorage", {"name": "nfs_01"})
    >>> p.load()
    [('addStorage', {'name': 'nfs_01'})]
"""

from __future__ import annotations

from typing import Any, Protocol


class Persistence(Protocol):
    """Where registry changes go (see the module docstring)."""

    def record(self, op: str, payload: dict[str, Any]) -> None:
        """Store one applied change."""
        ...

    def load(self) -> list[tuple[str, dict[str, Any]]]:
        """The changes recorded so far, in order."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


class NullPersistence:
    """Keeps nothing (the default)."""

    def record(self, op: str, payload: dict[str, Any]) -> None:
        """Drop the change."""

    def load(self) -> list[tuple[str, dict[str, Any]]]:
        """Nothing was kept."""
        return []

    def close(self) -> None:
        """Nothing to release."""


class MemoryPersistence:
    """Keeps the changes in a list (tests)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def record(self, op: str, payload: dict[str, Any]) -> None:
        """Append the change."""
        self.records.append((op, payload))

    def load(self) -> list[tuple[str, dict[str, Any]]]:
        """The changes, in order."""
        return list(self.records)

    def close(self) -> None:
        """Nothing to release."""

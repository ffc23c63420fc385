"""Errors of the core; adapters map each to a wire status code by its ``code``."""

from __future__ import annotations


class KVSimError(Exception):
    """Base of all core errors; ``code`` is the manager API status name."""

    code = "INTERNAL_ERROR"


class InvalidArgument(KVSimError):
    """A call's argument is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class DuplicateEntity(KVSimError):
    """An entity with that name exists with a different definition."""

    code = "DUPLICATE_ENTITY"


class InstanceNotFound(KVSimError):
    """No instance is registered under that id."""

    code = "INSTANCE_NOT_EXIST"


class NotFound(KVSimError):
    """A group, storage or write session does not exist."""

    code = "INVALID_ARGUMENT"


class QuotaExceeded(KVSimError):
    """A write would pass the group's quota and nothing is reclaimable."""

    code = "REACH_MAX_ENTITY_CAPACITY"

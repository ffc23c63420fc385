"""KVCM's debug service: fault injection into the manager's calls, for tests of clients.

Three calls, as in Tair KVCM (``kv_cache_manager.proto.debug.DebugService``; HTTP on
the meta HTTP port + 3000, gRPC beside the meta service):

* ``injectFault{api_name, fault_type, fault_trigger_strategy, trigger_at_call}``: make
  call ``api_name`` (KVCM's UpperCamel name, e.g. ``StartWriteCache``) fail with
  ``INTERNAL_ERROR``, on every call (``ALWAYS``) or on its ``trigger_at_call``-th call
  from now on (``ONCE``, counted from 1; 0 means the next call);
* ``removeFault{api_name}``; ``clearFaults{}``.

A call that trips a fault answers ``INTERNAL_ERROR`` with a message saying it was
injected, and changes nothing. The debug calls need the same credential as the admin
calls (none with ``--admin-auth none``).

Example:
    >>> f = Faults()
    >>> f.call("injectFault", {"api_name": "StartWriteCache",
    ...                        "fault_trigger_strategy": "ONCE", "trigger_at_call": 2})
    {}
    >>> [f.trip("startWriteCache") for _ in range(3)]
    [False, True, False]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kvsim.core.errors import KVSimError
from kvsim.server import wire as W
from kvsim.server.kvcm_compat import upper_camel

__all__ = ["FAULT_TRIGGERS", "FAULT_TYPES", "FaultInjected", "Faults"]

FAULT_TYPES = {"FT_INTERNAL_ERROR": 0, "INTERNAL_ERROR": 0}
FAULT_TRIGGERS = {"ALWAYS": 0, "ONCE": 1}
_MAX_FAULTS = 1024


class FaultInjected(KVSimError):
    """A call failed because the debug service injected a fault into it."""

    code = "INTERNAL_ERROR"


@dataclass
class _Fault:
    once: bool
    at_call: int
    calls: int = 0


class Faults:
    """The injected faults, keyed by KVCM api name; thread-safe."""

    def __init__(self) -> None:
        self._faults: dict[str, _Fault] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._faults)

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run one debug call (``injectFault``, ``removeFault``, ``clearFaults``).

        Raises:
            WireError: a malformed field.
            KeyError: an unknown method (the service maps it to ``UNSUPPORTED``).
        """
        if method == "injectFault":
            name = W.get_str(body, "api_name", required=True)
            W.get_enum(body, "fault_type", FAULT_TYPES, "FT_INTERNAL_ERROR")
            trig = W.get_enum(body, "fault_trigger_strategy", FAULT_TRIGGERS, "ALWAYS")
            at = W.get_int(body, "trigger_at_call", 0, low=0, high=W.INT32_MAX)
            with self._lock:
                if name not in self._faults and len(self._faults) >= _MAX_FAULTS:
                    raise W.WireError(f"api_name: at most {_MAX_FAULTS} faults at once")
                self._faults[upper_camel(name)] = _Fault(trig == "ONCE", max(at, 1))
            return {}
        if method == "removeFault":
            name = W.get_str(body, "api_name", required=True)
            with self._lock:
                self._faults.pop(upper_camel(name), None)
            return {}
        if method == "clearFaults":
            with self._lock:
                self._faults.clear()
            return {}
        raise KeyError(method)

    def trip(self, method: str) -> bool:
        """Count one call of ``method`` (lowerCamel); True when it must fail."""
        if not self._faults:
            return False
        with self._lock:
            f = self._faults.get(upper_camel(method))
            if f is None:
                return False
            if not f.once:
                return True
            f.calls += 1
            if f.calls == f.at_call:
                del self._faults[upper_camel(method)]
                return True
            return False

    def check(self, method: str) -> None:
        """Raise :class:`FaultInjected` when a fault trips on this call of ``method``."""
        if self.trip(method):
            raise FaultInjected(f"{upper_camel(method)}: fault injected by the debug service")

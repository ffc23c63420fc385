"""The policy dispatch over every built-in policy (generated, never written by hand).

Kernels call a group's policy as ``dispatch.commit(t, code, g, r, now)`` and so on.
This module is the dispatch of the *template* :mod:`kvsim.core.kernels` (every
built-in policy); :func:`kvsim.core.specialize.kernels_for` re-emits the kernels with
a dispatch generated for just the policies that run. Attributes are resolved on first
use from :func:`kvsim.core.specialize.dispatch_source` (see there for the list).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from kvsim.core.policies import BUILTIN
    from kvsim.core.specialize import dispatch_module

    return getattr(dispatch_module(BUILTIN), name)

"""Kernels specialised per policy (issue 17: compile only what runs).

The policy below (``mru_test``: evict the most recently used block) is defined in this
file alone: registered at run time, replayed through kernels generated for it, then
unregistered. Nothing else in the repository names it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kvsim.config import KVSimConfig
from kvsim.core import specialize
from kvsim.core._jit import kernel
from kvsim.core.policies import BY_CODE, MODULES, POLICIES, _dlist, register, unregister
from kvsim.core.policies.base import PolicyParams, PolicySpec
from kvsim.core.table import Tables
from kvsim.sim.replay import replay
from kvsim.trace.model import Trace


@dataclass(frozen=True)
class MRUParams(PolicyParams):
    """No parameters."""


@kernel
def commit(t: Tables, g: int, r: int, now: int) -> None:
    _dlist.push_head(t, r)


@kernel
def hit(t: Tables, g: int, r: int, now: int) -> None:
    _dlist.move_to_head(t, r)


@kernel
def victim(t: Tables, g: int, i: int) -> int:
    return t.i_head[i]


@kernel
def remove(t: Tables, g: int, r: int) -> None:
    _dlist.unlink(t, r)


SPEC = PolicySpec(name="mru_test", code=9001, params_cls=MRUParams, tail_first=True,
                  tracks_leaves=False, prefix_closed=False,
                  summary="most recently used goes first (a test-only policy)")


@pytest.fixture(autouse=True)
def _per_policy_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the per-policy kernels (the suite's conftest forces one set)."""
    monkeypatch.delenv("KVSIM_KERNELS", raising=False)


@pytest.fixture
def mru() -> object:
    register(sys.modules[__name__])
    try:
        yield SPEC
    finally:
        unregister(SPEC.name)


def _trace(keys: list[list[int]]) -> Trace:
    return Trace.from_lists(ts_ns=[1_000 * (j + 1) for j in range(len(keys))], keys=keys,
                            block_size=16)


def test_throwaway_policy_replays_through_generated_kernels(mru: PolicySpec) -> None:
    # one block per request, capacity 2: 1, 2, 3 miss; writing 3 overflows and MRU
    # evicts 3 itself (the block just committed), so 1 and 2 then hit. LRU evicts 1,
    # then 2, and never hits.
    tr = _trace([[1], [2], [3], [1], [2]])
    r = replay(tr, KVSimConfig.single_cache(capacity_blocks=2, policy="mru_test"))
    assert r.hit_blocks.tolist() == [0, 0, 0, 1, 1]
    assert r.evicted.tolist() == [0, 0, 1, 0, 0]
    lru = replay(tr, KVSimConfig.single_cache(capacity_blocks=2, policy="lru"))
    assert lru.hit_blocks.tolist() == [0, 0, 0, 0, 0]
    # the kernels that ran were generated for this policy alone, from the registry
    k = specialize.kernels_for(["mru_test"])
    assert k.__name__ == "_kvsim_gen_kernels__mru_test"
    disp = k.dispatch
    src = Path(disp.__file__).read_text()
    assert f"import {__name__} as _p0" in src
    assert "kvsim.core.policies.lru" not in src
    assert disp.MRU_TEST == 9001


def test_unregister_forgets_the_policy(mru: PolicySpec) -> None:
    assert POLICIES["mru_test"] is SPEC and BY_CODE[9001] is SPEC
    with pytest.raises(ValueError, match="already registered"):
        register(sys.modules[__name__])
    unregister("mru_test")
    assert "mru_test" not in POLICIES and 9001 not in BY_CODE and "mru_test" not in MODULES
    register(sys.modules[__name__])  # the fixture unregisters it again
    with pytest.raises(ValueError, match="built in"):
        unregister("lru")


def test_dispatch_source_names_only_the_policies_asked_for() -> None:
    one = specialize.dispatch_source(["fifo"])
    assert "kvsim.core.policies.fifo as _p0" in one and "if code ==" not in one
    assert "ANY_EXPIRY = False" in one
    two = specialize.dispatch_source(["ttl", "leaf_aware_lru"])
    assert "ANY_EXPIRY = True" in two and "ANY_LEAVES = True" in two
    assert "kvsim.core.policies.lru as" not in two  # ttl re-exports lru's kernels
    assert two.count("if code == 9:") >= 5
    with pytest.raises(KeyError, match="unknown policy"):
        specialize.dispatch_source(["nope"])


def test_specialised_kernels_equal_the_all_policy_template() -> None:
    """The same replay through kernels for {fifo} alone and for {fifo, lru} (a second
    group switches the manager to the larger set) gives the same integers."""
    rng = np.random.default_rng(7)
    keys = [list(rng.integers(0, 40, size=int(rng.integers(1, 6)))) for _ in range(300)]
    tr = _trace(keys)
    cfg = KVSimConfig.single_cache(capacity_blocks=25, policy="fifo")
    a = replay(tr, cfg)
    two = KVSimConfig.from_dict({
        "instance_groups": [
            {"name": "default", "quota": {"blocks": 25}, "eviction": {"policy": "fifo"}},
            {"name": "other", "quota": {"blocks": 5}, "eviction": {"policy": "lru"}},
        ],
    }, source="<test>")
    b = replay(tr, two)
    assert a.hit_blocks.tolist() == b.hit_blocks.tolist()
    assert a.evicted.tolist() == b.evicted.tolist()


class _RecordingLoader:
    """The default file loader, recording what the core asks of it."""

    def __init__(self) -> None:
        from kvsim._kernels_loader import FileKernelLoader

        self.inner = FileKernelLoader()
        self.loaded: list[str] = []
        self.read: list[str] = []

    def source(self, module: object) -> str:
        self.read.append(module.__name__)  # type: ignore[attr-defined]
        return self.inner.source(module)  # type: ignore[arg-type]

    def load(self, modname: str, text: str) -> object:
        self.loaded.append(modname)
        return self.inner.load(modname, text)

    def all_policies(self) -> bool:
        return True  # the suite's one kernel set: no compile of its own


def test_an_injected_loader_makes_the_managers_kernels() -> None:
    from kvsim.core.clock import ManualClock
    from kvsim.core.manager import CacheManager

    rec = _RecordingLoader()
    m = CacheManager(ManualClock(), kernel_loader=rec)  # type: ignore[arg-type]
    k = m.kernels
    assert k.__name__.startswith("_kvsim_gen_kernels__")
    assert rec.loaded == [k.dispatch.__name__, k.__name__]  # dispatch first, then kernels
    assert "kvsim.core.kernels" in rec.read and "kvsim.core.policies.lru" in rec.read
    assert m.kernels is k  # per manager, loaded once


def test_the_core_does_no_file_io_nor_reads_the_environment() -> None:
    """Directory choice, file writing and ``KVSIM_KERNELS`` live in the loader."""
    import ast

    import kvsim.core.loader
    import kvsim.core.specialize

    for mod in (kvsim.core.specialize, kvsim.core.loader):
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom)}
        assert not imported & {"os", "pathlib", "tempfile", "shutil", "io"}, (mod, imported)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert "open" not in names and not attrs & {"environ", "getenv", "read_text",
                                                     "write_text", "CACHE_DIR"}, mod

"""The first-run compile message (numba's compile events), on a kernel of the test's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numba import njit

from kvsim.compile_notice import CompileWatch


def test_a_compile_is_announced_timed_and_remembered(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSIM_CACHE_DIR", str(tmp_path / "cache"))
    lines: list[str] = []

    @njit(cache=False)
    def plus(a: np.ndarray, k: int) -> int:  # a fresh function: it must compile
        return int(a.sum()) + k

    with CompileWatch(lines.append, command="unit", heartbeat_s=0) as watch:
        assert plus(np.arange(4), 1) == 7
        assert plus(np.arange(4), 2) == 8  # same signature: no second compile
    assert watch.count == 1 and watch.seconds > 0
    assert lines[0].startswith("compiling kernels: first run on this machine only")
    assert "~120 s" in lines[0]  # no estimate recorded yet: the default
    assert lines[-1].startswith("compiled 1 kernels in ")
    # the measured time is the next first run's estimate
    lines.clear()

    @njit(cache=False)
    def times(a: np.ndarray) -> float:
        return float(a.prod())

    import json

    saved = json.loads((tmp_path / "cache" / "compile_seconds.json").read_text())
    assert saved == {"unit": round(watch.seconds, 1)}
    saved["unit"] = 42.0
    (tmp_path / "cache" / "compile_seconds.json").write_text(json.dumps(saved))
    with CompileWatch(lines.append, command="unit", heartbeat_s=0):
        times(np.ones(3))
    assert "~42 s" in lines[0]


def test_nothing_is_said_when_nothing_compiles() -> None:
    lines: list[str] = []

    @njit(cache=False)
    def one() -> int:
        return 1

    one()  # compiled before the watch
    with CompileWatch(lines.append, heartbeat_s=0) as watch:
        assert one() == 1
    assert (watch.count, watch.seconds, lines) == (0, 0.0, [])

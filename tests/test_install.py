"""A fresh machine: pinned CI tools, the wheel's sample and first-run compile messages.

The slow tests build a wheel, install it into a fresh virtualenv (no system
site-packages, so nothing of this checkout leaks in) with an empty kernel cache, and run
the README's main job, ``kvsim replay`` with no trace, from an empty directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MOONCAKE_PATH

REPO = Path(__file__).resolve().parents[1]

#: The sample's ideal (unbounded cache) figures (kvsim/data/README.md).
SAMPLE_IDEAL_HIT_BLOCKS = 161_386
SAMPLE_IDEAL_TOKEN_RATE = 0.702430


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-").replace(".", "-")] = m.group(2)
    return out


# ---------------------------------------------------------------------- pins
def test_every_tool_ci_uses_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    dev = [_name(r) for r in project["optional-dependencies"]["dev"]]
    runtime = [_name(r) for r in project["dependencies"]]
    # the tools .ci/run calls are dev requirements ...
    ci = (REPO / ".ci" / "run").read_text()
    for tool in ("ruff", "mypy", "pytest"):
        assert tool in ci or tool == "pytest", tool
        assert tool in dev, f"{tool} is run by CI but is not in the dev extra"
    # ... and every requirement, dev tool or not, has one exact version
    missing = [n for n in dev + runtime if n.replace(".", "-") not in pins]
    assert not missing, f"not pinned in constraints.txt: {missing}"
    # both installers use the pins
    for script in (REPO / ".ci" / "run", REPO / "scripts" / "test.sh"):
        text = script.read_text()
        installs = [ln for ln in text.splitlines() if "pip install" in ln]
        assert installs and all("-c constraints.txt" in ln for ln in installs), script
    # CI runs the README's test command
    assert "bash scripts/test.sh" in ci
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "pip install . && kvsim replay" in readme


def test_lock_script_check_passes() -> None:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "lock_deps.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_sample_is_package_data() -> None:
    from kvsim.data import sample_trace_path

    p = sample_trace_path()
    assert p.is_file() and p.parent.name == "data" and p.parent.parent.name == "kvsim"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "sample.parquet" in data["package-data"]["kvsim.data"]


# ---------------------------------------------------------------------- no ../shared
@pytest.mark.slow
def test_without_shared_the_contract_tests_skip_and_name_the_file(tmp_path: Path) -> None:
    """The tests that read the shared trace skip (never fail) when it is absent."""
    env = {**os.environ, "KVSIM_SHARED_DIR": str(tmp_path / "no-shared")}
    files = ["tests/test_trace_stats.py", "tests/test_trace_cli.py", "tests/test_api.py",
             "tests/test_trace_readers.py", "tests/test_cli.py"]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "-k", "mooncake or golden or convert or real_file or stats", *files],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    skipped = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert len(skipped) >= 5, out[-3000:]
    assert all("no-shared/traces/mooncake_conversation.jsonl" in ln for ln in skipped), skipped
    if MOONCAKE_PATH.is_file():  # the same selection runs them when the file is there
        assert "failed" not in out.splitlines()[-1]


# ---------------------------------------------------------------------- a fresh venv
@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A wheel of this checkout in a fresh virtualenv, run once with an empty kernel cache."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to export the checkout")
    tmp = tmp_path_factory.mktemp("fresh")
    src = tmp / "src"
    # build from the committed tree plus working changes, never from build leftovers
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "kvsim-out", "__pycache__",
        ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(src)], check=True, timeout=600)
    (wheel,) = wheels.glob("kvsim-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(REPO / "constraints.txt"), str(wheel)], check=True, timeout=1500)
    cwd = tmp / "empty"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "VIRTUAL_ENV")}
    env["KVSIM_CACHE_DIR"] = str(tmp / "kernel-cache")  # empty: the first run compiles
    kvsim = venv / "bin" / "kvsim"

    def replay(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(kvsim), "replay", *extra], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=1500)

    first = replay("--json")
    second = replay("--json")
    table = replay("--capacity-blocks", "20000", "--no-out")
    yield {"py": py, "cwd": cwd, "first": first, "second": second, "table": table}


@pytest.mark.slow
def test_wheel_replays_the_shipped_sample_from_an_empty_directory(
        fresh_install: dict[str, Any]) -> None:
    first = fresh_install["first"]
    assert first.returncode == 0, first.stderr[-3000:]
    doc = json.loads(first.stdout)
    # it ran the installed package's sample, not a file of this checkout
    assert "/site-packages/kvsim/data/sample.parquet" in doc["trace"]["path"]
    assert str(REPO) not in doc["trace"]["path"]
    assert doc["trace"]["requests"] == 3000
    assert doc["ideal"]["hit_blocks"] == SAMPLE_IDEAL_HIT_BLOCKS
    assert round(doc["ideal"]["token_hit_rate"], 6) == SAMPLE_IDEAL_TOKEN_RATE
    assert doc["results"][0]["hit_blocks"] == SAMPLE_IDEAL_HIT_BLOCKS  # unbounded = ideal
    assert not (fresh_install["cwd"] / "kvsim-out").exists()  # --json writes no files
    table = fresh_install["table"]
    assert table.returncode == 0, table.stderr[-3000:]
    assert "lru@20000" in table.stdout and "ideal" in table.stdout


@pytest.mark.slow
def test_first_run_says_it_compiles_and_reports_it_apart(fresh_install: dict[str, Any]) -> None:
    first, second = fresh_install["first"], fresh_install["second"]
    assert "compiling kernels: first run on this machine only" in first.stderr
    m = re.search(r"compiled (\d+) kernels in ([\d.]+) s", first.stderr)
    assert m is not None, first.stderr[-2000:]
    doc = json.loads(first.stdout)
    assert doc["compile_s"] > 1.0
    # the replay's own time excludes the compile
    assert doc["results"][0]["elapsed_s"] < doc["compile_s"] / 4
    # the second run loads the cache: no message, no compile time
    assert second.returncode == 0
    assert "compiling kernels" not in second.stderr
    assert json.loads(second.stdout)["compile_s"] == 0.0

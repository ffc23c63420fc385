"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One kernel set (every built-in policy) for every manager of the suite and of the
# `kvsim` processes it starts: compiled once, instead of once per policy combination
# (kvsim.core.specialize.kernels_for). tests/test_specialize.py unsets it where it
# checks the per-policy kernels.
os.environ.setdefault("KVSIM_KERNELS", "all")

#: ``../shared`` beside the clone (CI's layout); ``KVSIM_SHARED_DIR`` points elsewhere.
SHARED_DIR = Path(os.environ.get("KVSIM_SHARED_DIR")
                  or Path(__file__).resolve().parents[2] / "shared")
MOONCAKE_PATH = SHARED_DIR / "traces" / "mooncake_conversation.jsonl"
MISSING_MOONCAKE = (f"the shared Mooncake trace {MOONCAKE_PATH} is missing (clone the repo "
                    "beside ../shared, or set KVSIM_SHARED_DIR)")
#: Skip a test that needs the shared Mooncake trace, naming the missing file.
needs_mooncake = pytest.mark.skipif(not MOONCAKE_PATH.is_file(), reason=MISSING_MOONCAKE)


def service_missing(what: str) -> None:
    """A server a test needs is not installed: skip, or fail where services are required.

    ``scripts/test.sh`` sets ``KVSIM_REQUIRE_SERVICES=1`` once it installed them (and CI
    always does), so a broken install fails loudly there, while a developer without
    root can still run everything else.
    """
    msg = f"{what} (install it with `bash scripts/install_services.sh`, needs root or sudo)"
    if os.environ.get("KVSIM_REQUIRE_SERVICES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def _core_kernels_loaded() -> None:
    """Compile (first run after a core change) or load every core kernel once, up front.

    Otherwise the first test to call a kernel pays for compiling it (minutes on a fresh
    checkout), inside whatever timeout that test gives a server subprocess or a client.
    """
    from kvsim.core.warm import warm_up

    warm_up()


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    """The Mooncake conversation trace of the replay contract (``../shared`` of the repo)."""
    if not MOONCAKE_PATH.is_file():
        pytest.skip(MISSING_MOONCAKE)
    return MOONCAKE_PATH


def free_port() -> int:
    """A free TCP port on the loopback interface (bound and released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis server on a free loopback port for the whole session.

    ``scripts/install_services.sh`` (run by ``scripts/test.sh``) installs it.
    """
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        service_missing("redis-server is not installed")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(d), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):  # up to 10 s
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode}")
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("redis-server did not answer within 10 s")
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis with a key prefix of this test's own."""
    import uuid

    return f"{redis_server}?prefix=t{uuid.uuid4().hex[:10]}"

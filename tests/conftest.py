"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

MOONCAKE_PATH = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_conversation.jsonl"
)


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
        pytest.skip(f"Mooncake trace not found at {MOONCAKE_PATH} (the shared traces directory "
                    "beside the repository is missing)")
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
        pytest.fail("redis-server is not installed: run `bash scripts/install_services.sh`")
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

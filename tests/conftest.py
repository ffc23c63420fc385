"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

MOONCAKE_PATH = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_conversation.jsonl"
)


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    """The Mooncake conversation trace of the replay contract (``../shared`` of the repo)."""
    if not MOONCAKE_PATH.is_file():
        pytest.skip(f"Mooncake trace not found at {MOONCAKE_PATH} (the shared traces directory "
                    "beside the repository is missing)")
    return MOONCAKE_PATH

"""Data shipped inside the package: the sample trace ``kvsim replay`` runs by default.

Example:
    >>> sample_trace_path().name
    'sample.parquet'
    >>> sample_trace_path().is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_trace_path"]


def sample_trace_path() -> Path:
    """The shipped sample trace (package data, so any install has it; see README.md here)."""
    return Path(__file__).resolve().parent / "sample.parquet"

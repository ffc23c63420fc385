"""A write by ``token_ids`` is found by the block keys upstream KVCM computes for them.

The expected keys are not computed by kvsim: they were printed by a small C++17
program (g++ 12, x86-64) written for this test from the semantics of upstream KVCM's
``GenKeyVector`` / ``hashInt64Array`` (``int64_t`` state from 0, ``std::hash<int64_t>``
of each token, ``h ^= hash(v) + 0x9e3779b97f4a7c15 + (h << 12) + (h >> 32)``, one key
after each full block). The program is kept below and, when a C++ compiler is
installed, compiled and run again by ``test_reference_program_agrees``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transports import ADMIN_PASSWORD

from kvsim.server.app import ServerHandle, start_server
from kvsim.trace.hashing import kvcm_token_keys

TOKENS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # block size 4: two full blocks, a 2-token tail
UPSTREAM_KEYS = [455111481605203084, 6902853672176602142]  # printed by REFERENCE_CC

REFERENCE_CC = r"""
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>
int main() {
  std::vector<int64_t> t = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const size_t bs = 4;
  std::hash<int64_t> hs;
  int64_t h = 0;
  for (size_t b = 0; b < t.size() / bs; b++) {
    for (size_t i = b * bs; i < (b + 1) * bs; i++)
      h ^= hs(t[i]) + 0x9e3779b97f4a7c15 + (h << 12) + (h >> 32);
    printf("%lld\n", (long long)h);
  }
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    h = start_server(None, data_dir=tmp_path_factory.mktemp("srv"),
                     admin_password=ADMIN_PASSWORD, tick_seconds=0.05)
    yield h
    h.stop()


def call(h: ServerHandle, method: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"http://127.0.0.1:{h.http_port}/api/{method}", json=body, timeout=10)
    assert r.status_code == 200
    reply: dict[str, Any] = r.json()
    assert reply["header"]["status"]["code"] == "OK", reply["header"]
    return reply


def test_write_by_token_ids_is_found_by_upstream_keys(server: ServerHandle) -> None:
    call(server, "registerInstance", {
        "instance_group": "default", "instance_id": "tok", "block_size": 4,
        "location_spec_infos": [{"name": "tp0", "size": 64}],
        "model_deployment": {"model_name": "m", "dtype": "bf16"}})
    w = call(server, "startWriteCache", {"instance_id": "tok", "token_ids": TOKENS})
    assert len(w["locations"]) == 2
    call(server, "finishWriteCache", {"instance_id": "tok",
                                      "write_session_id": w["write_session_id"],
                                      "success_blocks": {"offset": 2}})
    g = call(server, "getCacheLocation", {"instance_id": "tok", "block_keys": UPSTREAM_KEYS,
                                          "query_type": "QT_PREFIX_MATCH"})
    assert len(g["locations"]) == 2
    # the second key alone is found too (a batch get), and a neighbour key is not
    g = call(server, "getCacheLocation", {"instance_id": "tok", "query_type": "QT_BATCH_GET",
                                          "block_keys": [UPSTREAM_KEYS[1],
                                                         UPSTREAM_KEYS[1] + 1]})
    assert [x["type"] != "ST_UNSPECIFIED" for x in g["locations"]] == [True, False]
    # and reading by the same token ids finds both blocks
    g = call(server, "getCacheLocation", {"instance_id": "tok", "token_ids": TOKENS,
                                          "query_type": "QT_PREFIX_MATCH"})
    assert len(g["locations"]) == 2


def test_kvsim_keys_equal_upstream() -> None:
    assert kvcm_token_keys(TOKENS, 4).tolist() == UPSTREAM_KEYS


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_reference_program_agrees(tmp_path: Path) -> None:
    src = tmp_path / "ref.cc"
    src.write_text(REFERENCE_CC)
    exe = tmp_path / "ref"
    subprocess.run(["g++", "-std=c++17", "-O0", "-o", str(exe), str(src)], check=True,
                   timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=30)
    assert [int(x) for x in out.stdout.split()] == UPSTREAM_KEYS

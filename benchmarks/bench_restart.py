"""Restart time of the server's durable state: a state of N blocks (default 10M) reloaded.

Builds a journal store (:mod:`kvsim.server.store_journal`) of one instance holding
``--blocks`` committed blocks through the store's own API (a real service registers
the instance, so the registry is the server's), as the server leaves it: a snapshot
plus a journal tail of ``--tail`` write pairs of 64 keys (start + finish records).
Then, in a fresh process, times ``Service(store=...)``: reading the snapshot and the
tail, folding them, and restoring every block into the core's table (what ``kvsim
serve`` does before it listens). Target: < 10 s for 10M blocks.

The same state is loaded by the current path (the core's one-pass bulk restore,
``CacheManager.restore_blocks``, into a table sized once by ``reserve_rows``) and, as
the baseline in the same run, by the previous one (``--baseline chunked``: a
``start_write`` + ``finish_write`` per 4096 blocks into a table grown by doubling),
each in ``--repeat`` fresh processes, alternating; the best of each is kept and the
ratio printed.

Usage:
    python benchmarks/bench_restart.py [--blocks 10000000] [--tail 20000] [--store journal]
        [--repeat 2] [--baseline chunked|none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _config(data: Path, blocks: int) -> Any:
    """The default config (its 30 GB quota holds the blocks: their spec is 1 byte)."""
    from kvsim.server.service import default_config

    del blocks
    return default_config(data)


def build(data: Path, url: str, blocks: int, tail: int) -> dict[str, Any]:
    """Write the state; returns its size on disk."""
    from kvsim.server.service import Service
    from kvsim.server.store import SessionRecord, StoreBatch, open_store

    store = open_store(url, data)
    svc = Service(_config(data, blocks), data_dir=data, store=store, event_log=False,
                  admin_password="bench")
    r = svc.call("meta", "registerInstance", {
        "instance_group": "default", "instance_id": "bench", "block_size": 16,
        "location_spec_infos": [{"name": "tp0", "size": 1}],
        "model_deployment": {"model_name": "m", "dtype": "bf16"}})
    assert r["header"]["status"]["code"] == "OK", r
    svc.close()
    store = open_store(url, data)
    chunk = 1_000_000
    t = time.time_ns()
    # as a server's state: keys are hashes, so a snapshot (sorted by key) holds the
    # access times in no order; reads have raised some above their write times
    rng = np.random.default_rng(18)
    keys_all = rng.permutation(blocks).astype(np.int64) * 7919 + 1
    ta_all = t + rng.permutation(blocks).astype(np.int64) * 1000
    for a in range(0, blocks, chunk):
        keys = keys_all[a:a + chunk]
        b = StoreBatch()
        ta = ta_all[a:a + chunk]
        tw = ta - rng.integers(0, 10**9, ta.shape[0])
        b.put_blocks("bench", keys, t_write=tw, t_access=ta, loc=np.ones_like(keys),
                     access_count=rng.integers(1, 5, ta.shape[0]))
        store.apply(b)
    snap = getattr(store, "snapshot", None)
    if snap is not None:
        snap()  # as a compaction leaves it
    base = 10**12
    for i in range(tail):  # then the tail: write pairs since that snapshot
        keys = np.arange(base + i * 64, base + i * 64 + 64, dtype=np.int64)
        b = StoreBatch()
        b.open_session(SessionRecord(i + 1, "bench", keys, t + 10**12, 1,
                                     {"token": f"{i:032x}", "keys": keys,
                                      "is_new": np.ones(64, bool)}))
        store.apply(b)
        b = StoreBatch()
        tw = np.full(64, t + blocks * 1000 + i * 1000, np.int64)
        b.put_blocks("bench", keys, t_write=tw, t_access=tw, loc=np.ones_like(keys))
        b.close_session(i + 1)
        store.apply(b)
    store.close()
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    return {"bytes_on_disk": size}


def _use_chunked_path() -> None:
    """The restore path before the bulk kernel: chunks of 4096 through start_write +
    finish_write, the table grown by doubling (the baseline of this benchmark)."""
    import functools

    from kvsim.core.manager import CacheManager

    orig = CacheManager.restore_blocks

    def chunked(self: CacheManager, *a: Any, **kw: Any) -> int:
        return orig(self, *a, **kw, bulk=False)

    def doubling(self: CacheManager, n: int, **_: Any) -> None:
        self.table.ensure_rows(n)

    CacheManager.restore_blocks = functools.wraps(orig)(chunked)  # type: ignore[method-assign]
    CacheManager.reserve_rows = doubling  # type: ignore[method-assign]


def load(data: Path, url: str, blocks: int, path: str = "bulk") -> dict[str, Any]:
    """Time a service start from the state (run in a fresh process)."""
    from kvsim.core.warm import warm_up
    from kvsim.server.service import Service
    from kvsim.server.store import open_store

    if path == "chunked":
        _use_chunked_path()
    warm_up({"lru"})  # compiled kernels load before the clock starts, as in kvsim serve
    t0, c0 = time.perf_counter(), time.process_time()
    store = open_store(url, data)
    t1, c1 = time.perf_counter(), time.process_time()
    recs = store.load_records()
    blocks_read = sum(int(r.keys.shape[0]) for r in store.load_blocks())
    store.load_sessions()
    scan_s, scan_cpu = time.perf_counter() - t1, time.process_time() - c1
    store.close()
    t0, c0 = time.perf_counter(), time.process_time()  # the start itself (scans again)
    store = open_store(url, data)
    svc = Service(_config(data, blocks), data_dir=data, store=store, event_log=False,
                  admin_password="bench")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    del recs, blocks_read
    n = sum(u.serving_blocks for u in svc.mgr.usage())
    rows = svc.mgr.row_capacity
    svc.close()
    return {"path": path, "restart_s": round(dt, 3), "restart_cpu_s": round(cpu, 3),
            "store_scan_s": round(scan_s, 3), "store_scan_cpu_s": round(scan_cpu, 3),
            "blocks_restored": int(n), "table_rows": int(rows)}


def _child(data: Path, url: str, blocks: int, path: str) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", str(data), "--store", url,
                          "--blocks", str(blocks), "--path", path], env=env,
                         capture_output=True, text=True, timeout=900, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(blocks: int, tail: int, url: str = "journal", repeat: int = 2,
            baseline: str = "chunked") -> dict[str, Any]:
    """Build in this process, load in fresh children (current path and baseline,
    alternating); returns the row with the best of each."""
    data = Path(tempfile.mkdtemp(prefix="kvsim-restart-"))
    t0 = time.perf_counter()
    built = build(data, url, blocks, tail)
    build_s = time.perf_counter() - t0
    paths = ["bulk"] + ([baseline] if baseline != "none" else [])
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    try:
        for _ in range(max(1, repeat)):
            for p in paths:
                r = _child(data, url, blocks, p)
                runs[p].append(r)
                print(json.dumps({"run": p, **r}), file=sys.stderr, flush=True)
    finally:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
    best = {p: min(rs, key=lambda r: r["restart_s"]) for p, rs in runs.items()}
    row = best["bulk"]
    out: dict[str, Any] = {
        "op": "restart", "store": url, "blocks": blocks, "tail_write_pairs": tail,
        "build_s": round(build_s, 1), **built, **row,
        "met_under_10s": row["restart_s"] < 10 and row["blocks_restored"] >= blocks,
        "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if baseline != "none":
        b = best[baseline]
        out["baseline"] = {k: b[k] for k in ("path", "restart_s", "restart_cpu_s",
                                              "store_scan_cpu_s", "table_rows")}
        out["speedup_wall"] = round(b["restart_s"] / max(row["restart_s"], 1e-9), 2)
        out["speedup_cpu"] = round(b["restart_cpu_s"] / max(row["restart_cpu_s"], 1e-9), 2)
        # the part after the store scan (registry + table + restore), CPU
        core_b = b["restart_cpu_s"] - b["store_scan_cpu_s"]
        core = row["restart_cpu_s"] - row["store_scan_cpu_s"]
        out["restore_cpu_s"] = round(core, 3)
        out["baseline"]["restore_cpu_s"] = round(core_b, 3)
        out["speedup_restore_cpu"] = round(core_b / max(core, 1e-9), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=10_000_000)
    ap.add_argument("--tail", type=int, default=20_000)
    ap.add_argument("--store", default="journal")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline", choices=["chunked", "none"], default="chunked")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=["bulk", "chunked"], default="bulk",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(load(args.child, args.store, args.blocks, args.path)))
        return
    row = measure(args.blocks, args.tail, args.store, args.repeat, args.baseline)
    print(json.dumps(row))


if __name__ == "__main__":
    main()

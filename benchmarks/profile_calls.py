"""Where a read and a durable write pair spend the server's CPU, in process.

Builds the service as ``kvsim serve`` does (journal state with a file lease and its
fence, event log, capacity advisor at 0.01, kernels warmed, the GC tuned) and calls it
through the HTTP app's handler (:meth:`kvsim.server.http.KVSimApp.handle`: JSON in and
out, no sockets), with 32 write sessions in flight like the benchmark's 32 clients. It
prints the CPU microseconds per ``getCacheLocation`` of 64 hits and per write pair (64
new keys, ``startWriteCache`` + ``finishWriteCache``, evicting 64 blocks once the cache
is full) for several set-ups side by side, in alternating rounds (the machine is
shared: read the medians and the spread):

* ``journal``: as served;
* ``none``: no state store (no batch, no journal, no per-block events, no lease): the
  durability's whole cost is the difference;
* ``no-events``: the journal without the event log;
* ``no-advisor``: the journal without the capacity advisor.

``--cprofile read|pair`` prints the functions with the most own time instead (cProfile
inflates code with many small calls: compare functions with each other, not with the
CPU figures above).

Usage:
    python benchmarks/profile_calls.py [--rounds 3] [--n 1000] [--setups journal,none]
    python benchmarks/profile_calls.py --cprofile pair
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kvsim.core.warm import warm_up
from kvsim.server.app import open_state, tune_gc
from kvsim.server.http import create_app
from kvsim.server.service import Service

KEYS = list(range(1_000_000, 1_000_064))
SETUPS = {"journal": {}, "none": {"state": "none"}, "no-events": {"event_log": False},
          "no-advisor": {"advisor": 0.0}}


class Setup:
    """One service as ``kvsim serve`` builds it, and its calls."""

    def __init__(self, state: str = "journal", event_log: bool = True,
                 advisor: float = 0.01) -> None:
        data = Path(tempfile.mkdtemp(prefix="kvsim-profile-"))
        store, self.elector = open_state(state, "file" if state != "none" else "none", 3000,
                                         data)
        self.svc = Service(None, data_dir=data, store=store, elector=self.elector,
                           advisor_sample_rate=advisor, event_log=event_log)
        if advisor > 0:
            from kvsim.optimizer.online_curve import warm_up as warm_advisor

            warm_advisor(advisor)
        if self.elector is not None:
            self.elector.start()
        self.app = create_app(self.svc, "meta")
        self.n = 0
        self.pending: list[tuple[str, int]] = []
        self.call("registerInstance", {
            "instance_group": "default", "instance_id": "bench", "block_size": 16,
            "location_spec_infos": [{"name": "tp0", "size": 1 << 20}],
            "model_deployment": {"model_name": "bench", "dtype": "bf16"}})
        w = self.call("startWriteCache", {"instance_id": "bench", "block_keys": KEYS})
        self.call("finishWriteCache", {"instance_id": "bench", "success_blocks": {"offset": 64},
                                       "write_session_id": w["write_session_id"]})
        self.read_body = orjson.dumps({"instance_id": "bench", "block_keys": KEYS,
                                       "query_type": "QT_PREFIX_MATCH"})

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        _, data = self.app.handle(method, orjson.dumps(body), [], None, 0.0)
        r = orjson.loads(data)
        assert r["header"]["status"]["code"] == "OK", r["header"]
        return r

    def read(self) -> None:
        self.app.handle("getCacheLocation", self.read_body, [], None, 0.0)

    def pair(self) -> None:
        """One start and one finish, 32 sessions in flight (finishes the oldest)."""
        self.n += 1
        base = 10_000_000 + self.n * 64
        w = self.call("startWriteCache", {"instance_id": "bench",
                                          "block_keys": list(range(base, base + 64))})
        self.pending.append((w["write_session_id"], len(w["locations"])))
        if len(self.pending) >= 32:
            sid, n = self.pending.pop(0)
            self.call("finishWriteCache", {"instance_id": "bench", "write_session_id": sid,
                                           "success_blocks": {"offset": n}})

    def close(self) -> None:
        self.svc.close()
        if self.elector is not None:
            self.elector.stop()


def cpu_us(fn: Callable[[], None], n: int) -> float:
    """CPU microseconds per call of ``fn`` (process time, after 100 unmeasured calls)."""
    for _ in range(100):
        fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="calls per measurement")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--cprofile", choices=["read", "pair"])
    args = ap.parse_args()
    warm_up(("lru",))
    tune_gc()
    if args.cprofile:
        s = Setup()
        fn = s.read if args.cprofile == "read" else s.pair
        cpu_us(fn, args.n)  # past the watermark: every write evicts
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.n):
            fn()
        pr.disable()
        out = io.StringIO()
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(40)
        print(out.getvalue())
        s.close()
        return
    names = args.setups.split(",")
    setups = {name: Setup(**SETUPS[name]) for name in names}
    for s in setups.values():  # fill the cache past the watermark: writes evict
        for _ in range(500):
            s.pair()
    res: dict[str, dict[str, list[float]]] = {n: {"read": [], "pair": []} for n in names}
    for r in range(args.rounds):
        for name, s in setups.items():
            res[name]["read"].append(cpu_us(s.read, args.n))
            res[name]["pair"].append(cpu_us(s.pair, args.n // 2))
        print(f"round {r + 1}: " + "; ".join(
            f"{n} read {res[n]['read'][-1]:.0f} pair {res[n]['pair'][-1]:.0f}" for n in names),
            flush=True)
    for name in names:
        rd, pr_ = np.median(res[name]["read"]), np.median(res[name]["pair"])
        print(f"{name:11s} read {rd:7.1f} us  pair {pr_:7.1f} us  (medians of {args.rounds}; "
              f"pair/read {pr_ / rd:.1f})")
    for s in setups.values():
        s.close()


if __name__ == "__main__":
    main()

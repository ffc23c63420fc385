"""The sampled capacity advisor's error, seed to seed (issue 19).

Drives one generated trace (20,000 requests, 2 instances: the trace of
``tests/server/test_advisor.py``'s sampled check) into a live ``Service`` once per
advisor sampling seed (which keys the 1% sample keeps), ticking every ``--tick`` requests
(deterministic batching, unlike the test's timer), and compares the advisor's
since-start curve with ``kvsim curve`` of that server's own event log (exact, read rows
peeked). Prints the mean absolute error per seed and their spread; writes
``reports/advisor_seeds.json``.

    python benchmarks/advisor_seeds.py --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from kvsim.cli import main
from kvsim.config import KVSimConfig
from kvsim.server.advisor import Advisor
from kvsim.server.service import Service
from kvsim.sim.drive import drive, service_caller
from kvsim.trace.generator import GenSpec, generate_trace

REPORT = Path(__file__).resolve().parents[1] / "reports" / "advisor_seeds.json"
QUOTA = 1500
PW = "pw"


def _config(tmp: Path) -> KVSimConfig:
    return KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp / "nfs")}],
        "instance_groups": [{"name": "default", "quota": {"blocks": QUOTA},
                             "storage_candidates": ["nfs_01"],
                             "eviction": {"policy": "lru"}}],
    })


def run(seed: int, trace_seed: int, requests: int, rate: float, tick: int) -> dict:
    trace = generate_trace(GenSpec(seed=trace_seed, requests=requests, instances=2,
                                   block_size=64))
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        tmp = Path(d)
        svc = Service(_config(tmp), data_dir=tmp, admin_password=PW,
                      advisor_sample_rate=rate)
        svc.advisor = Advisor(rate, seed=seed)
        try:
            # the one client driver (read, start, finish per request), the server's
            # timer run every `tick` requests
            def timer(q: int) -> None:
                if (q + 1) % tick == 0:
                    svc.tick()

            run_ = drive(trace, service_caller(svc, credential=f"admin:{PW}"), clock="wall",
                         after=timer)
            assert run_.refused_writes == 0
            t0 = time.perf_counter()
            svc.tick()
            drive_s = run_.elapsed_s + time.perf_counter() - t0
            adv = svc.call("admin", "getCapacityAdvice", {},
                           credential=f"admin:{PW}")["advice"]
            g = adv["groups"][0]
            caps = g["capacity_blocks"]
            r = CliRunner().invoke(main, [
                "curve", str(tmp / "events.jsonl"), "--format", "kvcm-events",
                "--block-size", str(trace.block_size), "--read-rows", "peek",
                "--capacities", ",".join(map(str, caps)), "--json", "--no-out"])
            assert r.exit_code == 0, r.output
            truth_blocks = [row["hit_blocks"]
                            for row in json.loads(r.stdout[r.stdout.index("["):])]
        finally:
            svc.close()
    since = g["windows"]["since_start"]
    truth = np.asarray(truth_blocks) / since["read_blocks"]
    est = np.asarray(since["hit_rate"])
    err = est - truth
    return {"seed": seed, "trace_seed": trace_seed, "mae": float(np.abs(err).mean()),
            "max_abs_error": float(np.abs(err).max()), "mean_error": float(err.mean()),
            "tracked_keys": g["tracked_keys"], "drive_s": round(drive_s, 1),
            "factors": g["factors"], "error": err.tolist()}


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--trace-seed", type=int, default=12)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--tick", type=int, default=200, help="requests between ticks")
    ap.add_argument("--out", type=Path, default=REPORT)
    a = ap.parse_args()
    rows = []
    for s in (int(x) for x in a.seeds.split(",")):
        row = run(s, a.trace_seed, a.requests, a.rate, a.tick)
        print(f"seed {s}: MAE {row['mae']:.4f}  max {row['max_abs_error']:.4f}  "
              f"bias {row['mean_error']:+.4f}  tracked {row['tracked_keys']:,}  "
              f"({row['drive_s']}s)", flush=True)
        rows.append(row)
        _write(a, rows)  # after every seed: a long run can be stopped and still report


def _write(a: argparse.Namespace, rows: list[dict]) -> None:
    maes = [r["mae"] for r in rows]
    summary = {"runs": len(rows), "mae_mean": statistics.fmean(maes),
               "mae_sd": statistics.stdev(maes) if len(maes) > 1 else 0.0,
               "mae_min": min(maes), "mae_max": max(maes),
               "bias_mean": statistics.fmean(r["mean_error"] for r in rows),
               "target": 0.01, "runs_under_target": sum(m < 0.01 for m in maes)}
    print(f"MAE over {len(rows)} seed(s): mean {summary['mae_mean']:.4f} sd "
          f"{summary['mae_sd']:.4f} range {summary['mae_min']:.4f}-{summary['mae_max']:.4f}"
          f"; mean bias {summary['bias_mean']:+.4f}; {summary['runs_under_target']}/"
          f"{len(rows)} under 0.01")
    doc = {"what": __doc__.splitlines()[0], "rate": a.rate, "requests": a.requests,
           "trace_seed": a.trace_seed, "tick_requests": a.tick, "summary": summary,
           "runs": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main_()

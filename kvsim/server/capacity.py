"""The service's side of the capacity advisor: notes from calls, the tick, admin calls.

Kept out of :mod:`kvsim.server.service` (which calls these few functions) so the
advisor's glue lives in one place. Admin calls (kvsim extensions of the wire API):

* ``getCapacityAdvice`` ``{"name": group?, "bound": "belady"?}``: :meth:`Advisor.advice`
  (curves per group and in total over the last hour, day and since start, miss
  reasons, a per-minute timeline) plus ``usage`` (per group and storage) and
  ``evictions`` (blocks per trigger); with ``bound: belady`` each group also gets the
  offline optimum's hits on its logged calls at 1x and the headroom over its own hits;
* ``getCapacityPlan`` ``{"name": group, "factor": f}`` (or ``"capacity_blocks": n``):
  the ``updateInstanceGroup`` body that sets the group's quota to ``f`` x today's (the
  shape of ``kvsim export``'s ``instance_groups.json``: ``current_version`` and the
  group with ``version + 1``), with the predicted hit rates there; nothing is applied.

Example:
    >>> from kvsim.server.service import Service
    >>> s = Service(event_log=False, advisor_sample_rate=1.0, admin_password="pw")
    >>> r = s.call("admin", "getCapacityPlan", {"name": "default", "factor": 2},
    ...            credential="admin:pw")
    >>> q = r["update_instance_group"]["instance_group"]["quota"]
    >>> q["capacity"] == 2 * 30 * 10**9, r["update_instance_group"]["current_version"]
    (True, 1)
    >>> s.close()
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from kvsim.core.errors import InvalidArgument, KVSimError
from kvsim.core.manager import QUERY_PREFIX
from kvsim.server import wire as W
from kvsim.server.advisor import Advisor

if TYPE_CHECKING:
    from collections.abc import Callable

    from kvsim.core.spec import GroupSpec
    from kvsim.server.service import Service

__all__ = ["admin_calls", "make_advisor", "note_failed", "note_read", "note_write",
           "process", "quota_blocks"]

_MIN_FACTOR, _MAX_FACTOR = 1 / 64, 64.0


class AdvisorOff(KVSimError):
    code = "UNSUPPORTED"


def make_advisor(sample_rate: float) -> Advisor | None:
    """An advisor at ``sample_rate``, or None when it is 0 (off)."""
    return Advisor(sample_rate) if sample_rate > 0 else None


# ---------------------------------------------------------------- notes (under the lock)
def note_read(svc: Service, group: str, iid: str, keys: np.ndarray, mask: np.ndarray | None,
              hit_blocks: int) -> None:
    """A prefix read; when some storage is unusable, also how many more blocks it would
    have hit with every storage usable (a second match that touches nothing)."""
    assert svc.advisor is not None
    unusable = 0
    if not svc.mgr.storage.all_ok and hit_blocks < keys.shape[0]:
        res = svc.mgr.match(iid, keys, query=QUERY_PREFIX, mask=mask, touch=False)
        unusable = max(0, int(res.hit_blocks) - int(hit_blocks))
    svc.advisor.note_read(group, iid, keys, mask, int(hit_blocks), unusable,
                          svc.clock.now_ns())


def note_write(svc: Service, ses: Any, held: np.ndarray, ok: np.ndarray) -> None:
    """A finished write: the keys it left held, and the new keys that failed."""
    assert svc.advisor is not None
    group = svc.mgr.instance(ses.instance_id).group
    if held.shape[0]:
        svc.advisor.note_write(group, ses.instance_id, held, svc.clock.now_ns())
    failed = ses.keys[~ok]
    if failed.shape[0]:
        svc.advisor.note_failed(group, ses.instance_id, failed)


def note_failed(svc: Service, iid: str, keys: np.ndarray) -> None:
    """An expired write session's new keys."""
    assert svc.advisor is not None
    try:
        group = svc.mgr.instance(iid).group
    except KVSimError:  # the instance is gone
        return
    if keys.shape[0]:
        svc.advisor.note_failed(group, iid, keys)


# ---------------------------------------------------------------- the tick
def quota_blocks(svc: Service, g: GroupSpec) -> int:
    """A group's quota in blocks (the advisor's 1x): ``quota_blocks``, or the byte quota
    over the mean block cost of its instances; an unlimited group uses its serving
    blocks rounded up to a power of two (at least 1024)."""
    if g.quota_bytes > 0:
        costs = [s.block_bytes for s in svc.mgr.instances()
                 if s.group == g.name and s.block_bytes > 0]
        if costs:
            return max(1, int(g.quota_bytes // (sum(costs) / len(costs))))
    elif g.quota_blocks > 0:
        return int(g.quota_blocks)
    served = next((u.serving_blocks for u in svc.mgr.usage() if u.name == g.name), 0)
    return 1 << max(10, math.ceil(math.log2(max(1, served))))


def process(svc: Service) -> int:
    """Feed the advisor the calls since the last tick (outside the service lock)."""
    assert svc.advisor is not None
    if svc.elector is not None and not svc.elector.is_leader:
        return 0
    with svc._lock:
        quotas = {g.name: quota_blocks(svc, g) for g in svc.mgr.groups()}
        now = svc.clock.now_ns()
    return svc.advisor.process(quotas, now)


# ---------------------------------------------------------------- admin calls
def admin_calls(svc: Service) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The advisor's admin calls, bound to ``svc`` (they run under its lock, but for
    ``getCapacityAdvice``'s ``bound: belady`` pass)."""
    return {"getCapacityAdvice": lambda body: capacity_advice(svc, body),
            "getCapacityPlan": lambda body: capacity_plan(svc, body)}


def _need(svc: Service) -> Advisor:
    if svc.advisor is None:
        raise AdvisorOff("the capacity advisor is off (start the server with "
                         "--advisor-sample-rate > 0)")
    return svc.advisor


def capacity_advice(svc: Service, body: dict[str, Any]) -> dict[str, Any]:
    """``getCapacityAdvice``: curves, miss reasons, timeline, usage and evictions."""
    adv = _need(svc)
    name = W.get_str(body, "name") or None
    if name is not None:
        svc.mgr.group(name)  # unknown -> an error naming it
    out = adv.advice(svc.clock.now_ns(), name)
    units = {u.name: u for u in svc.mgr.usage()}
    for g in out["groups"]:
        u = units.get(g["name"])
        if u is not None:
            g["quota"] = u.quota
            g["unit"] = u.unit
    reg = svc.mgr.storage
    on_slot = svc.mgr.held_bytes()
    out["usage"] = {
        "groups": [{"name": u.name, "unit": u.unit, "used": u.used, "quota": u.quota,
                    "capacity": u.capacity, "serving_blocks": u.serving_blocks,
                    "pending_blocks": u.pending_blocks, "evicted_blocks": u.evicted_blocks}
                   for u in units.values()],
        "storages": [{"name": st.name, "type": st.type,
                      "used_bytes": int(on_slot[reg.slot(st.name)]) if reg.slot(st.name)
                      else 0,
                      "capacity_bytes": st.capacity_bytes, "available": st.available,
                      "healthy": reg.health(st.name) is None}
                     for st in sorted(svc.mgr.storages(), key=lambda s: s.name)],
    }
    out["evictions"] = dict(sorted(svc.mgr.evicted_by_trigger.items()))
    if (W.get_str(body, "bound") or "") == "belady":
        from kvsim.server.service import _Later

        # the registry is read here, under the service lock; the pass over the event
        # log runs after the lock is released (other calls go on meanwhile)
        group_of = {s.instance_id: s.group for s in svc.mgr.instances()}

        def with_belady() -> dict[str, Any]:
            _belady_headroom(svc, out, group_of)
            return out

        return {"advice": _Later(with_belady)}
    return {"advice": out}


#: ``bound: belady`` reads at most this much event log (an on-demand pass, run after
#: the service lock is released).
BELADY_MAX_LOG_BYTES = 64 << 20


def _belady_headroom(svc: Service, out: dict[str, Any], group_of: dict[str, str]) -> None:
    """``belady`` per group: the offline optimum (:func:`kvsim.optimizer.bounds.belady`)
    of the group's calls in the server's event log (reads peek, writes commit, as the
    advisor's curves) at its 1x capacity, and its headroom over the server's own hits
    since start. Only with the event log on and below :data:`BELADY_MAX_LOG_BYTES`
    (it is an on-demand pass; otherwise ``belady`` says why it is missing)."""
    path = svc.data_dir / "events.jsonl"
    if svc.events is None or not path.is_file():
        reason = "no event log (start the server with its event log on)"
    elif path.stat().st_size > BELADY_MAX_LOG_BYTES:
        reason = f"event log over {BELADY_MAX_LOG_BYTES >> 20} MiB: run `kvsim replay " \
                 "--bound belady` on it offline"
    else:
        reason = ""
    if reason or svc.events is None:
        for g in out["groups"]:
            g["belady"] = {"error": reason}
        return
    from kvsim.optimizer.bounds import belady
    from kvsim.trace.readers import read_trace

    svc.events.flush()
    trace = read_trace(path, "kvcm-events")
    for g in out["groups"]:
        insts = [k for k, name in enumerate(trace.instances) if group_of.get(name) == g["name"]]
        rows = np.flatnonzero(np.isin(trace.instance, insts))
        rows = rows[np.argsort(trace.ts_ns[rows], kind="stable")]
        cap = int(g.get("quota_blocks") or 0)
        since = g["windows"]["since_start"]
        if cap <= 0 or rows.size == 0:
            g["belady"] = {"error": "no quota in blocks or no calls logged"}
            continue
        best = int(belady(trace.select(rows), [cap], jobs=1)[0]["hit_blocks"])
        actual = int(since["actual_hit_blocks"])
        reads = int(since["read_blocks"])
        g["belady"] = {"capacity_blocks": cap, "hit_blocks": best,
                       "headroom_blocks": best - actual,
                       "headroom_hit_rate": (best - actual) / reads if reads else 0.0}


def _interp(factors: list[float], values: list[float], f: float) -> float:
    x = np.log2(np.asarray(factors))
    return float(np.interp(math.log2(f), x, np.asarray(values, dtype=np.float64)))


def capacity_plan(svc: Service, body: dict[str, Any]) -> dict[str, Any]:
    """``getCapacityPlan``: the ``updateInstanceGroup`` body for a chosen point."""
    adv = _need(svc)
    name = W.get_str(body, "name", required=True)
    g = svc.mgr.group(name)
    qb = quota_blocks(svc, g)
    if body.get("capacity_blocks") is not None:
        cb = W.get_int(body, "capacity_blocks", 0, low=1, high=1 << 50)
        factor = cb / qb
    else:
        if "factor" not in body:
            raise W.WireError("factor: required (a multiple of today's quota), or "
                              "capacity_blocks")
        f = body["factor"]
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f):
            raise W.WireError(f"factor: expected a number, got {f!r}")
        factor = float(f)
    if not _MIN_FACTOR <= factor <= _MAX_FACTOR:
        raise InvalidArgument(f"factor: must be in [{_MIN_FACTOR:g}, {_MAX_FACTOR:g}], "
                              f"got {factor:g}")
    wire = copy.deepcopy(svc._group_cfg[name])
    quota = wire["quota"]
    if quota.get("capacity"):
        quota["capacity"] = max(1, round(quota["capacity"] * factor))
    if quota.get("capacity_blocks") or not quota.get("capacity"):
        quota["capacity_blocks"] = max(1, round(qb * factor))
    for qc in quota.get("quota_config") or []:
        if qc.get("capacity"):
            qc["capacity"] = max(1, round(int(qc["capacity"]) * factor))
    wire["version"] = g.version + 1
    predicted: dict[str, Any] = {}
    advice = adv.advice(svc.clock.now_ns(), name)
    if advice["groups"]:
        a = advice["groups"][0]
        fs = a["factors"]
        lo, hi = min(fs), max(fs)
        for w, fig in a["windows"].items():
            if fig["read_blocks"]:
                predicted[w] = {
                    "hit_rate": _interp(fs, fig["hit_rate"], min(hi, max(lo, factor))),
                    "hit_rate_today": _interp(fs, fig["hit_rate"], 1.0),
                    "actual_hit_rate": fig["actual_hit_rate"]}
    return {"name": name, "factor": factor, "capacity_blocks": max(1, round(qb * factor)),
            "predicted": predicted,
            "update_instance_group": {"current_version": g.version, "instance_group": wire}}

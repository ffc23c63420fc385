"""The capacity advisor's web page on the admin port (``GET /advisor``).

Authenticated like the admin API: HTTP basic auth with an admin account (a browser asks
for it: unauthenticated requests get ``401`` with a ``WWW-Authenticate`` challenge).
The page shows usage per group and storage, hit rate over time (actual, and the LRU
prediction at today's quota), evictions per trigger, miss reasons and the predicted
hit-rate curve of each group over 1/8x .. 8x of its quota with today's quota marked; a
what-if slider picks a point, **Plan** shows the ``updateInstanceGroup`` body for it
(``getCapacityPlan``) and **Apply** sends that body. It refreshes itself every few
seconds. Charts are drawn by plotly.js, served by the server itself from the ``plotly``
Python package (no CDN: the page works offline).

Routes: ``GET /advisor`` (the page), ``GET /advisor/plotly.min.js``, ``GET
/advisor/data`` (``getCapacityAdvice``), ``POST /advisor/plan`` (``getCapacityPlan``),
``POST /advisor/apply`` (``updateInstanceGroup``).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from kvsim.server.auth import decode_basic

if TYPE_CHECKING:
    from kvsim.server.service import Service

__all__ = ["add_routes", "plotly_js_path"]

_MAX_BODY = 1 << 20
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="kvsim admin", charset="UTF-8"'}


@functools.cache
def plotly_js_path() -> Path | None:
    """plotly.min.js as the ``plotly`` package ships it, or None when not installed."""
    try:
        import plotly
    except ImportError:
        return None
    p = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return p if p.is_file() else None


async def _credential(request: Request, service: Service) -> str | None:
    """The request's admin credential, or None when it has none or a wrong one.

    Checked like every admin call (:meth:`Service.check_admin`: scrypt off the event
    loop, failures limited per client address); with ``--admin-auth none`` every
    request passes, as the admin API's calls do."""
    if service.admin_auth == "none":
        return ""
    header = request.headers.get("authorization")
    cred = decode_basic(header) if header else None
    if cred is None:
        return None
    peer = request.client.host if request.client else None
    role = await asyncio.to_thread(service.check_admin, cred, peer)
    return cred if role == "ROLE_ADMIN" else None


def _denied() -> Response:
    return Response("admin credentials needed\n", status_code=401, headers=_CHALLENGE,
                    media_type="text/plain")


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json",
                    headers={"Cache-Control": "no-store"})


async def _body(request: Request) -> dict[str, Any] | None:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            return None
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def add_routes(app: FastAPI, service: Service) -> None:
    """Add the page and its data routes to the admin listener's FastAPI app."""

    @app.get("/advisor")
    async def page(request: Request) -> Response:
        if await _credential(request, service) is None:
            return _denied()
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    @app.get("/advisor/plotly.min.js")
    async def plotly_js(request: Request) -> Response:
        if await _credential(request, service) is None:
            return _denied()
        p = plotly_js_path()
        if p is None:
            return Response("// plotly is not installed (pip install plotly)\n",
                            media_type="text/javascript", status_code=404)
        return Response(p.read_bytes(), media_type="text/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    async def admin_call(request: Request, method: str, with_body: bool) -> Response:
        """One admin call for the page, with the page's credential (401 without)."""
        cred = await _credential(request, service)
        if cred is None:
            return _denied()
        body = await _body(request) if with_body else {}
        if body is None:
            return Response("body: a JSON object of at most 1 MiB\n", status_code=400)
        return _json(await asyncio.to_thread(service.call, "admin", method, body,
                                             credential=cred))

    @app.get("/advisor/data")
    async def data(request: Request) -> Response:
        return await admin_call(request, "getCapacityAdvice", False)

    @app.post("/advisor/plan")
    async def plan(request: Request) -> Response:  # shows the body, applies nothing
        return await admin_call(request, "getCapacityPlan", True)

    @app.post("/advisor/apply")
    async def apply(request: Request) -> Response:
        return await admin_call(request, "updateInstanceGroup", True)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kvsim capacity advisor</title>
<script src="/advisor/plotly.min.js"></script>
<style>
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin:.2em 0}
.row{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em;flex:1 1 520px;min-width:420px}
.chart{height:320px} pre{background:#f6f6f6;padding:.5em;max-height:22em;overflow:auto}
#status{color:#666;font-size:.9em} button{margin-left:.5em}
</style></head><body>
<h1>kvsim capacity advisor</h1>
<div id="status">loading...</div>
<div>group <select id="group"></select>
 window <select id="window"><option value="hour">last hour</option>
 <option value="day">last day</option><option value="since_start">since start</option></select>
</div>
<div class="row">
 <div class="card"><h2>Predicted hit rate vs capacity (LRU)</h2>
  <div id="curve" class="chart" data-points="0"></div>
  <div>what if: <input id="whatif" type="range" min="-3" max="3" step="0.125" value="0">
   <span id="whatif-label"></span>
   <button id="plan-btn">Plan</button><button id="apply-btn" disabled>Apply</button></div>
  <pre id="plan">choose a capacity, then Plan: the updateInstanceGroup body is shown here
before anything is applied</pre></div>
 <div class="card"><h2>Hit rate over time (last hour, per minute)</h2>
  <div id="timeline" class="chart"></div></div>
</div>
<div class="row">
 <div class="card"><h2>Usage per group</h2><div id="usage-groups" class="chart"></div></div>
 <div class="card"><h2>Usage per storage</h2><div id="usage-storages" class="chart"></div></div>
</div>
<div class="row">
 <div class="card"><h2>Why reads missed</h2><div id="misses" class="chart"></div></div>
 <div class="card"><h2>Evictions per trigger</h2><div id="evictions" class="chart"></div></div>
</div>
<script>
"use strict";
let DATA = null, PLAN = null;
const $ = (id) => document.getElementById(id);
const pct = (x) => (100 * x).toFixed(1) + "%";
function factor() { return Math.pow(2, parseFloat($("whatif").value)); }
function interp(xs, ys, x) {
  const lx = Math.log2(x), L = xs.map(Math.log2);
  if (lx <= L[0]) return ys[0];
  for (let i = 1; i < L.length; i++) if (lx <= L[i]) {
    const t = (lx - L[i-1]) / (L[i] - L[i-1]); return ys[i-1] + t * (ys[i] - ys[i-1]); }
  return ys[ys.length - 1];
}
function selected() {
  if (!DATA) return null;
  const name = $("group").value;
  return DATA.groups.find((g) => g.name === name) || DATA.groups[0] || null;
}
function drawCurve() {
  const g = selected(); if (!g) return;
  const w = g.windows[$("window").value];
  const f = factor(), y = interp(g.factors, w.hit_rate, f);
  $("whatif-label").textContent = f.toFixed(3) + "x quota = " +
    Math.round(f * g.quota_blocks) + " blocks: predicted " + pct(y) + " (today " +
    pct(interp(g.factors, w.hit_rate, 1)) + ")";
  const top = Math.max(0.05, ...w.hit_rate) * 1.1;
  Plotly.react("curve", [
    {x: g.factors, y: w.hit_rate, mode: "lines+markers", name: "predicted (LRU)",
     text: g.capacity_blocks.map((c) => c + " blocks"),
     hovertemplate: "%{x:.3f}x (%{text}): %{y:.1%}"},
    {x: [1, 1], y: [0, top], mode: "lines", name: "today's quota",
     line: {dash: "dash", color: "#d62728"}},
    {x: [f], y: [y], mode: "markers", name: "what if", marker: {size: 12, color: "#2ca02c"}},
  ], {margin: {t: 10, r: 10}, xaxis: {type: "log", title: "capacity / today's quota"},
      yaxis: {title: "block hit rate", tickformat: ".0%", range: [0, top]},
      legend: {orientation: "h"}}, {displayModeBar: false});
  $("curve").dataset.points = String(g.factors.length);
  $("curve").dataset.group = g.name;
  $("curve").dataset.reads = String(w.read_blocks);
}
function drawRest() {
  const g = selected(); if (!g) return;
  const t = g.timeline.map((p) => new Date(p.minute_start_us / 1000));
  Plotly.react("timeline", [
    {x: t, y: g.timeline.map((p) => p.actual_hit_rate), name: "actual", mode: "lines+markers"},
    {x: t, y: g.timeline.map((p) => p.predicted_hit_rate), name: "LRU at today's quota",
     mode: "lines+markers", line: {dash: "dot"}},
  ], {margin: {t: 10, r: 10}, yaxis: {tickformat: ".0%", title: "block hit rate", range: [0, 1]},
      legend: {orientation: "h"}}, {displayModeBar: false});
  const u = DATA.usage;
  Plotly.react("usage-groups", [
    {x: u.groups.map((x) => x.name), y: u.groups.map((x) => x.used), type: "bar", name: "used"},
    {x: u.groups.map((x) => x.name), y: u.groups.map((x) => x.quota), type: "bar", name: "quota"},
  ], {margin: {t: 10, r: 10}, barmode: "group", yaxis: {title: "group unit"}},
     {displayModeBar: false});
  Plotly.react("usage-storages", [
    {x: u.storages.map((x) => x.name), y: u.storages.map((x) => x.used_bytes), type: "bar",
     name: "used bytes"},
    {x: u.storages.map((x) => x.name), y: u.storages.map((x) => x.capacity_bytes), type: "bar",
     name: "capacity bytes"},
  ], {margin: {t: 10, r: 10}, barmode: "group"}, {displayModeBar: false});
  const m = g.windows[$("window").value].misses;
  const reasons = ["compulsory", "capacity", "unusable", "session_failed"];
  Plotly.react("misses", [{x: reasons, y: reasons.map((r) => m[r]), type: "bar"}],
    {margin: {t: 10, r: 10}, yaxis: {title: "missed blocks"}}, {displayModeBar: false});
  const ev = DATA.evictions, trig = Object.keys(ev);
  Plotly.react("evictions", [{x: trig, y: trig.map((k) => ev[k]), type: "bar"}],
    {margin: {t: 10, r: 10}, yaxis: {title: "evicted blocks"}}, {displayModeBar: false});
}
async function refresh() {
  try {
    const r = await fetch("/advisor/data", {credentials: "same-origin", cache: "no-store"});
    if (!r.ok) { $("status").textContent = "error: HTTP " + r.status; return; }
    const j = await r.json();
    if (j.header.status.code !== "OK") {
      $("status").textContent = j.header.status.message; return; }
    DATA = j.advice;
    const sel = $("group"), names = DATA.groups.map((g) => g.name);
    if ([...sel.options].map((o) => o.value).join() !== names.join()) {
      const cur = sel.value; sel.innerHTML = "";
      for (const n of names) {
        const o = document.createElement("option"); o.value = n; o.text = n; sel.add(o); }
      if (names.includes(cur)) sel.value = cur;
    }
    const tot = DATA.total.since_start;
    $("status").textContent = "sample rate " + DATA.sample_rate + ", " + tot.read_blocks +
      " blocks read since start, actual hit rate " + pct(tot.actual_hit_rate) +
      "; updated " + new Date().toLocaleTimeString();
    drawCurve(); drawRest();
  } catch (e) { $("status").textContent = "error: " + e; }
}
async function post(path, body) {
  const r = await fetch(path, {method: "POST", credentials: "same-origin",
    headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  return r.json();
}
$("whatif").addEventListener("input", drawCurve);
$("group").addEventListener("change", () => { drawCurve(); drawRest(); });
$("window").addEventListener("change", () => { drawCurve(); drawRest(); });
$("plan-btn").addEventListener("click", async () => {
  const g = selected(); if (!g) return;
  const j = await post("/advisor/plan", {name: g.name, factor: factor()});
  PLAN = j.header.status.code === "OK" ? j.update_instance_group : null;
  $("plan").textContent = JSON.stringify(j.header.status.code === "OK" ?
    {predicted: j.predicted, updateInstanceGroup: j.update_instance_group} : j.header, null, 2);
  $("apply-btn").disabled = PLAN === null;
});
$("apply-btn").addEventListener("click", async () => {
  if (!PLAN || !confirm("Apply this updateInstanceGroup body?")) return;
  const j = await post("/advisor/apply", PLAN);
  $("plan").textContent = "updateInstanceGroup: " + JSON.stringify(j.header.status);
  PLAN = null; $("apply-btn").disabled = true; refresh();
});
refresh();
setInterval(refresh, 3000);
</script></body></html>
"""

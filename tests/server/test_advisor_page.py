"""The capacity advisor's page (``GET /advisor`` on the admin port) in a real headless
browser: Debian's Chromium driven by selenium. It refuses without credentials, loads
with them, and shows the predicted curve once a trace has been driven through the
server (a DOM assertion; a screenshot goes to ``reports/advisor_page.png``)."""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import service_missing

from kvsim.config import KVSimConfig
from kvsim.server.app import start_server
from kvsim.trace.generator import GenSpec, generate_trace

PW = "page-pw"
SCREENSHOT = Path(__file__).resolve().parents[2] / "reports" / "advisor_page.png"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        service_missing("chromium and chromium-driver are not installed")
    assert browser is not None and driver is not None
    return browser, driver


def _driver(browser: str, driver: str, auth: str | None):  # type: ignore[no-untyped-def]
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service as ChromeService

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1400"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=ChromeService(driver), options=opts)
    d.set_page_load_timeout(60)
    if auth is not None:  # every request of this browser carries the admin credential
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": auth}})
    return d


def test_page_in_headless_chromium(tmp_path: Path) -> None:
    browser, driver = _chromium()
    cfg = KVSimConfig.from_dict({
        "storages": [{"name": "nfs_01", "type": "file", "uri": str(tmp_path / "nfs")}],
        "instance_groups": [{"name": "default", "quota": {"blocks": 800},
                             "storage_candidates": ["nfs_01"]}],
    })
    h = start_server(cfg, data_dir=tmp_path, admin_password=PW, tick_seconds=0.2,
                     advisor_sample_rate=1.0, state="none", leader="none")
    admin = f"http://127.0.0.1:{h.admin_http_port}"
    try:
        # plain HTTP: refused without (or with wrong) credentials, a 401 challenge
        r = httpx.get(f"{admin}/advisor")
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
        assert httpx.get(f"{admin}/advisor/data", auth=("admin", "nope")).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{h.http_port}/advisor").status_code == 404
        # drive a trace
        t = generate_trace(GenSpec(seed=2, requests=300, instances=1, block_size=64))
        meta = f"http://127.0.0.1:{h.http_port}/api"
        with httpx.Client(timeout=60) as c:
            c.post(f"{meta}/registerInstance", json={
                "instance_group": "default", "instance_id": "i0", "block_size": 64,
                "model_deployment": {"model_name": "m", "dtype": "bf16"}})
            for q in range(t.n_requests):
                keys = t.request_keys(q).tolist()
                c.post(f"{meta}/getCacheLocation", json={"instance_id": "i0",
                                                         "block_keys": keys})
                w = c.post(f"{meta}/startWriteCache", json={"instance_id": "i0",
                                                            "block_keys": keys}).json()
                c.post(f"{meta}/finishWriteCache", json={
                    "instance_id": "i0", "write_session_id": w["write_session_id"],
                    "success_blocks": {"offset": len(w["locations"])}})
        h.service.tick()

        # the browser without credentials: the 401 challenge (headless Chromium shows
        # no login dialog: an empty page), no advisor, no chart
        d = _driver(browser, driver, None)
        try:
            d.get(f"{admin}/advisor")
            assert "capacity advisor" not in d.title
            assert "Predicted hit rate" not in d.page_source
            assert not d.find_elements("id", "curve")
        finally:
            d.quit()

        auth = "Basic " + base64.b64encode(f"admin:{PW}".encode()).decode()
        d = _driver(browser, driver, auth)
        try:
            d.get(f"{admin}/advisor")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pts = d.find_element("id", "curve").get_attribute("data-points")
                if pts and int(pts) > 0 and d.find_elements(
                        "css selector", "#curve .scatterlayer .trace"):
                    break
                time.sleep(0.5)
            curve = d.find_element("id", "curve")
            assert curve.get_attribute("data-points") == "25"
            assert curve.get_attribute("data-group") == "default"
            assert int(curve.get_attribute("data-reads") or 0) == int(t.key_counts().sum())
            # three traces drawn by plotly: the curve, today's quota, the what-if point
            assert len(d.find_elements("css selector", "#curve .scatterlayer .trace")) == 3
            assert "blocks read since start" in d.find_element("id", "status").text
            # what-if -> Plan: the updateInstanceGroup body is shown, nothing applied
            d.execute_script("const s = document.getElementById('whatif'); s.value = '1';"
                             "s.dispatchEvent(new Event('input'));")
            assert "2.000x quota = 1600 blocks" in d.find_element("id", "whatif-label").text
            d.find_element("id", "plan-btn").click()
            deadline = time.monotonic() + 30
            while "capacity_blocks" not in d.find_element("id", "plan").text and \
                    time.monotonic() < deadline:
                time.sleep(0.3)
            plan = d.find_element("id", "plan").text
            assert '"capacity_blocks": 1600' in plan and '"current_version": 1' in plan
            assert h.service.mgr.group("default").quota_blocks == 800
            # the page renders (a real PNG); the repo's copy only with KVSIM_WRITE_REPORTS=1
            shot = SCREENSHOT if os.environ.get("KVSIM_WRITE_REPORTS") == "1" \
                else tmp_path / "advisor_page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            tmp = shot.with_suffix(".tmp.png")
            assert d.save_screenshot(str(tmp)) and tmp.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            os.replace(tmp, shot)
        finally:
            d.quit()
    finally:
        h.stop()

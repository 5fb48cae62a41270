"""Headless Chromium opens the dashboard of a running surgegate with traffic.

Needs Debian's chromium and chromium-driver (the README's test command installs
them where apt-get can); without them the test is skipped, saying so. The
screenshot is kept as ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from support import WorkerProcess, serve_api

from surgegate.cli.pipeline import DEMO_SERVICES
from surgegate.devtools.demo import run_demo
from surgegate.schemas.decisions import ThrottleDecision, TierLimit
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                           "chromium-driver)")
def test_the_dashboard_renders_live_data_and_shows_a_new_decision_without_a_reload(settings, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    settings = settings.replace(services=DEMO_SERVICES)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    stop = threading.Event()
    producer = TelemetryProducer(settings, client_id="dashboard-traffic")
    traffic = threading.Thread(target=run_demo, args=(producer, stop), kwargs={"base_rps": 50.0}, daemon=True)
    traffic.start()
    url = serve_api(settings) + "/"

    # the page opens once the durable history holds decisions made before it: they must show without any new one
    deadline = time.monotonic() + 150
    while True:
        with urllib.request.urlopen(url + "v1/history/chat/recent?minutes=15", timeout=15) as response:
            recent = json.loads(response.read())
        if recent["throttle"] and recent["scaling"]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no decisions in the history after 150 s: {recent}")
        time.sleep(2)

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)

        def wait(script: str, timeout: float, what: str) -> None:
            end = time.monotonic() + timeout
            while not driver.execute_script(script):
                if time.monotonic() > end:
                    ARTIFACTS.mkdir(exist_ok=True)
                    driver.save_screenshot(str(ARTIFACTS / "dashboard-failed.png"))
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
                time.sleep(0.5)

        # on load, before any new event: the decisions made before the page opened, from the history
        wait("return window.dashboardState && window.dashboardState.loaded === true", 60, "the page to load")
        loaded = driver.execute_script(
            "const s = window.dashboardState; const r = document.getElementById('replicas').data;"
            "const l = document.getElementById('level').data;"
            "return {history: s.fromHistory, stream: s.fromStream, replicas: r ? r[0].x.length : 0,"
            "        levels: l ? l[0].x.length : 0, list: document.querySelectorAll('#decision-list li').length};")
        assert loaded["history"]["throttle"] >= 1 and loaded["history"]["scaling"] >= 1, loaded
        assert loaded["replicas"] >= loaded["history"]["scaling"] >= 1, loaded  # a non-empty replicas chart
        assert loaded["levels"] >= loaded["history"]["throttle"] and loaded["list"] >= 2, loaded
        # the SLO line on the latency chart, the per-tier chart
        assert driver.execute_script(
            "return (document.getElementById('latency').layout.shapes || []).length") >= 1
        wait("const d = document.getElementById('tiers').data;"
             "return !!d && d.some(t => t.name.endsWith('admitted') && t.x.length > 0);", 60,
             "admitted requests per tier")

        # the charts render data from the pipeline: observed load and latency windows, a forecast
        wait("const d = document.getElementById('load').data;"
             "return !!d && d.length > 0 && d[0].x.length >= 2;", 120, "windows in the load chart")
        wait("const d = document.getElementById('load').data;"
             "return d.some(t => t.name === 'forecast' && t.y.length > 0);", 60, "a forecast in the load chart")
        assert driver.execute_script("return document.querySelectorAll('#load .scatterlayer .trace').length") >= 2
        assert driver.execute_script("return document.getElementById('service').value") == "chat"

        # a decision published on the broker appears without a reload
        wait("return document.getElementById('stream-pill').textContent === 'stream: live'", 20, "the SSE stream")
        # the API's stream reads the topic from its start, so nothing waits for its consumer's position
        now = int(time.time() * 1000)
        marker = f"browser-test decision {now}"
        decision = ThrottleDecision(
            service="chat", version=now + 3_600_000, issued_at=now, valid_until=now + 30_000, level=3, mode="enforce",
            tiers={"free": TierLimit(realtime_rps=1, batch_rps=0, burst=2)}, tenants={}, defer_batch=True,
            breaker="closed", forecast_upper_rps=900.0, safe_rps=300.0, reason=marker)
        sender = Producer({"bootstrap.servers": settings.kafka, "log_level": 0})
        sender.produce(Topics(settings.topic_prefix).throttle, msgspec.json.encode(decision), key=b"chat")
        assert sender.flush(10) == 0
        wait(f"return document.getElementById('decision-list').innerText.includes({marker!r})", 30,
             "the new decision in the list")
        assert driver.execute_script("return performance.getEntriesByType('navigation').length") == 1, \
            "the page was not reloaded"
        assert driver.execute_script("return document.getElementById('level-pill').textContent") == "level 3"
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    finally:
        driver.quit()
        stop.set()
        traffic.join(10)
        producer.close()
        worker.stop()

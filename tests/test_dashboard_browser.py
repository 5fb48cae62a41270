"""Headless Chromium opens the dashboard of a running surgegate with traffic, and of `surgegate up --demo`.

Needs Debian's chromium and chromium-driver (the README's test command installs
them where apt-get can); without them the tests are skipped, saying so. The
screenshot is kept as ``artifacts/dashboard.png``; the demo's walk-through, in
``artifacts/walkthrough/`` (``SCREENSHOTS_DIR=docs/walkthrough`` makes the
docs' own, see docs/walkthrough.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
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
from surgegate.devtools.embedded import free_port
from surgegate.schemas.decisions import ThrottleDecision, TierLimit
from surgegate.streams.producer import TelemetryProducer
from surgegate.streams.topics import Topics

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NO_BROWSER = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"


def _chrome(height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size=1400,{height}",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _waiter(driver, on_timeout: Path):
    def wait(script: str, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not driver.execute_script(script):
            if time.monotonic() > end:
                on_timeout.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(on_timeout))
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)
    return wait


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER)
def test_the_dashboard_renders_live_data_and_shows_a_new_decision_without_a_reload(settings, tmp_path):
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

    driver = _chrome()
    try:
        driver.get(url)
        wait = _waiter(driver, ARTIFACTS / "dashboard-failed.png")

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


def _most(chart: str, name: str) -> str:
    """A script expression: the most of the series named ``... name`` in one of the dashboard's charts."""
    return (f"(() => {{ const d = document.getElementById({chart!r}).data;"
            f" const t = d ? d.filter(t => t.name.endsWith({name!r})) : [];"
            f" return Math.max(0, ...t.flatMap(t => t.y.filter(y => y !== null))); }})()")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the demo's children die with it on Linux only")
def test_the_demo_walkthrough_calm_then_a_burst_shed_by_the_lower_tiers_then_the_pool_that_followed(tmp_path):
    shots = Path(os.environ.get("SCREENSHOTS_DIR") or ARTIFACTS / "walkthrough")
    shots.mkdir(parents=True, exist_ok=True)
    api, edge = free_port(), free_port()
    # 2 s windows compress the demo's minutes; the burst 40 s into the load, held 45 s
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")},
           "SURGEGATE_WINDOW_S": "2", "SURGEGATE_LATENESS_S": "2"}
    with open(tmp_path / "up.log", "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "surgegate.cli", "up", "--demo", "--api-port", str(api),
                               "--edge-port", str(edge), "--burst-at", "40", "--ramp", "5", "--hold", "45",
                               "--every", "0", "--duration", "300"], env=env, stdout=out, stderr=subprocess.STDOUT,
                              cwd=tmp_path)
    driver = None
    try:
        deadline = time.monotonic() + 150
        while b"surgegate up: OpenAI calls" not in (tmp_path / "up.log").read_bytes():
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(0.2)
        began = time.monotonic()  # the calls begin once the pool's first two replicas serve

        def at(seconds: float) -> None:
            time.sleep(max(0.0, began + seconds - time.monotonic()))

        driver = _chrome(height=2300)  # every chart on one page
        driver.get(f"http://127.0.0.1:{api}/")
        wait = _waiter(driver, shots / "failed.png")
        wait("return window.dashboardState && window.dashboardState.loaded === true", 60, "the page to load")

        # calm, 30 s into the base load: admitted, two replicas ready, nothing refused
        at(30)
        wait("const d = document.getElementById('load').data; return !!d && d.length > 0 && d[0].x.length >= 8;",
             60, "windows of the base load")
        assert driver.execute_script("return " + _most("replicas", "desired")) == 2
        assert driver.execute_script("return " + _most("replicas", "ready")) == 2
        driver.save_screenshot(str(shots / "1-calm.png"))

        # the burst (from 40 s, at its peak from 45 s): the pool asked to grow, the lower tiers refused or
        # deferred, the top tier admitted
        at(58)
        wait(f"return {_most('replicas', 'desired')} > 2", 60, "desired replicas above 2")
        wait(f"return {_most('tiers', 'free rejected')} + {_most('tiers', 'free deferred')} > 0", 60,
             "free-tier refusals or deferrals")
        driver.save_screenshot(str(shots / "2-burst.png"))
        assert driver.execute_script("return " + _most("tiers", "enterprise admitted")) > 0

        # a cold start later, ready replicas follow desired
        wait(f"return {_most('replicas', 'ready')} > 2", 90, "ready replicas above 2")
        at(80)
        driver.save_screenshot(str(shots / "3-ready.png"))
    finally:
        if driver is not None:
            driver.quit()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()

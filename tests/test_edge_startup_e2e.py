"""`surgegate edge` at start: bad configuration stops it in one line naming the setting (exit 2); a broker that is
away does not (the gateway starts fail-static and goes live when the broker answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from support import Child, eventually
from test_edge_e2e import decision, publish

from surgegate.devtools.embedded import EmbeddedBroker, free_port
from surgegate.streams.topics import create_topics

pytestmark = pytest.mark.e2e


def _edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
    return subprocess.run([sys.executable, "-m", "surgegate.cli", "edge", *args], capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})})


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


@pytest.mark.parametrize(("args", "env", "names"), [
    (["--upstream", "127.0.0.1:9000"], {}, "--upstream '127.0.0.1:9000': must be an http:// or https:// URL"),
    (["--upstream", "http://127.0.0.1:9000", "--service", "embed"], {"SURGEGATE_SERVICES": '{"chat": {}}'},
     "unknown service(s) embed"),
    (["--upstream", "http://127.0.0.1:9000"], {"SURGEGATE_SERVICES": '{"chat": {"replicas": "five"}}'},
     "SURGEGATE_SERVICES: services.chat.replicas: Expected `int`, got `str`"),
    (["--upstream", "http://127.0.0.1:9000"], {"SURGEGATE_SERVICES": '{"chat": {"scaling": {"cooldown_s": []}}}'},
     "services.chat.scaling.cooldown_s: Expected `float`, got `array`"),
    (["--k8s-service", "vllm"], {}, "--k8s-service 'vllm': expected NAMESPACE/NAME[:PORT_NAME]"),
    (["--upstream", "http://127.0.0.1:9000", "--k8s-service", "llm/vllm"], {}, "give one of --upstream"),
], ids=["no scheme", "unknown service", "wrong type", "wrong nested type", "bad service", "two sources"])
def test_bad_configuration_stops_the_edge_in_one_line_naming_the_setting(args, env, names):
    line = _one_line(_edge(*args, "--kafka", "127.0.0.1:1", env=env))
    assert names in line, line


def test_a_keys_file_naming_an_unknown_tier_stops_the_edge_naming_it(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"sk-acme": {"tenant": "acme", "tier": "platinum"}}))
    port = free_port()
    line = _one_line(_edge("--upstream", "http://127.0.0.1:9000", "--keys", str(keys), "--kafka",
                           f"127.0.0.1:{port}", "--port", str(free_port())))
    assert "unknown tier 'platinum'" in line and "key ending" in line and "sk-acme" not in line.split("ending")[0]


def test_an_edge_started_while_the_broker_is_away_serves_fail_static_then_goes_live(settings, tmp_path):
    broker_port, edge_port = free_port(), free_port()
    away = settings.replace(kafka=f"127.0.0.1:{broker_port}", redis="", topic_prefix="late.")
    edge = Child(away, tmp_path / "edge.log", "edge", "--upstream", "http://127.0.0.1:9", "--port", str(edge_port),
                 "--report", "off", "--deferral", "memory").start()
    broker = None
    try:
        status_url = f"http://127.0.0.1:{edge_port}/_surgegate/status"
        edge.wait_http(status_url, timeout=60)
        with urllib.request.urlopen(status_url, timeout=5) as r:
            assert json.loads(r.read())["state"] == "fallback"
        broker = EmbeddedBroker(port=broker_port).start()
        live = away.replace(kafka=broker.bootstrap)
        create_topics(live)
        publish(live, decision(1))

        def state() -> str:
            with urllib.request.urlopen(status_url, timeout=5) as r:
                return json.loads(r.read())["state"]

        eventually(lambda: state() == "live", 60, "the edge to go live once the broker answers")
        assert edge.proc is not None and edge.proc.poll() is None
        assert "starting fail-static" in edge.log()
    finally:
        edge.stop()
        if broker is not None:
            broker.stop()


def test_edge_workers_share_the_port_each_with_its_part_and_one_dying_ends_the_edge(settings, tmp_path):
    import signal

    port = free_port()
    edge = Child(settings, tmp_path / "edge.log", "edge", "--upstream", "http://127.0.0.1:9", "--port", str(port),
                 "--report", "off", "--deferral", "memory", "--workers", "2", "--share", "0.5").start()
    try:
        url = f"http://127.0.0.1:{port}/_surgegate/status"
        edge.wait_http(url, timeout=60)
        seen: dict[str, float] = {}

        def both_answered() -> bool:
            with urllib.request.urlopen(url, timeout=5) as r:  # a new connection each time
                body = json.loads(r.read())
            seen[body["edge_id"]] = body["share"]
            return len(seen) == 2

        eventually(both_answered, 60, "both worker processes to answer on the one port")
        assert seen == {"edge-1-1": 0.25, "edge-1-2": 0.25}, seen
        children = _children(edge.proc.pid)
        assert len(children) == 2, children
        os.kill(int(children[0]), signal.SIGKILL)
        assert edge.proc.wait(30) == 2, edge.log()
        assert "an edge worker process ended" in edge.log()
    finally:
        edge.stop()


def _children(pid: int) -> list[str]:
    """The process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(entry)
            except (OSError, IndexError, ValueError):
                continue
    return out

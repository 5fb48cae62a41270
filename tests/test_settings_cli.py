"""Settings from the environment and the CLI's handling of bad values."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from surgegate.cli import build_parser
from surgegate.errors import SettingsError
from surgegate.settings import Settings


@pytest.mark.parametrize(("env", "names"), [
    ({"SURGEGATE_PARTITIONS": "0"}, "SURGEGATE_PARTITIONS=0: must be >= 1"),
    ({"SURGEGATE_WINDOW_S": "ten"}, "SURGEGATE_WINDOW_S='ten': must be a number"),
    ({"SURGEGATE_WINDOW_S": "2.5"}, "whole number of seconds"),
    ({"SURGEGATE_LATENESS_S": "-1"}, "SURGEGATE_LATENESS_S=-1.0"),
    ({"SURGEGATE_KAFKA": "nohostport"}, "SURGEGATE_KAFKA='nohostport'"),
    ({"SURGEGATE_REDIS": "http://x"}, "SURGEGATE_REDIS='http://x'"),
    ({"SURGEGATE_TOPIC_PREFIX": "bad prefix"}, "SURGEGATE_TOPIC_PREFIX"),
    ({"SURGEGATE_PARTITONS": "3"}, "SURGEGATE_PARTITONS: unknown setting"),
    ({"SURGEGATE_SERVICES": "{bad json"}, "SURGEGATE_SERVICES: services: not valid JSON"),
    ({"SURGEGATE_SERVICES": '{"chat": {"replicas": 0}}'}, "services.chat.replicas=0: must be >= 1"),
    ({"SURGEGATE_SERVICES": '{"chat": {"colour": "red"}}'}, "services.chat: unknown settings ['colour']"),
    ({"SURGEGATE_FORECAST_COVERAGE": "1.5"}, "SURGEGATE_FORECAST_COVERAGE=1.5"),
    ({"SURGEGATE_REGION": "eu west"}, "SURGEGATE_REGION='eu west'"),
    ({"SURGEGATE_PEER_REGION_TOPICS": "B.sg.regions"}, "needs SURGEGATE_REGION"),
    ({"SURGEGATE_REGION": "A", "SURGEGATE_PEER_REGION_TOPICS": "B.sg.regions,no topic"},
     "SURGEGATE_PEER_REGION_TOPICS"),
    ({"SURGEGATE_SPILL_DETOUR_MS": "-1"}, "SURGEGATE_SPILL_DETOUR_MS=-1.0"),
])
def test_a_bad_setting_is_refused_with_its_name(env, names):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert names in str(err.value)


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.partitions = 9  # type: ignore[misc]


def test_cli_stops_at_start_up_naming_the_bad_variable():
    result = subprocess.run([sys.executable, "-m", "surgegate.cli", "topics", "list"], capture_output=True,
                            text=True, env={"SURGEGATE_PARTITIONS": "many", "PATH": ""}, timeout=60)
    assert result.returncode == 2
    assert "SURGEGATE_PARTITIONS='many': must be an integer" in result.stderr


def test_replay_refuses_a_file_without_the_trace_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,n\n1,2\n")
    result = subprocess.run([sys.executable, "-m", "surgegate.cli", "replay", str(bad), "--kafka", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60, env={"PATH": ""})
    assert result.returncode == 2
    assert "needs columns timestamp_s,count" in result.stderr


EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "burst.csv"


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": ""})


def _dead_address() -> str:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.e2e
@pytest.mark.parametrize("command", [["topics", "list"], ["topics", "create"], ["worker"],
                                     ["replay", str(EXAMPLE), "--speedup", "0"]],
                         ids=lambda c: " ".join(c[:2]))
def test_a_dead_broker_address_fails_within_seconds_with_one_line_naming_it(command):
    address = _dead_address()
    # the deadline is the point: without the probe, replay queued the whole trace and waited for delivery
    result = _run_cli(*command, "--kafka", address, timeout=10)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 75, result.stderr  # retriable: the broker may come back
    assert len(lines) == 1 and address in lines[0] and "no Kafka broker answered" in lines[0], lines
    assert result.stdout == ""


def test_a_bad_option_value_is_named_as_the_option_typed():
    result = _run_cli("topics", "list", "--kafka", "localhost9092")
    assert result.returncode == 2
    assert "--kafka 'localhost9092': must be host:port" in result.stderr and "SURGEGATE_KAFKA" not in result.stderr


def _every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_parser(sub)


def test_every_cli_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for parser in _every_parser(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(name)
            elif action.option_strings and not action.required \
                    and "default" not in formatter._get_help_string(action):
                no_default.append(name)
    assert missing == [] and no_default == []


def test_replay_example_in_the_readme_names_a_file_a_clone_has():
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    traces = re.findall(r"surgegate replay ([^\s`]+\.csv(?:\.gz)?)", readme)
    assert traces, "the README shows a replay example"
    for trace in traces:
        assert (root / trace).exists(), f"README replays {trace}, which a clone does not have"


def test_a_supervised_thread_that_dies_is_reported_not_silent():
    from surgegate.cli.common import supervised

    seen: list[BaseException] = []

    def boom() -> None:
        raise RuntimeError("broken consumer")

    supervised("t", boom, seen.append).join(10)
    assert [str(e) for e in seen] == ["broken consumer"]


def test_the_edge_keys_file_is_read_as_digests_with_budgets_and_bad_entries_are_named(tmp_path):
    from surgegate.edge.identity import KeyFile, digest

    tiers = ("enterprise", "pro", "free")
    good = tmp_path / "keys.json"
    good.write_text('{"sk-acme-7f3a": {"tenant": "acme", "tier": "pro", "tokens_per_minute": 90000},'
                    f'"sha256:{digest("sk-hashed")}": {{"tenant": "beta", "tier": "free"}}}}')
    ring = KeyFile(str(good), tiers=tiers).ring
    identity = ring.get("sk-acme-7f3a")
    assert (identity.tenant, identity.tier, identity.tokens_per_minute) == ("acme", "pro", 90000)
    assert ring.get("sk-hashed").tenant == "beta" and ring.get("sha256:" + digest("sk-hashed")) is None
    assert "sk-acme-7f3a" not in repr(vars(ring)), "only digests are kept"
    for text, says in (('{"sk-x": "pro"}', "key ending 'sk-x'"), ('{"sk-y": {"tenant": "a", "tier": "pro", '
                                                                 '"tokens_per_minute": -1}}', "tokens_per_minute"),
                       ('{"sk-z": {"tenant": "a", "tier": "platinum"}}', "unknown tier 'platinum'"),
                       ("[1, 2]", "expected an object of API key"), ("{broken", "--keys")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(SettingsError, match=re.escape(says)):
            KeyFile(str(bad), tiers=tiers)


def test_a_keys_file_that_changes_is_taken_up_and_a_broken_one_keeps_the_keys_in_force(tmp_path):
    from surgegate.edge.identity import KeyFile

    path = tmp_path / "keys.json"
    path.write_text('{"sk-old": {"tenant": "acme", "tier": "pro"}}')
    keys = KeyFile(str(path), tiers=("pro", "free"))
    path.write_text('{"sk-new": {"tenant": "acme", "tier": "free"}}')
    os.utime(path, (1, 1))  # a change on disk, whatever the clock's resolution
    assert keys.check() and keys.ring.get("sk-new").tier == "free" and keys.ring.get("sk-old") is None
    path.write_text("{not json")
    assert not keys.reload() and keys.ring.get("sk-new") is not None and keys.reload_errors == 1


def test_kafka_security_reaches_every_client_config_and_the_agents(tmp_path):
    import faust
    import trustme

    from surgegate.agents.app import faust_credentials
    from surgegate.streams.kafka import admin_config, consumer_config, producer_config

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    env = {"SURGEGATE_KAFKA": "broker:9093", "SURGEGATE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
           "SURGEGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "SURGEGATE_KAFKA_SASL_USERNAME": "surgegate",
           "SURGEGATE_KAFKA_SASL_PASSWORD": "pw", "SURGEGATE_KAFKA_SSL_CA_FILE": str(ca)}
    s = Settings.from_env(env)
    assert "pw" not in repr(s)
    for config in (admin_config(s), producer_config(s, "p"), consumer_config(s, "g", "c")):
        assert config["security.protocol"] == "sasl_ssl" and config["sasl.mechanisms"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "surgegate" and config["ssl.ca.location"] == str(ca)
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context is not None
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.username == "surgegate"
    plain = Settings(kafka="broker:9092")
    assert "security.protocol" not in producer_config(plain, "p") and faust_credentials(plain) is None
    with pytest.raises(SettingsError, match="SURGEGATE_KAFKA_SASL_MECHANISM"):
        Settings(kafka="b:1", kafka_security_protocol="SASL_PLAINTEXT")


def test_every_setting_survives_the_way_to_a_child_process():
    s = Settings(kafka="k:1", redis="redis://r:2/0", window_s=2.0, lateness_s=1.5, forecast_horizon=12, max_skew_s=3.5,
                 upstream_key="sk-up", api_token="t", services='{"chat": {"replicas": 3}}', worker_id="w-9")
    assert Settings.from_env(s.to_env()) == s
    assert set(s.to_env()) == set(Settings.names())


@pytest.mark.slow
def test_up_with_its_api_port_taken_stops_with_one_line_naming_it_and_leaves_nothing_running(tmp_path):
    from surgegate.devtools.embedded import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEGATE_")}
        broker, redis_port = free_port(), free_port()
        result = subprocess.run([sys.executable, "-m", "surgegate.cli", "up", "--api-port", str(port),
                                 "--broker-port", str(broker), "--redis-port", str(redis_port)],
                                capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("surgegate up:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "address already in use" in errors[0], \
        result.stderr
    assert "Traceback" not in result.stderr
    for started in (broker, redis_port):  # the embedded broker and Redis it had started are gone with it
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", started)) != 0


def test_the_command_serves_counters_without_created_series():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from surgegate.cli import no_created_series

    registry = CollectorRegistry()
    Counter("surgegate_probe", "a counter", registry=registry).inc()
    no_created_series()
    text = generate_latest(registry).decode()
    assert "surgegate_probe_total 1.0" in text and "_created" not in text


def test_a_child_environment_carries_exactly_these_settings_and_the_rest_of_the_parent_s():
    s = Settings.from_env({"SURGEGATE_WINDOW_S": "2", "SURGEGATE_LATENESS_S": "1"})
    env = s.child_environ({"PATH": "/bin", "SURGEGATE_STALE": "x", "SURGEGATE_WINDOW_S": "10"})
    assert env["PATH"] == "/bin" and "SURGEGATE_STALE" not in env
    assert Settings.from_env(env) == s


@pytest.mark.parametrize(("args", "says"), [
    (["--outage", "0"], "--outage: seconds within (0, 3600]"),
    (["--outage", "nan"], "--outage: seconds within (0, 3600]"),
    (["--workers", "0"], "--workers: 1 to 8"),
    (["--faults", "worker,nope"], "--faults: unknown nope"),
])
def test_chaos_names_the_option_out_of_range_before_starting_anything(args, says):
    result = _run_cli("chaos", *args, timeout=30)
    assert result.returncode == 2 and says in result.stderr, result.stderr


@pytest.mark.parametrize(("env", "args", "says"), [
    ({}, ("--region-upstream", "B=http://127.0.0.1:9"), "--region-upstream needs SURGEGATE_REGION"),
    ({"SURGEGATE_REGION": "A"}, ("--region-upstream", "B"), "--region-upstream 'B': expected REGION=URL"),
    ({"SURGEGATE_REGION": "A"}, ("--region-upstream", "B=ftp://x"), "--region-upstream 'ftp://x'"),
    ({"SURGEGATE_REGION": "A"}, ("--region-upstream", "A=http://127.0.0.1:9"), "that is this edge's own region"),
])
def test_an_edge_names_a_wrong_region_upstream_before_starting_anything(env, args, says):
    result = subprocess.run([sys.executable, "-m", "surgegate.cli", "edge", "--upstream", "http://127.0.0.1:9",
                             *args], capture_output=True, text=True, timeout=60, env={"PATH": "", **env})
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr

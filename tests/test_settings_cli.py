"""Settings from the environment and the CLI's handling of bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

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

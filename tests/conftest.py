"""Fixtures: a real broker and a real Redis on free loopback ports for the session.

Set SURGEGATE_KAFKA / SURGEGATE_REDIS to use running ones instead. Every test
gets its own topic prefix (and so its own consumer groups and Redis keys), so
tests share one broker without seeing each other's data.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import WINDOW_S, WorkerProcess

from surgegate.devtools.embedded import EmbeddedBroker, EmbeddedRedis
from surgegate.settings import EMBEDDED_TIMEOUTS, Settings
from surgegate.streams.topics import create_topics

_counter = itertools.count()
# as the CLI does: librdkafka's own lines only with --verbose (a client that outlives the broker at the
# end of a test would print one per reconnect)
logging.getLogger("surgegate.librdkafka").setLevel(logging.CRITICAL)


@pytest.fixture(scope="session")
def broker_bootstrap():
    given = os.environ.get("SURGEGATE_KAFKA")
    if given:
        yield given
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def redis_url():
    given = os.environ.get("SURGEGATE_REDIS")
    if given:
        yield given
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def settings(broker_bootstrap, redis_url):
    """Settings for one test: its own topic prefix, topics created, short windows, fast flushes, the embedded
    broker's group timeouts; the workers' log level is ``SURGEGATE_LOG_LEVEL``'s (``debug`` logs every cut,
    partial and close, for a failure's captured logs)."""
    s = Settings(kafka=broker_bootstrap, redis=redis_url, topic_prefix=f"t{os.getpid()}x{next(_counter)}.",
                 partitions=3, window_s=WINDOW_S, lateness_s=2.0, flush_interval_s=0.5, idle_after_s=1.5,
                 log_level=os.environ.get("SURGEGATE_LOG_LEVEL", "info"),
                 kafka_session_timeout_s=EMBEDDED_TIMEOUTS.session_s,
                 kafka_max_poll_interval_s=EMBEDDED_TIMEOUTS.max_poll_interval_s)
    create_topics(s)
    return s


#: a test that uses one of these needs the broker or Redis: it is end-to-end, whatever its file says
_BROKER_FIXTURES = frozenset({"broker_bootstrap", "redis_url", "settings", "worker_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs the broker or Redis ``e2e``, and every ``e2e`` test ``slow``: the fast tier
    (``pytest -m "not slow"``) is the pure logic, in seconds."""
    for item in items:
        if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture's teardown knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def worker_factory(request, settings, tmp_path):
    """Start `surgegate worker` processes for this test's settings; stopped at teardown, their logs printed
    (in the failure's captured output) when the test failed."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", metrics_port: int = 0) -> WorkerProcess:
        proc = WorkerProcess(settings, tmp_path / f"{name}-{len(started)}.log", worker_id=name,
                             metrics_port=metrics_port).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for proc in started:
            print(f"--- {proc.log_path.name} (last 5,000 characters)\n{proc.log()}")

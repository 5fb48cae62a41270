"""What every command shares: settings from the environment and options, the broker check, logging, progress,
supervised threads and JSON options."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgegate.errors import SettingsError, SurgegateError
from surgegate.logs import redact_bad_requests
from surgegate.settings import Settings

log = logging.getLogger("surgegate")

#: exit status of a failure worth retrying as it is (a broker that did not answer): sysexits' EX_TEMPFAIL
EX_TEMPFAIL = 75
#: options that override a setting: option -> Settings field
_SETTING_OPTIONS = {"partitions": "partitions", "prefix": "topic_prefix", "kafka": "kafka", "redis": "redis"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def settings_of(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command's options (``--kafka``, ``--redis``, ...) over them."""
    settings = Settings.from_env(os.environ)
    for option, field in _SETTING_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        try:
            settings = settings.replace(**{field: value})
        except SettingsError as exc:  # it names the variable; the user typed the option
            reason = str(exc).split(": ", 1)[-1]
            raise SettingsError(f"--{option} {value!r}: {reason}") from None
    return settings


def need_kafka(settings: Settings) -> Settings:
    """A broker address must be set, and a broker must answer there within a few seconds; the settings with the
    group timeouts settled for the broker that answered."""
    from surgegate.streams.kafka import probe_broker

    if not settings.kafka:
        raise SurgegateError("no broker: set SURGEGATE_KAFKA=host:port or pass --kafka (or use `surgegate up`)")
    return probe_broker(settings)


def need_redis(settings: Settings, what: str) -> None:
    """A Redis must be named for ``what``; a clear error otherwise."""
    if not settings.redis:
        raise SurgegateError(f"{what} needs Redis: set SURGEGATE_REDIS or pass --redis")


#: the loggers :func:`configure_logging` gives their own levels
_CONFIGURED = ("surgegate", "faust.tables.recovery", "surgegate.librdkafka")


def configure_logging(settings: Settings, verbose: bool) -> None:
    """Quiet by default: surgegate's own lines at ``SURGEGATE_LOG_LEVEL``, and Faust's table recovery
    with them (where each changelog is read from and to, after every rebalance: what a worker waits on);
    the rest of Faust, aiokafka, aiohttp's access log and librdkafka only for warnings (librdkafka not at
    all: clients report broker failures once, by name). ``--verbose`` lets everything through at debug
    (librdkafka at info)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    for name in ("surgegate", "faust.tables.recovery"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else settings.log_level.upper())
    logging.getLogger("surgegate.librdkafka").setLevel(logging.INFO if verbose else logging.CRITICAL)
    redact_bad_requests()


def logging_as_configured() -> dict[str, Any]:
    """The levels :func:`configure_logging` set, as a ``logging.config`` dictionary: a Faust worker replaces
    the root handlers when it starts, with its one level on the handler, which would drop surgegate's
    info and debug lines whatever ``SURGEGATE_LOG_LEVEL`` asked for; given this, it keeps them."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"level": logging.getLogger().level, "handlers": ["default"]},
        "loggers": {name: {"level": logging.getLogger(name).level} for name in _CONFIGURED},
    }


def progress_bar(description: str, total: float, unit: str) -> Any:
    """A progress bar on stderr with rate and time left (tqdm)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, unit_scale=True, file=sys.stderr, mininterval=0.5,
                dynamic_ncols=True)


def supervised(name: str, target: Callable[[], None], on_death: Callable[[BaseException], None]) -> threading.Thread:
    """Run ``target`` in a daemon thread; if it raises, ``on_death`` gets the exception (a thread never dies
    unseen)."""
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # every death is reported, whatever it was
            on_death(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def exit_on_death(command: str, part: str) -> Callable[[BaseException], None]:
    """An ``on_death`` for :func:`supervised`: a process without one of its parts only looks healthy, so it
    ends (exit 2) with one line naming the part and the error, and a supervisor restarts it."""
    def died(exc: BaseException) -> None:
        log.critical("%s stopped: %s: %s", part, type(exc).__name__, exc, exc_info=exc)
        print(f"surgegate {command}: the {part} stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)
    return died


def event_loop() -> Any:
    """A new event loop for an HTTP server: uvloop's where it is installed (its socket transports and loop in C take
    about a tenth off the gateway's CPU per request), else asyncio's."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # not built for this platform: asyncio's own loop serves, a little slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def json_option(option: str, value: str, expected: str = "a JSON object") -> dict:
    """A JSON object given inline or as a file name; a clear error naming the option otherwise."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        raw = json.loads(text)
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise SurgegateError(f"{option} {value!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise SurgegateError(f"{option} {value!r}: expected {expected}")
    return raw


class Parsers:
    """The sub-command parsers under construction, with the option groups several commands share."""

    def __init__(self, sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
        self.sub = sub
        self.formatter = formatter

    def command(self, name: str, description: str) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=description, description=description, formatter_class=self.formatter)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="as `surgegate --verbose`, given after the command (default: off)")
        return p

    @staticmethod
    def broker(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kafka", metavar="HOST:PORT", help="broker address (default: SURGEGATE_KAFKA)")
        p.add_argument("--prefix", help="topic prefix (default: SURGEGATE_TOPIC_PREFIX, else 'sg.')")

    @staticmethod
    def redis(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--redis", metavar="URL", help=f"Redis URL: {what} (default: SURGEGATE_REDIS)")

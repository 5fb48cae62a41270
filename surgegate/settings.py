"""Settings, read once from the environment into one frozen object.

Nothing below the CLI reads ``os.environ``: the CLI calls
:meth:`Settings.from_env` and passes the object down.

>>> s = Settings.from_env({"SURGEGATE_PARTITIONS": "8", "SURGEGATE_TOPIC_PREFIX": "x."})
>>> s.partitions, s.topic_prefix, s.window_ms
(8, 'x.', 10000)
>>> Settings.from_env({"SURGEGATE_PARTITIONS": "zero"})
Traceback (most recent call last):
...
surgegate.errors.SettingsError: SURGEGATE_PARTITIONS='zero': must be an integer
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from surgegate.control.config import ServiceConfig, parse_services
from surgegate.errors import SettingsError

ENV_PREFIX = "SURGEGATE_"
#: The window length when ``SURGEGATE_WINDOW_S`` is not set; pure code that runs without settings
#: (the simulator, forecast evaluation) starts from it too.
DEFAULT_WINDOW_S = 10
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob surgegate reads from its environment.

    ``kafka`` and ``redis`` are empty when surgegate should start its own
    embedded broker and Redis (``surgegate up`` and the tests).
    """

    kafka: str = ""
    redis: str = ""
    topic_prefix: str = "sg."
    partitions: int = 4
    #: copies of each topic the broker keeps, and how many must have a record before it is acknowledged
    replication_factor: int = 1
    min_insync_replicas: int = 1
    window_s: float = float(DEFAULT_WINDOW_S)
    lateness_s: float = 5.0
    max_future_s: float = 300.0
    #: an event stamped further ahead of the ingest clock than this (a skewed edge clock) is placed at the
    #: ingest clock, and counted, instead of moving everyone's windows ahead
    max_skew_s: float = 5.0
    flush_interval_s: float = 1.0
    idle_after_s: float = 2.0
    forecast_horizon: int = 30
    forecast_coverage: float = 0.9
    forecast_checkpoint_windows: int = 6
    services: str = ""
    worker_id: str = "worker-1"
    log_level: str = "info"
    #: bearer token for the API's write endpoints (overrides); empty: writes are refused
    api_token: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        _check(self.partitions >= 1, "PARTITIONS", self.partitions, "must be >= 1")
        _check(self.partitions <= 1024, "PARTITIONS", self.partitions, "must be <= 1024")
        _check(1 <= self.replication_factor <= 16, "REPLICATION_FACTOR", self.replication_factor,
               "must be within [1, 16]")
        _check(1 <= self.min_insync_replicas <= self.replication_factor, "MIN_INSYNC_REPLICAS",
               self.min_insync_replicas, f"must be within [1, REPLICATION_FACTOR={self.replication_factor}]")
        _check(1.0 <= self.window_s <= 3600.0, "WINDOW_S", self.window_s, "must be within [1, 3600]")
        _check(
            (self.window_s * 1000) % 1000 == 0,
            "WINDOW_S",
            self.window_s,
            "must be a whole number of seconds",
        )
        _check(0.0 <= self.lateness_s <= 3600.0, "LATENESS_S", self.lateness_s, "must be within [0, 3600]")
        _check(self.max_future_s > 0, "MAX_FUTURE_S", self.max_future_s, "must be > 0")
        _check(
            0.05 <= self.flush_interval_s <= 60.0,
            "FLUSH_INTERVAL_S",
            self.flush_interval_s,
            "must be within [0.05, 60]",
        )
        _check(0.1 <= self.idle_after_s <= 600.0, "IDLE_AFTER_S", self.idle_after_s, "must be within [0.1, 600]")
        _check(0 <= self.max_skew_s <= self.max_future_s, "MAX_SKEW_S", self.max_skew_s,
               f"must be within [0, MAX_FUTURE_S={self.max_future_s:g}]")
        _check(1 <= self.forecast_horizon <= 360, "FORECAST_HORIZON", self.forecast_horizon,
               "must be within [1, 360] windows")
        _check(0.5 <= self.forecast_coverage < 1.0, "FORECAST_COVERAGE", self.forecast_coverage,
               "must be within [0.5, 1)")
        _check(1 <= self.forecast_checkpoint_windows <= 360, "FORECAST_CHECKPOINT_WINDOWS",
               self.forecast_checkpoint_windows, "must be within [1, 360]")
        try:
            configs = parse_services(self.services) if self.services else {}
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}SERVICES: {exc}") from None
        object.__setattr__(self, "_service_configs", configs)  # parsed once, here
        _check(bool(_TOPIC_PREFIX.match(self.topic_prefix)), "TOPIC_PREFIX", self.topic_prefix,
               "may hold only letters, digits, '.', '_' and '-'")
        _check(self.log_level in ("debug", "info", "warning", "error"), "LOG_LEVEL", self.log_level,
               "must be one of debug, info, warning, error")
        _check(bool(self.worker_id), "WORKER_ID", self.worker_id, "must not be empty")
        if self.kafka:
            _check(all(":" in h for h in self.kafka.split(",")), "KAFKA", self.kafka,
                   "must be host:port[,host:port...]")
        if self.redis:
            _check(self.redis.startswith(("redis://", "rediss://", "unix://")), "REDIS", self.redis,
                   "must be a redis:// URL")

    def service_configs(self) -> dict[str, ServiceConfig]:
        """Per-service control settings from ``SURGEGATE_SERVICES`` (JSON), by service name (a copy)."""
        return dict(self._service_configs)  # type: ignore[attr-defined]

    @property
    def window_ms(self) -> int:
        """Window length in milliseconds."""
        return int(self.window_s * 1000)

    @property
    def lateness_ms(self) -> int:
        """Allowed lateness in milliseconds."""
        return int(self.lateness_s * 1000)

    @property
    def max_skew_ms(self) -> int:
        """How far ahead of the ingest clock an event time counts as the sender's clock, not skew, in ms."""
        return int(self.max_skew_s * 1000)

    @property
    def max_future_ms(self) -> int:
        """How far ahead of the ingest clock an event time may be, in ms."""
        return int(self.max_future_s * 1000)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``SURGEGATE_*`` variables; unknown ones are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in environ.items():
            if not name.startswith(ENV_PREFIX):
                continue
            key = name[len(ENV_PREFIX):].lower()
            if key not in fields:
                known = ", ".join(ENV_PREFIX + k.upper() for k in fields)
                raise SettingsError(f"{name}: unknown setting (known: {known})")
            values[key] = _convert(name, raw, fields[key].type)
        return cls(**values)


def _convert(name: str, raw: str, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            value = float(raw)
            if value != value:
                raise ValueError
            return value
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be {'an integer' if kind == 'int' else 'a number'}") from None
    return raw.strip()


def _check(ok: bool, name: str, value: object, message: str) -> None:
    if not ok:
        raise SettingsError(f"{ENV_PREFIX}{name}={value!r}: {message}")

"""Settings, read once from the environment into one frozen object, and handed on the same way.

Nothing below the CLI reads ``os.environ``: the CLI calls
:meth:`Settings.from_env` and passes the object down; a child process gets
:meth:`Settings.to_env`, which :meth:`Settings.from_env` reads back whole.

>>> s = Settings.from_env({"SURGEGATE_PARTITIONS": "8", "SURGEGATE_TOPIC_PREFIX": "x."})
>>> s.partitions, s.topic_prefix, s.window_ms
(8, 'x.', 10000)
>>> Settings.from_env(s.to_env()) == s
True
>>> Settings.from_env({"SURGEGATE_PARTITIONS": "zero"})
Traceback (most recent call last):
...
surgegate.errors.SettingsError: SURGEGATE_PARTITIONS='zero': must be an integer
"""

from __future__ import annotations

import dataclasses
import os
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
_REGION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class GroupTimeouts:
    """A consumer group's timeouts, in seconds: how long a silent member stays in its group, how long it may go
    between polls, and how often it says it is alive.

    Kafka's own defaults suit a real cluster; the embedded broker makes a join wait for the rebalance timeout,
    so with it they are short (:data:`EMBEDDED_TIMEOUTS`).
    """

    session_s: float
    max_poll_interval_s: float

    @property
    def heartbeat_s(self) -> float:
        """A sixth of the session (at most 3 s, Kafka's default), so a few lost heartbeats do not end it."""
        return min(3.0, self.session_s / 6)

    @property
    def rebalance_s(self) -> float:
        """How long a rebalance waits for the members to rejoin: the session."""
        return self.session_s


#: Apache Kafka's client defaults (librdkafka: session 45 s, max poll interval 300 s).
CLUSTER_TIMEOUTS = GroupTimeouts(session_s=45.0, max_poll_interval_s=300.0)
#: For the embedded broker, which holds a group join for the rebalance timeout: a join takes about 3 s.
EMBEDDED_TIMEOUTS = GroupTimeouts(session_s=6.0, max_poll_interval_s=10.0)


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """Where a Redis is and how to reach it: the URL (``rediss://`` for TLS), ACL credentials and TLS files.

    ``str()`` is the URL without its password, for logs.

    >>> t = RedisTarget.of("redis://:secret@127.0.0.1:6379/0")
    >>> str(t), t.options()
    ('redis://127.0.0.1:6379/0', {})
    """

    url: str
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        """A target as it is, or one for a bare URL."""
        return target if isinstance(target, RedisTarget) else cls(target)

    def options(self) -> dict[str, str]:
        """Keyword arguments for redis-py's ``from_url`` beyond the URL itself."""
        options = {}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        for option, path in (("ssl_ca_certs", self.ca_file), ("ssl_certfile", self.cert_file),
                             ("ssl_keyfile", self.key_file)):
            if path:
                options[option] = path
        return options

    def __str__(self) -> str:
        return re.sub(r"//[^@/]*@", "//", self.url)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob surgegate reads from its environment.

    ``kafka`` and ``redis`` are empty when surgegate should start its own
    embedded broker and Redis (``surgegate up`` and the tests). Secrets
    (``api_token``, ``upstream_key``, passwords) never show in ``repr``.
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
    #: the bearer key the edge and the drainer send to the model server (never a tenant's own key)
    upstream_key: str = dataclasses.field(default="", repr=False)
    #: Kafka connection security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, with SASL's mechanism and
    #: credentials and the TLS files (a CA bundle to trust, a client certificate and key for mutual TLS)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = dataclasses.field(default="", repr=False)
    kafka_ssl_ca_file: str = ""
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    #: consumer-group timeouts (0: Kafka's defaults on a cluster, short ones on the embedded broker)
    kafka_session_timeout_s: float = 0.0
    kafka_max_poll_interval_s: float = 0.0
    #: Redis authentication (ACL user and password) and TLS files; TLS itself by a ``rediss://`` URL
    redis_username: str = ""
    redis_password: str = dataclasses.field(default="", repr=False)
    redis_ca_file: str = ""
    redis_cert_file: str = ""
    redis_key_file: str = ""
    #: the region this process serves (empty: one region, no spill-over); with other regions' loads on
    #: ``peer_region_topics`` (comma-separated; MirrorMaker 2 mirrors a peer's ``sg.regions`` as
    #: ``<alias>.sg.regions``), decisions spill lower tiers to a region with headroom; the detour is named
    region: str = ""
    peer_region_topics: str = ""
    spill_detour_ms: float = 80.0

    def __post_init__(self) -> None:
        _check(self.partitions >= 1, "PARTITIONS", self.partitions, "must be >= 1")
        _check(self.partitions <= 1024, "PARTITIONS", self.partitions, "must be <= 1024")
        _check(1 <= self.replication_factor <= 16, "REPLICATION_FACTOR", self.replication_factor,
               "must be within [1, 16]")
        _check(1 <= self.min_insync_replicas <= self.replication_factor, "MIN_INSYNC_REPLICAS",
               self.min_insync_replicas, f"must be within [1, REPLICATION_FACTOR={self.replication_factor}]")
        _check(1.0 <= self.window_s <= 3600.0, "WINDOW_S", self.window_s, "must be within [1, 3600]")
        _check((self.window_s * 1000) % 1000 == 0, "WINDOW_S", self.window_s, "must be a whole number of seconds")
        _check(0.0 <= self.lateness_s <= 3600.0, "LATENESS_S", self.lateness_s, "must be within [0, 3600]")
        _check(self.max_future_s > 0, "MAX_FUTURE_S", self.max_future_s, "must be > 0")
        _check(0.05 <= self.flush_interval_s <= 60.0, "FLUSH_INTERVAL_S", self.flush_interval_s,
               "must be within [0.05, 60]")
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
        # a window's decision is issued once it closes (the lateness after its end) and must reach the edges
        # with some of its lease left, or they never apply one and run on their fallback
        for config in configs.values() or [None]:
            lease = (config.lease_windows if config is not None else 3) * self.window_s
            _check(self.lateness_s + self.window_s < lease, "LATENESS_S", self.lateness_s,
                   f"must leave a window of the decisions' lease ({lease:g} s = lease_windows x WINDOW_S"
                   f"{f' of service {config.service}' if config is not None else ''}): below {lease - self.window_s:g}")
        _check(bool(_TOPIC_PREFIX.match(self.topic_prefix)), "TOPIC_PREFIX", self.topic_prefix,
               "may hold only letters, digits, '.', '_' and '-'")
        _check(self.log_level in ("debug", "info", "warning", "error"), "LOG_LEVEL", self.log_level,
               "must be one of debug, info, warning, error")
        _check(bool(self.worker_id), "WORKER_ID", self.worker_id, "must not be empty")
        _check(not self.region or bool(_REGION.match(self.region)), "REGION", self.region,
               "must be 1-64 letters, digits, '.', '_' or '-'")
        _check(all(_TOPIC_PREFIX.match(t) for t in self.peer_topics), "PEER_REGION_TOPICS", self.peer_region_topics,
               "must be topic names separated by commas")
        _check(not self.peer_region_topics or bool(self.region), "PEER_REGION_TOPICS", self.peer_region_topics,
               "needs SURGEGATE_REGION: the region this worker set serves")
        _check(0.0 <= self.spill_detour_ms <= 60_000.0, "SPILL_DETOUR_MS", self.spill_detour_ms,
               "must be within [0, 60000]")
        if self.kafka:
            _check(all(":" in h for h in self.kafka.split(",")), "KAFKA", self.kafka,
                   "must be host:port[,host:port...]")
        if self.redis:
            _check(self.redis.startswith(("redis://", "rediss://", "unix://")), "REDIS", self.redis,
                   "must be a redis:// URL (rediss:// for TLS)")
        self._check_connections()

    def _check_connections(self) -> None:
        protocol = self.kafka_security_protocol.upper()
        object.__setattr__(self, "kafka_security_protocol", protocol)
        _check(protocol in KAFKA_SECURITY_PROTOCOLS, "KAFKA_SECURITY_PROTOCOL", protocol,
               f"must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if protocol.startswith("SASL"):
            _check(self.kafka_sasl_mechanism in KAFKA_SASL_MECHANISMS, "KAFKA_SASL_MECHANISM",
                   self.kafka_sasl_mechanism, f"must be one of {', '.join(KAFKA_SASL_MECHANISMS)} with {protocol}")
            _check(bool(self.kafka_sasl_username and self.kafka_sasl_password), "KAFKA_SASL_USERNAME",
                   self.kafka_sasl_username, f"{protocol} needs SURGEGATE_KAFKA_SASL_USERNAME and _PASSWORD")
        for prefix in ("KAFKA_SSL", "REDIS"):
            cert, key = getattr(self, f"{prefix.lower()}_cert_file"), getattr(self, f"{prefix.lower()}_key_file")
            _check(bool(cert) == bool(key), f"{prefix}_KEY_FILE", key,
                   f"a client certificate needs its key, and a key its certificate ({prefix}_CERT_FILE)")
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, f"{prefix.lower()}_{name}")
                _check(not path or os.path.isfile(path), f"{prefix}_{name.upper()}", path, "no such file")
        if self.redis_ca_file or self.redis_cert_file:
            _check(self.redis.startswith("rediss://"), "REDIS", self.redis, "TLS files (SURGEGATE_REDIS_CA_FILE, "
                   "_CERT_FILE) need a rediss:// URL")
        for field in ("kafka_session_timeout_s", "kafka_max_poll_interval_s"):
            value = getattr(self, field)
            _check(value == 0 or 1.0 <= value <= 3600.0, field.upper(), value, "must be 0 (automatic) or within "
                   "[1, 3600] seconds")

    def service_configs(self) -> dict[str, ServiceConfig]:
        """Per-service control settings from ``SURGEGATE_SERVICES`` (JSON), by service name (a copy)."""
        return dict(self._service_configs)  # type: ignore[attr-defined]

    def redis_target(self) -> RedisTarget:
        """The Redis to use, with its credentials and TLS files (the URL is empty without one)."""
        return RedisTarget(self.redis, self.redis_username, self.redis_password, self.redis_ca_file,
                           self.redis_cert_file, self.redis_key_file)

    @property
    def peer_topics(self) -> list[str]:
        """The topics other regions' loads arrive on."""
        return [t.strip() for t in self.peer_region_topics.split(",") if t.strip()]

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

    def group_timeouts(self, embedded: bool) -> GroupTimeouts:
        """The consumer-group timeouts in force: those set, else the defaults for this kind of broker.

        >>> Settings().group_timeouts(embedded=True).session_s, Settings().group_timeouts(embedded=False).session_s
        (6.0, 45.0)
        >>> Settings(kafka_session_timeout_s=10.0).group_timeouts(embedded=True).session_s
        10.0
        """
        base = EMBEDDED_TIMEOUTS if embedded else CLUSTER_TIMEOUTS
        session = self.kafka_session_timeout_s or base.session_s
        poll = self.kafka_max_poll_interval_s or max(base.max_poll_interval_s, session)
        return GroupTimeouts(session_s=session, max_poll_interval_s=poll)

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

    def to_env(self) -> dict[str, str]:
        """Every setting as the ``SURGEGATE_*`` variables :meth:`from_env` reads back into these settings:
        what a child process is given (secrets included: it needs them too)."""
        return {ENV_PREFIX + f.name.upper(): _text(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def child_environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A child process's whole environment: ``base`` (default: this process's) without any ``SURGEGATE_*``
        variable of its own, then these settings (:meth:`to_env`), so the child reads exactly them."""
        base = os.environ if base is None else base
        return {**{k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}, **self.to_env()}

    @classmethod
    def names(cls) -> list[str]:
        """Every variable's name, ``SURGEGATE_KAFKA`` first."""
        return [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(cls)]


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


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

"""Every topic surgegate uses, declared once; idempotent creation, and a keeper that re-creates
topics a broker lost (one replaced by an empty one, or restarted without storage)."""

from __future__ import annotations

import dataclasses
import logging
import threading

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from surgegate.errors import BrokerError
from surgegate.settings import Settings
from surgegate.streams.kafka import admin_config

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 15.0
#: How often the keeper checks that every topic exists; while the broker does not answer, how often it asks
#: again, and how long it waits for an answer.
KEEP_TOPICS_S = 5.0
KEEP_RETRY_S = 1.0
KEEP_LOOKUP_TIMEOUT_S = 2.0
#: How long the decision history is kept.
HISTORY_RETENTION_MS = 30 * 24 * 3600 * 1000
#: Deferred tasks are kept a week: longer than any deadline the edge accepts.
DEFERRED_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """One topic: its name after the prefix, whether compacted, what it carries."""

    suffix: str
    carries: str
    compacted: bool = False
    retention_ms: int | None = None


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("requests", "RequestEvent / RequestSummary, keyed by edge id"),
    TopicSpec("metrics", "MetricEvent, keyed by worker or edge id"),
    TopicSpec("partials", "WindowPartial keyed by scope, and ingest Watermarks"),
    TopicSpec("windows", "WindowStats keyed by scope"),
    TopicSpec("forecasts", "Forecast keyed by scope"),
    TopicSpec("thresholds", "Threshold keyed by scope"),
    TopicSpec("decisions.throttle", "ThrottleDecision keyed by service", compacted=True),
    TopicSpec("decisions.scaling", "ScalingDecision keyed by pool", compacted=True),
    TopicSpec("decisions.history", "every Threshold, ThrottleDecision and ScalingDecision, keyed by service or "
              "pool and stamped with its issue time; never compacted", retention_ms=HISTORY_RETENTION_MS),
    TopicSpec("overrides", "Override keyed by scope"),
    TopicSpec("regions", "RegionLoad keyed by service/region: this region's demand and safe capacity per window, "
              "for other regions' spill-over (mirrored to them)", compacted=True),
    TopicSpec("deadletter", "DeadLetter keyed by source topic"),
    TopicSpec("deferred", "DeferredTask keyed by tenant: batch work waiting for a drainer",
              retention_ms=DEFERRED_RETENTION_MS),
    # Internal: windows, forecasts and overrides re-keyed by service for the decide agent.
    TopicSpec("control.inputs", "decide-agent inputs keyed by service"),
    # Internal: the ingest's cut intents, one partition per source partition.
    TopicSpec("requests.cuts", "ingest cut intents for sg.requests", compacted=True),
    TopicSpec("metrics.cuts", "ingest cut intents for sg.metrics", compacted=True),
)


@dataclasses.dataclass(frozen=True)
class Topics:
    """Resolved topic names for one prefix."""

    prefix: str

    def name(self, suffix: str) -> str:
        """Full name of the topic with this suffix."""
        return self.prefix + suffix

    @property
    def requests(self) -> str:
        return self.name("requests")

    @property
    def metrics(self) -> str:
        return self.name("metrics")

    @property
    def partials(self) -> str:
        return self.name("partials")

    @property
    def windows(self) -> str:
        return self.name("windows")

    @property
    def forecasts(self) -> str:
        return self.name("forecasts")

    @property
    def thresholds(self) -> str:
        return self.name("thresholds")

    @property
    def throttle(self) -> str:
        return self.name("decisions.throttle")

    @property
    def history(self) -> str:
        return self.name("decisions.history")

    @property
    def scaling(self) -> str:
        return self.name("decisions.scaling")

    @property
    def overrides(self) -> str:
        return self.name("overrides")

    @property
    def regions(self) -> str:
        return self.name("regions")

    @property
    def control_inputs(self) -> str:
        return self.name("control.inputs")

    @property
    def deadletter(self) -> str:
        return self.name("deadletter")

    @property
    def deferred(self) -> str:
        return self.name("deferred")

    def cuts(self, source_topic: str) -> str:
        """The cut-intent topic of a source topic."""
        return source_topic + ".cuts"


def create_topics(settings: Settings, admin: AdminClient | None = None,
                  changelogs: tuple[str, ...] = ()) -> dict[str, str]:
    """Create every topic that does not exist yet (and the named compacted ``changelogs`` of the agents'
    tables, and the topics other regions' loads are mirrored to); returns name -> created/exists."""
    admin = admin or AdminClient(admin_config(settings))
    topics = Topics(settings.topic_prefix)
    specs = [(topics.name(spec.suffix), spec) for spec in TOPIC_SPECS]
    specs += [(name, TopicSpec(name, "an agent table's changelog", compacted=True)) for name in changelogs]
    # the other regions' loads, mirrored here: there before the agents subscribe, so none waits for them
    specs += [(name, TopicSpec(name, "another region's RegionLoad records", compacted=True))
              for name in settings.peer_topics]
    new = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                 config=topic_config(settings, spec))
        for name, spec in specs
    ]
    result: dict[str, str] = {}
    for name, future in admin.create_topics(new, operation_timeout=ADMIN_TIMEOUT_S).items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
            result[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                raise BrokerError(f"creating topic {name}: {exc.args[0].str()}") from exc
    log.info("topics: %s", result)
    return result


def topic_config(settings: Settings, spec: TopicSpec) -> dict[str, str]:
    """The broker-side configuration of one topic."""
    config = {"cleanup.policy": "compact" if spec.compacted else "delete"}
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    if settings.replication_factor > 1:
        config["min.insync.replicas"] = str(settings.min_insync_replicas)
    return config


def keep_topics(settings: Settings, stop: threading.Event, interval_s: float = KEEP_TOPICS_S,
                changelogs: tuple[str, ...] = ()) -> None:
    """Until ``stop``: every ``interval_s``, create the topics the broker lost (the agents' table
    ``changelogs`` too). While the broker does not answer it is asked every second, so topics are back
    as soon as it is, before clients that ask a broker to auto-create them (Faust's do; a broker that
    allows it gives them its own partition count). The clients reconnect by themselves."""
    admin = AdminClient(admin_config(settings))
    topics = Topics(settings.topic_prefix)
    wanted = [topics.name(spec.suffix) for spec in TOPIC_SPECS] + list(changelogs)
    wait, reported_wrong = interval_s, set[str]()
    while not stop.wait(wait):
        try:
            metadata = admin.list_topics(timeout=KEEP_LOOKUP_TIMEOUT_S)
        except KafkaException as exc:
            log.info("topic check: broker not answering (%s)", exc.args[0].str() if exc.args else exc)
            wait = KEEP_RETRY_S
            continue
        wait = interval_s
        try:
            if any(name not in metadata.topics for name in wanted):
                created = [name for name, what in create_topics(settings, admin, changelogs).items()
                           if what == "created"]
                log.warning("topics missing on the broker, re-created: %s", ", ".join(created))
        except (KafkaException, BrokerError) as exc:
            log.info("topic check: could not create topics (%s)", exc)
            wait = KEEP_RETRY_S
        wrong = {name for name in wanted if name in metadata.topics
                 and len(metadata.topics[name].partitions) != settings.partitions}
        if wrong - reported_wrong:
            log.error("topics %s do not have %d partitions: a client had the broker create them first; "
                      "disable the broker's topic auto-creation (the embedded broker cannot: it creates 4 "
                      "partitions, so keep SURGEGATE_PARTITIONS at 4 there)", ", ".join(sorted(wrong)),
                      settings.partitions)
        reported_wrong = wrong


def list_topics(settings: Settings) -> dict[str, int]:
    """Existing surgegate topics and their partition counts."""
    admin = AdminClient(admin_config(settings))
    try:
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"listing topics at {settings.kafka}: {exc.args[0].str()}") from None
    return {
        name: len(t.partitions)
        for name, t in sorted(metadata.topics.items())
        if name.startswith(settings.topic_prefix)
    }

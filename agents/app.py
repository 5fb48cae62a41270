"""The Faust application: one factory, every agent wired to its topics."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from surgegate.agents.decide import DecideAgent
from surgegate.agents.forecast import ForecastAgent
from surgegate.agents.mirror import MirrorAgent
from surgegate.agents.new_logs import NewLogs
from surgegate.agents.recovery_watch import RecoveryWatch
from surgegate.agents.windows import WindowMergeAgent
from surgegate.settings import Settings
from surgegate.streams.store import StateMirror
from surgegate.streams.topics import Topics


def create_app(settings: Settings, *, mirror: StateMirror | None = None,
               one_record_batches: bool = False) -> faust.App:
    """Build the Faust app: window merge, forecast, decide and Redis-mirror agents.

    Group timeouts are the settings' (short on the embedded broker, which makes
    a join wait for the rebalance timeout); standby replicas are off because with them a single
    worker restores its own active table partitions as standbys and misses the
    newest changelog record. The recovery consistency check is off: see below.

    ``one_record_batches`` sends every record in a batch of its own, for a
    broker that reports a partition's end wrongly after a multi-record batch
    (the embedded one: see :func:`~surgegate.streams.kafka.end_offsets_trusted`).
    Faust restores a table by reading its changelog up to that end; one record
    per batch keeps the end right, so a restarted worker restores every state
    it wrote, at the cost of a round trip per record and partition.
    """
    batching: dict[str, Any] = {"producer_max_batch_size": 1} if one_record_batches else {}
    credentials = faust_credentials(settings)
    if credentials is not None:
        batching["broker_credentials"] = credentials
    timeouts = settings.group_timeouts(embedded=False)  # as settled at start
    topics = Topics(settings.topic_prefix)
    app = faust.App(
        f"{settings.topic_prefix}surgegate",
        broker=[f"kafka://{host}" for host in settings.kafka.split(",")],
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=timeouts.session_s,
        broker_rebalance_timeout=timeouts.rebalance_s,
        broker_heartbeat_interval=timeouts.heartbeat_s,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        # A broker that lost its topics (replaced by an empty one) brings the changelogs back empty, below the
        # offsets this process already applied; the check would crash the worker, while the in-memory tables
        # still hold the state. (The check guards RocksDB files against topics deleted under them.)
        recovery_consistency_check=False,
        # A stopping worker does not wait for the records its agents are still on: every agent's effect is
        # idempotent (duplicate partials dropped, windows and decisions recognised as replays), so what was not
        # committed is simply read again after a restart. Waiting could hold a shutdown for as long as an agent's
        # send waited on a producer that was itself stopping (seen: 30 s, then SIGKILL).
        stream_wait_empty=False,
        producer_linger_ms=5,
        producer_compression_type=None,
        logging_config=None,
        **batching,
    )
    partials = app.topic(topics.partials, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
    windows = app.topic(topics.windows, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
    forecasts = app.topic(topics.forecasts, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
    WindowMergeAgent(app, settings, source=partials, sink=windows, mirror=mirror).register()
    ForecastAgent(app, settings, source=windows, sink=forecasts, mirror=mirror).register()
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    DecideAgent(
        app, settings, sources=app.topic(topics.windows, topics.forecasts, topics.overrides, *settings.peer_topics,
                                         **raw),
        inputs=app.topic(topics.control_inputs, **raw), thresholds=app.topic(topics.thresholds, **raw),
        decisions=app.topic(topics.throttle, **raw), scaling=app.topic(topics.scaling, **raw),
        history=app.topic(topics.history, **raw), regions=app.topic(topics.regions, **raw), mirror=mirror,
    ).register()
    if mirror is not None:
        MirrorAgent(app, mirror, windows=windows).register()
    RecoveryWatch(app, settings, mirror).register()
    # every topic an agent reads: a re-created one is read again from its start
    NewLogs(app, settings, [topics.partials, topics.windows, topics.forecasts, topics.overrides,
                            topics.control_inputs, *settings.peer_topics], mirror=mirror).register()
    return app


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The agents' broker credentials (aiokafka's TLS context, SASL): the same as every other client's."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_file or None)
        if settings.kafka_ssl_cert_file:
            context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
    assert context is not None  # SSL
    return faust.SSLCredentials(context)

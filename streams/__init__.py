"""Kafka and Redis I/O: topics, the producer SDK, the ingest consumer, the
dead-letter sink, the Redis mirror, trace replay and the embedded services."""

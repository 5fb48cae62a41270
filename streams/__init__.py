"""Kafka and Redis plumbing: topics, client wrappers, the producer SDK, the ingest consumer and the Redis mirror."""

"""The one exception tree of surgegate.

Every error surgegate raises on purpose derives from :class:`SurgegateError`
and says whether retrying the same operation may succeed (``retriable``): the
CLI exits with 75 (``EX_TEMPFAIL``) for a retriable error, so a supervisor
can tell "try again" from "fix the input" (exit 2).
"""

from __future__ import annotations


class SurgegateError(Exception):
    """Root of all surgegate errors."""

    retriable: bool = False


class SettingsError(SurgegateError, ValueError):
    """A setting (environment variable or option) has a bad value; names it."""


class InvalidEvent(SurgegateError, ValueError):
    """An event failed decoding or validation.

    ``reason`` is a short machine-readable code (``undecodable``,
    ``unknown_schema``, ``invalid_field``, ``future_timestamp``, ...) and the
    message says what was wrong, in words.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(SurgegateError):
    """The Kafka-compatible broker refused or failed an operation."""

    retriable = True


class BrokerUnavailable(BrokerError):
    """No broker answered at the configured address; the message names it."""


class ProducerBufferFull(BrokerError):
    """The local producer queue stayed full after the bounded retries."""


class DeliveryFailed(BrokerError):
    """At least one message was not acknowledged by the broker."""


class EmbeddedServiceError(SurgegateError):
    """An embedded broker or Redis failed to start."""

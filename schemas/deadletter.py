"""DeadLetter: an input the pipeline could not use, kept with its reason."""

from __future__ import annotations

import msgspec

from surgegate.schemas.fields import Count, EpochMs, Offset


class DeadLetter(msgspec.Struct, frozen=True, tag_field="schema", tag="sg.DeadLetter/1"):
    """The original bytes (base64), where they came from and why they failed.

    ``reason`` is a short code (``undecodable``, ``unknown_schema``,
    ``missing_field``, ``invalid_field``, ``future_timestamp``,
    ``past_timestamp``, ``inconsistent``, or ``invalid_cut_intent`` for an
    unreadable record on a ``<source>.cuts`` topic); ``error`` says it in
    words. A dead letter is bounded:
    a value (or key) longer than the pipeline keeps is cut, ``truncated`` says
    so and ``value_bytes`` gives the original length, so an oversized record
    is still accounted for and never stops ingestion.
    """

    source_topic: str
    partition: Offset
    offset: Offset
    reason: str
    error: str
    value_b64: str
    key_b64: str | None = None
    at: EpochMs = 0
    value_bytes: Count = 0
    truncated: bool = False

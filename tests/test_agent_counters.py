"""Agents count an unreadable record instead of dying on it."""

from __future__ import annotations

import asyncio

import msgspec

from surgegate.agents.counters import AgentCounters, decode_or_count
from surgegate.schemas.aggregates import WindowStats


def test_an_unreadable_record_is_counted_and_skipped():
    counters = AgentCounters()
    decoder = msgspec.json.Decoder(WindowStats)
    assert asyncio.run(decode_or_count(decoder, b"{not json", counters, "forecasts.unreadable", "forecast")) is None
    assert asyncio.run(decode_or_count(decoder, b'{"schema":"sg.Nope/1"}', counters, "forecasts.unreadable",
                                       "forecast")) is None
    assert counters["forecasts.unreadable"] == 2


def test_a_record_with_no_value_is_counted_and_skipped():
    counters = AgentCounters()
    decoder = msgspec.json.Decoder(WindowStats)
    assert asyncio.run(decode_or_count(decoder, None, counters, "partials.rejected", "merge_windows")) is None
    assert counters["partials.rejected"] == 1

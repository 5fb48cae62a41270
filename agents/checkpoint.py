"""Learned state kept in a Faust table (backed by its changelog) as the bytes of a typed record.

The records are the pure objects' own (:mod:`surgegate.forecast.state`,
:mod:`surgegate.control.state`): learned values only, versioned, decoded with
their types. Nothing read from a table is executed, and a record that does not
decode (another release's format, or not a record at all) is relearned and
counted, never a reason for the agent to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import msgspec
from faust.types import TableT

log = logging.getLogger(__name__)

T = TypeVar("T")


def restore(table: TableT, key: str, decode: Callable[[bytes], T]) -> tuple[T | None, str | None]:
    """The record last saved under ``key`` and None, or None and why it cannot be used (None, None: nothing
    saved)."""
    saved = table.get(key)
    if saved is None:
        return None, None
    try:
        return decode(saved), None
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return None, str(exc)


def save(table: TableT, key: str, data: bytes) -> None:
    """Write ``data`` under ``key`` (must run inside the agent, for the changelog partition)."""
    table[key] = data

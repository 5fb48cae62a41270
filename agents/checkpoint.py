"""Learned state checkpointed into a Faust table as text (pickle, base64).

The tables are the agents' own changelogs, so unpickling only ever reads what
an agent of this application wrote.
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

from faust.types import TableT


def restore(table: TableT, key: str) -> Any | None:
    """The object last checkpointed under ``key``, or None."""
    saved = table.get(key)
    return None if saved is None else pickle.loads(base64.b64decode(saved))


def checkpoint(table: TableT, key: str, state: Any) -> None:
    """Write ``state`` under ``key`` (must run inside the agent, for the changelog partition)."""
    table[key] = base64.b64encode(pickle.dumps(state, protocol=5)).decode("ascii")

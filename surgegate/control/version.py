"""Decision versions: monotonic in time whatever the window length.

A decision's version is the start of the window it was decided from, in epoch
milliseconds. Windows start on whole seconds, so two windows never share a
version, and a later window always has a higher one: changing
``SURGEGATE_WINDOW_S`` (10 s windows to 5 s) cannot make new decisions look
older than the ones edges already hold, as a window *index* would.

>>> decision_version(1_700_000_010_000)
1700000010000
>>> decision_version(1_700_000_015_000) > decision_version(1_700_000_010_000)
True
"""

from __future__ import annotations


def decision_version(window_start_ms: int) -> int:
    """The version of the decisions made from the window starting at ``window_start_ms``."""
    return int(window_start_ms)

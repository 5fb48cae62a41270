"""Logging that never writes what a client sent in a header.

aiohttp refuses a request whose header line is longer than 8,190 bytes (400)
and logs the error with the line's first hundred bytes, where an
``Authorization: Bearer`` key shows. :func:`redact_bad_requests` keeps the
log line and drops what the client sent.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg = "refused a malformed request (%s, %d): what it sent is not logged"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = _Redact()


def redact_bad_requests() -> None:
    """Install the filter on aiohttp's server logger (once; idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)

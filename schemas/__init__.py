"""Wire types of surgegate, as typed immutable msgspec records.

Each value on a topic is JSON with a ``schema`` field naming its type and
version (``"sg.RequestEvent/1"``). ``telemetry`` holds what edges and workers
send, ``aggregates`` what the pipeline derives, ``deadletter`` what it could
not use. :mod:`surgegate.schemas.registry` writes a JSON Schema file per type
next to this module, for edges written in other languages.
"""

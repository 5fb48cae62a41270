"""Constrained field types shared by the wire schemas."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

#: Names of services, tenants, tiers, pools, edges and workers.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
#: Names of services, tenants, tiers, pools, edges and workers. The character
#: pattern is published in the JSON Schema and checked by the validator against a
#: cache of names already seen: a regex per field per event would triple decode time.
Name = Annotated[str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": NAME_PATTERN},
                           description="letters, digits, '_', '.', ':', '-'; 1-64 chars")]
#: A name checked where it is decoded, as the API decodes operators' input: the same characters, and no trailing
#: newline (``$`` alone would allow one in Python's re; the lookahead is valid JSON Schema / ECMA regex too).
CHECKED_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}(?!\n)$"
CheckedName = Annotated[str, Meta(pattern=CHECKED_NAME_PATTERN, description="letters, digits, '_', '.', ':', '-'; "
                                                                              "1-64 chars")]
#: A degradation level: 0 normal .. 4 shed everything but the top tier.
Level = Annotated[int, Meta(ge=0, le=4)]
#: Event time, epoch milliseconds.
EpochMs = Annotated[int, Meta(ge=0, le=2**53, description="epoch milliseconds")]
Count = Annotated[int, Meta(ge=0, le=10**15)]
#: A duration in milliseconds, at most one day.
Millis = Annotated[float, Meta(ge=0.0, le=86_400_000.0)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Rate = Annotated[float, Meta(ge=0.0, le=1e12)]
Offset = Annotated[int, Meta(ge=0)]

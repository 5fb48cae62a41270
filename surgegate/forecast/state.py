"""What a scope's forecaster has learned, as typed records (msgspec): the checkpoint format.

A checkpoint holds learned values only, never code or configuration: the
agent builds a forecaster from the settings in force and loads the state into
it, so a changed setting applies to a restored worker, a moved module cannot
break a restore, and reading a checkpoint from a topic executes nothing.

Each model's record is tagged with the model's name; :data:`FORMAT` is raised
whenever a record changes, and :func:`upgrade` turns the previous format into
the current one (a restore test reads a checkpoint written in it).
"""

from __future__ import annotations

from typing import Any

import msgspec

#: The layout of a :class:`ScopeForecasterState`.
FORMAT = 1


class StateMismatch(ValueError):
    """A checkpoint that does not fit the forecaster it is loaded into (another model set, horizon or step)."""


class LinearState(msgspec.Struct, frozen=True):
    """A standardised online linear regression: the scaler's running statistics and the weights."""

    counts: dict[str, int]
    means: dict[str, float]
    variances: dict[str, float]
    weights: dict[str, float]
    intercept: float


class LastValueState(msgspec.Struct, frozen=True, tag="last_value"):
    t: int | None
    last: float


class EWMAState(msgspec.Struct, frozen=True, tag="ewma"):
    t: int | None
    level: float | None


class SeasonalNaiveState(msgspec.Struct, frozen=True, tag="seasonal_naive"):
    t: int | None
    level: EWMAState


class DailyChangeState(msgspec.Struct, frozen=True, tag="daily_change"):
    t: int | None
    last: float


class HoltWintersState(msgspec.Struct, frozen=True, tag="holt_winters"):
    t: int | None
    n: int
    first: float
    first_values: list[float]
    level: list[float]
    trend: list[float]


class SnarimaxState(msgspec.Struct, frozen=True, tag="snarimax"):
    t: int | None
    scale: float
    y_hist: list[float]
    y_diff: list[float]
    errors: list[float]
    regressor: LinearState


class LagRegressorState(msgspec.Struct, frozen=True, tag="lag_regressor"):
    t: int | None
    recent: list[float]
    fast: float
    level: float
    #: origin window -> anchor horizon -> (features, level then)
    pending: dict[int, dict[int, tuple[list[float], float]]]
    regressor: LinearState


ModelState = (LastValueState | EWMAState | SeasonalNaiveState | DailyChangeState | HoltWintersState | SnarimaxState
              | LagRegressorState)


class QuantileState(msgspec.Struct, frozen=True):
    """A rolling conformal quantile: its residuals in arrival order, where the next one goes, width and level."""

    ring: list[float]
    next: int
    width: float
    level: float


class IssuedState(msgspec.Struct, frozen=True):
    """A forecast awaiting its actuals: each model's values at the anchors, the combination's, one-step bounds."""

    per_model: dict[str, list[float]]
    combined: list[float]
    bounds: tuple[float, float]


class SeriesState(msgspec.Struct, frozen=True):
    point: list[float]
    lower: list[float]
    upper: list[float]
    regime: str
    weights: dict[str, float]


class SelectorState(msgspec.Struct, frozen=True):
    """The online selector: its models, Hedge weights and loss scales per anchor, residual quantiles, forecasts
    awaiting their actuals, the regime and the current forecast."""

    t: int | None
    models: dict[str, ModelState]
    weights: list[dict[str, float]]
    scales: list[float | None]
    trackers: list[QuantileState]
    issued: dict[int, IssuedState]
    burst: bool
    outside: int
    inside: int
    last: float
    peak: float
    current: SeriesState


class ProfileState(msgspec.Struct, frozen=True):
    """The daily profile: the last two days by 10-minute slot, and the typical day."""

    slot: list[int]
    sums: list[float]
    counts: list[int]
    typical: list[float]
    days: list[int]
    open: int


class ScopeForecasterState(msgspec.Struct, frozen=True, tag="sg.ScopeForecasterState", tag_field="schema"):
    """Everything one scope's forecaster has learned (format :data:`FORMAT`)."""

    format: int
    scope: str
    step_ms: int
    horizon: int
    coverage: float
    profile: ProfileState
    rate: SelectorState
    tokens: SelectorState
    last_t: int | None
    gaps: int
    rejected: dict[str, int]
    stale: int


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an earlier format in the current one's layout (format 1 is the first: nothing to do)."""
    if raw.get("format") != FORMAT:
        raise StateMismatch(f"forecaster state format {raw.get('format')!r}: this release reads {FORMAT}")
    return raw


class _Format(msgspec.Struct):
    format: int


_FORMAT = msgspec.msgpack.Decoder(_Format)
_CURRENT = msgspec.msgpack.Decoder(ScopeForecasterState)
_RAW = msgspec.msgpack.Decoder(dict[str, Any])
_ENCODER = msgspec.msgpack.Encoder()


def encode(state: ScopeForecasterState) -> bytes:
    """The checkpoint's bytes (MessagePack: a scope's residuals and pending forecasts are thousands of floats)."""
    return _ENCODER.encode(state)


def decode(data: bytes) -> ScopeForecasterState:
    """A checkpoint read back, upgraded to the current format; :class:`StateMismatch` (or msgspec's
    ``DecodeError``/``ValidationError``) if it is not one."""
    if _FORMAT.decode(data).format == FORMAT:
        return _CURRENT.decode(data)
    return msgspec.convert(upgrade(_RAW.decode(data)), ScopeForecasterState, strict=False)

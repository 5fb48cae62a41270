"""The online selector: weights models by their recent error, calibrates bounds,
and switches to a fast-reacting burst regime when load leaves the bounds."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

from surgegate.checks import check
from surgegate.forecast.base import Forecaster
from surgegate.forecast.conformal import RollingQuantile
from surgegate.forecast.river_models import Interpolator
from surgegate.forecast.state import IssuedState, SelectorState, SeriesState, StateMismatch

#: Horizons (in windows) at which model weights and residual quantiles are learned;
#: other horizons interpolate between them.
ANCHORS = (1, 3, 6, 12, 30)
#: Hedge's learning rate, on each model's absolute error over the
#: combination's recent mean absolute error (so it is the same for a scope of
#: 5 rps and one of 50,000 rps).
HEDGE_RATE = 0.1
#: Fixed share: each window this much of the weight is spread evenly again, so
#: a model that lost for a while can win back when the series changes.
HEDGE_SHARE = 0.001
#: Weights below this are left out of the combination.
NEGLIGIBLE = 0.005
#: How fast the combination's mean absolute error (the loss scale) forgets.
SCALE_DECAY = 0.01
#: No model may forecast more than this times the recent peak (a slowly
#: decaying maximum): a diverging model is cut off, not followed.
CAP_FACTOR = 3.0
PEAK_DECAY = 0.999


@dataclasses.dataclass(frozen=True)
class SeriesForecast:
    """Point forecasts and bounds for horizons 1..H, and what produced them."""

    point: list[float]
    lower: list[float]
    upper: list[float]
    regime: str
    weights: dict[str, float]


class OnlineSelector(Forecaster):
    """Combines forecasters per horizon with weights learned online (Hedge with
    fixed share: the exponentially weighted average forecaster).

    Every model's weight at an anchor horizon is multiplied, when a forecast
    made that far ahead is scored, by ``exp(-HEDGE_RATE * error / scale)``,
    with ``scale`` the combination's recent mean absolute error there; the
    weights are then renormalised and ``HEDGE_SHARE`` of them spread evenly.
    A model that is better for a long while takes over the combination; one
    that diverges loses its weight within a few windows.

    Bounds are ``point +- width`` with widths from conformal quantile trackers
    on the combination's own residuals. When the value leaves the one-step
    bounds ``burst_after`` windows in a row, the selector enters the burst
    regime: the point forecast follows the last value (the fastest model) and
    bounds widen by ``burst_widen``; it leaves once ``calm_after`` values in a
    row fall back inside the normal bounds.
    """

    name = "selector"

    def __init__(self, models: list[Forecaster], *, step_ms: int, horizon: int = 30, coverage: float = 0.9,
                 burst_after: int = 3, calm_after: int = 3, burst_widen: float = 2.0) -> None:
        super().__init__(step_ms)
        check(len(models) >= 1, "models", len(models), "needs at least one model")
        check(len({m.name for m in models}) == len(models), "models", [m.name for m in models], "names must differ")
        check(1 <= horizon <= 360, "horizon", horizon, "must be within [1, 360]")
        check(burst_after >= 1, "burst_after", burst_after, "must be >= 1")
        check(calm_after >= 1, "calm_after", calm_after, "must be >= 1")
        check(burst_widen >= 1.0, "burst_widen", burst_widen, "must be >= 1")
        self.models = models
        self.horizon = horizon
        self.anchors = tuple(sorted({a for a in ANCHORS if a < horizon} | {horizon}))
        self._widths = Interpolator(self.anchors, horizon)
        # each model's forecast at the anchors, as a tuple (itemgetter of one index gives a bare value)
        self._at_anchors = operator.itemgetter(*(a - 1 for a in self.anchors), self.anchors[-1] - 1)
        # for each horizon, the anchor whose errors weight its combination
        nearest = [min(range(len(self.anchors)), key=lambda k: abs(self.anchors[k] - h))
                   for h in range(1, horizon + 1)]
        self._positions = [[h for h in range(horizon) if nearest[h] == i] for i in range(len(self.anchors))]
        self.burst_after = burst_after
        self.calm_after = calm_after
        self.burst_widen = burst_widen
        uniform = 1.0 / len(models)
        self.weights = [{m.name: uniform for m in models} for _ in self.anchors]
        self._scales: list[float | None] = [None] * len(self.anchors)
        self.trackers = [RollingQuantile(coverage) for _ in self.anchors]
        # origin window -> (per-model anchor forecasts, combined anchor forecasts, one-step bounds)
        self._issued: dict[int, tuple[dict[str, tuple[float, ...]], list[float], tuple[float, float]]] = {}
        self.burst = False
        self._outside = 0
        self._inside = 0
        self._last = 0.0
        self._peak = 0.0
        self._current = SeriesForecast([0.0] * horizon, [0.0] * horizon, [0.0] * horizon, "normal", {})
        #: Each model's latest point forecasts, by name (for evaluation and reasons).
        self.model_forecasts: dict[str, list[float]] = {}

    # -------------------------------------------------------------- learning

    @classmethod
    def _unit_test_params(cls, step_ms: int) -> dict[str, Any]:
        from surgegate.forecast.baselines import EWMA, LastValue

        return {"models": [LastValue(step_ms), EWMA(step_ms, 0.5)], "step_ms": step_ms, "horizon": 30}

    @classmethod
    def _invalid_params(cls) -> list[dict[str, Any]]:
        return [*super()._invalid_params(), {"models": []}, {"horizon": 0}, {"burst_after": 0},
                {"burst_widen": 0.5}]

    def _learn(self, y: float, t: int) -> None:
        self._score(y, t)
        for m in self.models:
            m.learn_one(y, t)
        self._last = y
        self._peak = max(y, self._peak * PEAK_DECAY)
        self.t = t
        self._current = self._combine(t)

    def _score(self, y: float, t: int) -> None:
        step = self.step_ms
        for i, h in enumerate(self.anchors):
            issued = self._issued.get(t - h * step)
            if issued is None:
                continue
            per_model, combined, bounds = issued
            self._hedge(i, y, per_model, combined[i])
            self.trackers[i].update(y - combined[i])
            if h == 1:
                self._regime(y, bounds)
        oldest = t - self.anchors[-1] * step
        pending = self._issued
        while pending and next(iter(pending)) <= oldest:  # issued in time order: the oldest come first
            del pending[next(iter(pending))]

    def _regime(self, y: float, bounds: tuple[float, float]) -> None:
        lower, upper = bounds
        if y > upper:
            self._outside += 1
            self._inside = 0
        elif y >= lower:
            self._inside += 1
            self._outside = 0
        else:
            self._inside = self._outside = 0
        if not self.burst and self._outside >= self.burst_after:
            self.burst = True
        elif self.burst and self._inside >= self.calm_after:
            self.burst = False

    def _hedge(self, i: int, y: float, per_model: dict[str, tuple[float, ...]], combined: float) -> None:
        error = abs(y - combined)
        scale = self._scales[i]
        scale = self._scales[i] = error if scale is None else scale + SCALE_DECAY * (error - scale)
        if scale <= 0.0:
            return  # every forecast so far was exact: nothing to tell the models apart
        weights = self.weights[i]
        raw = {name: w * math.exp(-HEDGE_RATE * abs(y - per_model[name][i]) / scale) for name, w in weights.items()}
        total = sum(raw.values())
        if total <= 0.0:  # every model far off at once: start the weights over
            raw, total = dict.fromkeys(raw, 1.0), float(len(raw))
        even = HEDGE_SHARE / len(raw)
        self.weights[i] = {name: (1.0 - HEDGE_SHARE) * w / total + even for name, w in raw.items()}

    def _combine(self, t: int) -> SeriesForecast:
        H = self.horizon
        cap = CAP_FACTOR * self._peak
        forecasts = self.model_forecasts = {}
        for m in self.models:
            f = m.forecast(H)
            if max(f) > cap:
                f = [min(v, cap) for v in f]
            forecasts[m.name] = f
        anchor_weights = self.weights
        point = [0.0] * H
        for positions, weights in zip(self._positions, anchor_weights):
            # models Hedge has all but dropped are left out (and the rest renormalised):
            # most of the weight sits on two or three models, and this is the hot loop
            kept = [(name, wt) for name, wt in weights.items() if wt >= NEGLIGIBLE]
            total = sum(wt for _, wt in kept)
            for name, wt in kept:
                f = forecasts[name]
                wt /= total
                for h in positions:
                    point[h] += f[h] * wt
        widths = self._widths(self._anchor_widths())
        normal_bounds = (max(0.0, point[0] - widths[0]), point[0] + widths[0])
        at_anchors = self._at_anchors
        self._issued[t] = ({name: at_anchors(f) for name, f in forecasts.items()},
                           [point[a - 1] for a in self.anchors], normal_bounds)
        regime = "normal"
        if self.burst:
            regime = "burst"
            point = [self._last] * H
            widths = [w * self.burst_widen for w in widths]
        return SeriesForecast(
            point=point,
            lower=[max(0.0, p - w) for p, w in zip(point, widths)],
            upper=[p + w for p, w in zip(point, widths)],
            regime=regime,
            weights=anchor_weights[self.anchors.index(6)] if 6 in self.anchors else anchor_weights[-1],
        )

    def _anchor_widths(self) -> dict[int, float]:
        """Each anchor's width; an anchor whose residuals have not come in yet (the
        first 30 windows for the 30-window horizon) borrows the longest ready
        anchor's width, grown as a random walk's error grows (by sqrt(h / a))."""
        widths: dict[int, float] = {}
        known: tuple[int, float] | None = None
        for a, tracker in zip(self.anchors, self.trackers):
            if tracker.ready:
                known = (a, tracker.width)
                widths[a] = tracker.width
            else:
                widths[a] = known[1] * math.sqrt(a / known[0]) if known else tracker.width
        return widths

    # -------------------------------------------------------------- output

    def forecast(self, horizon: int) -> list[float]:
        return self._current.point[:horizon]

    def current(self) -> SeriesForecast:
        """The latest forecast with bounds, regime and weights."""
        return self._current

    def state(self) -> SelectorState:
        c = self._current
        return SelectorState(
            t=self.t, models={m.name: m.state() for m in self.models}, weights=[dict(w) for w in self.weights],
            scales=list(self._scales), trackers=[q.state() for q in self.trackers],
            issued={t: IssuedState(per_model={n: list(v) for n, v in per.items()}, combined=list(comb),
                                   bounds=bounds) for t, (per, comb, bounds) in self._issued.items()},
            burst=self.burst, outside=self._outside, inside=self._inside, last=self._last, peak=self._peak,
            current=SeriesState(point=list(c.point), lower=list(c.lower), upper=list(c.upper), regime=c.regime,
                                weights=dict(c.weights)))

    def load(self, state: SelectorState) -> None:
        self._expect(state, SelectorState)
        names = [m.name for m in self.models]
        if sorted(state.models) != sorted(names) or len(state.weights) != len(self.anchors) \
                or len(state.current.point) != self.horizon:
            raise StateMismatch(f"selector state for models {sorted(state.models)} over {len(state.weights)} "
                                f"anchors; this one has {sorted(names)} over {len(self.anchors)}")
        for m in self.models:
            m.load(state.models[m.name])
        self.t = state.t
        self.weights = [dict(w) for w in state.weights]
        self._scales = list(state.scales)
        for q, saved in zip(self.trackers, state.trackers):
            q.load(saved)
        self._issued = {t: ({n: tuple(v) for n, v in i.per_model.items()}, list(i.combined), i.bounds)
                        for t, i in sorted(state.issued.items())}
        self.burst, self._outside, self._inside = state.burst, state.outside, state.inside
        self._last, self._peak = state.last, state.peak
        c = state.current
        self._current = SeriesForecast(list(c.point), list(c.lower), list(c.upper), c.regime, dict(c.weights))
        self.model_forecasts = {}  # made again by the next window learned

    def forget_pending(self) -> None:
        """Drop forecasts awaiting their actuals (after a gap, they no longer line up)."""
        self._issued.clear()
        self._outside = self._inside = 0

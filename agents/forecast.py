"""The forecast agent: learns each scope's windows online and publishes a Forecast.

Each scope's :class:`~surgegate.forecast.scope.ScopeForecaster` (models,
errors, residuals, slow view) is checkpointed into the Faust table
``forecasters``, backed by a changelog, every ``forecast_checkpoint_windows``
windows (default 6: a checkpoint costs about as much as a forecast step): a
restarted worker resumes from its last checkpoint instead of learning from
scratch, and sees the windows it missed since as a gap.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import faust
import msgspec
from faust.types import TP

from surgegate.agents.checkpoint import restore, save
from surgegate.agents.counters import AgentCounters, decode_or_count
from surgegate.agents.in_order import InOrder
from surgegate.forecast import state as forecaster_state
from surgegate.forecast.scope import ScopeForecaster
from surgegate.schemas.aggregates import WindowStats
from surgegate.settings import Settings
from surgegate.streams.store import StateMirror

log = logging.getLogger(__name__)


class ForecastAgent:
    """Owns the ``forecasters`` table and the agent on sg.windows.

    ``counters``: ``forecasts.published``, ``forecasts.stale`` (a replayed
    window), ``forecasts.rejected.<reason>``, ``forecasts.restored``,
    ``forecasts.outdated_checkpoint`` (a checkpoint this release cannot take
    up: another format, or written for another step, horizon or coverage;
    relearned).
    """

    def __init__(self, app: faust.App, settings: Settings, *, source: faust.TopicT, sink: faust.TopicT,
                 mirror: StateMirror | None = None) -> None:
        self.app = app
        self.settings = settings
        self.source = source
        self.sink = sink
        self.mirror = mirror
        # values are a typed record's bytes (agents/checkpoint.py), kept as they are (Faust's "raw" for bytes)
        self.table = app.Table("forecasters", key_type=str, value_type=bytes, partitions=settings.partitions)
        self.counters = AgentCounters(mirror)
        self.in_order = InOrder(app, settings, "forecast", self.counters)
        self._cache: dict[str, ScopeForecaster] = {}
        self._unsaved: Counter[str] = Counter()
        self._decoder = msgspec.json.Decoder(WindowStats)

    def register(self) -> None:
        """Attach the agent and the rebalance hook to the app."""
        self.app.agent(self.source, name="forecast")(self._run)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust calls it with revoked=
        self.in_order.register()

    async def _on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # The table is the truth; drop the working copies so a later assignment reloads them.
        self._cache.clear()
        self._unsaved.clear()

    def _forecaster(self, scope: str) -> ScopeForecaster:
        fc = self._cache.get(scope)
        if fc is None:
            s = self.settings
            fc = ScopeForecaster(scope, step_ms=s.window_ms, horizon=s.forecast_horizon, coverage=s.forecast_coverage)
            state, problem = restore(self.table, scope, forecaster_state.decode)
            if state is not None:
                try:
                    fc.load(state)
                    self.counters["forecasts.restored"] += 1
                except ValueError as exc:  # StateMismatch: written for another step, horizon or model set
                    problem = str(exc)
                    fc = ScopeForecaster(scope, step_ms=s.window_ms, horizon=s.forecast_horizon,
                                         coverage=s.forecast_coverage)
            if problem is not None:
                log.warning("forecast state for %s cannot be taken up (%s); relearning it", scope, problem)
                self.counters["forecasts.outdated_checkpoint"] += 1
            self._cache[scope] = fc
        return fc

    async def _run(self, stream: faust.StreamT) -> None:
        async for event in self.in_order.events(stream):
            window = await decode_or_count(self._decoder, event.value, self.counters, "forecasts.unreadable",
                                           "forecast")
            if window is None:
                continue
            if window.traffic is None:
                continue  # GPU-pool windows feed the scaling agent, not the load forecast
            with self.counters.timed("forecast"):
                fc = self._forecaster(window.scope)
                outcome = fc.observe(window.window_start, window.traffic.demand, window.traffic.tokens_per_s)
                payload = msgspec.json.encode(fc.forecast()) if outcome == "learned" else b""
            if outcome != "learned":
                self.counters[f"forecasts.{'stale' if outcome == 'stale' else 'rejected.' + outcome}"] += 1
                await self.counters.report()
                continue
            await self.sink.send(key=window.scope.encode(), value=payload)
            self._unsaved[window.scope] += 1
            if self._unsaved[window.scope] >= self.settings.forecast_checkpoint_windows:
                save(self.table, window.scope, forecaster_state.encode(fc.state()))
                self._unsaved[window.scope] = 0
            self.counters["forecasts.published"] += 1
            if self.mirror is not None:
                await self.mirror.put_forecast(window.scope, payload)
            await self.counters.report()

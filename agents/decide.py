"""The decide agent: per service, every window, a Threshold and a ThrottleDecision.

Windows (service, tier, tenant and GPU-pool scopes), forecasts and operator
overrides arrive on topics keyed by scope; a router re-keys them by service
onto sg.control.inputs so one agent instance sees everything about a service.
The decision for window W is made as soon as the service's window W arrives,
with the newest forecast at hand (usually the one issued after W-1, whose
upper bounds cover W+1 onwards) and the newest tier, tenant and pool windows:
a decision never waits for the forecast step, which costs ten times more.
The decision itself is :class:`~surgegate.control.controller.ServiceController`'s,
the same object the simulator steps. Each service's policy state (level,
hysteresis, breaker, tenant histories, last version) and its pool's scaling
state are checkpointed in the Faust table ``throttle_policies`` after every
decision.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import faust
import msgspec
from faust.types import TP

from surgegate.agents.checkpoint import restore, save
from surgegate.agents.counters import AgentCounters, decode_or_count
from surgegate.agents.in_order import InOrder
from surgegate.control import state as policy_state
from surgegate.control.base import WindowPolicy
from surgegate.control.config import ServiceConfig
from surgegate.control.controller import ServiceController, ServiceWindow
from surgegate.control.scaling import ScalingPolicy
from surgegate.control.spill import RegionDemand, ahead, spill_over
from surgegate.control.throttle import ThrottlePolicy
from surgegate.schemas.aggregates import PoolStats, TrafficStats, WindowStats
from surgegate.schemas.decisions import Override, RegionLoad, SpillOver, ThrottleDecision
from surgegate.schemas.forecasts import Forecast
from surgegate.settings import Settings
from surgegate.streams.store import StateMirror
from surgegate.telemetry.scopes import parse_scope

log = logging.getLogger(__name__)

_Input = WindowStats | Forecast | Override | RegionLoad


#: Windows of inputs kept per service while waiting for their partners.
KEEP_WINDOWS = 60
#: A tier's or tenant's window stands in for the service's window this many windows after its own (its window of
#: the same start may come after the service's).
SCOPE_WINDOWS = 2


@dataclasses.dataclass
class ServiceView:
    """Recent inputs of one service by window start, and its controller."""

    controller: ServiceController
    service: dict[int, TrafficStats] = dataclasses.field(default_factory=dict)
    forecasts: dict[int, Forecast] = dataclasses.field(default_factory=dict)
    tiers: dict[int, dict[str, TrafficStats]] = dataclasses.field(default_factory=dict)
    tenants: dict[int, dict[str, TrafficStats]] = dataclasses.field(default_factory=dict)
    pools: dict[int, PoolStats] = dataclasses.field(default_factory=dict)
    overrides: dict[str, Override] = dataclasses.field(default_factory=dict)
    #: other regions' newest loads, and what this region sent each of them per tier (requests/s) by the last
    #: decision: part of their demand is ours
    peers: dict[str, RegionLoad] = dataclasses.field(default_factory=dict)
    sent: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def newest(self, by_window: dict, start: int):
        """The entry for ``start``, else the newest one before it."""
        if start in by_window:
            return by_window[start]
        older = [k for k in by_window if k < start]
        return by_window[max(older)] if older else None

    def newest_each(self, by_window: dict[int, dict[str, TrafficStats]], start: int,
                    oldest: int) -> dict[str, TrafficStats]:
        """Each scope's newest window from ``oldest`` to ``start``: the windows of one start arrive one by one,
        and a scope whose window for ``start`` is not in yet keeps its last one (never a tier left out)."""
        out: dict[str, TrafficStats] = {}
        for k in sorted(k for k in by_window if oldest <= k <= start):
            out.update(by_window[k])
        return out

    def prune(self, decided: int) -> None:
        """Forget inputs too old to matter for windows after ``decided``."""
        for by_window in (self.service, self.forecasts, self.tiers, self.tenants, self.pools):
            keep = sorted(by_window)[-KEEP_WINDOWS:]
            for k in [k for k in by_window if k < decided and k not in keep[-2:]] + \
                     [k for k in by_window if k not in keep]:
                by_window.pop(k, None)


class DecideAgent:
    """Owns the router, the decide agent and the ``throttle_policies`` table.

    ``counters``: ``decisions.published``, ``decisions.spill`` (one that named a spill-over),
    ``control.unroutable``, ``decisions.restored`` (a policy taken up from its checkpoint),
    ``decisions.outdated_checkpoint`` (one that could not be: started afresh).

    With a region (``SURGEGATE_REGION``), every decision also publishes the region's load on ``regions`` and
    reads the other regions' (their mirrored ``regions`` topics, routed here by service like every input):
    the decision names the spill-over of this region's excess into their headroom.
    """

    def __init__(self, app: faust.App, settings: Settings, *, sources: faust.TopicT, inputs: faust.TopicT,
                 thresholds: faust.TopicT, decisions: faust.TopicT, scaling: faust.TopicT, history: faust.TopicT,
                 regions: faust.TopicT, mirror: StateMirror | None = None) -> None:
        self.app = app
        self.settings = settings
        self.sources = sources
        self.inputs = inputs
        self.thresholds = thresholds
        self.decisions = decisions
        self.scaling = scaling
        self.history = history
        self.regions = regions
        self.mirror = mirror
        self.configs = settings.service_configs()
        self.pool_services = {c.pool: name for name, c in self.configs.items()}
        # values are a typed record's bytes (agents/checkpoint.py), kept as they are (Faust's "raw" for bytes)
        self.table = app.Table("throttle_policies", key_type=str, value_type=bytes, partitions=settings.partitions)
        self.views: dict[str, ServiceView] = {}
        self.counters = AgentCounters(mirror)
        self.routed_in_order = InOrder(app, settings, "route_control_inputs", self.counters)
        self.decided_in_order = InOrder(app, settings, "decide", self.counters)
        self._decoder = msgspec.json.Decoder(_Input)

    def register(self) -> None:
        """Attach the router, the decide agent and the rebalance hook."""
        self.app.agent(self.sources, name="route_control_inputs")(self._route)
        self.app.agent(self.inputs, name="decide")(self._decide)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust calls it with revoked=
        self.routed_in_order.register()
        self.decided_in_order.register()

    async def _on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        self.views.clear()

    def config(self, service: str) -> ServiceConfig:
        """The service's settings, or the defaults for a service not configured."""
        return self.configs.get(service) or ServiceConfig(service=service)

    # ------------------------------------------------------------------ route

    async def _route(self, stream: faust.StreamT) -> None:
        async for event in self.routed_in_order.events(stream):
            value = event.value
            record = await decode_or_count(self._decoder, value, self.counters, "control.unroutable",
                                           "route_control_inputs")
            if record is None:
                continue
            service = self._service_of(record)
            await self.inputs.send(key=service.encode(), value=value)

    def _service_of(self, record: _Input) -> str:
        if isinstance(record, (Override, RegionLoad)):
            return record.service
        labels = parse_scope(record.scope)
        if "pool" in labels:
            return self.pool_services.get(labels["pool"], labels["pool"])
        return labels["service"]

    # ----------------------------------------------------------------- decide

    def _view(self, service: str) -> ServiceView:
        view = self.views.get(service)
        if view is None:
            config = self.config(service)
            throttle, scaling = ThrottlePolicy(config), ScalingPolicy(config.pool_config())
            self._take_up(throttle, service, policy_state.ThrottleState)
            self._take_up(scaling, _scaling_key(config.pool), policy_state.ScalingState)
            controller = ServiceController(config, throttle=throttle, scaling=scaling)
            view = self.views[service] = ServiceView(controller=controller)
        return view

    def _take_up(self, policy: WindowPolicy, key: str, kind: type[policy_state.State]) -> None:
        """Load the policy's checkpoint under ``key``, if there is one it can take up (else it starts afresh,
        counted)."""
        state, problem = restore(self.table, key, functools.partial(policy_state.decode, kind=kind))
        if state is not None:
            try:
                policy.load(state)
                self.counters["decisions.restored"] += 1
                return
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            log.warning("policy state %s cannot be taken up (%s); starting it afresh", key, problem)
            self.counters["decisions.outdated_checkpoint"] += 1

    async def _decide(self, stream: faust.StreamT) -> None:
        async for event in self.decided_in_order.events(stream):
            service = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            record = self._decoder.decode(event.value)
            view = self._view(service)
            if isinstance(record, Override):
                view.overrides[record.id] = record
                continue
            if isinstance(record, RegionLoad):
                if record.region != self.settings.region:  # our own, mirrored back, is not a peer's
                    view.peers[record.region] = record
                    if self.mirror is not None:
                        await self.mirror.put_region(service, record.region, event.value)
                continue
            if isinstance(record, WindowStats):
                self._remember(view, record)
            elif set(parse_scope(record.scope)) == {"service"}:
                view.forecasts[record.origin] = record  # tier and tenant forecasts do not trigger decisions
            for start in sorted(view.service):
                await self._publish(service, view, start)

    def _remember(self, view: ServiceView, w: WindowStats) -> None:
        start = w.window_start
        if w.gpu is not None:
            view.pools[start] = w.gpu
        elif w.traffic is None:
            return  # a traffic window always carries its statistics; nothing to remember otherwise
        elif w.tier is not None:
            view.tiers.setdefault(start, {})[w.tier] = w.traffic
        elif w.tenant is not None:
            view.tenants.setdefault(start, {})[w.tenant] = w.traffic
        else:
            view.service[start] = w.traffic

    async def _publish(self, service: str, view: ServiceView, start: int) -> None:
        window_ms = self.settings.window_ms
        controller = view.controller
        if controller.decided(start):
            view.service.pop(start, None)
            view.forecasts.pop(start, None)
            return  # decided already (or a replayed window)
        now = start + window_ms
        view.overrides = {k: o for k, o in view.overrides.items() if o.expires_at > now and not o.cancel}
        window = ServiceWindow(window_start=start, window_ms=window_ms, service=view.service[start],
                               tiers=view.newest_each(view.tiers, start, start - SCOPE_WINDOWS * window_ms),
                               tenants=view.newest_each(view.tenants, start, start - SCOPE_WINDOWS * window_ms),
                               forecast=view.newest(view.forecasts, start), pool=view.newest(view.pools, start),
                               overrides=tuple(view.overrides.values()))
        with self.counters.timed("decide"):
            out = controller.step(window)
            throttle = out.throttle
            if self.settings.region:
                throttle = await self._regions(service, view, window, out.threshold.safe_rps, throttle)
        t_bytes, d_bytes = msgspec.json.encode(out.threshold), msgspec.json.encode(throttle)
        await self.thresholds.send(key=service.encode(), value=t_bytes)
        await self.decisions.send(key=service.encode(), value=d_bytes)
        save(self.table, service, policy_state.encode(controller.throttle.state()))
        self.counters["decisions.published"] += 1
        pool_name = controller.scaling.config.pool
        s_bytes = msgspec.json.encode(out.scaling)
        await self.scaling.send(key=pool_name.encode(), value=s_bytes)
        # the durable record of what was decided and why, stamped with the issue time (the compacted
        # decision topics keep only the newest per key)
        issued_s = out.throttle.issued_at / 1000
        for key, value in ((service, t_bytes), (service, d_bytes), (pool_name, s_bytes)):
            await self.history.send(key=key.encode(), value=value, timestamp=issued_s)
        save(self.table, _scaling_key(pool_name), policy_state.encode(controller.scaling.state()))
        self.counters["scaling.published"] += 1
        await self.counters.report()
        view.service.pop(start, None)
        view.prune(start)
        if self.mirror is not None:
            await self.mirror.put_decision(service, t_bytes, d_bytes)

    async def _regions(self, service: str, view: ServiceView, window: ServiceWindow, safe_rps: float,
                       throttle: ThrottleDecision) -> ThrottleDecision:
        """Publish this region's load for the other regions; the decision with the spill-over this region's
        excess takes into their headroom (the peers' loads at most a lease old)."""
        config = self.config(service)
        demand = {t: 0.0 for t in config.tiers}
        realtime: dict[str, float] = {}  # the share of a tier's calls that may be spilled: its realtime ones
        for tier, traffic in sorted(window.tiers.items(), key=lambda kv: config.tier_rank(kv[0])):
            demand[tier] = traffic.demand_rps if traffic.demand_rps is not None else traffic.rate_rps
            realtime[tier] = traffic.realtime / traffic.requests if traffic.requests else 1.0
        region = self.settings.region
        forecast = throttle.forecast_upper_rps
        fresh = throttle.issued_at - config.lease_windows * self.settings.window_ms
        peers = [p for p in view.peers.values() if p.issued_at >= fresh]
        # each region as its forecast expects it: a spill starts before the overload does
        loads = [RegionDemand(region, ahead(demand, forecast), safe_rps)]
        for p in peers:  # what we send a peer is in its demand: not its own load, nor off its headroom
            ours = view.sent.get(p.region, {})
            theirs = {t: max(0.0, d - ours.get(t, 0.0)) for t, d in p.demand_by_tier.items()}
            loads.append(RegionDemand(p.region, ahead(theirs, p.forecast_rps - sum(ours.values())), p.safe_rps))
        spills = [s for s in spill_over(loads, detour_ms=self.settings.spill_detour_ms) if s.source == region]
        view.sent = {s.target: {t: share * demand.get(t, 0.0) * realtime.get(t, 1.0) for t, share in s.share.items()}
                     for s in spills}
        own = RegionLoad(service=service, region=region, window_start=window.window_start,
                         issued_at=throttle.issued_at, demand_by_tier=demand, safe_rps=safe_rps,
                         forecast_rps=forecast, sent_rps=round(sum(sum(v.values()) for v in view.sent.values()), 3))
        raw = msgspec.json.encode(own)
        await self.regions.send(key=f"{service}/{region}".encode(), value=raw)
        if self.mirror is not None:
            await self.mirror.put_region(service, region, raw)
        if not spills:
            return throttle
        self.counters["decisions.spill"] += 1
        return msgspec.structs.replace(
            throttle, spill=[SpillOver(region=s.target, share=s.share, rps=round(s.rps, 3)) for s in spills],
            reason=throttle.reason + "; spill-over: " + "; ".join(s.reason for s in spills))


def _scaling_key(pool: str) -> str:
    return f"scaling:{pool}"

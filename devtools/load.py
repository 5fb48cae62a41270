"""`surgegate load`: OpenAI chat calls along a burst, measured from the client's side.

Load that speaks the API, as a service's users do: the official ``openai``
client, streamed chat completions with a key per tenant (one tenant per
tier), realtime and batch (``X-Request-Type: batch``, which the gateway may
defer: a ``202`` with a task id). Arrivals are Poisson at the plan's rate:
``base_rps``, rising over ``ramp_s`` to ``peak_rps`` at ``burst_at_s``, held
``hold_s``, back to the base, and again every ``every_s`` if set (the
burst this product exists for, 5,000 -> 120,000 rps, scaled to what one
machine serves).

``LoadPlan.from_trace`` follows a trace file instead (``surgegate load --trace``), read
as the simulator reads it and scaled so its busiest 10 s is ``--peak``.

Per request it records what the client saw: refused (429), deferred (202),
failed (another error, or a stream that ended in an error event), or served,
with its time to first token and time per output token. Per tier and window,
a window *meets* the tier's SLO when at most 1% of its realtime requests
missed (refused, failed, or a first token later than the tier's TTFT target),
as the simulator scores it; goodput counts the requests served within it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Mapping

import aiohttp

from surgegate.checks import check
from surgegate.sim.bursty import poisson

#: a window meets a tier's SLO when at most this share of its realtime requests missed
MISS_BUDGET = 0.01
MESSAGES = [{"role": "user", "content": "Summarise the incident report for the on-call channel."}]


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """The arrival rate over time, the mix and the SLOs (see the module docstring)."""

    base_rps: float = 2.0
    peak_rps: float = 24.0
    burst_at_s: float = 30.0
    ramp_s: float = 10.0
    hold_s: float = 60.0
    duration_s: float = 180.0
    #: a burst again this long after the last began (0: one burst)
    every_s: float = 0.0
    #: tier -> share of requests (highest priority first)
    tiers: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"enterprise": 0.2, "pro": 0.3, "free": 0.5})
    batch_share: float = 0.2
    max_tokens: int = 32
    model: str = "llama-3-8b"
    #: requests a second for each second from the start, instead of the burst (a trace, scaled); the last
    #: second's rate holds beyond its end
    rates: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check(self.base_rps >= 0, "base_rps", self.base_rps, "must be >= 0")
        check(self.peak_rps >= self.base_rps, "peak_rps", self.peak_rps, "must be >= base_rps")
        check(self.duration_s > 0, "duration_s", self.duration_s, "must be > 0")
        check(self.ramp_s >= 0 and self.hold_s >= 0 and self.every_s >= 0, "ramp_s / hold_s / every_s",
              (self.ramp_s, self.hold_s, self.every_s), "must be >= 0")
        check(bool(self.tiers) and all(v > 0 for v in self.tiers.values()), "tiers", dict(self.tiers),
              "must give each tier a share > 0")
        check(0 <= self.batch_share < 1, "batch_share", self.batch_share, "must be within [0, 1)")
        check(all(r >= 0 for r in self.rates), "rates", "...", "must all be >= 0")

    @classmethod
    def from_trace(cls, path, peak_rps: float, duration_s: float, **kw) -> LoadPlan:
        """The plan of a trace file (the simulator's reading of it: 1 s resolution, its busiest 10 s scaled to
        ``peak_rps``), its first ``duration_s`` seconds."""
        from surgegate.sim.workload import from_trace

        w = from_trace(path, peak_rps=peak_rps, hours=duration_s / 3600)
        top = max(w.rate) if w.rate else 0.0
        return cls(base_rps=min(w.rate, default=0.0), peak_rps=max(top, min(w.rate, default=0.0)),
                   duration_s=min(duration_s, float(w.seconds)), rates=tuple(w.rate), **kw)

    def rate(self, t: float) -> float:
        """Requests a second at ``t`` seconds from the start."""
        if self.rates:
            return self.rates[min(int(t), len(self.rates) - 1)]
        if t < self.burst_at_s:
            return self.base_rps
        since = t - self.burst_at_s
        if self.every_s > 0:
            since %= self.every_s
        if since < self.ramp_s:
            return self.base_rps + (self.peak_rps - self.base_rps) * since / self.ramp_s
        if since < self.ramp_s + self.hold_s:
            return self.peak_rps
        return self.base_rps


@dataclasses.dataclass
class Call:
    """One request as the client saw it."""

    sent: float
    tier: str
    batch: bool
    outcome: str = "pending"  # served, refused, deferred, failed
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens: int = 0
    #: for a refused call: the bucket the gateway named (X-Surgegate-Limit), or the status of a failed one
    why: str = ""


@dataclasses.dataclass
class TierFigures:
    requests: int
    realtime: int
    refused: int
    deferred: int
    failed: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    windows: int
    windows_met: int
    good: int

    @property
    def attainment(self) -> float:
        return self.windows_met / self.windows if self.windows else 1.0


@dataclasses.dataclass
class LoadReport:
    """What a run measured, per tier."""

    seconds: float
    window_s: float
    tiers: dict[str, TierFigures]
    calls: list[Call]

    def markdown(self, title: str = "load") -> str:
        lines = [f"**{title}** ({self.seconds:.0f} s, {len(self.calls):,} requests, {self.window_s:g} s windows):",
                 "", "| tier | requests | SLO attainment | TTFT p50 / p99 | TPOT p50 | refused | deferred | failed | "
                 "goodput rps |", "|---|---|---|---|---|---|---|---|---|"]
        for tier, f in self.tiers.items():
            ttft = " / ".join(f"{x * 1000:,.0f} ms" if x is not None else "-" for x in (f.ttft_p50_s, f.ttft_p99_s))
            tpot = f"{f.tpot_p50_s * 1000:.0f} ms" if f.tpot_p50_s is not None else "-"
            lines.append(f"| {tier} | {f.requests:,} | {100 * f.attainment:.1f}% ({f.windows_met}/{f.windows}) | "
                         f"{ttft} | {tpot} | {f.refused:,} | {f.deferred:,} | {f.failed:,} | "
                         f"{f.good / self.seconds:,.2f} |")
        return "\n".join(lines) + "\n"


def score(calls: list[Call], *, started: float, seconds: float, window_s: float,
          ttft_slo_s: Mapping[str, float]) -> LoadReport:
    """Per tier: counts, latency quantiles, windows within the SLO and goodput."""
    tiers: dict[str, TierFigures] = {}
    for tier in dict.fromkeys(c.tier for c in calls):
        mine = [c for c in calls if c.tier == tier]
        realtime = [c for c in mine if not c.batch]
        slo = ttft_slo_s.get(tier, math.inf)
        by_window: dict[int, list[Call]] = {}
        for c in realtime:
            by_window.setdefault(int((c.sent - started) // window_s), []).append(c)

        def missed(c: Call, slo: float = slo) -> bool:
            return c.outcome in ("refused", "failed") or (c.ttft_s is not None and c.ttft_s > slo)

        met = sum(1 for cs in by_window.values() if sum(map(missed, cs)) <= MISS_BUDGET * len(cs))
        ttfts = sorted(c.ttft_s for c in realtime if c.ttft_s is not None)
        tpots = sorted(c.tpot_s for c in realtime if c.tpot_s is not None)
        good = sum(1 for c in mine if c.outcome == "served" and (c.batch or not missed(c)))
        tiers[tier] = TierFigures(
            requests=len(mine), realtime=len(realtime), refused=sum(c.outcome == "refused" for c in mine),
            deferred=sum(c.outcome == "deferred" for c in mine), failed=sum(c.outcome == "failed" for c in mine),
            ttft_p50_s=_q(ttfts, 0.5), ttft_p99_s=_q(ttfts, 0.99), tpot_p50_s=_q(tpots, 0.5),
            windows=len(by_window), windows_met=met, good=good)
    return LoadReport(seconds, window_s, tiers, calls)


def _q(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


async def run(plan: LoadPlan, base_url: str, keys: Mapping[str, str], *, window_s: float = 10.0,
              ttft_slo_s: Mapping[str, float] | None = None, seed: int = 0, max_in_flight: int = 2000,
              progress: bool = False) -> LoadReport:
    """Send the plan's load to ``base_url`` (``.../v1``) with ``keys`` (tier -> API key) and score it."""
    import openai

    missing = sorted(set(plan.tiers) - set(keys))
    check(not missing, "keys", missing, "must give an API key for every tier of the plan")
    rng = random.Random(seed)
    clients = {tier: openai.AsyncOpenAI(base_url=base_url, api_key=keys[tier], max_retries=0, timeout=120.0)
               for tier in plan.tiers}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    calls: list[Call] = []
    tasks: set[asyncio.Task] = set()
    room = asyncio.Semaphore(max_in_flight)
    tiers, weights = list(plan.tiers), list(plan.tiers.values())
    started = time.monotonic()
    tick = 0.05
    try:
        t = 0.0
        while t < plan.duration_s:
            n = poisson(rng, plan.rate(t) * tick)
            for _ in range(n):
                call = Call(time.monotonic(), rng.choices(tiers, weights)[0], rng.random() < plan.batch_share)
                calls.append(call)
                await room.acquire()
                task = asyncio.create_task(_send(call, plan, clients[call.tier], session, base_url, keys[call.tier]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: room.release())
            t += tick
            if progress and int(t / tick) % int(10 / tick) == 0:
                print(f"load: {t:.0f} s, {plan.rate(t):.1f} rps, {len(tasks)} in flight", flush=True)
            await asyncio.sleep(max(0.0, started + t - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    finally:
        for task in tasks:
            task.cancel()
        await session.close()
        for client in clients.values():
            await client.close()
    return score(calls, started=started, seconds=plan.duration_s, window_s=window_s, ttft_slo_s=ttft_slo_s or {})


async def _send(call: Call, plan: LoadPlan, client, session: aiohttp.ClientSession, base_url: str,
                key: str) -> None:
    import openai

    body = {"model": plan.model, "messages": MESSAGES, "max_tokens": plan.max_tokens}
    try:
        if call.batch:  # batch work the gateway may defer: 202 and a task id
            async with session.post(base_url.rstrip("/") + "/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {key}", "X-Request-Type": "batch"}) as r:
                await r.read()
                call.outcome = {200: "served", 202: "deferred", 429: "refused"}.get(r.status, "failed")
            return
        stream = await client.chat.completions.create(model=plan.model, messages=MESSAGES, stream=True,
                                                      max_tokens=plan.max_tokens,
                                                      stream_options={"include_usage": True})
        first = last = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.monotonic()
                if first is None:
                    first = last
                    call.ttft_s = first - call.sent
                call.tokens += 1
        if first is not None and last is not None and call.tokens > 1:
            call.tpot_s = (last - first) / (call.tokens - 1)
        call.outcome = "served"
    except openai.RateLimitError as exc:
        call.outcome = "refused"
        call.why = exc.response.headers.get("x-surgegate-limit", "")
    except openai.APIStatusError as exc:
        call.outcome, call.why = "failed", str(exc.status_code)
    except (openai.APIError, aiohttp.ClientError, TimeoutError) as exc:
        call.outcome, call.why = "failed", type(exc).__name__

"""`surgegate load --compare`: one burst, live twice, beside what the simulator predicts for it.

The same :class:`~surgegate.devtools.load.LoadPlan` (same seed, so the same
arrivals) runs through the live loop (:class:`~surgegate.devtools.live.LiveStack`
with a worker of its own and fresh topics per run):

- **enforcing**: the edges apply surgegate's throttle decisions and the pool
  follows its scaling decisions;
- **shadow**: the edges admit everything (shadow mode), and the pool follows a
  plain utilisation rule instead, Kubernetes HPA on GPU utilisation: the very
  :class:`~surgegate.sim.policies.HpaPolicy` object the simulator runs, fed
  each second from the pool's scrapes (:class:`UtilisationRule`);

and the simulator runs the same workload (the plan's rate per second, its
tier and batch mix, the fake replica's lengths and speed) under
:class:`~surgegate.sim.policies.SurgegatePolicy` and ``HpaPolicy``. Per tier:
SLO attainment and realtime goodput (realtime requests served within the
tier's TTFT target, a second); per run: replica-seconds. Every window counts
(the simulator's warm-up is not skipped, as the live runs have none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from surgegate.children import die_with_parent
from surgegate.devtools.live import LiveStack, ReplicaSpec
from surgegate.devtools.load import MESSAGES, LoadPlan, LoadReport, run
from surgegate.gpu.local_pool import LocalPool
from surgegate.llm.openai_wire import estimate_prompt_tokens
from surgegate.llm.replica import ReplicaProfile
from surgegate.schemas.telemetry import RequestType
from surgegate.settings import Settings
from surgegate.sim.policies import FleetBounds, HpaPolicy, Sample, SurgegatePolicy
from surgegate.sim.result import Result
from surgegate.sim.run import simulate
from surgegate.sim.service import ServiceModel
from surgegate.sim.workload import Workload
from surgegate.streams.topics import create_topics

log = logging.getLogger(__name__)

#: a live figure within this share of the simulator's is "as predicted"
AGREEMENT = 0.15


@dataclasses.dataclass(frozen=True)
class Arm:
    """One run's figures: per tier (SLO attainment, realtime goodput rps), and the replica-seconds it paid for."""

    name: str
    tiers: dict[str, tuple[float, float]]
    replica_seconds: float


class UtilisationRule:
    """Shadow mode's scaler: HPA on GPU utilisation (the simulator's ``HpaPolicy``), fed each second."""

    def __init__(self, pool: LocalPool, fleet: FleetBounds) -> None:
        self.pool = pool
        self.policy = HpaPolicy(fleet, "gpu")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="utilisation-rule", daemon=True)

    def start(self) -> UtilisationRule:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tick(self, second: int) -> None:
        """One second: the pool's latest scrapes to the policy, its replicas to the pool."""
        s = self.pool.sample
        if s is None:
            return
        self.policy.second(Sample(now_s=second, ready=s.ready, gpu_busy=s.busy, running=s.running,
                                  waiting=s.waiting, kv_cache=s.kv_cache))
        self.pool.set_targets(self.policy.plan().replicas)

    def _run(self) -> None:
        second = 0
        while not self._stop.wait(1.0):
            second += 1
            self.tick(second)


def _worker(settings: Settings, log_dir: Path, name: str) -> subprocess.Popen:
    work = log_dir / name
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "worker.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "surgegate.cli", "worker"], env=settings.child_environ(),
                                stdout=out, stderr=subprocess.STDOUT, cwd=work, preexec_fn=die_with_parent)


def live(settings: Settings, plan: LoadPlan, fleet: FleetBounds, *, shadow: bool, keys: Mapping[str, str],
         ttft_slo_s: Mapping[str, float], spec: ReplicaSpec, log_dir: Path, seed: int = 0) -> tuple[Arm, LoadReport]:
    """One live run on fresh topics and state (see the module docstring)."""
    name = "shadow" if shadow else "enforce"
    arm = settings.replace(topic_prefix=f"{settings.topic_prefix}{name}-{int(time.time())}.")
    create_topics(arm)
    worker = _worker(arm, log_dir, name)
    try:
        with LiveStack(arm, shadow=shadow, follow_decisions=not shadow, cold_start_s=fleet.cold_start_s,
                       initial_replicas=fleet.min_replicas, max_replicas=fleet.max_replicas, replica=spec,
                       log_dir=str(log_dir / name)) as stack:
            rule = UtilisationRule(stack.pool, fleet).start() if shadow else None
            try:
                deadline = time.monotonic() + 60 + fleet.cold_start_s
                while stack.pool.states().get("ready", 0) < fleet.min_replicas:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: the pool's first replicas did not start: {stack.pool.counts}")
                    time.sleep(0.2)
                report, paid = asyncio.run(_measured(plan, stack, keys, ttft_slo_s, arm.window_s, seed))
            finally:
                if rule is not None:
                    rule.close()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    title = "live, surgegate in shadow mode, HPA on GPU utilisation" if shadow else "live, surgegate enforcing"
    good = {t: sum(1 for c in report.calls if c.tier == t and not c.batch and c.outcome == "served"
                   and c.ttft_s is not None and c.ttft_s <= ttft_slo_s.get(t, math.inf)) / report.seconds
            for t in report.tiers}
    tiers = {t: (report.tiers[t].attainment, good[t]) for t in plan.tiers if t in report.tiers}
    return Arm(title, tiers, paid), report


async def _measured(plan: LoadPlan, stack: LiveStack, keys: Mapping[str, str], slo: Mapping[str, float],
                    window_s: float, seed: int) -> tuple[LoadReport, float]:
    """The load's report, and the replica-seconds the pool held over the plan's duration."""
    start = stack.pool.replica_seconds
    paid: list[float] = []

    async def meter() -> None:
        await asyncio.sleep(plan.duration_s)
        paid.append(stack.pool.replica_seconds - start)

    task = asyncio.create_task(meter())
    report = await run(plan, stack.edges[0].url, keys, window_s=window_s, ttft_slo_s=slo, seed=seed)
    await task
    return report, paid[0]


def workload_of(plan: LoadPlan, spec: ReplicaSpec) -> Workload:
    """The plan as the simulator's workload: its rate each second, its mix, the fake replica's lengths."""
    seconds = math.ceil(plan.duration_s)
    total = sum(plan.tiers.values())
    mix: dict[tuple[str, RequestType], float] = {}
    for tier, share in plan.tiers.items():
        mix[(tier, "realtime")] = share / total * (1 - plan.batch_share)
        mix[(tier, "batch")] = share / total * plan.batch_share
    prompt = float(estimate_prompt_tokens({"messages": MESSAGES}))
    rng = random.Random(0)  # the fake server's output lengths: log-normal around its median, capped by max_tokens
    draws = [min(plan.max_tokens, max(1, round(rng.lognormvariate(math.log(spec.output_median), 0.8))))
             for _ in range(20_000)]
    output = sum(draws) / len(draws)
    return Workload("load", [plan.rate(t) for t in range(seconds)], True, mix=mix, prompt=[prompt] * seconds,
                    output=[output] * seconds, onset_s=int(plan.burst_at_s))


def model_of(spec: ReplicaSpec, fleet: FleetBounds, ttft_slo_s: Mapping[str, float]) -> ServiceModel:
    """The fake replica as the simulator models it: the default profile slowed by its time scale."""
    base = ReplicaProfile.llama3_8b_a100()
    k = spec.time_scale
    profile = dataclasses.replace(base, prefill_tokens_per_s=base.prefill_tokens_per_s / k,
                                  decode_step_s=base.decode_step_s * k,
                                  decode_per_kilotoken_s=base.decode_per_kilotoken_s * k,
                                  max_num_seqs=spec.max_num_seqs)
    allowance = tuple(ttft_slo_s.get(t, 4.0) for t in ("enterprise", "pro", "free"))
    return ServiceModel(profile=profile, cold_start_s=fleet.cold_start_s, ttft_allowance_s=allowance)


def simulated(plan: LoadPlan, fleet: FleetBounds, spec: ReplicaSpec, ttft_slo_s: Mapping[str, float], *,
              shadow: bool, window_s: int, seed: int = 0) -> Arm:
    workload, model = workload_of(plan, spec), model_of(spec, fleet, ttft_slo_s)
    policy = HpaPolicy(fleet, "gpu") if shadow else SurgegatePolicy(fleet, window_s=window_s)
    result = simulate(workload, policy, model=model, bounds=fleet, seed=seed, window_s=window_s)
    title = "simulated, HPA on GPU utilisation, admit all" if shadow else "simulated, surgegate"
    return Arm(title, _tiers(result, plan), sum(r.paid for r in result.all_rows) * result.window_s)


def _tiers(result: Result, plan: LoadPlan) -> dict[str, tuple[float, float]]:
    rows, seconds = result.all_rows, len(result.all_rows) * result.window_s
    out = {}
    for tier in plan.tiers:
        seen = [r for r in rows if r.demand_by_tier.get(tier, 0) > 0]
        met = sum(1 for r in seen if r.met(tier)) / len(seen) if seen else 1.0
        good = sum(r.demand_by_tier.get(tier, 0.0) - r.missed_by_tier.get(tier, 0.0) for r in rows) / seconds
        out[tier] = (met, good)
    return out


def table(arms: list[Arm]) -> str:
    """Markdown: per run and tier, attainment and goodput; the replica-seconds; live against simulated."""
    tiers = list(arms[0].tiers)
    head = "| run | " + " | ".join(f"{t} SLO / goodput rps" for t in tiers) + " | replica-seconds |"
    lines = [head, "|---|" + "---|" * (len(tiers) + 1)]
    for a in arms:
        cells = " | ".join(f"{100 * a.tiers[t][0]:.1f}% / {a.tiers[t][1]:.2f}" for t in tiers)
        lines.append(f"| {a.name} | {cells} | {a.replica_seconds:,.0f} |")
    return "\n".join(lines) + "\n"


def agreement(live_arm: Arm, sim_arm: Arm) -> list[str]:
    """Where the live run is further than :data:`AGREEMENT` from the simulator's prediction."""
    out = []
    pairs = [(f"{t} SLO attainment", live_arm.tiers[t][0], sim_arm.tiers[t][0]) for t in live_arm.tiers]
    pairs += [(f"{t} goodput", live_arm.tiers[t][1], sim_arm.tiers[t][1]) for t in live_arm.tiers]
    pairs.append(("replica-seconds", live_arm.replica_seconds, sim_arm.replica_seconds))
    for what, got, predicted in pairs:
        if predicted > 0 and abs(got - predicted) / predicted > AGREEMENT:
            out.append(f"{what}: live {got:,.3g} vs simulated {predicted:,.3g} "
                       f"({100 * (got - predicted) / predicted:+.0f}%)")
    return out


def service_s(plan: LoadPlan, spec: ReplicaSpec) -> float:
    """Seconds one of the plan's requests holds its place in a replica's batch (prefill, then its output)."""
    (prompt, output), profile = workload_of(plan, spec).lengths(0), model_of(spec, FleetBounds(1.0), {}).profile
    return prompt / profile.prefill_tokens_per_s + output * profile.decode_step_s


def report(plan: LoadPlan, arms: list[Arm], window_s: int, spec: ReplicaSpec | None = None) -> str:
    """The table, then each live run against its simulated twin, and the top tier's verdict."""
    enforce, shadow, sim_enforce, sim_shadow = arms
    top = next(iter(plan.tiers))
    lines = [f"**The same burst, live and simulated** ({plan.base_rps:g} -> {plan.peak_rps:g} rps at "
             f"{plan.burst_at_s:g} s, {plan.duration_s:g} s, {window_s} s windows; SLO attainment: share of windows "
             f"in which at most 1% of a tier's realtime calls missed):", "", table(arms)]
    met = enforce.tiers[top][0] >= 0.99
    lines.append(f"- {top}: enforcing {100 * enforce.tiers[top][0]:.1f}% of windows "
                 f"({'within' if met else 'short of'} 99%), shadow mode {100 * shadow.tiers[top][0]:.1f}%.")
    for live_arm, sim_arm in ((enforce, sim_enforce), (shadow, sim_shadow)):
        off = agreement(live_arm, sim_arm)
        lines.append(f"- {live_arm.name}: " + (f"within {100 * AGREEMENT:.0f}% of the simulator's prediction"
                                                if not off else "apart from the prediction on " + "; ".join(off)))
    held = service_s(plan, spec or ReplicaSpec())
    if held < 1.0:
        lines.append(f"- The simulator steps its replicas once a second: a sequence that finishes within the second "
                     f"frees its place in the batch only at the next, so requests of {held:.2f} s (these) hold a "
                     f"place for a whole second there, and it predicts about {held:.0%} of a replica's real "
                     f"capacity. Where the two disagree on capacity, the live figures are the measurement.")
    return "\n".join(lines) + "\n"

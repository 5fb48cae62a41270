"""The simulated service: LLM replicas, their cold starts, and the SLOs their users have.

Replicas are :class:`~surgegate.llm.replica.ReplicaProfile` replicas stepped as
a fluid (:mod:`surgegate.llm.fluid`): continuous batching, a KV-cache token
budget, chunked prefill, one waiting queue. This module adds what is around
them:

- Replicas asked for are ready after ``cold_start_s`` (loading a model: tens of
  seconds to minutes), or after ``warm_start_s`` when taken from the warm pool.
  Warm replicas are loaded and idle, and are paid for.
- A Deployment-like controller keeps ready plus starting replicas at the
  target, so failed replicas are replaced (cold).
- The users' SLOs per tier: time to first token and time per output token for
  realtime requests, a deadline for batch ones (:class:`ServiceModel`).
"""

from __future__ import annotations

import dataclasses

from surgegate.checks import check
from surgegate.llm.fluid import prefill_s, prompt_quantile, sustainable_rps
from surgegate.llm.replica import ReplicaProfile

TIER_ORDER = ("enterprise", "pro", "free")


@dataclasses.dataclass(frozen=True)
class ServiceModel:
    """The simulated LLM service: its replicas, their starts, and its users' SLOs.

    SLOs, per tier (highest first): a realtime request meets its SLO when its
    time to first token is within ``ttft_allowance_s`` plus the prefill time of
    the workload's 99th-percentile prompt (so a service of long prompts is not
    failed by its prompts alone), and its time per output token within
    ``tpot_s``. A batch request meets it when it gets its first token within
    ``batch_deadline_s`` of arriving, deferral included.
    """

    profile: ReplicaProfile = dataclasses.field(default_factory=ReplicaProfile.llama3_8b_a100)
    cold_start_s: float = 15.0
    warm_start_s: float = 0.8
    #: a request still waiting for a place in the batch this long gives up
    timeout_s: float = 60.0
    ttft_allowance_s: tuple[float, ...] = (1.0, 2.0, 4.0)
    tpot_s: tuple[float, ...] = (0.1, 0.125, 0.15)
    batch_deadline_s: float = 1800.0
    #: the engine schedules by tier (vLLM's --scheduling-policy priority) instead of first come, first served
    engine_priority: bool = False
    #: the share of every class's requests the edges' response cache answers (repeated deterministic requests);
    #: a hit costs the replicas nothing and meets its SLO, and from level 3 the lower tiers' misses are refused
    cache_hit_ratio: float = 0.0
    #: where deferred batch work waits: ``queue``, an edge's in-memory queue that offers it again over a minute
    #: or more; ``lane``, the durable deferral lane: drainers start tasks as fast as the decision's batch rate
    #: admits them, highest tier first, a task whose deadline passes expires, and the backlog is reported to
    #: the policy (tasks, and the rate that meets every deadline)
    deferral: str = "queue"

    def __post_init__(self) -> None:
        check(self.cold_start_s >= 0, "cold_start_s", self.cold_start_s, "must be >= 0")
        check(self.warm_start_s >= 0, "warm_start_s", self.warm_start_s, "must be >= 0")
        check(self.timeout_s > 0, "timeout_s", self.timeout_s, "must be > 0")
        check(len(self.ttft_allowance_s) == len(TIER_ORDER) and min(self.ttft_allowance_s) > 0,
              "ttft_allowance_s", self.ttft_allowance_s, f"must be {len(TIER_ORDER)} values > 0")
        check(len(self.tpot_s) == len(TIER_ORDER) and min(self.tpot_s) > 0, "tpot_s", self.tpot_s,
              f"must be {len(TIER_ORDER)} values > 0")
        check(self.batch_deadline_s > 0, "batch_deadline_s", self.batch_deadline_s, "must be > 0")
        check(0.0 <= self.cache_hit_ratio < 1.0, "cache_hit_ratio", self.cache_hit_ratio, "must be within [0, 1)")
        check(self.deferral in ("queue", "lane"), "deferral", self.deferral, "must be queue or lane")

    def ttft_target_s(self, tier: str, prompt_mean: float) -> float:
        """The TTFT p99 target of ``tier``'s realtime requests on a workload of ``prompt_mean`` prompts."""
        longest = prompt_quantile(prompt_mean, 0.99)
        return self.ttft_allowance_s[TIER_ORDER.index(tier)] + prefill_s(self.profile, longest,
                                                                          self.profile.decode_step_s)

    def tpot_target_s(self, tier: str) -> float:
        return self.tpot_s[TIER_ORDER.index(tier)]

    def replica_rps(self, prompt: float, output: float) -> float:
        """What one replica serves in steady state within the top tier's TPOT target (a serving benchmark's figure)."""
        return sustainable_rps(self.profile, prompt, output, self.tpot_s[0])


@dataclasses.dataclass
class Fleet:
    """Replicas by state; ``starting`` holds (ready at second, how many)."""

    ready: int
    starting: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    warm: int = 0
    warming: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    @property
    def pending(self) -> int:
        return sum(n for _, n in self.starting)

    @property
    def paid(self) -> int:
        """Replicas that cost money: ready, starting, warm and warming."""
        return self.ready + self.pending + self.warm + sum(n for _, n in self.warming)

    def advance(self, now: float) -> None:
        """Replicas whose start time has come are ready (or warm)."""
        done = sum(n for at, n in self.starting if at <= now)
        if done:
            self.ready += done
            self.starting = [(at, n) for at, n in self.starting if at > now]
        warmed = sum(n for at, n in self.warming if at <= now)
        if warmed:
            self.warm += warmed
            self.warming = [(at, n) for at, n in self.warming if at > now]

    def reconcile(self, target: int, warm_target: int, now: float, model: ServiceModel) -> None:
        """Start or stop replicas so ready + starting = ``target``; the warm pool to ``warm_target``."""
        have = self.ready + self.pending
        if target > have:
            need = target - have
            from_warm = min(need, self.warm)
            if from_warm:
                self.warm -= from_warm
                self.starting.append((now + model.warm_start_s, from_warm))
            if need > from_warm:
                self.starting.append((now + model.cold_start_s, need - from_warm))
        elif target < have:
            # cancel the starts furthest from ready first, then stop ready replicas
            extra = _cancel_latest(self.starting, have - target)
            self.ready -= min(extra, self.ready)
        warm_have = self.warm + sum(n for _, n in self.warming)
        if warm_target > warm_have:
            self.warming.append((now + model.cold_start_s, warm_target - warm_have))
        elif warm_target < warm_have:
            drop = min(warm_have - warm_target, self.warm)
            self.warm -= drop
            _cancel_latest(self.warming, warm_have - warm_target - drop)

    def fail(self, share: float) -> int:
        """A share of the ready replicas fails; returns how many."""
        lost = round(self.ready * share)
        self.ready -= lost
        return lost


def _cancel_latest(pending: list[tuple[float, int]], extra: int) -> int:
    """Cancel up to ``extra`` of the ``(ready_at, n)`` pending replicas, latest first; what is left to cancel."""
    pending.sort()
    while extra and pending:
        at, n = pending.pop()
        keep = max(0, n - extra)
        extra -= n - keep
        if keep:
            pending.append((at, keep))
    return extra

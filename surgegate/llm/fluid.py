"""A pool of LLM replicas as a fluid: the replica model of :mod:`surgegate.llm.replica`, a second at a time.

A replica of :class:`~surgegate.llm.replica.Replica` runs one iteration at a
time for single requests; at 120,000 requests a second over hours that is out
of reach, so the simulator steps the same physics, with the same
:class:`ReplicaProfile`, as flows of requests and tokens once a second.

What it keeps of the replica model:

- An iteration lasts ``prefill tokens / prefill rate`` plus a decode step over
  the KV cache the running sequences hold (:meth:`ReplicaProfile.iteration_s`).
- Continuous batching: at most ``max_num_seqs`` sequences a replica; prefill
  shares an iteration's ``max_batched_tokens`` with the decode tokens (chunked
  prefill), so prefill work lengthens every running sequence's inter-token time.
- A KV cache of ``kv_cache_tokens`` a replica: admission stops when the cache is
  full; when the running batch outgrows it (longer requests, fewer replicas),
  the newest sequences are preempted and queue again at the head, their context
  to be prefilled again (vLLM's recompute preemption).
- One waiting queue, first come first served across classes (a partly admitted
  second is admitted in proportion across its classes, as interleaved arrivals
  would be), or by class rank first when the engine's priority scheduling is on.

What it approximates, and how:

- Replicas are balanced perfectly (the load balancer spreads requests evenly).
- Within a second: iterations per second = (1 - prefill time share) / decode
  step; every running sequence gets one token an iteration; completions =
  tokens out / mean output length. Decoding is processor sharing, which is
  insensitive to the length distribution, so the mean output length gives the
  right throughput and the right number running.
- A running sequence holds ``prompt + output / 2`` tokens of KV cache on
  average, and admission counts that footprint (vLLM admits on the prompt and
  preempts later; under a steady load both keep the same number running).
- A request's time per output token (TPOT) is the mean inter-token latency of
  the second it starts decoding in.
- A request's time to first token (TTFT) is its wait plus its own prefill. The
  wait is whole seconds for requests carried over to a later second, half the
  second's prefill-busy time for the others. Prompt lengths are log-normal
  around the second's mean (sigma :data:`PROMPT_SIGMA`), so the share of a
  slice whose TTFT exceeds a target is a log-normal tail (:func:`ttft_miss_share`).
- GPU utilisation, as DCGM reports it (time the GPU is busy): a replica is busy
  when it holds any request; with requests spread at random, a share
  ``1 - exp(-requests per replica)`` of replicas is.

Nothing here sleeps, reads a clock or draws a random number.

>>> pool = FluidPool(ReplicaProfile.llama3_8b_a100())
>>> pool.submit("rt", 10.0, now=0.0, prompt=1000.0, output=200.0)
>>> s = pool.step(0.0, replicas=2)
>>> round(sum(a.n for a in s.admitted), 3), s.waiting, round(s.tpot_s, 4)
(10.0, 0.0, 0.0202)
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Hashable

from surgegate.checks import check
from surgegate.llm.replica import ReplicaProfile

#: Spread (log-normal sigma) of prompt lengths around a second's mean.
PROMPT_SIGMA = 0.8
#: Counts below this are rounding dust and dropped.
_DUST = 1e-9


@dataclasses.dataclass
class _Cohort:
    """Requests that arrived in one second, by class, with their mean lengths."""

    arrived: float
    counts: dict[Hashable, float]
    prompt: float
    output: float

    @property
    def n(self) -> float:
        return sum(self.counts.values())


@dataclasses.dataclass(frozen=True)
class Admitted:
    """A slice of one class that got its first token in a second."""

    cls: Hashable
    n: float
    #: seconds it waited for a place in the batch
    wait_s: float
    prompt: float
    output: float


@dataclasses.dataclass(frozen=True)
class Second:
    """What the pool did in one second."""

    admitted: tuple[Admitted, ...]
    timed_out: dict[Hashable, float]
    #: mean inter-token latency of the running sequences (None: nothing ran)
    tpot_s: float | None
    #: one iteration's decode step, seconds
    decode_step_s: float
    #: prompt tokens prefilled, re-prefills of preempted sequences included
    prefilled_tokens: float
    output_tokens: float
    completed: float
    preempted: float
    running: float
    waiting: float
    kv_cache_usage: float
    gpu_busy: float


def prefill_s(profile: ReplicaProfile, prompt: float, decode_step_s: float) -> float:
    """Seconds to prefill one ``prompt``: its tokens at the prefill rate, plus a decode step per chunk."""
    return prompt / profile.prefill_tokens_per_s + decode_step_s * (prompt / profile.max_batched_tokens + 1)


def ttft_miss_share(profile: ReplicaProfile, wait_s: float, prompt_mean: float, decode_step_s: float,
                    target_s: float) -> float:
    """Share of requests that waited ``wait_s`` whose TTFT exceeds ``target_s``, prompts log-normal around the mean."""
    per_token = 1 / profile.prefill_tokens_per_s + decode_step_s / profile.max_batched_tokens
    room = target_s - wait_s - decode_step_s
    if room <= 0:
        return 1.0
    longest = room / per_token  # the longest prompt that still makes it
    mu = math.log(max(prompt_mean, 1.0)) - PROMPT_SIGMA ** 2 / 2
    z = (math.log(longest) - mu) / PROMPT_SIGMA
    return 0.5 * math.erfc(z / math.sqrt(2))


def prompt_quantile(prompt_mean: float, q: float) -> float:
    """The ``q`` quantile of prompt lengths whose mean is ``prompt_mean`` (log-normal, :data:`PROMPT_SIGMA`)."""
    from statistics import NormalDist

    mu = math.log(max(prompt_mean, 1.0)) - PROMPT_SIGMA ** 2 / 2
    return math.exp(mu + PROMPT_SIGMA * NormalDist().inv_cdf(q))


class FluidPool:
    """Ready replicas of one profile behind one waiting queue, as flows.

    ``rank`` orders classes for the engine's priority scheduling; None is
    first come, first served. ``timeout_s``: a request still waiting for a
    place in the batch that long gives up.
    """

    def __init__(self, profile: ReplicaProfile, *, timeout_s: float = 60.0,
                 rank: Callable[[Hashable], int] | None = None) -> None:
        check(timeout_s > 0, "timeout_s", timeout_s, "must be > 0")
        self.profile = profile
        self.timeout_s = timeout_s
        self.rank = rank
        self.queue: collections.deque[_Cohort] = collections.deque()
        self.running = 0.0
        #: mean prompt and output lengths of the running sequences
        self.run_prompt = 0.0
        self.run_output = 1.0
        #: preempted sequences waiting at the head, and the context each must prefill again
        self.preempted = 0.0
        self.preempted_context = 0.0
        self.totals: collections.defaultdict[str, float] = collections.defaultdict(float)

    # ------------------------------------------------------------ state

    @property
    def waiting(self) -> float:
        return sum(c.n for c in self.queue) + self.preempted

    @property
    def footprint(self) -> float:
        """KV-cache tokens one running sequence holds on average."""
        return self.run_prompt + self.run_output / 2

    def submit(self, cls: Hashable, n: float, *, now: float, prompt: float, output: float) -> None:
        """``n`` requests of ``cls`` arrive in the second starting at ``now``, with these mean lengths."""
        check(n >= 0, "n", n, "must be >= 0")
        check(prompt >= 1 and output >= 1, "prompt, output", (prompt, output), "must be >= 1 token each")
        if n <= 0:
            return
        self.totals["arrived"] += n
        last = self.queue[-1] if self.queue else None
        if last is not None and last.arrived == now and last.prompt == prompt and last.output == output:
            last.counts[cls] = last.counts.get(cls, 0.0) + n
        else:
            self.queue.append(_Cohort(now, {cls: n}, prompt, output))

    # ------------------------------------------------------------ one second

    def step(self, now: float, replicas: int) -> Second:
        """Serve the second starting at ``now`` on ``replicas`` ready replicas."""
        p = self.profile
        timed_out = self._expire(now)
        n = max(0, replicas)
        cap_kv = n * p.kv_cache_tokens
        # a batch the cache or the slots cannot hold gives back its newest sequences
        most = min(cap_kv / self.footprint, n * p.max_num_seqs) if n else 0.0
        preempted = max(0.0, self.running - most)
        if preempted > _DUST:
            self._preempt(preempted)
        else:
            preempted = 0.0
        decode = p.decode_step(self.running * self.footprint / n) if n else p.decode_step_s
        admitted: list[Admitted] = []
        prefilled = 0.0
        if n:
            budget = p.max_batched_tokens - self.running / n  # prefill tokens an iteration can take
            prefill_room = n * budget * p.prefill_tokens_per_s / (p.prefill_tokens_per_s * decode + budget) \
                if budget > 0 else 0.0
            slots = n * p.max_num_seqs - self.running
            kv_room = cap_kv - self.running * self.footprint
            prefilled = self._admit(now, prefill_room, slots, kv_room, admitted)
        busy_share = prefilled / n / p.prefill_tokens_per_s if n else 0.0
        tpot = None
        out_tokens = completed = 0.0
        if n and self.running > _DUST:
            iterations = max(0.0, 1 - busy_share) / decode
            tpot = 1 / iterations if iterations > 0 else math.inf
            out_tokens = self.running * iterations
            completed = min(self.running, out_tokens / self.run_output)
            self.running -= completed
        # the half-second wait of same-second admissions, now that the prefill-busy time is known
        admitted = [a if a.wait_s > 0 else dataclasses.replace(a, wait_s=0.5 * min(1.0, busy_share))
                    for a in admitted]
        self.totals["completed"] += completed
        self.totals["output_tokens"] += out_tokens
        self.totals["prefilled_tokens"] += prefilled
        per = (self.running + self.waiting) / n if n else 0.0
        return Second(
            admitted=tuple(admitted), timed_out=timed_out, tpot_s=tpot, decode_step_s=decode,
            prefilled_tokens=prefilled, output_tokens=out_tokens, completed=completed, preempted=preempted,
            running=self.running, waiting=self.waiting,
            kv_cache_usage=min(1.0, self.running * self.footprint / cap_kv) if cap_kv else 0.0,
            gpu_busy=1 - math.exp(-per) if n else 0.0)

    def _expire(self, now: float) -> dict[Hashable, float]:
        lost: dict[Hashable, float] = {}
        while self.queue and now - self.queue[0].arrived >= self.timeout_s:
            c = self.queue.popleft()
            for cls, k in c.counts.items():
                lost[cls] = lost.get(cls, 0.0) + k
        self.totals["timed_out"] += sum(lost.values())
        return lost

    def _preempt(self, k: float) -> None:
        context = self.run_prompt + self.run_output / 2  # what each has in the cache, to prefill again
        total = self.preempted * self.preempted_context + k * context
        self.preempted += k
        self.preempted_context = total / self.preempted
        self.running -= k
        self.totals["preempted"] += k

    def _join(self, k: float, prompt: float, output: float) -> None:
        """``k`` sequences join the batch; the running means follow."""
        total = self.running + k
        self.run_prompt = (self.run_prompt * self.running + prompt * k) / total
        self.run_output = (self.run_output * self.running + output * k) / total
        self.running = total

    def _admit(self, now: float, prefill_room: float, slots: float, kv_room: float,
               admitted: list[Admitted]) -> float:
        """Fill the batch from the head of the queue; the prompt tokens prefilled."""
        room = _Room(prefill_room, slots, kv_room)
        if self.preempted > _DUST:  # preempted sequences go first, as in vLLM
            context = self.preempted_context
            k = room.fit(self.preempted, prefill=context, footprint=context)
            if k > _DUST:
                # their prompt and output means are those of the running batch they left
                self._join(k, self.run_prompt, self.run_output)
                self.preempted -= k
                room.spend(k, prefill=context, footprint=context)
            if self.preempted > _DUST:
                return room.used
            self.preempted = 0.0
        if self.rank is None:
            for c in self.queue:  # in arrival order, every class of a second in proportion
                k = self._take(c, None, c.n, room, now, admitted)
                if k <= _DUST or k < c.n:
                    break
        else:
            for cls in sorted({cls for c in self.queue for cls in c.counts}, key=self.rank):
                for c in self.queue:  # the highest rank first, each in arrival order
                    m = c.counts.get(cls, 0.0)
                    if m > _DUST and self._take(c, cls, m, room, now, admitted) <= _DUST:
                        break
        self.queue = collections.deque(c for c in self.queue if c.n > _DUST)
        return room.used

    def _take(self, c: _Cohort, cls: Hashable | None, n: float, room: _Room, now: float,
              admitted: list[Admitted]) -> float:
        """Admit what fits of ``n`` requests of cohort ``c`` (of class ``cls``; None: all its classes in
        proportion); how many were admitted."""
        footprint = c.prompt + c.output / 2
        k = room.fit(n, prefill=c.prompt, footprint=footprint)
        if k <= _DUST:
            return 0.0
        share = k / n
        for each in ([cls] if cls is not None else list(c.counts)):
            take = c.counts[each] * share
            c.counts[each] -= take
            admitted.append(Admitted(each, take, max(0.0, now - c.arrived), c.prompt, c.output))
        self._join(k, c.prompt, c.output)
        room.spend(k, prefill=c.prompt, footprint=footprint)
        return k


@dataclasses.dataclass
class _Room:
    """What one second's admission has left: prefill tokens, batch slots, KV-cache tokens."""

    prefill: float
    slots: float
    kv: float
    used: float = 0.0

    def fit(self, n: float, *, prefill: float, footprint: float) -> float:
        """How many of ``n`` sequences, each prefilling ``prefill`` and holding ``footprint`` tokens, fit."""
        return max(0.0, min(n, self.slots, self.kv / footprint, (self.prefill - self.used) / prefill))

    def spend(self, k: float, *, prefill: float, footprint: float) -> None:
        self.used += k * prefill
        self.slots -= k
        self.kv -= k * footprint

def weighted_quantile(points: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of ``(value, weight)`` points (None when no point has weight)."""
    pts = sorted((t, w) for t, w in points if w > 0)
    total = sum(w for _, w in pts)
    if not total:
        return None
    acc = 0.0
    for t, w in pts:
        acc += w
        if acc >= q * total:
            return t
    return pts[-1][0]



def steady_tpot(profile: ReplicaProfile, rps: float, prompt: float, output: float) -> float:
    """One replica's TPOT in steady state at ``rps`` (inf when it cannot keep up).

    Little's law: ``rps x output x tpot`` sequences run; an iteration's decode
    step reads their cache; prefill takes ``rps x prompt / prefill rate`` of
    each second, so ``tpot = step / (1 - prefill share)``.
    """
    p = profile
    footprint = prompt + output / 2
    free = 1 - rps * prompt / p.prefill_tokens_per_s - p.decode_per_kilotoken_s * rps * output * footprint / 1000
    if free <= 0:
        return math.inf
    tpot = p.decode_step_s / free
    running = rps * output * tpot
    if running > p.max_num_seqs or running * footprint > p.kv_cache_tokens:
        return math.inf
    return tpot


def sustainable_rps(profile: ReplicaProfile, prompt: float, output: float, tpot_target_s: float) -> float:
    """The most requests a second one replica serves in steady state with TPOT within ``tpot_target_s``.

    >>> round(sustainable_rps(ReplicaProfile.llama3_8b_a100(), 1155, 211, 0.1), 2)
    6.43
    """
    check(tpot_target_s > 0, "tpot_target_s", tpot_target_s, "must be > 0")
    lo, hi = 0.0, profile.prefill_tokens_per_s / max(prompt, 1.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        if steady_tpot(profile, mid, prompt, output) <= tpot_target_s:
            lo = mid
        else:
            hi = mid
    return lo


def token_rates(profile: ReplicaProfile, prompt: float, output: float, tpot_target_s: float) -> tuple[float, float]:
    """Prompt and output tokens a second one replica serves within ``tpot_target_s``, as two separate budgets.

    The steady-state condition of :func:`steady_tpot` is linear in the rate:
    ``rps x (prompt / a + output / b) <= 1`` with ``a`` the prefill rate and ``b``
    the decode rate, both less the decode step's fixed share; ``b`` is taken at
    these lengths' KV-cache footprint. So a controller can count capacity in
    tokens: a replica serves ``1 / (prompt / a + output / b)`` requests a second.
    It leaves out the batch-slot and cache limits, which bind first only for
    long answers to short prompts (then :func:`sustainable_rps` is lower).

    >>> a, b = token_rates(ReplicaProfile.llama3_8b_a100(), 1155, 211, 0.1)
    >>> round(a), round(b), round(1 / (1155 / a + 211 / b), 2)
    (8749, 8945, 6.43)
    """
    p = profile
    free = 1 - p.decode_step_s / tpot_target_s
    check(free > 0, "tpot_target_s", tpot_target_s, f"must exceed one decode step ({p.decode_step_s} s)")
    footprint = prompt + output / 2
    return p.prefill_tokens_per_s * free, 1000 * free / (p.decode_per_kilotoken_s * footprint)

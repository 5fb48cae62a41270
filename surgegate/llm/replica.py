"""One LLM inference replica: continuous batching under a KV-cache token budget.

A replica runs *iterations*. In each one it first keeps its running sequences
going (one decode token each), then admits waiting requests in arrival order
while the batch has room: at most ``max_num_seqs`` sequences, at most
``max_batched_tokens`` prompt tokens prefilled in one iteration, and KV cache
for every token held. A request's first token comes out of the iteration that
prefilled it, so time to first token is its wait plus that iteration. When
the cache cannot hold one more token for every running sequence, the newest
sequence is preempted (its cache freed, it waits again at the head of the
queue and its context is prefilled again), as vLLM's recompute preemption does. So under overload the
queue grows, TTFT grows and the cache sits near full: the saturation evidence
an inference server reports.

An iteration lasts ``prefill tokens / prefill rate + decode step``; the decode
step is one read of the weights plus a read of every running sequence's KV
cache (memory-bound, as decoding is).

Calibration (:meth:`ReplicaProfile.llama3_8b_a100`): Llama-3-8B in BF16 on one
A100-SXM 80GB under vLLM, derived from published figures, not measured here.
The A100 80GB's datasheet gives 2,039 GB/s of HBM bandwidth and 312 TFLOPS of
dense BF16; Llama-3-8B's configuration has 8.0 B parameters (16.1 GB), 32
layers and 8 KV heads of dimension 128, so one token's KV cache is
2 x 32 x 8 x 128 x 2 bytes = 128 KiB. With vLLM's default
``gpu_memory_utilization=0.9``, 72 GB less the weights and about 4 GB of
activations leaves ~52 GB of cache: 400,000 tokens. A decode step reads the
weights at ~80% of peak bandwidth (9.8 ms) plus each sequence's cache; prefill
runs at ~50% of peak compute, 2 x 8 B FLOPs a token: ~9,700 tokens/s. These
give ~100 tokens/s for one sequence alone, in line with published vLLM
single-stream figures for this model and GPU.

Time is passed in (seconds); nothing here sleeps or reads a clock.

>>> r = Replica(ReplicaProfile.llama3_8b_a100())
>>> r.submit("a", prompt_tokens=500, output_tokens=3, now=0.0)
>>> it = r.step(now=0.0)
>>> [(e.request_id, e.tokens, e.first, e.finished) for e in it.emitted], round(it.duration_s, 4)
([('a', 1, True, False)], 0.0613)
>>> [e.tokens for e in r.step(now=it.duration_s).emitted], r.running, r.waiting
([1], 1, 0)
"""

from __future__ import annotations

import collections
import dataclasses

from surgegate.checks import check

#: Bytes of KV cache one token of context holds in Llama-3-8B (K and V, 32 layers, 8 heads of 128, BF16).
LLAMA3_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2


@dataclasses.dataclass(frozen=True)
class ReplicaProfile:
    """What one replica can do; see the module docstring for the calibration."""

    #: prompt tokens prefilled per second
    prefill_tokens_per_s: float = 9_700.0
    #: one decode iteration's fixed cost: reading the weights
    decode_step_s: float = 0.0098
    #: added to a decode iteration per 1,000 tokens of context held by running sequences
    decode_per_kilotoken_s: float = 0.000_08
    #: KV cache, in tokens of context
    kv_cache_tokens: int = 400_000
    #: sequences in one batch at most (vLLM's max_num_seqs)
    max_num_seqs: int = 256
    #: prompt tokens prefilled in one iteration at most (vLLM's max_num_batched_tokens)
    max_batched_tokens: int = 8_192

    def __post_init__(self) -> None:
        check(self.prefill_tokens_per_s > 0, "prefill_tokens_per_s", self.prefill_tokens_per_s, "must be > 0")
        check(self.decode_step_s > 0, "decode_step_s", self.decode_step_s, "must be > 0")
        check(self.decode_per_kilotoken_s >= 0, "decode_per_kilotoken_s", self.decode_per_kilotoken_s,
              "must be >= 0")
        check(self.kv_cache_tokens >= 1, "kv_cache_tokens", self.kv_cache_tokens, "must be >= 1")
        check(self.max_num_seqs >= 1, "max_num_seqs", self.max_num_seqs, "must be >= 1")
        check(self.max_batched_tokens >= 1, "max_batched_tokens", self.max_batched_tokens, "must be >= 1")

    def decode_step(self, context_tokens: float) -> float:
        """Seconds of one iteration's decode: the weights read once, plus ``context_tokens`` of KV cache."""
        return self.decode_step_s + self.decode_per_kilotoken_s * context_tokens / 1000

    def iteration_s(self, prefill_tokens: float, context_tokens: float, busy: bool = True) -> float:
        """Seconds of one iteration that prefills ``prefill_tokens`` and decodes over ``context_tokens``."""
        return prefill_tokens / self.prefill_tokens_per_s + (self.decode_step(context_tokens) if busy else 0.0)

    @classmethod
    def llama3_8b_a100(cls) -> ReplicaProfile:
        """Llama-3-8B (BF16) on one A100-SXM 80GB under vLLM: the defaults, derived in the module docstring."""
        return cls()


@dataclasses.dataclass
class _Sequence:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    arrived: float
    generated: int = 0

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated


@dataclasses.dataclass(frozen=True)
class Emitted:
    """Tokens one request produced in an iteration."""

    request_id: str
    tokens: int
    #: the request's first token (its prefill ran in this iteration)
    first: bool
    finished: bool


@dataclasses.dataclass(frozen=True)
class Iteration:
    """One step of the replica: how long it takes, and what it produced when it ends."""

    duration_s: float
    emitted: tuple[Emitted, ...]
    prefilled_tokens: int
    preempted: tuple[str, ...]


class Replica:
    """A replica's scheduler state: the waiting queue, the running batch, the KV cache in use."""

    def __init__(self, profile: ReplicaProfile | None = None) -> None:
        self.profile = profile or ReplicaProfile()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self.preemptions = 0

    # ------------------------------------------------------------ state

    @property
    def running(self) -> int:
        """Sequences in the batch."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests queued for a place in the batch."""
        return len(self._waiting)

    @property
    def kv_tokens(self) -> int:
        """Tokens of context the running sequences hold in the cache."""
        return sum(s.context for s in self._running)

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV cache in use, 0..1 (vLLM's ``kv_cache_usage_perc``)."""
        return min(1.0, self.kv_tokens / self.profile.kv_cache_tokens)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting."""
        return not self._running and not self._waiting

    # ------------------------------------------------------------ requests

    def submit(self, request_id: str, *, prompt_tokens: int, output_tokens: int, now: float) -> None:
        """Queue a request that will generate ``output_tokens`` (>= 1) after a ``prompt_tokens`` prompt."""
        check(prompt_tokens >= 1, "prompt_tokens", prompt_tokens, "must be >= 1")
        check(output_tokens >= 1, "output_tokens", output_tokens, "must be >= 1")
        check(prompt_tokens + output_tokens <= self.profile.kv_cache_tokens, "prompt_tokens + output_tokens",
              prompt_tokens + output_tokens, f"must fit the KV cache ({self.profile.kv_cache_tokens} tokens)")
        self._waiting.append(_Sequence(request_id, prompt_tokens, output_tokens, now))

    def cancel(self, request_id: str) -> bool:
        """Drop a request wherever it is (its client went away); True if it was there."""
        for queue in (self._running, self._waiting):
            for s in queue:
                if s.request_id == request_id:
                    queue.remove(s)
                    return True
        return False

    # ------------------------------------------------------------ iterations

    def step(self, now: float) -> Iteration:
        """Schedule and run one iteration starting at ``now``; its tokens are out after ``duration_s``."""
        p = self.profile
        preempted: list[str] = []
        # every running sequence needs room for one more token; preempt the newest until they fit
        while self._running and self.kv_tokens + len(self._running) > p.kv_cache_tokens:
            victim = self._running.pop()
            self._waiting.appendleft(victim)  # its context is prefilled again when it runs again
            preempted.append(victim.request_id)
            self.preemptions += 1
        decoding = list(self._running)
        budget = p.kv_cache_tokens - self.kv_tokens - len(decoding)
        prefill = 0
        admitted: list[_Sequence] = []
        while self._waiting and len(decoding) + len(admitted) < p.max_num_seqs:
            head = self._waiting[0]
            if head.context + 1 > budget or (admitted and prefill + head.context > p.max_batched_tokens):
                break  # first come, first served: nothing overtakes the head of the queue
            self._waiting.popleft()
            admitted.append(head)
            prefill += head.context
            budget -= head.context + 1
        duration = p.iteration_s(prefill, sum(s.context for s in decoding), busy=bool(decoding or admitted))
        emitted = []
        for seq in decoding + admitted:
            first = seq.generated == 0
            seq.generated += 1
            emitted.append(Emitted(seq.request_id, 1, first, seq.generated >= seq.output_tokens))
        self._running = [s for s in decoding + admitted if s.generated < s.output_tokens]
        return Iteration(duration, tuple(emitted), prefill, tuple(preempted))

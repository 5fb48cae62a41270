"""`surgegate fake-llm`: a vLLM-like OpenAI-compatible server, for demos, tests and benchmarks.

It speaks the parts of the OpenAI HTTP API a gateway fronts -
``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``
and ``GET /v1/models`` - and answers from one simulated replica
(:class:`surgegate.llm.replica.Replica`: continuous batching under a KV-cache
budget, Llama-3-8B on an A100 by default), so time to first token grows with
the waiting queue and a full cache preempts sequences, as on a real server.

- Streamed responses (``"stream": true``) are Server-Sent Events, one
  ``data: {chunk}`` per token as the replica produces it, then ``data: [DONE]``;
  with ``stream_options.include_usage`` the last chunk carries ``usage``.
- A request's output length is drawn from a log-normal (median
  ``output_median``), capped by ``max_tokens`` / ``max_completion_tokens``;
  its prompt length is estimated as one token per four characters.
- A client that goes away mid-request is dropped from the replica and counted.
- ``GET /metrics`` is Prometheus text with vLLM's own metric names
  (``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc``, ``vllm:time_to_first_token_seconds``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``), labelled
  with ``model_name``.
- ``time_scale`` multiplies every simulated duration (0.01: a hundred times
  faster than the GPU); figures in ``/metrics`` stay in simulated seconds.
- ``GET /health`` answers 200, as vLLM's does once its model is loaded.
- ``GET /_fake/stats`` counts requests, tokens and cancellations and shows the
  last request body received, so tests can see what reached the upstream.
- A request with ``X-Fake-Stamps: 1`` gets an SSE comment before each chunk,
  ``: sent_at=<CLOCK_MONOTONIC seconds>``, which clients ignore and a
  benchmark on the same host reads to time each chunk's relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from surgegate.llm.openai_wire import OpenAIRequest, estimate_prompt_tokens, openai_error
from surgegate.llm.replica import Replica, ReplicaProfile

#: vLLM's bucket bounds for its time-to-first-token histogram, in seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: Words the fake model "generates", one per token.
WORDS = ("the", "load", "is", "shed", "before", "the", "queue", "grows", "and", "tokens", "flow")


class _Job:
    """One request inside the server: its token queue and timings."""

    __slots__ = ("id", "prompt_tokens", "output_tokens", "tokens", "arrived", "first_at", "done")

    def __init__(self, job_id: str, prompt_tokens: int, output_tokens: int, arrived: float) -> None:
        self.id = job_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.tokens: asyncio.Queue[bool] = asyncio.Queue()  # True: the last token
        self.arrived = arrived
        self.first_at: float | None = None
        self.done = False


class FakeLLM:
    """The server's state: one replica, the engine loop that steps it, and the metrics."""

    def __init__(self, *, model: str = "llama-3-8b", profile: ReplicaProfile | None = None,
                 time_scale: float = 1.0, seed: int | None = None, output_median: int = 200,
                 error_share: float = 0.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale={time_scale!r}: must be > 0")
        if output_median < 1:
            raise ValueError(f"output_median={output_median!r}: must be >= 1")
        if not 0 <= error_share < 1:
            raise ValueError(f"error_share={error_share!r}: must be within [0, 1)")
        self.model = model
        self.replica = Replica(profile or ReplicaProfile.llama3_8b_a100())
        self.time_scale = time_scale
        self.output_median = output_median
        self.error_share = error_share
        self.rng = random.Random(seed)
        self.jobs: dict[str, _Job] = {}
        self.stats: dict[str, Any] = {"requests": 0, "completed": 0, "cancelled": 0, "errors": 0,
                                      "prompt_tokens": 0, "generated_tokens": 0, "last_body": None}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._engine: asyncio.Task | None = None
        self._started = time.monotonic()
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self._running = Gauge("vllm:num_requests_running", "Requests in the model's batch.", labels,
                              registry=self.registry).labels(model)
        self._waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for the batch.", labels,
                              registry=self.registry).labels(model)
        self._kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 is full.", labels,
                         registry=self.registry).labels(model)
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                               buckets=TTFT_BUCKETS, registry=self.registry).labels(model)
        self._prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels,
                               registry=self.registry).labels(model)
        self._generated = Counter("vllm:generation_tokens", "Generation tokens processed.", labels,
                                  registry=self.registry).labels(model)

    # ------------------------------------------------------------ the engine

    def now(self) -> float:
        """Simulated seconds since the server started."""
        return (time.monotonic() - self._started) / self.time_scale

    async def start(self) -> None:
        self._engine = asyncio.create_task(self._run_engine())

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine

    async def _run_engine(self) -> None:
        replica = self.replica
        while True:
            if replica.idle:
                self._wake.clear()
                await self._wake.wait()
            started = self.now()
            iteration = replica.step(started)
            await asyncio.sleep(iteration.duration_s * self.time_scale)
            self._prompt.inc(iteration.prefilled_tokens)
            self._generated.inc(sum(e.tokens for e in iteration.emitted))
            now = started + iteration.duration_s  # the iteration's end, not the host's scheduling delay
            for emitted in iteration.emitted:
                job = self.jobs.get(emitted.request_id)
                if job is None:
                    continue
                if job.first_at is None:
                    job.first_at = now
                    self._ttft.observe(now - job.arrived)
                job.tokens.put_nowait(emitted.finished)
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        self._running.set(self.replica.running)
        self._waiting.set(self.replica.waiting)
        self._kv.set(self.replica.kv_cache_usage)

    def _submit(self, request: OpenAIRequest, raw: dict) -> _Job:
        cap = request.token_cap()
        drawn = max(1, round(self.rng.lognormvariate(math.log(self.output_median), 0.8)))
        output = min(drawn, cap) if cap is not None else drawn
        prompt = estimate_prompt_tokens(raw)
        job = _Job(f"fake-{next(self._ids)}", prompt, output, self.now())
        self.jobs[job.id] = job
        self.replica.submit(job.id, prompt_tokens=prompt, output_tokens=output, now=job.arrived)
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += prompt
        self._refresh_gauges()
        self._wake.set()
        return job

    def _forget(self, job: _Job) -> None:
        self.jobs.pop(job.id, None)
        if not job.done and self.replica.cancel(job.id):
            self.stats["cancelled"] += 1
            self._refresh_gauges()

    # ------------------------------------------------------------ handlers

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        self.stats["last_body"] = raw_body.decode("utf-8", "replace")
        try:
            parsed = OpenAIRequest.decode(raw_body)
            raw = json.loads(raw_body)
        except (ValueError, msgspec.ValidationError) as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        if self.error_share and self.rng.random() < self.error_share:
            self.stats["errors"] += 1
            return _error(500, "the model failed (simulated)", "server_error", None)
        chat = request.path.endswith("/chat/completions")
        job = self._submit(parsed, raw)
        try:
            if parsed.stream:
                stamps = request.headers.get("X-Fake-Stamps") == "1"
                return await self._stream(request, job, chat, parsed.include_usage, stamps)
            produced = await self._collect(job)
            return web.json_response(self._completion(job, chat, produced))
        finally:
            self._forget(job)

    async def _collect(self, job: _Job) -> int:
        produced = 0
        while True:
            last = await job.tokens.get()
            produced += 1
            if last:
                job.done = True
                self.stats["completed"] += 1
                self.stats["generated_tokens"] += produced
                return produced

    async def _stream(self, request: web.Request, job: _Job, chat: bool, include_usage: bool,
                      stamps: bool = False) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        produced = 0
        while True:
            last = await job.tokens.get()
            word = WORDS[produced % len(WORDS)] + " "
            produced += 1
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = {"role": "assistant", "content": word} if produced == 1 else {"content": word}
            else:
                choice["text"] = word
            chunk = {"id": job.id, "object": kind, "created": created, "model": self.model, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            stamp = f": sent_at={time.monotonic():.7f}\n".encode() if stamps else b""
            await response.write(stamp + b"data: " + msgspec.json.encode(chunk) + b"\n\n")
            if last:
                break
        job.done = True
        self.stats["completed"] += 1
        self.stats["generated_tokens"] += produced
        if include_usage:
            usage = {"id": job.id, "object": kind, "created": created, "model": self.model, "choices": [],
                     "usage": _usage(job.prompt_tokens, produced)}
            await response.write(b"data: " + msgspec.json.encode(usage) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _completion(self, job: _Job, chat: bool, produced: int) -> dict:
        text = " ".join(WORDS[i % len(WORDS)] for i in range(produced))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": job.id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model, "choices": [choice], "usage": _usage(job.prompt_tokens, produced)}

    async def embeddings(self, request: web.Request) -> web.Response:
        raw_body = await request.read()
        self.stats["last_body"] = raw_body.decode("utf-8", "replace")
        try:
            raw = json.loads(raw_body)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        inputs = raw.get("input") if isinstance(raw, dict) else None
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = estimate_prompt_tokens(raw)
        # an embedding is one prefill, with no decode
        await asyncio.sleep(prompt / self.replica.profile.prefill_tokens_per_s * self.time_scale)
        self.stats["requests"] += 1
        self.stats["completed"] += 1
        data = [{"object": "embedding", "index": i, "embedding": [round(self.rng.uniform(-1, 1), 4)
                                                                  for _ in range(8)]} for i in range(len(items))]
        return web.json_response({"object": "list", "data": data, "model": self.model,
                                  "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": int(self._started), "owned_by": "surgegate"}]})

    async def metrics(self, request: web.Request) -> web.Response:
        self._refresh_gauges()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "running": self.replica.running, "waiting": self.replica.waiting,
                                  "kv_cache_usage": round(self.replica.kv_cache_usage, 6),
                                  "preemptions": self.replica.preemptions})


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    return web.Response(status=status, body=openai_error(message, kind, code), content_type="application/json")


FAKE = web.AppKey("fake_llm", FakeLLM)


async def _health(request: web.Request) -> web.Response:
    """vLLM's liveness probe: 200 once the server serves."""
    return web.Response(status=200)


def create_fake_llm_app(**options: Any) -> web.Application:
    """The fake server's application; ``options`` go to :class:`FakeLLM`."""
    fake = FakeLLM(**options)
    app = web.Application()
    app[FAKE] = fake

    async def lifecycle(app: web.Application):
        await fake.start()
        yield
        await fake.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", fake.completions)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_post("/v1/embeddings", fake.embeddings)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", fake.metrics)
    app.router.add_get("/_fake/stats", fake.stats_view)
    return app

"""`surgegate fake-llm`: a tiny LLM upstream with a long latency tail, for demos and tests.

Every request sleeps for a sampled service time and answers JSON with the
number of output tokens (also in ``X-Output-Tokens``), capped by the request's
``X-Max-Tokens``. By default 90% of requests take at most about 200 ms
(log-normal, median 60 ms) and 10% take 2-6 s, like the long tail of LLM
inference. ``time_scale`` shrinks every sleep, so tests run fast.
``concurrency`` bounds requests in service at once, as a GPU worker's batch
does; the rest wait (their wait is reported in ``X-Queue-Ms``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time

from aiohttp import web


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Service times: a log-normal body and a uniform slow tail."""

    median_ms: float = 60.0
    p90_ms: float = 200.0
    slow_share: float = 0.1
    slow_ms: tuple[float, float] = (2000.0, 6000.0)
    error_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.median_ms < self.p90_ms:
            raise ValueError(f"need 0 < median_ms ({self.median_ms}) < p90_ms ({self.p90_ms})")
        if not 0 <= self.slow_share < 1 or not 0 <= self.error_share < 1:
            raise ValueError("slow_share and error_share must be within [0, 1)")
        if not 0 < self.slow_ms[0] <= self.slow_ms[1]:
            raise ValueError(f"slow_ms={self.slow_ms}: need 0 < low <= high")

    def sample(self, rng: random.Random) -> float:
        if rng.random() < self.slow_share:
            return rng.uniform(*self.slow_ms)
        sigma = math.log(self.p90_ms / self.median_ms) / 1.2816  # z of the 90th percentile
        return min(rng.lognormvariate(math.log(self.median_ms), sigma), self.slow_ms[0])


def create_fake_llm_app(model: LatencyModel | None = None, *, time_scale: float = 1.0, concurrency: int = 64,
                        seed: int | None = None) -> web.Application:
    """The fake upstream application."""
    if time_scale < 0 or concurrency < 1:
        raise ValueError("time_scale must be >= 0 and concurrency >= 1")
    model = model or LatencyModel()
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)
    served = {"requests": 0, "errors": 0}

    async def generate(request: web.Request) -> web.Response:
        cap = request.headers.get("X-Max-Tokens", "")
        wanted = rng.randint(50, 800)
        tokens = min(wanted, int(cap)) if cap.isdigit() and int(cap) > 0 else wanted
        service_ms = model.sample(rng)
        queued = time.perf_counter()
        async with slots:
            queue_ms = (time.perf_counter() - queued) * 1000
            await asyncio.sleep(service_ms * time_scale / 1000)
        served["requests"] += 1
        headers = {"X-Output-Tokens": str(tokens), "X-Queue-Ms": f"{queue_ms:.1f}"}
        if rng.random() < model.error_share:
            served["errors"] += 1
            return web.json_response({"error": "model failed"}, status=500, headers=headers)
        return web.json_response({"output_tokens": tokens, "service_ms": round(service_ms, 1),
                                  "path": request.path}, headers=headers)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/_fake/stats", stats)
    app.router.add_route("*", "/{tail:.*}", generate)
    return app

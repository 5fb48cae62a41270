"""The response cache in Redis behind the gateway, with the official `openai` client.

A deterministic request (temperature 0) is answered once by the upstream and
then from the cache, streamed or not, and says so in ``X-Surgegate-Cache``; a
tenant never reads another's answers; from level 3 the lower tiers get cached
answers only, and a miss is refused with the reason.
"""

from __future__ import annotations

import msgspec
import openai
import pytest
from test_edge_e2e import OPEN, decision, publish
from test_gateway_e2e import MESSAGES, Stack, run

from surgegate.edge.cache import ResponseCache
from surgegate.schemas.decisions import TierLimit

pytestmark = pytest.mark.e2e


def _cache(settings, **options) -> ResponseCache:
    return ResponseCache(settings.redis, prefix=settings.topic_prefix.rstrip(".") + ":", **options)


def test_a_deterministic_answer_is_served_again_from_the_cache_without_the_upstream(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, cache=_cache(settings)) as s:
            ask = s.client().chat.completions.with_raw_response.create
            first = await ask(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            again = await ask(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            warm = await ask(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0.7)
            opted_out = await ask(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0,
                                  extra_headers={"X-Surgegate-Cache": "off"})
            return first, again, warm, opted_out, await s.fake_stats(), dict(s.proxy.counts)

    first, again, warm, opted_out, stats, counts = run(go())
    assert first.headers["X-Surgegate-Cache"] == "miss" and again.headers["X-Surgegate-Cache"] == "hit"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.parse().usage == first.parse().usage
    assert "X-Surgegate-Cache" not in warm.headers and "X-Surgegate-Cache" not in opted_out.headers
    assert stats["completed"] == 3  # the hit never reached the upstream
    assert counts["cache_hits"] == 1 and counts["cache_stored"] == 1


def test_one_tenant_cannot_read_another_tenants_cached_answer(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, cache=_cache(settings)) as s:
            acme = s.client("sk-acme-pro").chat.completions.with_raw_response.create
            beta = s.client("sk-beta-pro").chat.completions.with_raw_response.create
            a1 = await acme(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            b1 = await beta(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            b2 = await beta(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            return a1, b1, b2, await s.fake_stats()

    a1, b1, b2, stats = run(go())
    assert a1.headers["X-Surgegate-Cache"] == "miss"
    assert b1.headers["X-Surgegate-Cache"] == "miss", "beta was answered from acme's cache"
    assert b2.headers["X-Surgegate-Cache"] == "hit"  # beta's own answer, kept for beta
    assert stats["completed"] == 2


def test_a_shared_scope_is_read_by_every_tenant(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, cache=_cache(settings, shared_scope="faq")) as s:
            acme = s.client("sk-acme-pro").chat.completions.with_raw_response.create
            beta = s.client("sk-beta-pro").chat.completions.with_raw_response.create
            await acme(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            return await beta(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)

    assert run(go()).headers["X-Surgegate-Cache"] == "hit"


def test_a_cached_streamed_answer_replays_as_a_stream(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, cache=_cache(settings)) as s:
            async def streamed():
                raw = await s.client().chat.completions.with_raw_response.create(
                    model="llama-3-8b", messages=MESSAGES, max_tokens=20, temperature=0, stream=True,
                    stream_options={"include_usage": True})
                chunks = [c async for c in raw.parse()]
                return raw.headers, raw.headers.get("content-type"), chunks

            first = await streamed()
            again = await streamed()
            return first, again, await s.fake_stats()

    (h1, _, c1), (h2, kind, c2), stats = run(go())
    assert h1["X-Surgegate-Cache"] == "miss" and h2["X-Surgegate-Cache"] == "hit"
    assert kind.startswith("text/event-stream")
    text = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices) for chunks in (c1, c2)]
    assert text[0] and text[0] == text[1]
    assert len(c2) == len(c1) > 2 and c2[-1].usage == c1[-1].usage  # chunk by chunk, usage chunk last
    assert stats["completed"] == 1


def test_at_level_3_lower_tiers_get_cached_answers_only_and_misses_are_refused_with_the_reason(settings):
    publish(settings, decision(1))
    degraded = msgspec.structs.replace(decision(2, {**OPEN, "free": TierLimit(realtime_rps=1000, batch_rps=0,
                                                                               burst=2000)}), level=3)

    async def go():
        async with Stack(settings, cache=_cache(settings)) as s:
            free = s.client("sk-acme-free").chat.completions.with_raw_response.create
            await free(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)  # kept at level 0
            publish(settings, degraded)
            from support import eventually
            eventually(lambda: s.gate.admission.decision.version == 2, 15, "the level 3 decision")
            hit = await free(model="llama-3-8b", messages=MESSAGES, max_tokens=30, temperature=0)
            with pytest.raises(openai.RateLimitError) as refused:
                await free(model="llama-3-8b", messages=[{"role": "user", "content": "new question"}],
                           max_tokens=30, temperature=0)
            top = await s.client("sk-acme-enterprise").chat.completions.with_raw_response.create(
                model="llama-3-8b", messages=[{"role": "user", "content": "new question"}], max_tokens=30)
            return hit, refused.value, top, await s.fake_stats()

    hit, refused, top, stats = run(go())
    assert hit.headers["X-Surgegate-Cache"] == "hit"
    assert "served from the response cache only" in refused.message and refused.code == "rate_limit_exceeded"
    assert refused.response.headers["X-Surgegate-Level"] == "3"
    assert top.parse().choices[0].message.content  # the top tier still reaches the upstream
    assert stats["completed"] == 2


def test_hits_are_counted_in_the_windows_and_left_out_of_the_demand(settings, worker_factory):
    from support import TopicReader

    from surgegate.schemas.aggregates import WindowStats
    from surgegate.streams.topics import Topics

    publish(settings, decision(1))
    worker_factory()

    async def go():
        async with Stack(settings, report="summaries", cache=_cache(settings)) as s:
            ask = s.client().chat.completions.with_raw_response.create
            for _ in range(3):  # one miss, then two hits
                await ask(model="llama-3-8b", messages=MESSAGES, max_tokens=20, temperature=0)

    run(go())
    reader = TopicReader(settings, Topics(settings.topic_prefix).windows)

    def served(_) -> list:
        return [w for w in reader.decoded(WindowStats) if w.scope == "service=chat" and w.traffic.ok]

    reader.poll_until(lambda m: sum(w.traffic.ok for w in served(m)) >= 3, 60, "windows with the three requests")
    windows = served(None)
    reader.close()
    assert sum(w.traffic.ok for w in windows) == 3 and sum(w.traffic.cache_hits for w in windows) == 2
    # demand on the servers: the one miss (demand_rps is per second of the window)
    assert sum(w.traffic.demand * (w.window_end - w.window_start) / 1000 for w in windows) == pytest.approx(1.0)
    assert sum(w.traffic.output_tokens for w in windows) >= 1  # the miss's tokens; the hits add none


def test_a_cache_header_that_is_neither_on_nor_off_is_a_400_naming_it(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, cache=_cache(settings)) as s:
            with pytest.raises(openai.BadRequestError) as bad:
                await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=5,
                                                         extra_headers={"X-Surgegate-Cache": "maybe"})
            return bad.value, await s.fake_stats()

    bad, stats = run(go())
    assert bad.code == "malformed_cache_header" and bad.param == "X-Surgegate-Cache"
    assert stats["completed"] == 0

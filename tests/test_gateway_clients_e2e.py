"""The gateway under real clients and awkward upstreams: nothing cut, nothing spoofed, nothing miscounted.

Each test puts a small upstream of its own (a slow streamer, a silent one, one
that compresses whatever it is asked, a Responses API streamer, one that
records the credential it is sent) behind the gateway and talks to it with the
official ``openai`` client, or plain HTTP where a client must misbehave.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import msgspec
import openai
import pytest
from aiohttp import web
from test_edge_e2e import OPEN, decision, publish
from test_gateway_e2e import MESSAGES, Stack, run

from surgegate.control.config import ServiceConfig
from surgegate.control.throttle import DecisionInputs, ThrottlePolicy
from surgegate.schemas.aggregates import TrafficAggregate
from surgegate.schemas.decisions import Override, TierLimit
from surgegate.telemetry.merging import traffic_stats

pytestmark = pytest.mark.e2e

USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


def chunk(text: str, usage: dict | None = None) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}] if text else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def streamer(chunks: int, every_s: float, *, silent_after: int | None = None) -> web.Application:
    """An upstream that streams ``chunks`` chat chunks, one every ``every_s``; with ``silent_after`` it stops
    sending (without ending) after that many."""
    app = web.Application()

    async def chat(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(chunks):
            if silent_after is not None and i == silent_after:
                await asyncio.sleep(3600)
            await out.write(chunk(f"t{i} "))
            await asyncio.sleep(every_s)
        await out.write(chunk("", usage={**USAGE, "completion_tokens": chunks}))
        await out.write(b"data: [DONE]\n\n")
        return out

    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_a_stream_longer_than_every_timeout_ends_with_done_not_cut(settings):
    # the old gateway bounded the whole answer: a stream longer than --timeout ended early, with a clean 200
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, upstream_app=streamer(25, 0.1), relay={"first_byte_s": 1.0, "idle_s": 1.0}) as s:
            started = time.monotonic()
            stream = await s.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
            texts = [c.choices[0].delta.content async for c in stream if c.choices]
            return texts, time.monotonic() - started, s.counts()

    texts, took, counts = run(go())
    assert len(texts) == 25 and took > 2.0, (len(texts), took)  # longer than both timeouts, and whole
    assert counts["upstream_ok"] == 1 and counts.get("upstream_timeout", 0) == 0


def test_a_stream_the_upstream_leaves_silent_ends_with_an_error_event_the_client_raises(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, upstream_app=streamer(10, 0.01, silent_after=3),
                         relay={"idle_s": 0.5}, report="summaries") as s:
            stream = await s.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
            got = []
            with pytest.raises(openai.APIError) as caught:
                async for c in stream:
                    got.append(c)
            return got, caught.value, s.counts(), s.gate.admission.tally.drain(
                ts=0, duration_ms=1000, service="chat", edge_id="gw", gate="live", shadow=False)

    got, err, counts, summaries = run(go())
    assert len(got) == 3 and "silent" in err.message and err.body["code"] == "upstream_timeout"
    assert counts["upstream_timeout"] == 1 and counts.get("upstream_ok", 0) == 0
    assert sum(x.timeout for x in summaries) == 1 and sum(x.ok for x in summaries) == 0


def test_a_client_that_stops_a_stream_is_cancelled_not_an_error_and_never_opens_the_breaker(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, upstream_app=streamer(200, 0.02)) as s:
            for _ in range(3):  # three users press "stop"
                stream = await s.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
                async for _ in stream:
                    break
                await stream.close()
            deadline = time.monotonic() + 10
            while s.counts().get("upstream_cancelled", 0) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return s.counts(), s.gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat", edge_id="gw",
                                                             gate="live", shadow=False)

    counts, summaries = run(go())
    assert counts["upstream_cancelled"] == 3 and counts.get("upstream_error", 0) == 0, counts
    assert sum(x.cancelled for x in summaries) == 3 and sum(x.error for x in summaries) == 0
    # what the worker makes of such windows: no failures, so the breaker stays closed
    policy = ThrottlePolicy(ServiceConfig(service="chat", replica_rps=100.0, replicas=5))
    window = traffic_stats(TrafficAggregate(ok=10, cancelled=90, realtime=100), 10_000)
    for w in range(5):
        _, d = policy.decide(DecisionInputs(window_start=w * 10_000, window_ms=10_000, service=window, tiers={},
                                            tenants={}))
        assert d.breaker == "closed" and d.level == 0


def compressing() -> tuple[web.Application, list[str]]:
    """An upstream that gzips every answer, whatever the request asked; it keeps the Accept-Encoding it saw."""
    asked: list[str] = []
    app = web.Application()

    async def chat(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Accept-Encoding", ""))
        body = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "hi"}}],
                           "usage": {"prompt_tokens": 7, "completion_tokens": 1000, "total_tokens": 1007}})
        return web.Response(body=gzip.compress(body.encode()), headers={"Content-Encoding": "gzip",
                                                                         "Content-Type": "application/json"})

    app.router.add_post("/v1/chat/completions", chat)
    return app, asked


def test_usage_is_counted_behind_a_compressing_upstream_and_the_client_gets_plain_bytes(settings):
    publish(settings, decision(1))
    app, asked = compressing()

    async def go():
        async with Stack(settings, upstream_app=app) as s:
            reply = await s.client().chat.completions.create(model="m", messages=MESSAGES)
            async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
                    f"{s.base}/chat/completions", headers={"Authorization": "Bearer sk-acme-pro",
                                                           "Accept-Encoding": "identity"},
                    json={"model": "m", "messages": MESSAGES}) as r:
                plain = r.headers.get("Content-Encoding"), json.loads(await r.read())["usage"]
            return reply, plain, s.gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat",
                                                               edge_id="gw", gate="live", shadow=False)

    reply, (encoding, usage), summaries = run(go())
    assert reply.usage.completion_tokens == 1000 and encoding is None and usage["completion_tokens"] == 1000
    assert asked == ["identity", "identity"]
    assert sum(x.output_tokens for x in summaries) == 2000 and sum(x.input_tokens for x in summaries) == 14


def responses_streamer() -> web.Application:
    """An upstream of the Responses API that streams its events over half a second."""
    app = web.Application()

    async def responses(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        events = [{"type": "response.created", "response": {"id": "r1", "status": "in_progress"}}]
        events += [{"type": "response.output_text.delta", "delta": f"w{i} "} for i in range(10)]
        events.append({"type": "response.completed", "response": {
            "id": "r1", "status": "completed", "output": [{"type": "message", "content": [
                {"type": "output_text", "text": "x" * 20_000}]}],  # a long answer before its usage
            "usage": {"input_tokens": 9, "output_tokens": 10, "total_tokens": 19}}})
        for event in events:
            await out.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.05)
        return out

    app.router.add_post("/v1/responses", responses)
    return app


def test_a_streamed_responses_call_arrives_as_it_is_made_and_its_tokens_are_counted(settings):
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, upstream_app=responses_streamer()) as s:
            async with aiohttp.ClientSession() as session, session.post(
                    f"{s.base}/responses", headers={"Authorization": "Bearer sk-acme-pro"},
                    json={"model": "m", "input": "hello", "stream": True, "max_output_tokens": 50}) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                started = time.monotonic()
                arrivals = []
                async for line in r.content:
                    if line.startswith(b"data: "):
                        arrivals.append(time.monotonic() - started)
            return arrivals, s.gate.admission.tally.drain(ts=0, duration_ms=1000, service="chat", edge_id="gw",
                                                           gate="live", shadow=False)

    arrivals, summaries = run(go())
    assert len(arrivals) == 12 and arrivals[-1] - arrivals[0] > 0.3, arrivals  # relayed as made, not buffered
    assert sum(x.output_tokens for x in summaries) == 10 and sum(x.input_tokens for x in summaries) == 9


def recorder() -> tuple[web.Application, list[str | None]]:
    seen: list[str | None] = []
    app = web.Application()

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app.router.add_post("/v1/chat/completions", chat)
    return app, seen


def test_the_upstream_gets_its_own_credential_never_the_tenants_key(settings):
    publish(settings, decision(1))
    app, seen = recorder()

    async def go():
        async with Stack(settings, upstream_app=app, relay={"upstream_key": "vllm-server-key"}) as s:
            await s.client().chat.completions.create(model="m", messages=MESSAGES)
        async with Stack(settings, upstream_app=app) as s:  # no upstream key: no Authorization at all
            await s.client().chat.completions.create(model="m", messages=MESSAGES)

    run(go())
    assert seen == ["Bearer vllm-server-key", None]


def test_rate_limit_headers_come_on_every_answer_and_a_429_names_the_bucket_that_refused(settings):
    roomy = {**OPEN, "pro": TierLimit(realtime_rps=100, batch_rps=0, burst=200)}
    # the tier's bucket has room; the service's safe capacity (one request a second, 2 s of burst) does not
    publish(settings, msgspec.structs.replace(decision(1, roomy), safe_rps=1.0))

    async def go():
        async with Stack(settings) as s:
            client = s.client()
            raw = await client.chat.completions.with_raw_response.create(model="llama-3-8b", messages=MESSAGES,
                                                                         max_tokens=2)
            ok_headers = dict(raw.headers)
            await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=2)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=2)
            return ok_headers, caught.value

    ok_headers, err = run(go())
    assert raw_limits(ok_headers) == ("60", "1")  # the service's bucket binds: 1 rps, one request left
    assert err.response.headers["x-surgegate-limit"] == "service"
    assert "the service as a whole" in err.message
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def raw_limits(headers: dict) -> tuple[str, str]:
    return headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]


def test_a_level_4_pin_admits_only_the_top_tiers_realtime_whatever_tiers_the_window_saw(settings):
    # the policy: a window in which only pro was seen, an operator's level-4 pin
    config = ServiceConfig(service="chat", replica_rps=100.0, replicas=5)
    policy = ThrottlePolicy(config)
    pro = traffic_stats(TrafficAggregate(ok=200, realtime=200), 10_000)
    pin = Override(id="ovr-4", service="chat", created_at=0, expires_at=10**12, author="sre", reason="drill",
                   level=4)
    _, made = policy.decide(DecisionInputs(window_start=0, window_ms=10_000, service=pro, tiers={"pro": pro},
                                           tenants={}, overrides=(pin,)))
    assert made.level == 4 and set(made.tiers) == {"enterprise", "pro", "free"}
    assert made.tiers["pro"].realtime_rps == 0 and made.tiers["free"].realtime_rps == 0
    assert made.tiers["enterprise"].realtime_rps == made.safe_rps > 0
    # the edge, with that decision (and with one from a worker that listed only the top tier)
    listed_top_only = msgspec.structs.replace(decision(2, {"enterprise": made.tiers["enterprise"]}), level=4)
    for d in (msgspec.structs.replace(made, version=1, valid_until=decision(1).valid_until,
                                      issued_at=decision(1).issued_at), listed_top_only):
        publish(settings, d)

    async def go():
        async with Stack(settings) as s:
            served = await s.client(api_key="sk-acme-enterprise").chat.completions.create(
                model="llama-3-8b", messages=MESSAGES, max_tokens=2)
            with pytest.raises(openai.RateLimitError):
                await s.client().chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=2)
            return served, s.gate.admission.decision.version

    served, version = run(go())
    assert served.choices and version == 2


def test_no_input_is_a_500_and_no_header_a_client_sent_reaches_the_log(settings, caplog):
    import logging
    import socket

    from surgegate.logs import redact_bad_requests

    redact_bad_requests()
    publish(settings, decision(1))

    async def go():
        async with Stack(settings, body_timeout_s=1.0) as s:
            url, auth = s.base + "/chat/completions", {"Authorization": "Bearer sk-acme-pro"}
            answers = {}
            async with aiohttp.ClientSession() as session:
                nested = b'{"model": "m", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}"
                async with session.post(url, data=nested, headers=auth) as r:
                    answers["nested"] = r.status, (await r.json())["error"]["code"]
                async with session.post(url, data=b"{}", headers={**auth, "X-Surgegate-Deadline": "9" * 5000,
                                                                  "X-Request-Type": "batch"}) as r:
                    answers["deadline"] = r.status, (await r.json())["error"]["param"]
                async with session.post(url, json={"model": "m"}, headers={**auth, "X-Max-Tokens": "9" * 5000}) as r:
                    answers["max tokens"] = r.status, (await r.json())["error"]["param"]
            host, port = s.server.host, s.server.port

            def raw(request: bytes) -> tuple[bytes, float]:
                started = time.monotonic()
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall(request)
                    return sock.recv(4096), time.monotonic() - started

            loop = asyncio.get_running_loop()
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            # a key of bytes that are not UTF-8, and a header line longer than aiohttp reads (8,190 bytes)
            answers["non-utf8 key"] = (await loop.run_in_executor(None, raw, head + b"Authorization: Bearer \xff\xfe"
                                                                  b"sk-SECRET\r\nContent-Length: 2\r\n\r\n{}"))[0]
            answers["long header"] = (await loop.run_in_executor(None, raw, head + b"Authorization: Bearer sk-SECRET"
                                                                 + b"a" * 9000 + b"\r\n\r\n"))[0]
            # a body that never finishes arriving: refused at its deadline (1 s here), not held open
            answers["slow body"] = await loop.run_in_executor(
                None, raw, head + b"Authorization: Bearer sk-acme-pro\r\nContent-Length: 100\r\n\r\n{\"model\"")
            return answers

    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answers = run(go())
    assert answers["nested"] == (400, "invalid_body")
    assert answers["deadline"] == (400, "X-Surgegate-Deadline")
    assert answers["max tokens"] == (400, "X-Max-Tokens")
    assert answers["non-utf8 key"].startswith(b"HTTP/1.1 401")
    assert answers["long header"].startswith(b"HTTP/1.") and b" 400 " in answers["long header"].split(b"\r\n")[0]
    slow, took = answers["slow body"]
    assert slow.startswith(b"HTTP/1.1 408") and took < 3.0, (slow[:40], took)
    assert "sk-SECRET" not in caplog.text and "refused a malformed request" in caplog.text

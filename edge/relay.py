"""The gateway's upstream side: one pooled session, the upstream's own credential, timeouts on silence (never on
the whole answer), streams relayed as they arrive, compressed answers read, tokens counted wherever ``usage`` is.

- **Timeouts.** ``connect_timeout_s`` bounds the wait for a pooled connection
  (running out is overload at the edge: 503 with ``Retry-After``);
  ``first_byte_s`` the wait for the answer to begin, and for each later read
  of it (a non-streamed answer begins when it is complete, so it is long);
  ``idle_s`` the silence between two chunks of a stream. Nothing bounds the
  whole answer: a generation that keeps producing runs as long as it produces.
- **Streams.** Any ``text/event-stream`` answer, on any path (chat,
  completions, responses), is relayed chunk by chunk. A stream the edge must
  end (the upstream went silent for ``idle_s``, or failed) gets an
  OpenAI-shaped SSE error event (``data: {"error": {...}}``, which the official
  clients raise as ``APIError``) and is counted as an upstream timeout or
  error, never passed off as a complete answer.
- **Outcomes.** A client that leaves is ``cancelled``: not an error, so a
  chat UI's stop buttons never feed the breaker; the upstream request is
  closed with it.
- **Encodings.** The upstream is asked for ``identity`` and whatever it sends
  anyway (gzip, deflate) is decoded, so usage is read from the text and the
  client gets plain bytes whatever it asked for.
- **Replicas.** The upstream is one URL, or a :class:`~surgegate.edge.balancer.Balancer`
  over a pool's replicas: each call goes to the replica it picks (least
  outstanding requests), and a replica that fails the call is ejected for a
  while. A pool with no replica serving is a ``503`` with ``Retry-After``.
- **Credentials.** The tenant's key never leaves the edge: the upstream gets
  ``upstream_key`` (``SURGEGATE_UPSTREAM_KEY``) or no ``Authorization`` at all.
- **Tokens.** From ``usage`` wherever it appears: a JSON answer's, a stream's
  last chunk, or a Responses stream's ``response.completed`` event (input and
  output tokens under either API's names); else the chunks counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from surgegate.edge.balancer import Balancer, Endpoint
from surgegate.llm.openai_wire import openai_error
from surgegate.schemas.telemetry import Status

#: Headers that belong to one connection and are not forwarded (RFC 9110 7.6.1), and the ones the relay writes
#: itself: the body's length and encoding (it may decode it), the caller's credentials and identity.
NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                           "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
NOT_FORWARDED_UP = NOT_FORWARDED | {"authorization", "accept-encoding", "x-tenant", "x-tier", "cookie"}
NOT_RELAYED_DOWN = NOT_FORWARDED | {"content-encoding"}
#: The header a request spilled to another region's gateway carries: the region it was spilled from.
SPILLED_FROM = "X-Surgegate-Spilled-From"
#: Upstream statuses that mean the server is overloaded, not that the request was bad.
OVERLOAD_STATUSES = frozenset({429, 503})
#: Bytes kept from the end of a stream to find its usage.
USAGE_TAIL_BYTES = 64 * 1024
SSE = "text/event-stream"

#: The input tokens of a request, estimated from its body: asked only where the answer's usage does not say.
Estimate = Callable[[], int]

#: defaults: a pooled connection within 1 s; an answer begun within 10 minutes (the official clients' own
#: timeout); a stream silent for at most a minute
CONNECT_TIMEOUT_S, FIRST_BYTE_TIMEOUT_S, IDLE_TIMEOUT_S = 1.0, 600.0, 60.0


@dataclasses.dataclass
class Outcome:
    """What became of one upstream call: the status the client got, and what it counts as."""

    status: int
    outcome: Status
    input_tokens: int
    output_tokens: int
    #: streamed answers: time to the first chunk, and the mean gap between the following tokens
    ttft_ms: float | None = None
    itl_ms: float | None = None
    #: False when the upstream never answered (no connection, a timeout, a failure): the status is the edge's
    answered: bool = True


class Relay:
    """Calls the upstream for the gateway (see the module docstring)."""

    def __init__(self, upstream: str | Balancer, *, upstream_key: str = "",
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, first_byte_s: float = FIRST_BYTE_TIMEOUT_S,
                 idle_s: float = IDLE_TIMEOUT_S, connections: int = 1000) -> None:
        for name, value in (("connect_timeout_s", connect_timeout_s), ("first_byte_s", first_byte_s),
                            ("idle_s", idle_s)):
            if not value > 0:
                raise ValueError(f"{name}={value!r}: must be > 0")
        #: one upstream URL, or the balancer over a pool's replicas ("" then)
        self.balancer = upstream if isinstance(upstream, Balancer) else None
        self.upstream = upstream.rstrip("/") if isinstance(upstream, str) else ""
        self.upstream_key = upstream_key
        self.connect_timeout_s = connect_timeout_s
        self.first_byte_s = first_byte_s
        self.idle_s = idle_s
        self.connections = connections
        self.counts: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        # waiting for a pooled connection is bounded apart from the upstream's own time: running out of
        # connections is overload at the edge, not an upstream timeout; the rest is bounded by silence only:
        # every read of the answer within first_byte_s (aiohttp's own timer, cheaper than one of ours per call),
        # and a stream's chunks within idle_s (see _stream)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_read=self.first_byte_s)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def upstream_headers(self, headers: Mapping[str, str], spilled_from: str | None = None) -> dict[str, str]:
        """What the upstream is sent: the request's own headers, without the caller's credentials and identity,
        asking for an answer it need not decode, with the upstream's credential. A request spilled to another
        region's gateway (``spilled_from``: this region) keeps the caller's credential, which that gateway
        identifies and admits it by, and says where it comes from, so it is never spilled again."""
        out = {k: v for k, v in headers.items() if k.lower() not in NOT_FORWARDED_UP}
        out["Accept-Encoding"] = "identity"
        if spilled_from is not None:
            if "Authorization" in headers:
                out["Authorization"] = headers["Authorization"]
            out[SPILLED_FROM] = spilled_from
        elif self.upstream_key:
            out["Authorization"] = f"Bearer {self.upstream_key}"
        return out

    # ------------------------------------------------------------ buffered (deferred tasks, other paths)

    def _target(self, base: str | None) -> tuple[str | None, Endpoint | None]:
        """The base URL of the next call (``base``, else the upstream, else a replica the balancer picks), and the
        replica picked; (None, None) when the pool has no replica serving."""
        if base is not None:
            return base, None
        if self.balancer is None:
            return self.upstream, None
        ep = self.balancer.pick()
        return (ep.url, ep) if ep is not None else (None, None)

    def _settle(self, ep: Endpoint | None, outcome: Outcome) -> None:
        if ep is not None and self.balancer is not None:
            self.balancer.done(ep, ok=outcome.answered and outcome.status < 500)

    def no_replica(self, estimate: Estimate) -> tuple[Outcome, dict[str, str], bytes]:
        """The answer when the pool has no replica serving: 503, come back in a second."""
        self._count("no_replica")
        # no capacity at all, which is no failure of the service: refused for lack of replicas, as a full pool is
        retry = {"Retry-After": "1", "retry-after-ms": "1000"}
        return (Outcome(503, "throttled", estimate(), 0, answered=False), retry,
                openai_error("The service is busy: no replica of its pool is serving. Please retry after 1 s.",
                             "server_error", "no_replica"))

    async def fetch(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
                    estimate: Estimate, *, base: str | None = None) -> tuple[Outcome, dict[str, str], bytes]:
        """One call read whole: its outcome, the headers to relay and the body (in OpenAI's error shape when
        the call failed). ``base``: the upstream to call (default: the relay's, or a replica of its pool)."""
        session = self._require()
        root, ep = self._target(base)
        if root is None:
            return self.no_replica(estimate)
        outcome = Outcome(499, "cancelled", 0, 0)
        try:
            async with session.request(method, root + path, headers=self.upstream_headers(headers),
                                       data=body) as resp:
                payload = await resp.read()
                outcome = self.buffered_outcome(resp.status, payload, estimate)
                return outcome, _down(resp.headers), payload
        except (TimeoutError, aiohttp.ClientError) as exc:
            outcome, reply, payload = self.failure(exc, estimate)
            return outcome, reply, payload
        finally:
            self._settle(ep, outcome)

    def buffered_outcome(self, status: int, payload: bytes, estimate: Estimate) -> Outcome:
        """Status and tokens of an answer read whole (its ``usage`` when it has one, else the estimate)."""
        if status < 400:
            prompt, output = usage_counts(json_usage(payload))
            return Outcome(status, "ok", prompt if prompt is not None else estimate(), output or 0)
        if status in OVERLOAD_STATUSES or status >= 500:
            self._count("upstream_overload" if status in OVERLOAD_STATUSES else "upstream_5xx")
            return Outcome(status, "error", estimate(), 0)
        return Outcome(status, "ok", estimate(), 0)  # the client's own mistake: the service was fine

    def failure(self, exc: BaseException, estimate: Estimate) -> tuple[Outcome, dict[str, str], bytes]:
        """An upstream call that failed before it answered: its outcome, headers and OpenAI-shaped body."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # no upstream connection within connect_timeout_s: the edge is overloaded, come back shortly
            self._count("upstream_busy")
            message = (f"The service is busy: no upstream connection was free within {self.connect_timeout_s:g} s. "
                       f"Please retry after 1 s.")
            return (Outcome(503, "throttled", estimate(), 0, answered=False), {"Retry-After": "1",
                    "retry-after-ms": "1000"}, openai_error(message, "server_error", "upstream_busy"))
        if isinstance(exc, TimeoutError):
            self._count("upstream_timeout")
            return (Outcome(504, "timeout", estimate(), 0, answered=False), {},
                    openai_error(f"the upstream server did not answer within {self.first_byte_s:g} s",
                                 "server_error", "upstream_timeout"))
        self._count("upstream_error")
        return (Outcome(502, "error", estimate(), 0, answered=False), {},
                openai_error(f"the upstream server failed: {type(exc).__name__}", "server_error", "upstream_error"))

    # ------------------------------------------------------------ the client's call

    async def relay(self, request: web.Request, path: str, body: bytes, estimate: Estimate, *,
                    headers: Callable[[], dict[str, str]], keep: Callable[[int, str, bytes, bool], Any] | None = None,
                    done: Callable[[Outcome], None], base: str | None = None,
                    spilled_from: str | None = None) -> web.StreamResponse:
        """Answer ``request`` with the upstream's answer to it (``path`` on ``base``, default the relay's
        upstream or a replica of its pool): streamed as it arrives when the upstream streams, else read whole.
        ``headers()`` gives the edge's own headers (asked once the answer begins),
        ``keep(status, content_type, body, streamed)`` gets a complete successful answer (for the cache),
        ``done(outcome)`` is called once, however the call ends (the client leaving included)."""
        session = self._require()
        call = _Call(Outcome(499, "cancelled", 0, 0), time.perf_counter(), estimate)
        root, ep = self._target(base)
        try:
            if root is None:
                call.outcome, reply, payload = self.no_replica(estimate)
                return web.Response(status=503, body=payload, content_type="application/json",
                                    headers={**reply, **headers()})
            try:
                resp = await session.request(request.method, root + path, data=body,
                                             headers=self.upstream_headers(request.headers, spilled_from))
            except (TimeoutError, aiohttp.ClientError) as exc:
                call.outcome, reply, payload = self.failure(exc, estimate)
                return web.Response(status=call.outcome.status, body=payload, content_type="application/json",
                                    headers={**reply, **headers()})
            async with resp:
                if resp.content_type == SSE and resp.status == 200:
                    return await self._stream(request, resp, call, headers, keep)
                try:
                    payload = await resp.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    call.outcome, reply, payload = self.failure(exc, estimate)
                    return web.Response(status=call.outcome.status, body=payload, content_type="application/json",
                                        headers={**reply, **headers()})
                call.outcome = self.buffered_outcome(resp.status, payload, estimate)
                if keep is not None and resp.status == 200:
                    await keep(200, resp.headers.get("Content-Type", "application/json"), payload, False)
                return web.Response(status=resp.status, body=payload, headers={**_down(resp.headers), **headers()})
        except asyncio.CancelledError:  # the client went away (handler cancellation): so does the upstream call
            self._count("client_disconnects")
            raise
        finally:
            self._settle(ep, call.outcome)
            done(call.outcome)

    async def _stream(self, request: web.Request, resp: aiohttp.ClientResponse, call: _Call,
                      headers: Callable[[], dict[str, str]], keep: Callable[[int, str, bytes, bool], Any] | None
                      ) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={**_down(resp.headers), **headers()})
        await out.prepare(request)
        kept: list[bytes] | None = [] if keep is not None else None
        ended: Status = "ok"
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_s):
                        data = await resp.content.readany()
                except TimeoutError:
                    ended = "timeout"
                    self._count("upstream_timeout")
                    await out.write(_sse_error(f"the upstream server was silent for {self.idle_s:g} s in the "
                                               f"middle of its answer; the answer is incomplete",
                                               "upstream_timeout"))
                    break
                except aiohttp.ClientError as exc:
                    ended = "error"
                    self._count("upstream_error")
                    await out.write(_sse_error(f"the upstream server failed in the middle of its answer "
                                               f"({type(exc).__name__}); the answer is incomplete", "upstream_error"))
                    break
                if not data:
                    break
                call.read(data)
                if kept is not None:
                    kept.append(data)
                await out.write(data)
        except (ConnectionResetError, asyncio.CancelledError):
            # the client went away: closing the upstream response ends the generation there too
            resp.close()
            call.outcome = call.streamed("cancelled")
            raise
        call.outcome = call.streamed(ended)
        if keep is not None and kept is not None and ended == "ok" and call.tail.rstrip().endswith(b"data: [DONE]"):
            await keep(200, resp.headers.get("Content-Type", SSE), b"".join(kept), True)
        await out.write_eof()
        return out

    def _require(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the relay's session starts with the app (Relay.start)")
        return self._session


class _Call:
    """One relayed call as it goes: its outcome so far, and what a stream has shown of its tokens."""

    __slots__ = ("outcome", "started", "estimate", "chunks", "tail", "first")

    def __init__(self, outcome: Outcome, started: float, estimate: Estimate) -> None:
        self.outcome = outcome
        self.started = started
        self.estimate = estimate
        self.chunks = 0
        self.tail = b""
        self.first: float | None = None

    def read(self, data: bytes) -> None:
        """A piece of a stream arrived."""
        if self.first is None:
            self.first = (time.perf_counter() - self.started) * 1000
        self.chunks += data.count(b"data: ")
        self.tail = (self.tail + data)[-USAGE_TAIL_BYTES:]

    def streamed(self, ended: Status) -> Outcome:
        """The stream's outcome: tokens from its usage, else its chunks; time to the first, gap between tokens."""
        prompt, produced = usage_counts(find_usage(self.tail))
        # chunks counted: the [DONE] line and a usage-only chunk carry no token
        counted = max(0, self.chunks - 1 - (1 if produced is not None else 0))
        tokens = produced if produced is not None else counted
        now = (time.perf_counter() - self.started) * 1000
        itl = (now - self.first) / (tokens - 1) if self.first is not None and tokens > 1 else None
        status = {"ok": 200, "timeout": 504, "error": 502}.get(ended, 499)
        return Outcome(status, ended, prompt if prompt is not None else self.estimate(), tokens, self.first, itl)


def _down(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's answer headers the client gets (not the body's length and encoding: the relay may have
    decoded it)."""
    return {k: v for k, v in headers.items() if k.lower() not in NOT_RELAYED_DOWN}


def _sse_error(message: str, code: str) -> bytes:
    """An SSE event in OpenAI's streamed-error shape: the official clients raise it as ``APIError``."""
    return b"data: " + openai_error(message, "server_error", code) + b"\n\n"


_USAGE_DECODER = msgspec.json.Decoder(dict[str, Any])


class _Answer(msgspec.Struct):
    """A JSON answer as far as tokens go: its top-level ``usage`` (every other field skipped by the decoder)."""

    usage: dict[str, Any] | None = None


_ANSWER_DECODER = msgspec.json.Decoder(_Answer)


def json_usage(payload: bytes) -> dict[str, Any]:
    """The ``usage`` of a JSON answer (chat, completions, embeddings, Responses), or empty; the decoder skips
    the rest, so this costs a fraction of reading the answer.

    >>> json_usage(b'{"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}')
    {'prompt_tokens': 3, 'completion_tokens': 4}
    >>> json_usage(b"not json"), json_usage(b'[1]')
    ({}, {})
    """
    try:
        usage = _ANSWER_DECODER.decode(payload).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}
    return usage or {}


def find_usage(data: bytes) -> dict[str, Any]:
    """The last ``usage`` object in ``data`` (a JSON answer, or the end of a stream), or empty.

    It is found by its key and read alone, so it is found in a truncated tail too (a Responses stream's last
    event holds the whole answer before its usage).

    >>> find_usage(b'data: {"usage": {"prompt_tokens": 5, "completion_tokens": 7}}\\n\\ndata: [DONE]\\n\\n')
    {'prompt_tokens': 5, 'completion_tokens': 7}
    >>> find_usage(b'..."output": [], "usage": {"input_tokens": 9, "output_tokens": 2}, "user": null}}')
    {'input_tokens': 9, 'output_tokens': 2}
    """
    at = len(data)
    while True:
        at = data.rfind(b'"usage"', 0, at)
        if at < 0:
            return {}
        start = data.find(b"{", at + 7, at + 16)
        if start < 0:
            continue  # "usage": null, or the word inside a string
        end = _closing_brace(data, start)
        if end < 0:
            continue
        try:
            usage = _USAGE_DECODER.decode(data[start:end + 1])
        except msgspec.DecodeError:
            continue
        if usage:
            return usage


def _closing_brace(data: bytes, start: int) -> int:
    depth, in_string, escaped = 0, False, False
    for i in range(start, min(len(data), start + 4096)):
        c = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i
    return -1


def usage_counts(usage: dict[str, Any]) -> tuple[int | None, int | None]:
    """(input, output) tokens of a ``usage`` object under either API's names (chat: prompt/completion; Responses:
    input/output), None where absent."""
    def first_int(*names: str) -> int | None:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return first_int("prompt_tokens", "input_tokens"), first_int("completion_tokens", "output_tokens")

"""The OpenAI HTTP API as admission sees it: the request fields that matter, errors, rate-limit headers.

Only what admission reads is decoded (``model``, ``stream``, the output
budget: ``max_tokens``, ``max_completion_tokens`` or the Responses API's
``max_output_tokens``, ``n``, ``stream_options.include_usage``, and
``temperature``, which says whether an answer may be cached); every
other field passes through untouched. A field of the wrong type is a
``ValueError`` naming it (``$.max_tokens``), which the gateway answers as a
400 in OpenAI's error shape.

Input tokens are estimated before admission as one token per four characters
of text (OpenAI's rule of thumb for English). That is within about 25% on
English prose and can be off by 2x on code or other scripts; exact counts
arrive with the response's ``usage`` and replace the estimate.

>>> r = OpenAIRequest.decode(b'{"model": "llama-3-8b", "max_tokens": 900, "stream": true}')
>>> r.model, r.stream, r.token_cap()
('llama-3-8b', True, 900)
>>> capped = with_token_cap(b'{"model": "m", "max_tokens": 900, "messages": []}', 256)
>>> OpenAIRequest.decode(capped).token_cap()
256
>>> with_token_cap(b'{"model": "m", "input": "hi"}', 64, path="/v1/responses")
b'{"model":"m","input":"hi","max_output_tokens":64}'
>>> estimate_prompt_tokens({"messages": [{"role": "user", "content": "How busy is the service today?"}]})
8
>>> format_duration(0.25), format_duration(6.5), format_duration(360)
('250ms', '6.5s', '6m0s')
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

#: The largest token budget a request may name.
MAX_TOKENS_LIMIT = 10_000_000
#: The paths whose JSON body admission reads: OpenAI's inference endpoints.
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
#: The Responses API names its output budget differently.
RESPONSES_PATH = "/v1/responses"
#: Characters per token in the input estimate (see the module docstring).
CHARS_PER_TOKEN = 4

_Tokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)]


class StreamOptions(msgspec.Struct, frozen=True):
    """``stream_options``: whether the last streamed chunk carries ``usage``."""

    include_usage: bool = False


class OpenAIRequest(msgspec.Struct, frozen=True):
    """The fields of a completions, chat or embeddings request that admission reads."""

    model: str | None = None
    stream: bool = False
    max_tokens: _Tokens | None = None
    max_completion_tokens: _Tokens | None = None
    max_output_tokens: _Tokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] = 1
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None

    @classmethod
    def decode(cls, body: bytes) -> OpenAIRequest:
        """The request in ``body`` (JSON); ``ValueError`` naming the field that is wrong."""
        if not body.strip():
            return cls()
        if json_too_deep(body):
            raise ValueError(f"the request body nests its JSON deeper than {MAX_JSON_DEPTH} levels")
        try:
            return _DECODER.decode(body)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValueError(f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise ValueError("the request body nests its JSON too deep") from None

    def token_cap(self) -> int | None:
        """The output tokens the request allows itself (the smallest budget it names), or None."""
        caps = [c for c in (self.max_completion_tokens, self.max_tokens, self.max_output_tokens) if c is not None]
        return min(caps) if caps else None

    @property
    def include_usage(self) -> bool:
        """True when a streamed response ends with a ``usage`` chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


_DECODER = msgspec.json.Decoder(OpenAIRequest)
#: JSON nested deeper than this is refused: far beyond any OpenAI request's, and a bound of our own rather than the
#: interpreter's recursion limit, which differs between Python versions (3.11 stops near 1,000, 3.13 far later)
MAX_JSON_DEPTH = 100
_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects deeper than ``limit``, brackets inside strings aside.

    Bodies with no more than ``limit`` opening brackets in all (nearly every request) are answered by two byte
    counts; the rest by a scan of their brackets and quotes only.

    >>> json_too_deep(b'{"a": [[["[[[[not nesting"]]]}', limit=4), json_too_deep(b"[" * 5 + b"]" * 5, limit=4)
    (False, True)
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped_until = 0, False, -1
    for m in _STRUCTURE.finditer(body):
        i = m.start()
        if i < escaped_until:  # the byte after a backslash, inside a string
            continue
        c = body[i]
        if in_string:
            if c == 0x5C:  # backslash: the next byte is escaped
                escaped_until = i + 2
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):
            depth -= 1
    return False


def with_token_cap(body: bytes, cap: int, path: str = "") -> bytes:
    """``body`` with its output budget at most ``cap``: the fields the request used, else the path's own
    (``max_output_tokens`` for the Responses API, ``max_tokens`` otherwise)."""
    raw = msgspec.json.decode(body) if body.strip() else {}
    if not isinstance(raw, dict):
        raise ValueError("invalid request body: expected a JSON object")
    fields = [f for f in ("max_completion_tokens", "max_tokens", "max_output_tokens") if isinstance(raw.get(f), int)]
    for field in fields or ["max_output_tokens" if path.split("?")[0] == RESPONSES_PATH else "max_tokens"]:
        current = raw.get(field)
        raw[field] = min(current, cap) if isinstance(current, int) else cap
    return msgspec.json.encode(raw)


def estimate_prompt_tokens(raw: Any) -> int:
    """Input tokens of a decoded request body, estimated from its text (at least 1)."""
    if not isinstance(raw, dict):
        return 1
    chars = 0
    for field in ("messages", "prompt", "input"):
        chars += _text_chars(raw.get(field))
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def _text_chars(value: Any) -> int:
    """Characters of text in a prompt, a message list or content parts; iterative, so no nesting overflows it."""
    chars, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            chars += len(v)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):  # a chat message, or a content part
            stack.append(v.get("content"))
            stack.append(v.get("text"))
    return chars


def openai_error(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """An error body in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": param, "code": code}})


def format_duration(seconds: float) -> str:
    """A reset duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``250ms``, ``6.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"

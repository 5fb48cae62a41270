"""The request fields admission reads: the JSON depth bound holds whatever the interpreter's recursion limit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgegate.llm.openai_wire import MAX_JSON_DEPTH, OpenAIRequest, estimate_prompt_tokens, json_too_deep

TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{} '), max_size=6)
JSON = st.recursive(st.none() | st.integers() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=40)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(JSON, st.integers(min_value=0, max_value=8))
def test_the_depth_bound_counts_brackets_outside_strings_only(value, limit):
    body = json.dumps(value).encode()
    assert json_too_deep(body, limit) == (depth(value) > limit)


@pytest.mark.parametrize("n", [MAX_JSON_DEPTH + 1, 1000, 20_000])
def test_a_body_nested_past_the_bound_is_refused_on_every_python(n):
    body = b'{"model": "m", "messages": ' + b"[" * n + b"]" * n + b"}"
    with pytest.raises(ValueError, match="deeper than"):
        OpenAIRequest.decode(body)
    inner = MAX_JSON_DEPTH - 1  # the enclosing object is a level too
    ok = b'{"model": "m", "messages": ' + b"[" * inner + b"]" * inner + b"}"
    assert OpenAIRequest.decode(ok).model == "m"


def test_the_prompt_estimate_walks_any_nesting_without_recursion():
    nested: object = [{"role": "user", "content": "abcd" * 10}]
    for _ in range(5000):
        nested = [nested]
    assert estimate_prompt_tokens({"messages": nested}) == 10

"""epp.cache.key: what the exact key ignores, what it never confuses, the semantic partition and text."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.cache.key import IGNORED_FIELDS, exact_key, model_digest, semantic_parts, tenant_of

T = "tenant-a"


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **params}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def key(body: dict[str, Any], tenant: str = T, namespace: str = "") -> str:
    return exact_key("chat", tenant, namespace, body)


def test_tenant_is_a_domain_separated_digest_of_the_whole_credential() -> None:
    bearer = tenant_of({"authorization": "Bearer sk-1"})
    assert bearer == hashlib.sha256(b"epp-cache-tenant\0Bearer sk-1").hexdigest()
    assert "sk-1" not in bearer
    assert tenant_of({"authorization": "Bearer sk-2"}) != bearer
    assert tenant_of({"api-key": "Bearer sk-1"}) == bearer  # same credential, same tenant
    assert tenant_of({"authorization": "Bearer sk-1", "x-api-key": "other"}) == bearer  # precedence
    assert tenant_of({"api-key": "k", "x-api-key": "other"}) == tenant_of({"api-key": "k"})
    assert tenant_of({"x-api-key": "k"}) == tenant_of({"api-key": "k"})
    assert tenant_of({}) == "anonymous"
    assert tenant_of({"authorization": ""}) == "anonymous"


def test_model_digest_is_short_and_per_model() -> None:
    assert len(model_digest("m")) == 16
    assert model_digest("m") != model_digest("m2")


def test_delivery_and_bookkeeping_fields_do_not_change_the_key() -> None:
    base = chat(user("hi"), temperature=0)
    for extra in (
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "u-1"},
        {"metadata": {"a": "b"}},
        {"store": True},
        {"cache": {"ttl": 5}},
        {"service_tier": "auto"},
        {"top_p": None},  # null is the default
    ):
        assert key({**base, **extra}) == key(base), extra
    assert {"stream", "stream_options", "user", "metadata", "store", "cache"} <= IGNORED_FIELDS


def test_equivalent_spellings_share_a_key() -> None:
    base = chat(user("hi"), temperature=0, max_tokens=10)
    assert key(chat(user("hi"), temperature=0.0, max_tokens=10.0)) == key(base)
    assert key({"max_tokens": 10, "temperature": 0, "messages": [user("hi")], "model": "m"}) == key(base)
    parts = [{"type": "text", "text": "hi"}]
    assert key(chat(user(parts), temperature=0, max_tokens=10)) == key(base)
    two = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert key(chat(user(two))) == key(chat(user("a\nb")))
    assert key(chat({"role": "user", "content": "hi", "name": None})) == key(chat(user("hi")))
    calls = {"role": "assistant", "content": "x", "tool_calls": []}
    assert key(chat(user("q"), calls, user("hi"))) == key(
        chat(user("q"), {"role": "assistant", "content": "x"}, user("hi"))
    )


def test_everything_that_changes_the_answer_changes_the_key() -> None:
    brief = {"role": "system", "content": "Be brief."}

    def with_brief(last: dict[str, Any] | None = None, **p: Any) -> dict[str, Any]:
        return chat(brief, last or user("Hi"), **{"temperature": 0, **p})

    base = with_brief()
    variants = [
        with_brief(user("hi")),  # case kept
        chat({"role": "system", "content": "Be brief. "}, user("Hi"), temperature=0),  # whitespace kept
        chat({"role": "system", "content": "Be long."}, user("Hi"), temperature=0),
        chat({"role": "developer", "content": "Be brief."}, user("Hi"), temperature=0),
        with_brief(temperature=0.5),
        with_brief(max_tokens=5),
        with_brief(seed=1),
        with_brief(response_format={"type": "json_object"}),
        with_brief(tools=[{"type": "function", "function": {"name": "f"}}]),
        with_brief({"role": "user", "content": "Hi", "name": "bob"}),
        chat(user("Hi"), temperature=0),
        {**base, "model": "m2"},
        {**base, "logprobs": True},
        {**base, "temperature": True},  # a boolean is not the number 1
    ]
    keys = {key(v) for v in variants}
    assert key(base) not in keys
    assert len(keys) == len(variants)
    assert key(base, tenant="tenant-b") != key(base)
    assert key(base, namespace="ns") != key(base)
    assert exact_key("completion", T, "", base) != key(base)
    assert key(chat(user("é"))) != key(chat(user("e\u0301")))  # unicode kept exactly


def test_tool_calls_and_tool_results_count() -> None:
    def convo(arguments: str, call_id: str = "c1", result: str = "sunny") -> dict[str, Any]:
        call = {"id": call_id, "type": "function", "function": {"name": "weather", "arguments": arguments}}
        return chat(
            user("Weather?"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": result},
        )

    base = convo('{"city":"Paris"}')
    assert key(convo('{"city":"Paris"}')) == key(base)
    assert key(convo('{"city":"Rome"}')) != key(base)
    assert key(convo('{"city":"Paris"}', result="rain")) != key(base)
    assert key(convo('{"city":"Paris"}', call_id="c2")) != key(base)


def test_big_numbers_do_not_break_the_key() -> None:
    assert key(chat(user("x"), seed=2**70)) == key(chat(user("x"), seed=float(2**70)))
    assert key(chat(user("x"), seed=2**62)) != key(chat(user("x"), seed=2**62 + 1))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
param_names = ["temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "logit_bias", "x"]
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), json_scalars, max_size=3),
)
params = st.dictionaries(st.sampled_from(param_names), json_values, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    params, st.text(max_size=30), st.randoms(use_true_random=False), st.sampled_from(sorted(IGNORED_FIELDS))
)
def test_key_ignores_order_and_ignored_fields(p: dict[str, Any], text: str, rnd: Any, ignored: str) -> None:
    body = chat(user(text), **p)
    items = list(body.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    shuffled[ignored] = {"anything": 1}
    floats = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in body.items()}
    assert key(shuffled) == key(body) == key(floats)


@settings(max_examples=200, deadline=None)
@given(params, st.text(max_size=20), st.text(max_size=20))
def test_key_tells_different_texts_apart(p: dict[str, Any], a: str, b: str) -> None:
    assert (key(chat(user(a), **p)) == key(chat(user(b), **p))) == (a == b)


def test_semantic_text_is_the_last_user_turn_and_the_partition_the_rest() -> None:
    sys = {"role": "system", "content": "You are   helpful.\n"}
    partition, text = semantic_parts("chat", T, "", chat(sys, user("  What is Redis? ")))  # type: ignore[misc]
    assert text == "What is Redis?"
    again = semantic_parts(
        "chat", T, "", chat({"role": "system", "content": "You are helpful."}, user("Other?"))
    )
    assert again is not None and again[0] == partition  # whitespace in the context collapsed
    for other in (
        chat({"role": "system", "content": "You are Helpful."}, user("What is Redis?")),  # case kept
        chat(user("What is Redis?")),  # no system prompt
        chat(sys, user("What is Redis?"), temperature=0.0, max_tokens=3),
        chat(sys, user("Hi"), {"role": "assistant", "content": "Hello"}, user("What is Redis?")),
        {**chat(sys, user("What is Redis?")), "model": "m2"},
    ):
        parts = semantic_parts("chat", T, "", other)
        assert parts is not None and parts[0] != partition
    assert semantic_parts("chat", "tenant-b", "", chat(sys, user("x")))[0] != partition  # type: ignore[index]
    assert semantic_parts("chat", T, "ns", chat(sys, user("x")))[0] != partition  # type: ignore[index]
    # A delivery field never splits a partition.
    assert semantic_parts("chat", T, "", {**chat(sys, user("x")), "stream": True})[0] == partition  # type: ignore[index]


def test_semantic_parts_need_one_text_turn() -> None:
    assert semantic_parts("chat", T, "", chat(user("a"), {"role": "assistant", "content": "b"})) is None
    image = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert semantic_parts("chat", T, "", chat(user(image))) is None
    assert semantic_parts("chat", T, "", chat(user([{"type": "text", "text": "hi"}]))) == semantic_parts(
        "chat", T, "", chat(user("hi"))
    )
    assert semantic_parts("chat", T, "", chat(user("   "))) is None
    assert semantic_parts("chat", T, "", {"model": "m", "messages": []}) is None
    completion = semantic_parts("completion", T, "", {"model": "m", "prompt": "Say hi"})
    assert completion is not None and completion[1] == "Say hi"
    assert semantic_parts("completion", T, "", {"model": "m", "prompt": ["a", "b"]}) is None
    assert semantic_parts("completion", T, "", {"model": "m", "prompt": [1, 2]}) is None

"""epp.cache.policy: which requests become cache queries, the client's directives, the `cache` object."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from epp.cache.key import exact_key, tenant_of
from epp.cache.policy import (
    Bypass,
    CachePolicy,
    cache_control,
    decide,
    include_usage,
    is_sampled,
    strip_cache_field,
)
from epp.cache.types import CacheQuery
from epp.request import RequestError

CHAT = "/v1/chat/completions"
POLICY = CachePolicy()


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def query(
    path: str = CHAT, headers: dict[str, str] | None = None, policy: CachePolicy = POLICY, **extra: Any
) -> CacheQuery:
    decision = decide(path, headers or {}, body(**extra), policy)
    assert isinstance(decision, CacheQuery), decision
    return decision


def reason(
    path: str = CHAT, headers: dict[str, str] | None = None, policy: CachePolicy = POLICY, **extra: Any
) -> str:
    decision = decide(path, headers or {}, body(**extra), policy)
    assert isinstance(decision, Bypass), decision
    return decision.reason


def test_a_plain_request_is_a_query() -> None:
    q = query(headers={"authorization": "Bearer k"})
    assert (q.kind, q.model, q.namespace, q.text) == ("chat", "m", "", "hi")
    assert q.tenant == tenant_of({"authorization": "Bearer k"})
    assert q.key == exact_key("chat", q.tenant, "", body())
    assert q.lookup and q.store and not q.semantic
    assert q.ttl_s is None and q.max_age_s is None
    completion = decide("/v1/completions?x=1", {}, {"model": "m", "prompt": "p"}, POLICY)
    assert isinstance(completion, CacheQuery) and completion.kind == "completion" and completion.text == "p"


def test_what_is_never_cached() -> None:
    assert reason("/v1/embeddings") == "unsupported-path"
    assert reason(n=2) == "n>1"
    assert reason(n="2") == "n>1"
    assert reason(best_of=3) == "n>1"
    assert isinstance(decide(CHAT, {}, body(n=1, best_of=1.0), POLICY), CacheQuery)
    assert decide(CHAT, {}, {"messages": []}, POLICY) == Bypass("no-model")
    assert decide(CHAT, {}, [], POLICY) == Bypass("not-json")  # type: ignore[arg-type]


def test_sampling_is_only_what_the_request_asks_for() -> None:
    assert not is_sampled({})  # the server's default: cacheable (as the mesh plugin caches)
    assert not is_sampled({"temperature": 0})
    assert not is_sampled({"temperature": 0, "top_p": 0.5})  # greedy whatever top_p says
    assert is_sampled({"temperature": 0.7})
    assert is_sampled({"top_p": 0.9})
    assert not is_sampled({"top_p": 1})
    assert not is_sampled({"temperature": 0.7, "seed": 42})
    assert is_sampled({"temperature": "hot"})  # not a number: never trusted
    assert reason(temperature=0.7) == "sampled"
    assert query(temperature=0.7, policy=CachePolicy(cache_sampled=True)).lookup


def test_cache_control_header() -> None:
    assert reason(headers={"cache-control": "no-store"}) == "no-store"
    assert reason(headers={"cache-control": "No-Cache, NO-STORE"}) == "no-store"
    q = query(headers={"cache-control": "no-cache"})
    assert not q.lookup and q.store
    assert query(headers={"cache-control": "max-age=30"}).max_age_s == 30
    assert query(headers={"cache-control": 'max-age="0"'}).max_age_s == 0
    assert (
        query(headers={"cache-control": "max-age=-1, private, x=y"}).max_age_s is None
    )  # malformed: ignored
    assert cache_control("").lookup


def test_the_cache_body_object() -> None:
    q = query(cache={"ttl": 5, "namespace": "team-a", "no_cache": True})
    assert (q.ttl_s, q.namespace, q.lookup) == (5.0, "team-a", False)
    assert q.key == exact_key("chat", "anonymous", "team-a", body())
    assert q.key != query().key  # a namespace is its own scope
    assert reason(cache={"no_store": True}) == "no-store"
    assert query(cache=None).lookup
    assert query(policy=CachePolicy(namespace="default-ns")).namespace == "default-ns"
    assert query(cache={"namespace": ""}, policy=CachePolicy(namespace="d")).namespace == ""


@pytest.mark.parametrize(
    "bad",
    [
        "yes",
        [],
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": "10"},
        {"ttl": True},
        {"ttl": 1e12},
        {"no_cache": "true"},
        {"no_store": 1},
        {"namespace": 3},
        {"namespace": "x" * 300},
        {"nocache": True},
    ],
)
def test_a_bad_cache_object_is_a_400(bad: Any) -> None:
    with pytest.raises(RequestError) as err:
        decide(CHAT, {}, body(cache=bad), POLICY)
    assert err.value.status == 400 and err.value.param == "cache"


def test_semantic_is_opt_in_per_model() -> None:
    assert not query().semantic
    globs = CachePolicy(semantic_models=("llama-*", "m"))
    assert query(policy=globs).semantic
    assert query(policy=CachePolicy(semantic_models=lambda model: model == "m")).semantic
    assert not query(policy=CachePolicy(semantic_models=("other",))).semantic
    # No single text turn to embed: exact only.
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    decision = decide(CHAT, {}, {"model": "m", "messages": [{"role": "user", "content": image}]}, globs)
    assert isinstance(decision, CacheQuery) and not decision.semantic and decision.text == ""


def test_strip_cache_field() -> None:
    assert strip_cache_field(orjson.dumps(body())) is None
    stripped = strip_cache_field(orjson.dumps(body(cache={"ttl": 5})))
    assert stripped is not None and orjson.loads(stripped) == body()
    assert (
        strip_cache_field(b'{"model": "m", "messages": [{"role": "user", "content": "\\"cache\\""}]}') is None
    )
    assert strip_cache_field(b'not json "cache"') is None
    assert strip_cache_field(b'["cache"]') is None


def test_include_usage() -> None:
    assert include_usage({"stream": True, "stream_options": {"include_usage": True}})
    assert not include_usage({"stream": True})
    assert not include_usage({"stream_options": {"include_usage": "yes"}})

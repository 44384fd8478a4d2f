"""Parsing OpenAI bodies into LLMRequest: prompt flattening, model resolution, 400/404 errors."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from epp.request import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    RequestError,
    completion_prompt,
    flatten_messages,
    parse_request,
)
from epp.scheduling.types import Criticality

FIXTURES = Path(__file__).parent / "fixtures" / "seed-configs"  # copied from shared/fixtures


@dataclass
class ModelSpec:
    criticality: Criticality | str | None = Criticality.STANDARD
    target_models: list[str] = field(default_factory=list)


class DictResolver:
    """A small real ModelResolver: InferenceModels by name, uniform choice among targets."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self.specs = specs

    def lookup(self, model_name: str) -> ModelSpec | None:
        return self.specs.get(model_name)

    def choose_target(self, model_name: str, rng: random.Random) -> str:
        targets = self.specs[model_name].target_models
        return rng.choice(targets) if targets else model_name


def chat_body(messages: list[dict[str, Any]], model: str = "m") -> bytes:
    return orjson.dumps({"model": model, "messages": messages})


def parse(body: bytes, path: str = CHAT_PATH, resolver: DictResolver | None = None, **kw: Any):
    return parse_request(body, kw.pop("headers", {}), path, resolver, random.Random(0), **kw)


def test_chat_flattening_exact_form() -> None:
    text = flatten_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert text == "<|system|>\nbe brief\n<|user|>\nhi\n"


def test_round_two_starts_with_round_one() -> None:
    r1 = [{"role": "user", "content": "play zork"}]
    r2 = [*r1, {"role": "assistant", "content": "ready"}, {"role": "user", "content": "open mailbox"}]
    p1 = parse(chat_body(r1)).request.prompt
    p2 = parse(chat_body(r2)).request.prompt
    assert p2.startswith(p1) and len(p2) > len(p1)


def test_seed_fixture_rounds_share_prefix() -> None:
    round1, round2 = FIXTURES / "prefix-round1.json", FIXTURES / "prefix-round2.json"
    p1 = parse(round1.read_bytes()).request.prompt
    p2 = parse(round2.read_bytes()).request.prompt
    assert p1.startswith("<|user|>\nHi, here's some system prompt")
    assert p2.startswith(p1) and len(p2) > len(p1)


def test_content_parts_text_joined_and_other_parts_distinct() -> None:
    def msg(url: str) -> list[dict[str, Any]]:
        parts = [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "here"},
        ]
        return [{"role": "user", "content": parts}]

    a = flatten_messages(msg("http://x/1.png"))
    assert a.startswith("<|user|>\nlook\n") and a.endswith("\nhere\n")
    assert a != flatten_messages(msg("http://x/2.png"))
    assert flatten_messages([{"role": "assistant", "content": None}]) == "<|assistant|>\n\n"


def test_completions_prompt_forms() -> None:
    assert completion_prompt("abc") == "abc"
    assert completion_prompt(["a", "b"]) == "a\nb"
    assert completion_prompt([1, 2, 3]) == "1 2 3"
    assert completion_prompt([[1, 2], [3]]) == "1 2\n3"
    req = parse(orjson.dumps({"model": "m", "prompt": ["x", "y"]}), COMPLETIONS_PATH).request
    assert req.prompt == "x\ny"


def test_path_with_query_and_unknown_path_infers_from_body() -> None:
    body = orjson.dumps({"model": "m", "prompt": "p"})
    assert parse(body, COMPLETIONS_PATH + "?x=1").request.prompt == "p"
    assert parse(body, "/other").request.prompt == "p"
    chat = chat_body([{"role": "user", "content": "q"}])
    assert parse(chat, "/other").request.prompt == "<|user|>\nq\n"


@pytest.mark.parametrize(
    ("body", "path", "param"),
    [
        (b"{not json", CHAT_PATH, None),
        (b"[1, 2]", CHAT_PATH, None),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), CHAT_PATH, "model"),
        (orjson.dumps({"model": 3, "prompt": "x"}), COMPLETIONS_PATH, "model"),
        (orjson.dumps({"model": "m"}), CHAT_PATH, "messages"),
        (orjson.dumps({"model": "m", "messages": []}), CHAT_PATH, "messages"),
        (orjson.dumps({"model": "m", "messages": "hi"}), CHAT_PATH, "messages"),
        (orjson.dumps({"model": "m", "messages": ["hi"]}), CHAT_PATH, "messages"),
        (orjson.dumps({"model": "m", "messages": [{"content": "x"}]}), CHAT_PATH, "messages"),
        (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}), CHAT_PATH, "messages"),
        (
            orjson.dumps({"model": "m", "messages": [{"role": "u", "content": [{"type": "text"}]}]}),
            CHAT_PATH,
            "messages",
        ),
        (orjson.dumps({"model": "m"}), COMPLETIONS_PATH, "prompt"),
        (orjson.dumps({"model": "m", "prompt": []}), COMPLETIONS_PATH, "prompt"),
        (orjson.dumps({"model": "m", "prompt": [1, "a"]}), COMPLETIONS_PATH, "prompt"),
        (orjson.dumps({"model": "m", "prompt": [True]}), COMPLETIONS_PATH, "prompt"),
        (orjson.dumps({"model": "m"}), "/other", "messages"),
    ],
)
def test_bad_requests_are_400_naming_the_param(body: bytes, path: str, param: str | None) -> None:
    with pytest.raises(RequestError) as info:
        parse(body, path)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.message


def test_passthrough_without_inference_models() -> None:
    parsed = parse(chat_body([{"role": "user", "content": "x"}], model="base"))
    req = parsed.request
    assert (req.model, req.target_model, req.lora_adapter) == ("base", "base", None)
    assert req.criticality is Criticality.STANDARD
    assert parsed.rewritten_body is None


def test_rewrite_to_adapter_produces_new_body_and_criticality() -> None:
    resolver = DictResolver({"food": ModelSpec(Criticality.SHEDDABLE, ["food-lora-v2"])})
    raw = {"model": "food", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    parsed = parse(orjson.dumps(raw), resolver=resolver, known_adapters={"food-lora-v2"})
    req = parsed.request
    assert (req.model, req.target_model, req.lora_adapter) == ("food", "food-lora-v2", "food-lora-v2")
    # The same rewrite to a name no pod lists as an adapter is a base model: not LoRA-routed.
    assert parse(orjson.dumps(raw), resolver=resolver).request.lora_adapter is None
    assert req.criticality is Criticality.SHEDDABLE
    assert parsed.rewritten_body is not None
    assert orjson.loads(parsed.rewritten_body) == {**raw, "model": "food-lora-v2"}


def test_criticality_given_as_string_or_absent() -> None:
    resolver = DictResolver({"a": ModelSpec("Critical"), "b": ModelSpec(None)})
    body_a, body_b = (
        chat_body([{"role": "u", "content": "x"}], "a"),
        chat_body([{"role": "u", "content": "x"}], "b"),
    )
    assert parse(body_a, resolver=resolver).request.criticality is Criticality.CRITICAL
    assert parse(body_b, resolver=resolver).request.criticality is Criticality.STANDARD


def test_unknown_model_with_inference_models_is_404() -> None:
    resolver = DictResolver({"known": ModelSpec()})
    with pytest.raises(RequestError) as info:
        parse(chat_body([{"role": "user", "content": "x"}], model="nope"), resolver=resolver)
    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert err.message == "The model `nope` does not exist."


def test_known_adapter_without_rewrite_sets_lora() -> None:
    body = chat_body([{"role": "user", "content": "x"}], model="sql-lora")
    assert parse(body, known_adapters={"sql-lora"}).request.lora_adapter == "sql-lora"
    assert parse(body, known_adapters={"other"}).request.lora_adapter is None


def test_request_id_and_secret_headers() -> None:
    body = chat_body([{"role": "user", "content": "x"}])
    headers = {"x-request-id": "abc", "authorization": "Bearer sk-secret", "x-api-key": "k", "x-user": "u"}
    req = parse(body, headers=headers).request
    assert req.request_id == "abc"
    assert req.headers == {"x-request-id": "abc", "x-user": "u"}
    a, b = parse(body).request.request_id, parse(body).request.request_id
    assert a and b and a != b


def test_real_model_registry_resolves_and_empty_one_passes_through() -> None:
    from epp.config.gie import InferenceModel
    from epp.config.model_registry import ModelRegistry

    food = InferenceModel.model_validate(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "metadata": {"name": "food"},
            "spec": {
                "modelName": "food",
                "criticality": "Critical",
                "poolRef": {"name": "pool"},
                "targetModels": [{"name": "food-lora", "weight": 100}],
            },
        }
    )
    body = chat_body([{"role": "user", "content": "x"}], model="food")
    req = parse_request(body, {}, CHAT_PATH, ModelRegistry([food]), random.Random(0), {"food-lora"}).request
    assert (req.target_model, req.lora_adapter, req.criticality) == (
        "food-lora",
        "food-lora",
        Criticality.CRITICAL,
    )
    with pytest.raises(RequestError):
        parse_request(
            chat_body([{"role": "u", "content": "x"}], "x"),
            {},
            CHAT_PATH,
            ModelRegistry([food]),
            random.Random(0),
        )
    req = parse_request(body, {}, CHAT_PATH, ModelRegistry(), random.Random(0)).request
    assert (req.target_model, req.lora_adapter) == ("food", None)


def test_cache_salt_is_kept_for_prefix_matching() -> None:
    messages = [{"role": "user", "content": "hi"}]
    salted = orjson.dumps({"model": "m", "messages": messages, "cache_salt": "tenant-7"})
    assert parse(salted).request.cache_salt == "tenant-7"
    assert parse(chat_body(messages)).request.cache_salt is None
    null = orjson.dumps({"model": "m", "messages": messages, "cache_salt": None})
    assert parse(null).request.cache_salt is None
    completion = orjson.dumps({"model": "m", "prompt": "p", "cache_salt": "s"})
    assert parse(completion, COMPLETIONS_PATH).request.cache_salt == "s"


@pytest.mark.parametrize("salt", ["", 7, ["s"], {"s": 1}, True])
def test_bad_cache_salt_is_400(salt: object) -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "cache_salt": salt})
    with pytest.raises(RequestError) as err:
        parse(body)
    assert (err.value.status, err.value.param) == (400, "cache_salt")

"""Request -> token ids as the pod computes them: the simulator's tokenizer, local model files, /tokenize."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from bench.sim.fleet import SimFleet
from bench.sim.pod import SimPod
from bench.sim.profiles import get_profile
from bench.sim.protocol import parse_chat, parse_completion
from epp.tokenization.base import PromptInput, prompt_input
from epp.tokenization.hf_local import HFLocalTokenizer, TokenizerFilesError
from epp.tokenization.simulated import SimulatorTokenizer
from epp.tokenization.simulated import Tokenizer as SimTokenizer
from epp.tokenization.vllm_http import VLLMHttpTokenizer

TINY_LLAMA = Path(__file__).parent / "fixtures" / "vllm" / "tiny-llama-tokenizer"  # the real tier installs it

CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name two "}, {"type": "text", "text": "colours."}],
        },
        {"role": "assistant", "content": "Red, blue."},
        {"role": "user", "content": "Two more?"},
    ],
}
COMPLETION = {"model": "m", "prompt": "The quick brown fox jumps over the lazy dog, 1234 times."}
IDS = {"model": "m", "prompt": [5, 6, 7, 8, 9]}


def test_prompt_shapes():
    assert prompt_input(COMPLETION) == PromptInput(text=COMPLETION["prompt"])
    assert prompt_input({"prompt": ["one"]}) == PromptInput(text="one")
    assert prompt_input({"prompt": [[1, 2]]}) == PromptInput(token_ids=(1, 2))
    assert prompt_input(CHAT) == PromptInput(messages=tuple(CHAT["messages"]))
    bad: list[dict[str, Any]] = [{"prompt": ["a", "b"]}, {"prompt": []}, {"prompt": 3}, {"messages": []}]
    for body in [*bad, {"messages": [{}]}, {}]:
        assert prompt_input(body) is None


@pytest.mark.parametrize("profile", ["tiny", "cpu-tiny"])
def test_simulator_tokenizer_gives_the_pods_own_ids(profile):
    sim = dataclasses.replace(get_profile(profile), bos_token_id=1)
    pod = SimPod(sim, tokenizer=SimTokenizer(sim.vocab_size or 151_936))
    picker = SimulatorTokenizer(SimTokenizer(sim.vocab_size or 151_936), bos_token_id=1)
    for body, parse in ((COMPLETION, parse_completion), (IDS, parse_completion), (CHAT, parse_chat)):
        raw = orjson.dumps({**body, "model": sim.model, "max_tokens": 1})
        served = pod.submit(parse(raw)).request.prompt_ids
        assert picker.tokenize(body) == served
        assert served[0] == (5 if body is IDS else 1)  # BOS before text and chat prompts only
    assert picker.tokenize({"prompt": [10**9]}) is None  # out of the vocabulary: the pod refuses it
    assert picker.tokenize({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}) is None


async def test_vllm_http_tokenizer_against_the_simulators_tokenize_endpoint():
    async with SimFleet(pods=1, profile="cpu-tiny", lora_modules=("ad",)) as fleet:
        pod = fleet.pods[0]
        local = SimulatorTokenizer(pod.tokenizer, pod.profile.bos_token_id)
        remote = VLLMHttpTokenizer(fleet.urls[0], model=pod.model_name, timeout_s=10.0)
        try:
            for body in (COMPLETION, CHAT, IDS):
                ids = await remote.tokenize({**body, "model": "tiny-llama"})
                assert ids is not None and ids == local.tokenize(body)
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{fleet.urls[0]}/tokenize", json={"model": "ad", "prompt": "hi there"})
                assert r.status_code == 200
                answer = r.json()
                assert answer["count"] == len(answer["tokens"]) and answer["max_model_len"] == 512
                r = await client.post(f"{fleet.urls[0]}/tokenize", json={"model": "nope", "prompt": "x"})
                assert r.status_code == 404 and "error" in r.json()
                r = await client.post(f"{fleet.urls[0]}/tokenize", json={"prompt": 3})
                assert r.status_code == 400
            assert await remote.tokenize({**COMPLETION, "model": "nope"}) is None  # a 404 gives no ids
        finally:
            await remote.aclose()
        url = fleet.urls[0]
    gone = VLLMHttpTokenizer(url, timeout_s=2.0)
    assert await gone.tokenize(COMPLETION) is None  # the pod is down: no ids, no exception
    await gone.aclose()


def test_hf_local_renders_the_chat_template_and_tokenizes_like_vllm():
    tok = HFLocalTokenizer(TINY_LLAMA)
    raw = Tokenizer.from_file(str(TINY_LLAMA / "tokenizer.json"))
    text = tok.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<|user|> hi <|assistant|> "  # add_generation_prompt, as vLLM renders
    rendered = (
        "<|system|> You are terse. <|user|> Name two \ncolours. <|assistant|> Red, blue. <|user|> Two more? "
        "<|assistant|> "
    )
    ids = tok.tokenize(CHAT)
    assert ids == raw.encode(rendered, add_special_tokens=False).ids
    assert ids[0] == raw.token_to_id("<|system|>")  # the template's special tokens are single tokens
    assert tok.tokenize(COMPLETION) == raw.encode(COMPLETION["prompt"]).ids
    assert tok.tokenize(IDS) == [5, 6, 7, 8, 9]
    assert tok.tokenize({"prompt": [5000]}) is None  # beyond the 1,024-token vocabulary
    # vLLM's request options.
    short = {"messages": [{"role": "user", "content": "hi"}]}
    assert tok.tokenize({**short, "add_generation_prompt": False}) == raw.encode("<|user|> hi ").ids
    assert tok.tokenize({**short, "continue_final_message": True}) is None
    assert tok.tokenize({**COMPLETION, "add_special_tokens": False}) == raw.encode(COMPLETION["prompt"]).ids
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert tok.tokenize(image) is None


def _write_bos_model(root: Path, template_in_config: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(["hello world", "the quick brown fox", "user assistant"] * 10, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(root / "tokenizer.json"))
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    template += "{% if add_generation_prompt %}assistant:{% endif %}"
    config: dict[str, Any] = {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    if template_in_config:
        config["chat_template"] = template
    else:
        (root / "chat_template.jinja").write_text(template)
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


@pytest.mark.parametrize("template_in_config", [True, False])
def test_hf_local_bos_comes_from_the_post_processor_or_the_template_never_both(tmp_path, template_in_config):
    raw = _write_bos_model(tmp_path, template_in_config)
    tok = HFLocalTokenizer(tmp_path)
    bos = raw.token_to_id("<s>")
    completion = tok.tokenize({"prompt": "hello world"})
    assert completion is not None and completion[0] == bos and completion[1] != bos
    chat = tok.tokenize({"messages": [{"role": "user", "content": "hello"}]})
    assert chat is not None and chat[0] == bos and chat.count(bos) == 1
    assert chat == raw.encode("<s>user: hello\nassistant:", add_special_tokens=False).ids
    plain = tok.tokenize({"prompt": "hello world", "add_special_tokens": False})
    assert plain is not None and bos not in plain
    kwargs = {"messages": [{"role": "user", "content": "hello"}], "chat_template_kwargs": {"bos_token": ""}}
    assert tok.tokenize(kwargs) == raw.encode("user: hello\nassistant:", add_special_tokens=False).ids


def test_hf_local_without_a_template_still_tokenizes_text(tmp_path):
    shutil.copy(TINY_LLAMA / "tokenizer.json", tmp_path / "tokenizer.json")
    tok = HFLocalTokenizer(tmp_path)
    assert not tok.has_chat_template
    assert tok.tokenize(CHAT) is None and tok.tokenize(COMPLETION)


def test_hf_local_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerFilesError, match=r"tokenizer\.json"):
        HFLocalTokenizer(tmp_path)
    shutil.copy(TINY_LLAMA / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(TokenizerFilesError, match=r"chat_template\.jinja"):
        HFLocalTokenizer(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerFilesError, match=r"tokenizer_config\.json"):
        HFLocalTokenizer(tmp_path)


def test_a_template_that_refuses_a_conversation_gives_no_ids(tmp_path):
    shutil.copy(TINY_LLAMA / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ messages[0].content }}"
    )
    tok = HFLocalTokenizer(tmp_path)
    assert tok.tokenize({"messages": [{"role": "user", "content": "hi"}]})
    assert tok.tokenize({"messages": [{"role": "system", "content": "hi"}]}) is None


async def test_the_cost_bench_runs_every_tokenizer(capsys):
    from bench import tokenize_cost

    args = argparse.Namespace(runs=2, words=40, model_dir=TINY_LLAMA, url=None, model="m")
    await tokenize_cost.main_async(args)
    out = capsys.readouterr().out
    for name in ("simulator", "hf-local", "vllm-http", "block keys", "match, 64"):
        assert out.count(name) == 2, out  # chat and completion

"""The tokenizer protocol and the prompt shapes of OpenAI completion and chat bodies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PromptInput:
    """What a body asks the pod to run: chat messages, a text prompt or token ids (exactly one is set)."""

    messages: tuple[Mapping[str, Any], ...] | None = None
    text: str | None = None
    token_ids: tuple[int, ...] | None = None


def prompt_input(body: Mapping[str, Any]) -> PromptInput | None:
    """The prompt of a chat (`messages`) or completions (`prompt`) body; None for anything else.

    As vLLM reads them: a one-element prompt list is its element; a list of token ids is ids. Batches of
    several prompts (one request, several sequences) have no single prefix and give None.
    """
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            return None
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return None
        return PromptInput(messages=tuple(messages))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return PromptInput(text=prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return PromptInput(token_ids=tuple(prompt))
    return None


class PromptTokenizer(Protocol):
    """Token ids of a request's prompt exactly as the pod computes them, or None when it cannot tell."""

    def tokenize(self, body: Mapping[str, Any]) -> list[int] | None: ...


class AsyncPromptTokenizer(Protocol):
    """The same, for tokenizers that ask someone else (a pod's /tokenize)."""

    async def tokenize(self, body: Mapping[str, Any]) -> list[int] | None: ...

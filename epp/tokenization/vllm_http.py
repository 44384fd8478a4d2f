"""A pod's own `POST /tokenize` (vLLM's endpoint): exact ids whatever the model, at a network round trip each.

Request shapes as vLLM serves them: `{"model", "prompt"}` (special tokens added, like a completion) or
`{"model", "messages", "add_generation_prompt": true}` (like a chat completion). The answer is
`{"count", "max_model_len", "tokens", "token_strs"}`. A token-id prompt needs no call. Any failure (pod down,
4xx, timeout, malformed answer) gives None: the caller falls back rather than waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from epp.tokenization.base import prompt_input

DEFAULT_TIMEOUT_S = 0.5


class VLLMHttpTokenizer:
    """Asks `base_url`'s /tokenize; one shared httpx client (keep-alive), closed with `aclose`."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._own = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)

    async def tokenize(self, body: Mapping[str, Any]) -> list[int] | None:
        prompt = prompt_input(body)
        if prompt is None:
            return None
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        model = body.get("model", self.model)
        ask: dict[str, Any] = {"model": model} if isinstance(model, str) else {}
        if prompt.text is not None:
            ask["prompt"] = prompt.text
        else:
            ask["messages"] = list(prompt.messages or ())
            ask["add_generation_prompt"] = True
        try:
            resp = await self._client.post(f"{self.base_url}/tokenize", json=ask)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        try:
            tokens = resp.json().get("tokens")
        except (ValueError, AttributeError):
            return None
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            return None
        return tokens

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

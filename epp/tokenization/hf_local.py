"""A model's own tokenizer (`tokenizer.json`) and chat template, from local files only, as vLLM applies them.

vLLM renders a chat with the model's template (`add_generation_prompt=True`, the message contents flattened to
strings, text parts joined by newlines) and tokenizes the result without adding special tokens (the template
writes them); a text prompt is tokenized with special tokens (the tokenizer's post-processor adds BOS where
the model wants one). The template is read from `chat_template.jinja`, else `tokenizer_config.json`'s
`chat_template`, and run in a sandboxed jinja2 environment with transformers' settings (trim_blocks,
lstrip_blocks, `raise_exception`, `strftime_now`). Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer

from epp.tokenization.base import prompt_input


class TokenizerFilesError(ValueError):
    """The model directory lacks a usable tokenizer; the message names the file and why."""


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken-like map."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _flat_content(content: Any) -> str | None:
    """A message content as vLLM's "string" content format passes it: text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            return None  # images, audio...: ids the picker cannot reproduce
        return "\n".join(str(t) for t in texts)
    return None


class HFLocalTokenizer:
    """Prompt ids from a model directory's tokenizer.json (+ chat template)."""

    def __init__(self, model_dir: str | Path) -> None:
        root = Path(model_dir)
        path = root / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception for missing or malformed files
            raise TokenizerFilesError(f"{path}: cannot load a tokenizer: {exc}") from None
        config: dict[str, Any] = {}
        config_path = root / "tokenizer_config.json"
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TokenizerFilesError(f"{config_path}: not valid JSON: {exc}") from None
            if not isinstance(loaded, dict):
                raise TokenizerFilesError(f"{config_path}: must hold a JSON object")
            config = loaded
        template_path = root / "chat_template.jinja"
        source = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
        if source is None and isinstance(config.get("chat_template"), str):
            source = config["chat_template"]
        self._template: jinja2.Template | None = None
        if source is not None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = _strftime_now
            try:
                self._template = env.from_string(source)
            except jinja2.exceptions.TemplateError as exc:
                raise TokenizerFilesError(f"{template_path}: chat template does not parse: {exc}") from None
        self._specials = {
            name: text
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(name))) is not None
        }

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages` (by default with the generation prompt)."""
        if self._template is None:
            raise TokenizerFilesError("the model has no chat template")
        context = {**self._specials, **(extra or {})}
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **context
        )

    def tokenize(self, body: Mapping[str, Any]) -> list[int] | None:
        """vLLM's request options are honoured: `add_special_tokens`, and for chats `add_generation_prompt`,
        `chat_template_kwargs` and `tools`; `continue_final_message` gives None (not reproduced here)."""
        prompt = prompt_input(body)
        if prompt is None:
            return None
        if prompt.token_ids is not None:
            size = self._tok.get_vocab_size(with_added_tokens=True)
            return list(prompt.token_ids) if all(0 <= t < size for t in prompt.token_ids) else None
        if prompt.text is not None:
            special = body.get("add_special_tokens", True)
            return list(self._tok.encode(prompt.text, add_special_tokens=special is not False).ids)
        if self._template is None or body.get("continue_final_message"):
            return None
        messages: list[dict[str, Any]] = []
        for message in prompt.messages or ():
            content = _flat_content(message.get("content"))
            if content is None and message.get("content") is not None:
                return None
            messages.append({**message, "content": content})
        kwargs = body.get("chat_template_kwargs")
        extra: dict[str, Any] = dict(kwargs) if isinstance(kwargs, dict) else {}
        if body.get("tools") is not None:
            extra.setdefault("tools", body["tools"])
        try:
            text = self.render_chat(messages, body.get("add_generation_prompt", True) is not False, extra)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, AttributeError):
            return None  # the template refuses this conversation (vLLM would answer 400) or breaks on it
        return list(self._tok.encode(text, add_special_tokens=body.get("add_special_tokens") is True).ids)

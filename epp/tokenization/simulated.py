"""The simulator's tokenizer and chat rendering, shared by bench/sim (the pods) and the picker.

`Tokenizer` is a fast deterministic stand-in for a BPE tokenizer (about 4 characters per token on English
text).

Text is cut into pieces with one regular expression: a word (with its leading space), a run of digits, a
punctuation mark (with its leading space) or a run of whitespace. Pieces longer than `MAX_PIECE_CHARS` are cut
into 4-character chunks, as BPE splits rare long words. Each piece's id is a stable xxhash of its text
modulo the vocabulary size, so the same text always gives the same ids across processes and runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import xxhash

from epp.tokenization.base import prompt_input

VOCAB_SIZE = 151_936  # Qwen2.5 0.5B-3B embedding rows (7B has 152,064); only bounds the ids.
MAX_PIECE_CHARS = 8
CHUNK_CHARS = 4

_PIECE_RE = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")


class Tokenizer:
    """Deterministic text -> token ids, with ids cached per distinct piece for speed."""

    def __init__(self, vocab_size: int = VOCAB_SIZE) -> None:
        self._vocab_size = vocab_size
        self._ids: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        """Ids are in [0, vocab_size)."""
        return self._vocab_size

    def _piece_id(self, piece: str) -> int:
        token_id = self._ids.get(piece)
        if token_id is None:
            token_id = xxhash.xxh64_intdigest(piece.encode("utf-8")) % self._vocab_size
            if len(self._ids) < 1_000_000:  # bound the cache; random text would grow it without limit
                self._ids[piece] = token_id
        return token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        ids: list[int] = []
        piece_id = self._piece_id
        for piece in _PIECE_RE.findall(text):
            if len(piece) <= MAX_PIECE_CHARS:
                ids.append(piece_id(piece))
            else:
                ids.extend(piece_id(piece[i : i + CHUNK_CHARS]) for i in range(0, len(piece), CHUNK_CHARS))
        return ids

    def count(self, text: str) -> int:
        """Number of tokens in `text`."""
        return len(self.encode(text))


def content_text(content: Any) -> str | None:
    """A chat message's text as the simulator renders it (text parts joined); None for a non-text part."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                return None
            parts.append(text)
        return "".join(parts)
    return None


def render_chat(messages: list[tuple[str, str]]) -> str:
    """A ChatML-style template, so a conversation's next round starts with its previous rounds."""
    turns = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return turns + "<|im_start|>assistant\n"


class SimulatorTokenizer:
    """A simulated pod's prompt ids: its profile's BOS (if any) before a text or chat prompt's ids."""

    def __init__(self, tokenizer: Tokenizer | None = None, bos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer or Tokenizer()
        self.bos_token_id = bos_token_id

    def text_ids(self, text: str) -> list[int]:
        """Ids of a text prompt (a rendered chat is one), as the pod computes them."""
        ids = self.tokenizer.encode(text)
        return ids if self.bos_token_id is None else [self.bos_token_id, *ids]

    def tokenize(self, body: Mapping[str, Any]) -> list[int] | None:
        prompt = prompt_input(body)
        if prompt is None:
            return None
        if prompt.token_ids is not None:
            vocab = self.tokenizer.vocab_size
            return list(prompt.token_ids) if all(0 <= t < vocab for t in prompt.token_ids) else None
        if prompt.text is not None:
            return self.text_ids(prompt.text)
        turns: list[tuple[str, str]] = []
        for message in prompt.messages or ():
            text = content_text(message.get("content"))
            if text is None:
                return None
            turns.append((message["role"], text))
        return self.text_ids(render_chat(turns))

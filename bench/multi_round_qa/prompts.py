"""Prompt text of the multi-round QA workload and each user's growing chat history.

Lengths follow the ~4 characters per token rule, so a prompt of N tokens is a text of 4*N characters.
"""

from __future__ import annotations

import random
from typing import Literal, TypedDict

CHARS_PER_TOKEN = 4

# Three-letter words: each word with its separating space is 4 characters and, for a BPE tokenizer (and the
# simulator's), one token, so the ~4 characters per token rule holds closely. Varied words make distinct
# users' texts differ from their first block on.
_WORDS = (
    "act",
    "age",
    "air",
    "arm",
    "art",
    "bay",
    "bed",
    "bee",
    "box",
    "bus",
    "cab",
    "cap",
    "car",
    "cat",
    "cow",
    "cup",
    "day",
    "dew",
    "dog",
    "ear",
    "egg",
    "elm",
    "eye",
    "fan",
    "fig",
    "fir",
    "fox",
    "gas",
    "gem",
    "hat",
    "hen",
    "ice",
    "ink",
    "jam",
    "jar",
    "jet",
    "key",
    "kit",
    "lab",
    "leg",
    "map",
    "mud",
    "net",
    "oak",
    "oil",
    "owl",
    "pan",
    "pen",
    "pig",
    "pot",
    "ram",
    "ray",
    "rod",
    "rug",
    "sea",
    "sky",
    "sun",
    "tea",
    "toy",
    "van",
    "web",
    "yak",
    "zoo",
)
# Public: other generators (bench.workloads) build their texts from the same one-token words.
WORDS = _WORDS


class ChatMessage(TypedDict):
    """One OpenAI chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


def filler_text(num_tokens: int, rng: random.Random) -> str:
    """`num_tokens` words drawn from `rng`: 4*num_tokens - 1 characters, about `num_tokens` tokens."""
    return " ".join(rng.choice(_WORDS) for _ in range(num_tokens))


def shared_system_prompt(num_tokens: int, seed: int) -> str:
    """The system prompt every user sends: the same text for all users of a run."""
    return filler_text(num_tokens, random.Random(f"shared-system-{seed}"))


def user_history_prompt(user_id: int, num_tokens: int, seed: int) -> str:
    """The user-specific history/context that opens a user's first question; unique per user."""
    header = f"User {user_id} context: "
    body_tokens = max(0, num_tokens - len(header) // CHARS_PER_TOKEN)
    return header + filler_text(body_tokens, random.Random(f"user-history-{seed}-{user_id}"))


def synthetic_question(round_number: int) -> str:
    """The question of a round when no ShareGPT data is used (production-stack's wording)."""
    return f"Here's question #{round_number}: can you tell me a new long story with a happy ending?"


class Conversation:
    """One user's chat: the shared system prompt, then alternating questions and the model's answers.

    The user-specific context is prepended to the first question, so each round's messages extend the
    previous round's and the common prefix of all users is the system prompt.
    """

    def __init__(self, system_prompt: str, user_context: str) -> None:
        self._user_context = user_context
        self._messages: list[ChatMessage] = []
        if system_prompt:
            self._messages.append({"role": "system", "content": system_prompt})

    @property
    def messages(self) -> list[ChatMessage]:
        """A copy of the messages to send for the current round."""
        return list(self._messages)

    @property
    def expects_question(self) -> bool:
        return not self._messages or self._messages[-1]["role"] != "user"

    def add_question(self, question: str) -> None:
        if not self.expects_question:
            raise RuntimeError("a question needs the previous question's answer first")
        first = all(m["role"] == "system" for m in self._messages)
        content = f"{self._user_context}\n\n{question}" if first and self._user_context else question
        self._messages.append({"role": "user", "content": content})

    def add_answer(self, answer: str) -> None:
        if self.expects_question:
            raise RuntimeError("an answer needs a pending question")
        self._messages.append({"role": "assistant", "content": answer})

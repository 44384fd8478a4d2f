"""Questions from a ShareGPT-format file: a JSON list of {"conversations": [{"from": ..., "value": ...}]}."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.multi_round_qa.prompts import CHARS_PER_TOKEN

DEFAULT_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sharegpt_sample.json"

_QUESTION_ROLES = frozenset({"human", "user"})
_ANSWER_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing"})


class ShareGPTError(ValueError):
    """The file is not valid ShareGPT-format data."""


@dataclass(frozen=True)
class ShareGPTConversation:
    """The human questions of one conversation, each with the token length of the answer that followed."""

    questions: tuple[str, ...]
    answer_tokens: tuple[int | None, ...]

    def question(self, round_number: int) -> str:
        """Question of 1-based `round_number`; a conversation shorter than the run starts over."""
        return self.questions[(round_number - 1) % len(self.questions)]

    def max_tokens(self, round_number: int, answer_len: int) -> int:
        """The original answer's length capped at `answer_len`, as production-stack does."""
        known = self.answer_tokens[(round_number - 1) % len(self.answer_tokens)]
        return answer_len if known is None else max(1, min(answer_len, known))


def load_sharegpt(path: Path) -> list[ShareGPTConversation]:
    """The conversations of `path` with at least one question; ShareGPTError when the file is malformed."""
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ShareGPTError(f"{path}: cannot read ShareGPT file: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise ShareGPTError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise ShareGPTError(f"{path}: expected a JSON list of conversations, got {type(raw).__name__}")
    conversations = [_parse_entry(path, i, entry) for i, entry in enumerate(raw)]
    usable = [c for c in conversations if c.questions]
    if not usable:
        raise ShareGPTError(f"{path}: no conversation has a human turn")
    return usable


def _parse_entry(path: Path, index: int, entry: object) -> ShareGPTConversation:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
        raise ShareGPTError(f"{where}: expected an object with a 'conversations' list")
    questions: list[str] = []
    answers: list[int | None] = []
    for turn_index, turn in enumerate(entry["conversations"]):
        valid = isinstance(turn, dict) and all(isinstance(turn.get(key), str) for key in ("from", "value"))
        if not valid:
            raise ShareGPTError(f"{where}, turn {turn_index}: expected {{'from': str, 'value': str}}")
        role, value = turn["from"].lower(), turn["value"]
        if role in _QUESTION_ROLES:
            questions.append(value)
            answers.append(None)
        elif role in _ANSWER_ROLES and questions and answers[-1] is None:
            answers[-1] = max(1, len(value) // CHARS_PER_TOKEN)
    return ShareGPTConversation(tuple(questions), tuple(answers))

"""Prompt construction of the multi-round QA client."""

import pytest

from bench.multi_round_qa.config import BenchConfig
from bench.multi_round_qa.prompts import (
    CHARS_PER_TOKEN,
    Conversation,
    shared_system_prompt,
    user_history_prompt,
)
from bench.multi_round_qa.session import SessionManager


def make_cfg(**overrides: object) -> BenchConfig:
    values: dict[str, object] = {
        "num_users": 2,
        "num_rounds": 3,
        "qps": 1.0,
        "shared_system_prompt": 200,
        "user_history_prompt": 100,
        "answer_len": 20,
        "model": "m",
        "base_urls": ("http://127.0.0.1:1/v1",),
    }
    values.update(overrides)
    return BenchConfig.model_validate(values)


def test_lengths_follow_four_chars_per_token() -> None:
    system = shared_system_prompt(500, seed=1)
    history = user_history_prompt(7, 300, seed=1)
    assert abs(len(system) - 500 * CHARS_PER_TOKEN) <= CHARS_PER_TOKEN
    assert abs(len(history) - 300 * CHARS_PER_TOKEN) <= 3 * CHARS_PER_TOKEN
    assert shared_system_prompt(0, seed=1) == ""


def test_system_prompt_is_shared_and_history_is_per_user() -> None:
    assert shared_system_prompt(100, seed=3) == shared_system_prompt(100, seed=3)
    assert shared_system_prompt(100, seed=3) != shared_system_prompt(100, seed=4)
    first, second = user_history_prompt(1, 100, seed=3), user_history_prompt(2, 100, seed=3)
    assert first != second
    # Users differ well before the end of their history, not only in the id header.
    assert first[20:60] != second[20:60]


def test_conversation_grows_with_questions_and_answers() -> None:
    conv = Conversation("SYSTEM", "CONTEXT")
    conv.add_question("q1")
    round1 = conv.messages
    assert round1 == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "CONTEXT\n\nq1"},
    ]
    with pytest.raises(RuntimeError):
        conv.add_question("q2 before the answer")
    conv.add_answer("the model said this")
    conv.add_question("q2")
    round2 = conv.messages
    assert round2[: len(round1)] == round1
    assert round2[len(round1) :] == [
        {"role": "assistant", "content": "the model said this"},
        {"role": "user", "content": "q2"},
    ]


def test_manager_builds_users_sharing_the_system_prompt() -> None:
    cfg = make_cfg(num_users=1, num_rounds=2)
    manager = SessionManager(cfg, sharegpt=None)
    orders = manager.step(0.0)
    assert [o.user_id for o in orders] == [0]
    orders += manager.step(cfg.num_rounds / cfg.qps)  # the next user joins and asks at once
    by_user = {o.user_id: o for o in orders}
    assert set(by_user) == {0, 1}
    a, b = by_user[0].messages, by_user[1].messages
    assert a[0] == b[0] and a[0]["role"] == "system"
    assert len(a[0]["content"]) == 200 * CHARS_PER_TOKEN - 1
    assert a[1] != b[1]
    assert all(o.max_tokens == 20 for o in orders)


def test_answer_is_appended_to_the_next_round() -> None:
    cfg = make_cfg(num_users=1, num_rounds=3, qps=10.0)
    manager = SessionManager(cfg, sharegpt=None)
    (first,) = manager.step(0.0)
    assert manager.step(0.05) == []  # still in flight
    manager.on_answer(first.user_id, "ANSWER ONE")
    second = next(o for o in manager.step(0.2) if o.user_id == first.user_id)
    assert second.round == 2
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == {"role": "assistant", "content": "ANSWER ONE"}
    assert "question #2" in second.messages[-1]["content"]

"""ShareGPT data: the shipped generated sample, a user file and malformed files."""

from pathlib import Path

import orjson
import pytest

from bench.data.make_sharegpt_sample import OUTPUT, make_sample
from bench.multi_round_qa.session import SessionManager
from bench.multi_round_qa.sharegpt import DEFAULT_SAMPLE, ShareGPTError, load_sharegpt
from tests.test_mrqa_prompts import make_cfg


def test_shipped_sample_loads_and_is_reproducible() -> None:
    assert DEFAULT_SAMPLE == OUTPUT
    conversations = load_sharegpt(DEFAULT_SAMPLE)
    assert len(conversations) == 40
    assert all(len(c.questions) >= 3 for c in conversations)
    assert orjson.loads(DEFAULT_SAMPLE.read_bytes()) == make_sample(40, 2024)


def test_user_file_questions_and_answer_lengths(tmp_path: Path) -> None:
    data = [
        {
            "conversations": [
                {"from": "system", "value": "ignored"},
                {"from": "human", "value": "first?"},
                {"from": "gpt", "value": "x" * 40},
                {"from": "human", "value": "second?"},
            ]
        },
        {"conversations": [{"from": "gpt", "value": "no question here"}]},
    ]
    path = tmp_path / "mine.json"
    path.write_bytes(orjson.dumps(data))
    (conv,) = load_sharegpt(path)
    assert conv.questions == ("first?", "second?")
    assert conv.max_tokens(1, answer_len=100) == 10
    assert conv.max_tokens(1, answer_len=4) == 4
    assert conv.max_tokens(2, answer_len=100) == 100  # no answer followed: the configured length
    assert conv.question(3) == "first?"  # a short conversation starts over


def test_manager_asks_sharegpt_questions(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_bytes(orjson.dumps([{"conversations": [{"from": "human", "value": "What is 2+2?"}]}]))
    manager = SessionManager(make_cfg(num_users=1), load_sharegpt(path))
    (order,) = manager.step(0.0)
    assert order.messages[-1]["content"].endswith("\n\nWhat is 2+2?")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"conversations": []}', "expected a JSON list"),
        (b'[{"id": 1}]', "entry 0: expected an object with a 'conversations' list"),
        (b'[{"conversations": [{"from": "human"}]}]', "entry 0, turn 0"),
        (b'[{"conversations": [{"from": "gpt", "value": "a"}]}]', "no conversation has a human turn"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ShareGPTError, match=message) as info:
        load_sharegpt(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShareGPTError, match="cannot read"):
        load_sharegpt(tmp_path / "absent.json")

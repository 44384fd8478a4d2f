"""Locust load for the OpenAI chat API: multi-turn users sharing a system prompt (multi-round QA workload).

    pip install -e ".[bench]"
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 60s \\
        --model Qwen/Qwen2.5-7B-Instruct --rounds 5 --answer-len 64

Each simulated user starts a conversation (shared system prompt + its own context), asks `--rounds`
questions, appending every answer to its history, then starts over as a new user. `--host` is the server
root: requests go to HOST/v1/chat/completions. Failed requests (non-200 or no answer) are counted by locust.
"""

from __future__ import annotations

import itertools
from typing import Any

from locust import HttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser

from bench.multi_round_qa.prompts import (
    Conversation,
    shared_system_prompt,
    synthetic_question,
    user_history_prompt,
)

_user_ids = itertools.count()


def add_arguments(parser: LocustArgumentParser) -> None:
    """Workload options, also settable as LOCUST_MODEL etc. or in the web UI."""
    parser.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct", help="Model name sent in requests")
    parser.add_argument("--rounds", type=int, default=5, help="Questions per conversation")
    parser.add_argument("--answer-len", type=int, default=64, help="max_tokens of each answer")
    parser.add_argument("--system-prompt-len", type=int, default=1000, help="Shared system prompt (tokens)")
    parser.add_argument("--history-len", type=int, default=2000, help="Per-user context (tokens)")
    parser.add_argument("--api-key", default="EMPTY", help="Bearer token sent to the server")
    parser.add_argument("--prompt-seed", type=int, default=0, help="Seed of the generated prompt texts")


# locust leaves EventHook.add_listener unannotated.
events.init_command_line_parser.add_listener(add_arguments)  # type: ignore[no-untyped-call]


class ChatUser(HttpUser):
    """One user at a time holding a multi-turn conversation; a new user follows when it is done."""

    wait_time = between(0.0, 0.5)

    def on_start(self) -> None:
        opts: Any = self.environment.parsed_options
        self.client.headers["Authorization"] = f"Bearer {opts.api_key}"
        self.system_prompt = shared_system_prompt(opts.system_prompt_len, opts.prompt_seed)
        self._new_conversation()

    def _new_conversation(self) -> None:
        opts: Any = self.environment.parsed_options
        user_id = next(_user_ids)
        self.conversation = Conversation(
            self.system_prompt, user_history_prompt(user_id, opts.history_len, opts.prompt_seed)
        )
        self.round = 0

    @task
    def ask(self) -> None:
        opts: Any = self.environment.parsed_options
        if self.round >= opts.rounds:
            self._new_conversation()
        self.round += 1
        self.conversation.add_question(synthetic_question(self.round))
        body = {"model": opts.model, "messages": self.conversation.messages, "max_tokens": opts.answer_len}
        with self.client.post(
            "/v1/chat/completions", json=body, name=f"chat round {self.round}", catch_response=True
        ) as response:
            answer = _answer(response)
            if answer is None:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                self._new_conversation()  # the history now lacks an answer: start over
                return
            self.conversation.add_answer(answer)


def _answer(response: Any) -> str | None:
    """The assistant's text of a 200 chat completion, else None."""
    if response.status_code != 200:
        return None
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None

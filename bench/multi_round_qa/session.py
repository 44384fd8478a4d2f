"""Users of the multi-round QA workload and the manager that joins, steps and retires them."""

from __future__ import annotations

from dataclasses import dataclass

from bench.multi_round_qa.config import BenchConfig
from bench.multi_round_qa.pacing import (
    ramp_up_plan,
    request_gap,
    round_is_due,
    user_join_due,
    user_join_gap,
)
from bench.multi_round_qa.prompts import (
    ChatMessage,
    Conversation,
    shared_system_prompt,
    synthetic_question,
    user_history_prompt,
)
from bench.multi_round_qa.sharegpt import ShareGPTConversation


@dataclass(frozen=True)
class LaunchOrder:
    """A request the scheduler wants sent now."""

    user_id: int
    round: int
    messages: list[ChatMessage]
    max_tokens: int
    model: str | None = None  # None: the client's model


class UserSession:
    """One user: asks `num_rounds` questions, each after the previous answer and at least `gap` apart."""

    def __init__(
        self,
        user_id: int,
        conversation: Conversation,
        cfg: BenchConfig,
        sharegpt: ShareGPTConversation | None,
        rounds_done: int = 0,
        last_request_time: float | None = None,
    ) -> None:
        self.user_id = user_id
        self.conversation = conversation
        self._cfg = cfg
        self._sharegpt = sharegpt
        self._gap = request_gap(cfg.num_users, cfg.qps)
        self.rounds_done = rounds_done
        self.last_request_time = last_request_time
        self.in_flight = False
        self.failed = False
        adapters = cfg.lora_adapters
        self.model = adapters[user_id % len(adapters)] if adapters else None

    @property
    def finished(self) -> bool:
        return not self.in_flight and (self.failed or self.rounds_done >= self._cfg.num_rounds)

    def next_order(self, now: float) -> LaunchOrder | None:
        """The next round's request if it is due at `now` (and mark it in flight), else None."""
        if self.finished or not round_is_due(now, self.last_request_time, self._gap, self.in_flight):
            return None
        round_number = self.rounds_done + 1
        if self._sharegpt is None:
            question, max_tokens = synthetic_question(round_number), self._cfg.answer_len
        else:
            question = self._sharegpt.question(round_number)
            max_tokens = self._sharegpt.max_tokens(round_number, self._cfg.answer_len)
        self.conversation.add_question(question)
        self.rounds_done = round_number
        self.last_request_time = now
        self.in_flight = True
        return LaunchOrder(self.user_id, round_number, self.conversation.messages, max_tokens, self.model)

    def on_answer(self, text: str) -> None:
        """The round's answer came back: it joins the history the next round sends."""
        self.conversation.add_answer(text)
        self.in_flight = False

    def on_failure(self) -> None:
        """The round failed: without an answer the conversation cannot go on, so the user leaves."""
        self.in_flight = False
        self.failed = True


class SessionManager:
    """Joins a user every join gap (after a steady-state ramp-up), steps users, retires finished ones."""

    def __init__(self, cfg: BenchConfig, sharegpt: list[ShareGPTConversation] | None) -> None:
        self._cfg = cfg
        self._sharegpt = sharegpt
        system = shared_system_prompt(cfg.shared_system_prompt, cfg.seed)
        # The salt goes first in whatever the prompt opens with, so salted runs share no block.
        self._system_prompt = cfg.salt + system if system else ""
        self._join_gap = user_join_gap(cfg.num_rounds, cfg.qps)
        self._next_user_id = cfg.init_user_id
        self._last_join: float | None = None
        self._started = False
        self.sessions: dict[int, UserSession] = {}

    def _new_user(self, rounds_done: int = 0, last_request_time: float | None = None) -> UserSession:
        user_id = self._next_user_id
        self._next_user_id += 1
        context = user_history_prompt(user_id, self._cfg.user_history_prompt, self._cfg.seed)
        if not self._system_prompt:
            context = self._cfg.salt + context
        conversation = Conversation(self._system_prompt, context)
        sharegpt = None if self._sharegpt is None else self._sharegpt[user_id % len(self._sharegpt)]
        session = UserSession(user_id, conversation, self._cfg, sharegpt, rounds_done, last_request_time)
        self.sessions[user_id] = session
        return session

    def step(self, now: float) -> list[LaunchOrder]:
        """Advance to `now`: join/retire users and return the requests to launch."""
        if not self._started:
            for user in ramp_up_plan(self._cfg.num_users, self._cfg.num_rounds, self._cfg.qps, now):
                self._new_user(user.rounds_done, user.last_request_time)
            self._started = True
        if user_join_due(now, self._last_join, self._join_gap):
            self._new_user()
            self._last_join = now
        orders = [order for s in self.sessions.values() if (order := s.next_order(now)) is not None]
        for user_id in [uid for uid, s in self.sessions.items() if s.finished]:
            del self.sessions[user_id]
        return orders

    @property
    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.sessions.values())

    def on_answer(self, user_id: int, text: str) -> None:
        self.sessions[user_id].on_answer(text)

    def on_failure(self, user_id: int) -> None:
        self.sessions[user_id].on_failure()

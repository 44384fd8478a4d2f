"""PREFIX_TOKENS as built from its strategy file: new users and a hot shared prefix spread over the pods,
conversations stay put, and the request director moves the token accounting with retries."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from epp.config import RoutingStrategy, builtin_strategy
from epp.datastore import Datastore
from epp.request import CHAT_PATH
from epp.requestcontrol import lifecycle as lc
from epp.requestcontrol.director import Director, DirectorSettings
from epp.scheduling.builder import build_scheduler
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import LLMRequest, SchedulingResult
from scorers.builtin import default_registry
from scorers.prefill_load_scorer import PrefillLoadScorer
from tests.test_prefill_tokens import SHARED, FakeClock, streamed
from tests.test_request_picking import ListRecorder
from tests.test_sched_support import datastore, snap


# -- the strategy -------------------------------------------------------------------------------------------
def scheduler(strategy: RoutingStrategy, ds: Datastore, seed: int) -> Scheduler:
    return build_scheduler(builtin_strategy(strategy), ds, default_registry(), random.Random(seed))


def sent(sched: Scheduler, req: LLMRequest) -> SchedulingResult:
    """Schedule, then run the before-request hooks as the director does (no scrape, no first token)."""
    result = sched.schedule(req)
    for hook in sched.profile(result.profile).pre_requests:
        hook.pre_request(result.context, result.endpoint)
    return result


def idle_pool() -> Datastore:
    return datastore({f"pod-{i}": snap() for i in range(4)})


@pytest.mark.parametrize("seed", range(5))
def test_sixteen_new_users_back_to_back_reach_every_pod(seed: int) -> None:
    sched = scheduler(RoutingStrategy.PREFIX_TOKENS, idle_pool(), seed)
    rng = random.Random(seed)
    picks = Counter(
        sent(
            sched, streamed(f"user {i}: " + "".join(rng.choice("abcdefgh ") for _ in range(600)), f"r{i}")
        ).endpoint.name
        for i in range(16)
    )
    assert len(picks) == 4, picks
    assert max(picks.values()) - min(picks.values()) <= 2, picks


def test_a_hot_shared_prefix_spreads_instead_of_piling_onto_one_pod() -> None:
    # 16 new users, one long system prompt, back to back: PREFIX_CACHE sends all 16 to the first pod that
    # saw the prompt (nothing is saturated before the next scrape); PREFIX_TOKENS breaks affinity once
    # that pod's queued tokens cost more than prefilling the prompt elsewhere.
    tokens = scheduler(RoutingStrategy.PREFIX_TOKENS, idle_pool(), 0)
    old = scheduler(RoutingStrategy.PREFIX_CACHE, idle_pool(), 0)
    questions = [
        f"user {i}: " + f"what does clause {i} of the contract say about renewals? " * 4 for i in range(16)
    ]
    new_picks = Counter(
        sent(tokens, streamed(SHARED + q, f"r{i}")).endpoint.name for i, q in enumerate(questions)
    )
    old_picks = Counter(
        sent(old, streamed(SHARED + q, f"r{i}")).endpoint.name for i, q in enumerate(questions)
    )
    assert len(old_picks) == 1, old_picks  # the hot spot this strategy exists to avoid
    assert len(new_picks) >= 2 and max(new_picks.values()) < 16, new_picks


def test_a_user_stays_on_the_warm_pod_while_first_tokens_come_back() -> None:
    # Light load: every request's first token arrives before the next is sent, so no backlog builds up
    # and a returning conversation keeps its pod.
    ds = idle_pool()
    sched = scheduler(RoutingStrategy.PREFIX_TOKENS, ds, 1)
    history = SHARED
    pods = []
    for turn in range(10):
        history += f" user turn {turn}: tell me more about item {turn}."
        result = sent(sched, streamed(history, f"t{turn}"))
        pods.append(result.endpoint.name)
        for hook in sched.profile(result.profile).first_tokens:
            hook.first_token(result.context, result.endpoint, 0.1)
        history += " assistant: here is more. " * 5
    assert len(set(pods)) == 1, pods


# -- through the request director ----------------------------------------------------------------------
def test_the_director_moves_the_backlog_with_retries_and_releases_it_at_the_first_token() -> None:
    ds = idle_pool()
    sched = scheduler(RoutingStrategy.PREFIX_TOKENS, ds, 0)
    [load] = [w.scorer for w in sched.profile().scorers if isinstance(w.scorer, PrefillLoadScorer)]
    load.clock = FakeClock()  # no draining between the steps, however slow the machine
    director = Director(sched, ds, None, ListRecorder(), random.Random(0), DirectorSettings("PREFIX_TOKENS"))
    content = "a long question about the contract " * 60
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]})
    lifecycle = director.begin(body, {}, CHAT_PATH)
    first = lifecycle.send().name
    queued = load.pending_tokens(first)
    assert queued > len(content) / 4  # the flattened prompt, nothing cached yet
    lifecycle.fail(lc.CONNECT_FAILED)
    assert load.pending_tokens(first) == 0.0
    second = lifecycle.retry("connect_failed")
    assert second is not None and second.name != first
    lifecycle.send()
    assert load.pending_tokens(second.name) == pytest.approx(queued)
    lifecycle.response_started(200)
    lifecycle.first_token()
    assert load.pending_tokens(second.name) == 0.0
    assert load.rates.model(second.name).samples == 1  # a streamed first token teaches the rate
    assert load.rates.model(first).samples == 0
    lifecycle.complete(prompt_tokens=round(len(content) / 3), completion_tokens=5)
    assert load.chars_per_token < 4.0  # moved toward the pod's own count

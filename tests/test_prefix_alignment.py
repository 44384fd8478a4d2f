"""`prefix-cache-scorer` with `blockAlign: tokens`: blocks of the pods' KV block size in estimated chars."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.kv_events.precise_index import PreciseIndex
from epp.scheduling.plugins import PluginConfigError, PluginDeps, ResponseComplete
from epp.scheduling.types import AttemptReport, Candidate, LLMRequest, SchedulingContext
from scorers import precise_prefix_cache_scorer
from scorers.prefix_alignment import MIN_SAMPLES, BlockAlignment
from scorers.prefix_cache_scorer import PrefixCacheScorer, factory

MODEL = "llama"


def snap(block_size: int | None = None, t: float = 1.0) -> MetricsSnapshot:
    return MetricsSnapshot(
        waiting=0, running=0, kv_cache_usage=0.0, block_size=block_size, num_gpu_blocks=None, scraped_at=t
    )


def cand(name: str, metrics: MetricsSnapshot) -> Candidate:
    return Candidate(Endpoint(name, "127.0.0.1", 8000), metrics, 0)


def ctx(prompt: str) -> SchedulingContext:
    return SchedulingContext(LLMRequest("r", MODEL, MODEL, prompt))


def build(**params: Any) -> PrefixCacheScorer:
    return factory("pc", params, PluginDeps(Datastore()))


def shared_then_own(shared_chars: int, own: str) -> str:
    shared = "".join(f"shared sentence {i:04d}. " for i in range(shared_chars // 22 + 1))[:shared_chars]
    return shared + (own * 400)[:800]


def report(pod: Candidate, prompt_tokens: int | None) -> AttemptReport:
    return AttemptReport(pod.endpoint, responded=True, status=200, prompt_tokens=prompt_tokens)


def matched_after_one_pick(plugin: PrefixCacheScorer, pods: list[Candidate], shared_chars: int) -> int:
    """Send one prompt to pods[0], then score another sharing its first `shared_chars` characters."""
    first = ctx(shared_then_own(shared_chars, "alpha "))
    plugin.score(first, pods)
    plugin.pre_request(first, pods[0].endpoint)
    second = ctx(shared_then_own(shared_chars, "omega "))
    plugin.score(second, pods)
    return plugin.matched_blocks(second).get(pods[0].endpoint.name, 0)


def test_a_shared_part_of_k_token_blocks_matches_k_blocks() -> None:
    # Pods with 32-token KV blocks, 4 characters per token: a block is 128 characters. The prompts share
    # 3 such blocks (384 characters) and then differ; vLLM can reuse 3 blocks of them, not 6 of 64 chars.
    pods = [cand("a", snap(32)), cand("b", snap(32))]
    aligned = build(blockAlign="tokens")
    assert matched_after_one_pick(aligned, pods, 3 * 128) == 3
    assert aligned.block_size == 128
    second = ctx(shared_then_own(3 * 128, "omega "))
    aligned.score(second, pods)
    assert aligned.cycle_match(second).block_size == 128
    # The default (GIE's 64 characters) counts the same shared part as 6 blocks.
    assert matched_after_one_pick(build(), pods, 3 * 128) == 6


def test_block_size_from_the_scrape_then_the_parameter_then_the_default() -> None:
    assert build(blockAlign="tokens").block_size == 16 * 4  # nothing scraped yet: vLLM's default 16
    fixed = build(blockAlign="tokens", blockSizeTokens=64, charsPerToken=3.0)
    fixed.score(ctx("x" * 1000), [cand("a", snap(16))])
    assert fixed.block_size == 64 * 3  # the parameter wins over the scrape
    scraped = build(blockAlign="tokens", charsPerToken=3.5)
    scraped.score(ctx("x" * 1000), [cand("a", snap(128))])
    assert scraped.block_size == 128 * 3.5


def test_pods_with_another_block_size_are_warned_about_and_matched_at_the_pools(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = build(blockAlign="tokens")
    pods = [cand("a", snap(16)), cand("b", snap(16)), cand("odd", snap(32))]
    with caplog.at_level(logging.WARNING, logger="scorers.prefix_alignment"):
        plugin.score(ctx("x" * 1000), pods)
        plugin.score(ctx("y" * 1000), [cand(c.endpoint.name, snap(c.metrics.block_size, 2.0)) for c in pods])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "odd" in warnings[0] and "32" in warnings[0]  # once, not per scrape
    assert plugin.block_size == 16 * 4  # the size most pods have
    # Once the 16-token pods leave, the pool follows the one that is left.
    for name in ("a", "b"):
        plugin.on_endpoint_event(EndpointEvent.REMOVED, Endpoint(name, "127.0.0.1", 8000))
    assert plugin.block_size == 32 * 4


def test_characters_per_token_are_learned_from_usage_with_hysteresis() -> None:
    plugin = build(blockAlign="tokens", blockSizeTokens=16)
    assert isinstance(plugin, ResponseComplete)
    pod = cand("a", snap(16))
    prompt = "z" * 3000
    for i in range(MIN_SAMPLES - 1):  # 3 characters per token, but too few answers yet
        plugin.response_complete(ctx(prompt), report(pod, 1000))
        assert plugin.block_size == 64, i
    plugin.response_complete(ctx(prompt), report(pod, 1000))
    learned = plugin.alignment.chars_per_token
    assert 3.0 < learned < 3.6 and plugin.block_size == round(16 * learned)
    # A drift within the tolerance does not realign (every realignment makes the index's entries stale).
    plugin.response_complete(ctx("z" * 2900), report(pod, 1000))
    assert plugin.alignment.chars_per_token == learned
    # Answers without usage teach nothing.
    plugin.response_complete(ctx(prompt), report(pod, None))
    assert plugin.alignment.estimate.samples == MIN_SAMPLES + 1


def test_learning_off_keeps_the_configured_ratio() -> None:
    plugin = build(blockAlign="tokens", blockSizeTokens=16, charsPerToken=5.0, learnCharsPerToken=False)
    for _ in range(3 * MIN_SAMPLES):
        plugin.response_complete(ctx("z" * 3000), report(cand("a", snap(16)), 1000))
    assert plugin.block_size == 80


def test_the_default_is_gie_64_characters_and_ignores_scrapes_and_usage() -> None:
    plugin = build()
    assert plugin.block_size == 64 and not plugin.alignment.aligned
    pod = cand("a", snap(128))
    plugin.score(ctx("x" * 1000), [pod])
    for _ in range(3 * MIN_SAMPLES):
        plugin.response_complete(ctx("z" * 3000), report(pod, 1000))
    assert plugin.block_size == 64
    assert build(blockSize=32).block_size == 32


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"blockAlign": "bytes"}, "blockAlign"),
        ({"charsPerToken": 3.0}, "charsPerToken: only with blockAlign 'tokens'"),
        ({"blockSizeTokens": 16}, "blockSizeTokens: only with blockAlign 'tokens'"),
        ({"learnCharsPerToken": False}, "learnCharsPerToken: only with blockAlign 'tokens'"),
        ({"blockAlign": "tokens", "blockSize": 64}, "blockSize: not with blockAlign 'tokens'"),
        ({"blockAlign": "tokens", "blockSizeTokens": 0}, "blockSizeTokens"),
        ({"blockAlign": "tokens", "charsPerToken": 0.1}, "charsPerToken"),
        ({"blockAlign": "tokens", "blockSizeTokens": "16"}, "blockSizeTokens"),
    ],
)
def test_bad_alignment_parameters_are_named(params: dict[str, Any], named: str) -> None:
    with pytest.raises(PluginConfigError, match=rf"plugin 'pc'.*{named}"):
        build(**params)


def test_the_precise_scorers_own_fallback_is_token_aligned() -> None:
    deps = PluginDeps(Datastore(), kv_index=PreciseIndex())
    precise = precise_prefix_cache_scorer.factory("pp", {"blockSize": 32}, deps)
    assert precise.fallback.alignment.aligned and precise.fallback.block_size == 32 * 4
    assert isinstance(precise, ResponseComplete)
    pod = cand("a", snap(32))
    for _ in range(MIN_SAMPLES):  # it learns from the answers the precise scorer is told about
        precise.response_complete(ctx("z" * 3000), report(pod, 1000))
    assert precise.fallback.block_size == round(32 * precise.fallback.alignment.chars_per_token) < 128
    # A named prefix-cache-scorer is used as configured.
    named = PrefixCacheScorer("mine")
    deps.plugins["mine"] = named
    other = precise_prefix_cache_scorer.factory("pp2", {"prefixCachePlugin": "mine"}, deps)
    assert other.fallback is named and not named.alignment.aligned


def test_alignment_alone_rounds_and_ignores_bad_sizes() -> None:
    alignment = BlockAlignment("tokens", chars_per_token=3.3)
    assert alignment.block_chars == round(16 * 3.3)
    alignment.on_scrape("a", 0)
    alignment.on_scrape("b", None)
    assert alignment.block_tokens == 16

"""One request sequence sent to a real vLLM pod and to a simulated one with the same block size: what a
router sees (metric families and label keys, prefix-cache hit pattern, statuses) must be the same."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.process import SimProcess
from tests.vllm.conftest import Pods
from tests.vllm.pods import ADAPTER, BLOCK_SIZE, MAX_MODEL_LEN, MODEL
from tests.vllm.support import completion, metric

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

# Families real vLLM 0.32 has and the simulator does not, none of which a router reads: per-request latency
# and size histograms, multimodal cache, admission and roofline estimates. Any other missing family fails.
NOT_SIMULATED = frozenset(
    f"vllm:{name}"
    for name in (
        "admission_rejections", "estimated_flops_per_gpu", "estimated_read_bytes_per_gpu",
        "estimated_write_bytes_per_gpu", "iteration_tokens_total", "mm_cache_hits", "mm_cache_queries",
        "request_decode_time_seconds", "request_inference_time_seconds", "request_max_num_generation_tokens",
        "request_num_preemptions", "request_params_max_tokens", "request_params_n",
        "request_prefill_kv_computed_tokens", "request_prefill_time_seconds",
        "request_time_per_output_token_seconds",
    )
)  # fmt: skip
# Token ids the tiny model's vocabulary (1024) holds.
BASE = [3 + (i * 37) % 1000 for i in range(4 * BLOCK_SIZE)]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    args = [
        "--pods", "1", "--base-port", "0", "--profile", "cpu-tiny", "--block-size", str(BLOCK_SIZE),
        "--max-model-len", str(MAX_MODEL_LEN), "--served-model-name", MODEL,
        "--lora-modules", ADAPTER, "--max-loras", "1", "--seed", "1",
    ]  # fmt: skip
    with SimProcess(args, startup_timeout=60) as sim:
        yield sim.urls[0]


def families(url: str) -> dict[str, tuple[str, frozenset[str]]]:
    """vllm:* families at `url`/metrics: type and label keys (the `engine` label aside)."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return {
        f.name: (f.type, frozenset(k for s in f.samples for k in s.labels))
        for f in text_string_to_metric_families(text)
        if f.name.startswith("vllm:")
    }


def hit_pattern(url: str, prompts: list[list[int]]) -> list[tuple[int, float]]:
    """(status, prefix-cache hit tokens gained) per prompt, sent one after the other."""
    out = []
    with httpx.Client(timeout=120, trust_env=False) as client:
        for prompt in prompts:
            before = metric(url, "vllm:prefix_cache_hits_total")
            status = client.post(f"{url}/v1/completions", json=completion(prompt, max_tokens=2)).status_code
            out.append((status, metric(url, "vllm:prefix_cache_hits_total") - before))
    return out


def statuses(url: str) -> dict[str, Any]:
    cases: dict[str, dict[str, Any]] = {
        "ok": completion("hello", max_tokens=2),
        "unknown model": completion("hello", model="no-such-model"),
        "negative max_tokens": completion("hello", max_tokens=-1),
        "prompt over the model length": completion(BASE * 5, max_tokens=2),
        "adapter": completion("hello", max_tokens=2, model=ADAPTER),
    }
    out: dict[str, Any] = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        for name, body in cases.items():
            out[name] = client.post(f"{url}/v1/completions", json=body).status_code
        # Prompt + max_tokens over the model length: vLLM clamps max_tokens and stops at the length.
        long = client.post(f"{url}/v1/completions", json=completion(BASE[:300], max_tokens=MAX_MODEL_LEN))
        choice = long.json()["choices"][0] if long.status_code == 200 else {}
        out["clamped"] = (long.status_code, choice.get("finish_reason"))
    return out


def sequence(tag: list[int]) -> list[list[int]]:
    """Twice the same two blocks, then a third block on them, then a partial block on those three."""
    ids = [*tag, *BASE[len(tag) :]]
    two, three = ids[: 2 * BLOCK_SIZE], ids[: 3 * BLOCK_SIZE]
    return [two, two, three, [*three, 5, 6, 7]]


def test_hit_pattern_matches(pods: Pods, sim_url: str) -> None:
    # A fresh start per run, so pods reused across runs (EPP_VLLM_PODS) have none of it cached.
    tag = [random.randrange(3, 1000) for _ in range(8)]
    real = hit_pattern(pods.urls[0], sequence(tag))
    simulated = hit_pattern(sim_url, sequence(tag))
    assert real == simulated


def test_statuses_match(pods: Pods, sim_url: str) -> None:
    assert statuses(pods.urls[0]) == statuses(sim_url)


def test_metric_families_and_labels_match(pods: Pods, sim_url: str) -> None:
    real, simulated = families(pods.urls[0]), families(sim_url)
    missing = {name.removesuffix("_created") for name in set(real) - set(simulated)}
    assert sorted(missing - NOT_SIMULATED) == [], "families only real vLLM has"
    assert sorted(set(simulated) - set(real)) == [], "families only the simulator has"
    differ = {name: (real[name], simulated[name]) for name in real.keys() & simulated.keys()}
    assert {name: pair for name, pair in differ.items() if pair[0] != pair[1]} == {}

"""How fast epp's online prefill-rate estimate converges on a simulated pod (issue 16, scheduling).

Starts one `epp sim` pod, sends it streamed chat requests one at a time with random, never-shared prompts of
random length (so every prompt token is prefilled), and feeds each attempt to a `prefill-load-scorer`
exactly as the request director would (pre-request, first token, response complete). After every request it
compares the pod's estimated rate with the simulator's true one: the profile's `prefill_tokens_per_s`, and
the effective rate once the per-step base time of chunked prefill is counted, both in wall-clock tokens/s
(x `--time-scale`). Prints one line per request and the first request from which the estimate stays within
20% of the true rate.

    python -m bench.prefill_convergence --profile qwen2.5-7b-a10 --time-scale 5 --requests 60
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field

import httpx

from bench.sim.process import SimProcess
from bench.sim.profiles import PROFILES
from epp.datastore import Endpoint
from epp.scheduling.types import AttemptReport, LLMRequest, SchedulingContext
from scorers.prefill_load_scorer import PrefillLoadScorer

WORDS = (
    "alpha",
    "bravo",
    "delta",
    "echo",
    "golf",
    "hotel",
    "india",
    "kilo",
    "lima",
    "oscar",
    "tango",
    "zulu",
)


@dataclass
class Convergence:
    true_rate: float  # wall tokens/s from the profile's prefill throughput alone
    effective_rate: float  # counting one step's base time per max_num_batched_tokens chunk
    estimates: list[float] = field(default_factory=list)  # after each request

    def converged_at(self, rate: float, within: float = 0.2) -> int | None:
        """1-based index of the request from which every later estimate is within `within` of `rate`."""
        first = None
        for i, est in enumerate(self.estimates, 1):
            first = (first or i) if abs(est - rate) <= within * rate else None
        return first


def measure(
    profile: str = "qwen2.5-7b-a10",
    time_scale: float = 5.0,
    requests: int = 60,
    seed: int = 0,
    min_chars: int = 800,
    max_chars: int = 24_000,
) -> Convergence:
    p = PROFILES[profile]
    true_rate = p.prefill_tokens_per_s * time_scale
    per_token_s = 1.0 / p.prefill_tokens_per_s + p.step_base_s / p.max_num_batched_tokens
    result = Convergence(true_rate, time_scale / per_token_s)
    rng = random.Random(seed)
    max_chars = min(max_chars, int(p.max_model_len * 3))  # stay under the context length (~4 chars/token)
    scorer = PrefillLoadScorer(prefix=None)  # default prior: no hint of the true rate
    args = ["--pods", "1", "--base-port", "0", "--profile", profile, "--time-scale", str(time_scale)]
    args += ["--seed", str(seed)]
    with SimProcess(args) as sim, httpx.Client(timeout=60.0, trust_env=False) as client:
        url = sim.urls[0]
        pod = Endpoint("pod", "127.0.0.1", 0)
        for i in range(requests):
            length = rng.randint(min_chars, max_chars)
            text = f"request {i} {rng.random()}: "
            while len(text) < length:
                text += rng.choice(WORDS) + " "
            body = {
                "model": p.model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 1,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            ctx = SchedulingContext(LLMRequest(f"r{i}", p.model, p.model, text, body=body))
            scorer.pre_request(ctx, pod)
            prompt_tokens = None
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                seen_first = False
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    if not seen_first and any((c.get("delta") or {}).get("content") for c in choices):
                        seen_first = True
                        scorer.first_token(ctx, pod, 0.0)
                    if chunk.get("usage"):
                        prompt_tokens = chunk["usage"].get("prompt_tokens")
            report = AttemptReport(pod, status=200, responded=True, prompt_tokens=prompt_tokens)
            scorer.response_complete(ctx, report)
            result.estimates.append(scorer.rates.rate("pod"))
            time.sleep(0.01)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="qwen2.5-7b-a10", choices=sorted(PROFILES))
    parser.add_argument("--time-scale", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(args.profile, args.time_scale, args.requests, args.seed)
    for i, est in enumerate(result.estimates, 1):
        print(f"request {i:3d}: estimate {est:10.0f} tokens/s")
    for label, rate in (("profile", result.true_rate), ("effective", result.effective_rate)):
        at = result.converged_at(rate)
        print(
            f"{label} rate {rate:.0f} tokens/s (wall): within 20% from request {at} "
            f"of {len(result.estimates)}"
        )


if __name__ == "__main__":
    main()

"""Predicted vs actual prefix hit ratio over real simulator pods and the real gateway.

`llm_d_epp_prefix_indexer_hit_ratio` is what the index predicted for the pick;
`epp_prefix_cache_actual_hit_ratio` what the pod's usage reported cached (`prompt_tokens_details.
cached_tokens`, only with --enable-prompt-tokens-details, as in vLLM). With `blockAlign: tokens` the
prediction counts the pod's own KV blocks.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.compare.frontends import GatewayProcess
from bench.sim.process import SimProcess
from epp.datastore import Datastore, Endpoint
from epp.metrics import EppMetrics
from epp.scheduling.types import AttemptReport

PREDICTED = "llm_d_epp_prefix_indexer_hit_ratio"
ACTUAL = "epp_prefix_cache_actual_hit_ratio"
SYSTEM = "You are the billing assistant of a telecom company; follow the policy below. " * 30  # ~2,300 chars
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters: {PARAMS}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
"""


def histogram(text: str, name: str) -> tuple[float, float]:
    """(count, sum) of the family's one series; (0, 0) when it has none."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            values = {s.name: s.value for s in family.samples}
            return values.get(f"{name}_count", 0.0), values.get(f"{name}_sum", 0.0)
    return 0.0, 0.0


def run(
    tmp_path: Path, params: str, details: bool, n: int = 6, block: int = 32, system: str = SYSTEM
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(count, sum) of the predicted and the actual ratio after `n` requests sharing `system`."""
    config = tmp_path / "picker.yaml"
    config.write_text(CONFIG.replace("{PARAMS}", params))
    sim_args = ["--pods", "2", "--base-port", "0", "--profile", "tiny", "--time-scale", "20"]
    sim_args += ["--block-size", str(block)]
    if details:
        sim_args.append("--enable-prompt-tokens-details")
    with SimProcess(sim_args) as sim:
        endpoints = ",".join(u.removeprefix("http://") for u in sim.urls)
        args = ["--endpoints", endpoints, "--config", str(config), "--log-level", "WARNING"]
        with GatewayProcess(args) as gateway, httpx.Client(timeout=60.0, trust_env=False) as client:
            for i in range(n):
                body = {
                    "model": "sim/tiny",
                    "messages": [
                        {"role": "system", "content": system},
                        {
                            "role": "user",
                            "content": f"question {i}: " + f"line {i} of my bill looks wrong. " * 20,
                        },
                    ],
                    "max_tokens": 2,
                }
                answer = client.post(f"{gateway.base_url}/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
            text = client.get(gateway.metrics_urls[0]).text
    return histogram(text, PREDICTED), histogram(text, ACTUAL)


@pytest.mark.slow
def test_actual_ratio_from_the_pods_usage_next_to_the_predicted_one(tmp_path: Path) -> None:
    (pred_n, pred_sum), (act_n, act_sum) = run(tmp_path, '{"blockAlign": "tokens"}', details=True)
    assert pred_n == 6 and act_n == 6  # one per decision, one per answered attempt
    # The first request is cold on both counts; the other five find the system prompt on the pod.
    assert 0 < act_sum < 5 and 0 < pred_sum < 5
    print(f"tokens-aligned: predicted mean {pred_sum / pred_n:.3f}, actual mean {act_sum / act_n:.3f}")
    # The prediction, in the pod's own blocks, is close to what the pod reported cached.
    assert abs(pred_sum - act_sum) / act_n < 0.1


@pytest.mark.slow
def test_no_actual_ratio_when_the_pods_do_not_report_cached_tokens(tmp_path: Path) -> None:
    (pred_n, _), (act_n, _) = run(tmp_path, "{}", details=False, n=2)
    assert pred_n == 2 and act_n == 0


@pytest.mark.slow
def test_a_shared_part_shorter_than_a_pod_block_is_predicted_uncached_only_when_aligned(
    tmp_path: Path,
) -> None:
    # 128-token KV blocks (~512 characters) and a ~300-character shared system prompt: the pods can reuse
    # nothing of it, which the token-aligned index knows; GIE's 64-character blocks predict a partial hit.
    short = "You are the billing assistant; follow the policy. " * 6
    aligned = run(tmp_path, '{"blockAlign": "tokens"}', details=True, block=128, system=short)
    (pred_n, pred_sum), (act_n, act_sum) = aligned
    assert pred_n == act_n == 6 and pred_sum == 0.0 and act_sum == 0.0
    (pred_n, pred_sum), (act_n, act_sum) = run(tmp_path, "{}", details=True, block=128, system=short)
    assert pred_n == act_n == 6 and pred_sum > 0.5 and act_sum == 0.0


def test_the_actual_ratio_is_observed_per_attempt_that_reports_cached_tokens() -> None:
    metrics = EppMetrics(Datastore())
    pod = Endpoint("a", "127.0.0.1", 8000)
    metrics.on_attempt(AttemptReport(pod, 200, True, prompt_tokens=200, cached_prompt_tokens=150), "ok")
    metrics.on_attempt(AttemptReport(pod, 200, True, prompt_tokens=200), "ok")  # not reported
    metrics.on_attempt(AttemptReport(pod, 200, True, prompt_tokens=0, cached_prompt_tokens=0), "ok")
    metrics.on_attempt(AttemptReport(pod, error="connect_failed"), "connect_failed")
    count, total = histogram(metrics.render().decode(), ACTUAL)
    assert count == 1 and total == pytest.approx(0.75)
    text = metrics.render().decode()
    assert f'{ACTUAL}_count{{plugin_name="prefix-cache-scorer",plugin_type="prefix-cache-scorer"}}' in text

"""The seed scenario through epp's request director: ack-prefix-cache.yaml, then two conversation rounds.

Each round is picked the way `POST /pick` does it (`begin`, then `hand_off`: the before-request hooks run, so
the prefix index learns where the request went).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.config import load_config
from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.metrics import EppMetrics
from epp.requestcontrol.director import Director, DirectorSettings
from epp.requestcontrol.lifecycle import RequestLifecycle
from epp.scheduling.builder import build_scheduler
from scorers.builtin import default_registry
from scorers.prefix_affinity_filter import DECISION_KEY

SEED = Path(__file__).parent / "fixtures" / "seed-configs"  # copied from shared/fixtures
CHAT = "/v1/chat/completions"
HEADERS = {"content-type": "application/json"}


def service_for_seed_pool(pods: int) -> tuple[Director, Datastore, EppMetrics]:
    """What `epp serve --config ack-prefix-cache.yaml` builds, over `pods` idle, freshly scraped pods."""
    config = load_config([SEED / "ack-prefix-cache.yaml"], {})
    datastore = Datastore()
    datastore.set_endpoints([Endpoint(f"pod-{i}", "127.0.0.1", 8000 + i) for i in range(pods)])
    for state in datastore.states():
        snapshot = MetricsSnapshot(0, 0, 0.1, block_size=16, num_gpu_blocks=5300, scraped_at=time.monotonic())
        datastore.update_metrics(state.endpoint.name, snapshot)
    rng = random.Random(0)
    metrics = EppMetrics(datastore)
    scheduler = build_scheduler(config.picker_config, datastore, default_registry(), rng)
    settings = DirectorSettings(config.strategy_name)
    director = Director(scheduler, datastore, config.models, metrics, rng, settings)
    return director, datastore, metrics


def pick(director: Director, round_file: str) -> RequestLifecycle:
    lifecycle = director.begin((SEED / round_file).read_bytes(), HEADERS, CHAT)
    lifecycle.hand_off()
    return lifecycle


def test_round_two_is_routed_by_prefix_to_round_ones_pod(caplog: pytest.LogCaptureFixture) -> None:
    service, datastore, metrics = service_for_seed_pool(5)
    caplog.set_level(logging.INFO, logger="scorers.prefix_affinity_filter")  # the picker's default level

    first = pick(service, "prefix-round1.json")
    assert first.result.profile == "prefix-cache" and first.result.prefix_match_ratio == 0.0
    assert first.result.context.cycle.data[DECISION_KEY]["applied"] is False
    assert "prefix-aware routing" not in caplog.text  # not prefix-routed: only a DEBUG line
    pod = first.result.endpoint.name
    datastore.acquire(pod)  # round 1 is still streaming: its pod is now the busiest

    caplog.clear()
    second = pick(service, "prefix-round2.json")
    ratio = second.result.prefix_match_ratio
    assert second.result.endpoint.name == pod
    assert second.result.candidates_after_filters == [pod]
    # 6 of round 2's 11 full 64-character blocks were left on the pod by round 1 (the seed's logs say 0.54).
    assert ratio == pytest.approx(6 / 11)
    # GIE's line reads `Do prefix-aware routing! {... "matching ratio": " 0.54 > 0.50"}`: same shape.
    expected = f'Do prefix-aware routing! request {second.request_id} "matching ratio": " 0.55 > 0.50"'
    assert expected in caplog.text

    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    decisions = {
        (s.labels["strategy"], s.labels["result"]): s.value
        for s in families["epp_decisions"].samples
        if s.name == "epp_decisions_total"
    }
    assert decisions == {("PREFIX_CACHE", "ok"): 2.0}
    ratio_family = families["llm_d_epp_prefix_indexer_hit_ratio"]
    ratio_samples = {s.name: s.value for s in ratio_family.samples if "le" not in s.labels}
    assert ratio_samples["llm_d_epp_prefix_indexer_hit_ratio_count"] == 2
    assert ratio_samples["llm_d_epp_prefix_indexer_hit_ratio_sum"] == pytest.approx(6 / 11)


def test_round_two_goes_elsewhere_when_round_ones_pod_is_saturated() -> None:
    service, datastore, _ = service_for_seed_pool(3)
    first = pick(service, "prefix-round1.json")
    pod = first.result.endpoint.name
    busy = MetricsSnapshot(5, 4, 0.5, scraped_at=time.monotonic())  # waiting >= queueDepthThreshold 5
    datastore.update_metrics(pod, busy)
    second = pick(service, "prefix-round2.json")
    assert second.result.scores["prefix-cache-scorer"][pod] == pytest.approx(6 / 11)  # it did learn
    # The seed's InferenceModel is Critical, so the saturated pod stays a candidate (never shed), but
    # prefix affinity skips it and least-request sends round 2 to an idle pod.
    assert pod in second.result.candidates_after_filters
    assert second.result.endpoint.name != pod
    assert second.result.prefix_match_ratio == 0.0

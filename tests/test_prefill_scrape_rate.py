"""`prefill-load-scorer` learning a pod's prefill rate from its /metrics (scorers/prefill_scrape_rate.py).

Scrapes are the real vLLM 0.32 body (tests/fixtures) with its prefill counters edited; the slow test runs a
simulated pod, epp's real scraper and the scorer with no first-token event at all, as behind Envoy.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import httpx
import pytest

from bench.sim.process import SimProcess
from bench.sim.profiles import PROFILES
from epp.app import EppApp, ServeOptions
from epp.config import load_config, parse_endpoints
from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.scheduling.types import Candidate, LLMRequest, SchedulingContext
from metrics_scraper.scraper import Scraper
from metrics_scraper.vllm_mapping import parse_vllm_metrics
from scorers.prefill_load_scorer import PrefillLoadScorer
from scorers.prefill_scrape_rate import ScrapeRates, delta, restarted
from tests.test_serve_support import extproc_route, wait_until

FIXTURE = (Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32-metrics.txt").read_text()
# The fixture's own values: 617 prompt tokens, 256 of them cache hits, 6 requests in 0.0385 s of prefill.
BASE = (617.0, 256.0, 0.0385059079999337, 6.0)


def scrape(
    prompt: float, hits: float, prefill_s: float, count: float, at: float, start: float | None = None
) -> MetricsSnapshot:
    """The fixture's scrape with its prefill counters (and optionally its start time) replaced."""
    text = FIXTURE
    for name, value in (
        ("vllm:prompt_tokens_total", prompt),
        ("vllm:prefix_cache_hits_total", hits),
        ("vllm:request_prefill_time_seconds_sum", prefill_s),
        ("vllm:request_prefill_time_seconds_count", count),
    ):
        text, n = re.subn(rf"^({re.escape(name)}\{{[^}}]*\}}) \S+$", rf"\g<1> {value!r}", text, flags=re.M)
        assert n == 1, name
    if start is not None:
        text, n = re.subn(
            r"^process_start_time_seconds \S+$", f"process_start_time_seconds {start!r}", text, flags=re.M
        )
        assert n == 1
    return parse_vllm_metrics(text, scraped_at=at)


def later(tokens: float, hits: float, prefill_s: float, requests: float, at: float) -> MetricsSnapshot:
    """The fixture's scrape after `tokens` more prompt tokens (`hits` of them cached) and `requests` more
    prefills taking `prefill_s` seconds in all."""
    p, h, s, c = BASE
    return scrape(p + tokens, h + hits, s + prefill_s, c + requests, at)


def test_the_mapping_reads_the_prefill_counters_of_the_real_scrape() -> None:
    m = parse_vllm_metrics(FIXTURE)
    assert (m.prompt_tokens, m.prefix_cache_hits, m.prefill_time_s, m.prefill_count) == BASE


def test_the_mapping_leaves_them_none_when_the_pod_does_not_export_them() -> None:
    text = "\n".join(
        line
        for line in FIXTURE.splitlines()
        if "prompt_tokens_total" not in line and "prefill_time" not in line
    )
    m = parse_vllm_metrics(text)
    assert m.prompt_tokens is None and m.prefill_time_s is None and m.prefill_count is None
    assert m.prefix_cache_hits == 256.0


def test_two_scrapes_give_the_uncached_tokens_over_the_prefill_seconds() -> None:
    base = scrape(*BASE, at=100.0)
    cur = later(10_000, 2_000, 2.0, 10, at=105.0)
    sample = delta(base, cur)
    assert sample is not None
    assert sample.tokens == 8_000 and sample.requests == 10
    assert sample.rate == pytest.approx(4_000.0)
    assert sample.mean_tokens == pytest.approx(800.0) and sample.mean_seconds == pytest.approx(0.2)


def test_overlapping_prefills_count_little_more_seconds_than_the_wall_time() -> None:
    # 40 requests prefilled in batches of 4, 0.5 s a batch: each records 0.5 s, 20 s summed over 10 s.
    sample = delta(scrape(*BASE, at=10.0), later(40_000, 0, 20.0, 40, at=20.0))
    assert sample is not None
    assert sample.seconds == 10.5  # the wall time and one request's prefill, begun before the window
    assert sample.rate == pytest.approx(4_000.0, rel=0.05)
    # One long prefill, begun before a window just longer than the minimum: not read as a faster pod.
    sample = delta(scrape(*BASE, at=10.0), later(5_600, 0, 1.4, 1, at=11.0))
    assert sample is not None and sample.rate == pytest.approx(4_000.0)


def test_windows_too_short_or_without_prefill_give_nothing_and_keep_their_baseline() -> None:
    rates = ScrapeRates()
    assert rates.offer("p", scrape(*BASE, at=0.0)) is None  # the first scrape is a baseline only
    assert rates.offer("p", scrape(*BASE, at=30.0)) is None  # idle: no prefill in 30 s
    sample = rates.offer("p", later(1_000, 0, 0.5, 2, at=30.5))
    assert sample is not None  # measured from the scrape at 0: the idle scrape did not close the window
    assert sample.wall_s == 30.5 and sample.tokens == 1_000 and sample.rate == pytest.approx(2_000.0)
    assert rates.offer("p", later(3_000, 0, 1.0, 4, at=30.9)) is None  # 0.4 s of wall time: too short
    sample = rates.offer("p", later(3_000, 0, 1.0, 4, at=31.6))  # the same counters 1.1 s after 30.5
    assert sample is not None and sample.rate == pytest.approx(4_000.0)
    assert rates.offer("p", later(3_100, 0, 1.01, 5, at=40.0)) is None  # 0.01 s of prefill: too little
    # Then only cache hits: the prompt tokens grow by the hits, no uncached token, no rate.
    assert rates.offer("p", later(4_100, 1_100, 1.51, 9, at=50.0)) is None
    assert rates.offer("p", later(4_100, 1_100, 1.51, 9, at=50.0)) is None  # the same scrape again


def test_a_restart_gives_no_sample_and_the_next_window_starts_from_it() -> None:
    rates = ScrapeRates()
    rates.offer("p", later(1_000_000, 0, 250.0, 1_000, at=0.0))
    assert restarted(later(1_000_000, 0, 250.0, 1_000, at=0.0), scrape(*BASE, at=5.0))
    assert rates.offer("p", scrape(*BASE, at=5.0)) is None  # counters went down: restarted
    sample = rates.offer("p", later(2_000, 0, 1.0, 2, at=10.0))
    assert sample is not None and sample.rate == pytest.approx(2_000.0)  # not (2000 - 1e6) / (1 - 250)
    # A restart whose counters already passed the old ones: only the start time tells.
    moved = scrape(1e7, 0, 1e4, 1e4, at=20.0, start=1.9e9)
    assert restarted(later(2_000, 0, 1.0, 2, at=10.0), moved)
    assert rates.offer("p", moved) is None


def test_a_window_with_a_first_token_observation_gives_no_sample() -> None:
    rates = ScrapeRates()
    rates.offer("p", scrape(*BASE, at=0.0))
    rates.first_token("p")
    assert rates.offer("p", later(8_000, 0, 2.0, 8, at=5.0)) is None
    assert rates.offer("p", later(16_000, 0, 4.0, 16, at=10.0)) is not None  # the next window has none


def ctx() -> SchedulingContext:
    return SchedulingContext(LLMRequest("r", "m", "m", "x" * 400, body={}))


def test_the_scorer_learns_the_rate_from_scrapes_alone_and_follows_a_change() -> None:
    scorer = PrefillLoadScorer(prefix=None, prior_rate=50_000.0)
    ep = Endpoint("p", "127.0.0.1", 1)
    rng = random.Random(1)
    tokens = seconds = requests = 0.0
    for i in range(60):
        rate = 3_000.0 if i < 40 else 1_500.0  # the pod slows down (another model's load, thermal, ...)
        # Each window: 4 requests of 200-4000 uncached tokens (100 more cached), at `rate` + 30 ms each.
        for _ in range(4):
            n = rng.uniform(200, 4_000)
            tokens, seconds, requests = tokens + n, seconds + 0.03 + n / rate, requests + 1
        m = later(tokens + 100 * requests, 100 * requests, seconds, requests, at=10.0 * (i + 1))
        scorer.score(ctx(), [Candidate(ep, m, 0)])
        scorer.score(ctx(), [Candidate(ep, m, 0)])  # the same scrape again: not a second observation
        if i == 39:
            model = scorer.rates.model("p")
            assert model.samples == 39  # the first scrape was the baseline
            assert model.rate == pytest.approx(3_000.0, rel=0.1)  # from a prior of 50000
    assert scorer.rates.rate("p") == pytest.approx(1_500.0, rel=0.1)


def test_a_restarted_pod_keeps_its_estimate_and_learns_on() -> None:
    scorer = PrefillLoadScorer(prefix=None, prior_rate=10_000.0)
    ep = Endpoint("p", "127.0.0.1", 1)
    for i in range(10):
        m = later(8_000 * i, 0, 2.0 * i, 8 * i, at=5.0 * i)
        scorer.score(ctx(), [Candidate(ep, m, 0)])
    before = scorer.rates.rate("p")
    assert before < 9_000  # it moved towards 4000 tokens/s
    scorer.on_endpoint_event(EndpointEvent.RESTARTED, ep)
    scorer.score(ctx(), [Candidate(ep, scrape(0, 0, 0, 0, at=60.0, start=2e9), 0)])
    assert scorer.rates.rate("p") == before
    scorer.score(ctx(), [Candidate(ep, scrape(8_000, 0, 2.0, 8, at=65.0, start=2e9), 0)])
    assert scorer.rates.model("p").samples == 10  # the window after the restart is one more sample


# -- over real processes -----------------------------------------------------------------------------
PROFILE = "qwen2.5-7b-a10"


async def _scrape_learned_rate(requests: int) -> tuple[float, float, int]:
    p = PROFILES[PROFILE]
    args = ["--pods", "1", "--base-port", "0", "--profile", PROFILE, "--time-scale", "1", "--seed", "3"]
    with SimProcess(args) as sim:
        url = httpx.URL(sim.urls[0])
        pod = Endpoint("pod", url.host, url.port or 80)
        datastore = Datastore(staleness_s=5.0)
        datastore.set_endpoints([pod])
        scorer = PrefillLoadScorer(prefix=None, prior_rate=50_000.0)  # far from the pod's
        datastore.subscribe(scorer.on_endpoint_event)
        rng = random.Random(7)
        async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
            scraper = Scraper(datastore, client, interval_s=0.1, idle_interval_s=0.1)
            scraper.start()
            try:
                for i in range(requests):
                    # Never-shared prompts of random length: every token is prefilled.
                    words = [f"w{rng.randrange(10**9)}" for _ in range(rng.randint(100, 1_500))]
                    body = {"model": p.model, "prompt": f"{i} " + " ".join(words), "max_tokens": 1}
                    response = await client.post(f"{url}/v1/completions", json=body)  # not streamed
                    assert response.status_code == 200, response.text
                    await asyncio.sleep(0.05)
                    state = datastore.get("pod")
                    assert state is not None and state.metrics is not None
                    scorer.score(ctx(), [Candidate.from_state(state)])  # a pick: offers the newest scrape
            finally:
                await scraper.stop()
    per_token_s = 1.0 / p.prefill_tokens_per_s  # the profile's rate; plus step_base_s per step (overhead)
    model = scorer.rates.model("pod")
    return 1.0 / per_token_s, model.rate, model.samples


@pytest.mark.slow
@pytest.mark.serial  # a learned rate: wants the machine to itself (Makefile, unit)
async def test_a_picker_without_first_tokens_learns_a_simulated_pods_prefill_rate() -> None:
    true_rate, learned, samples = await _scrape_learned_rate(24)
    assert samples >= 5
    # From a prior of 50000 tokens/s to within 30% of the pod's 4000 (the fit also learns the step's base).
    assert learned == pytest.approx(true_rate, rel=0.3), (learned, true_rate, samples)


@pytest.mark.slow
@pytest.mark.serial  # a learned rate: wants the machine to itself (Makefile, unit)
async def test_epp_serve_behind_ext_proc_learns_the_rate_from_scrapes() -> None:
    """`epp serve` (real gRPC ext_proc server and scraper), PREFIX_TOKENS: each request is picked over
    ext_proc as Envoy asks, then sent to the pod by the test as Envoy would; epp never sees an answer."""
    p = PROFILES[PROFILE]
    args = ["--pods", "1", "--base-port", "0", "--profile", PROFILE, "--time-scale", "1", "--seed", "4"]
    with SimProcess(args) as sim:
        url = httpx.URL(sim.urls[0])
        options = ServeOptions(
            grpc_port=0, http_port=0, scrape_interval_s=0.1, scrape_idle_interval_s=0.1, staleness_s=5.0
        )
        config = load_config([], {}, strategy="PREFIX_TOKENS")
        app = EppApp(config, parse_endpoints(f"pod={url.host}:{url.port}"), options)
        [load] = [
            w.scorer for w in app.core.scheduler.profile().scorers if isinstance(w.scorer, PrefillLoadScorer)
        ]
        prior = load.rates.rate("pod")
        task = asyncio.create_task(app.run())
        rng = random.Random(11)
        try:

            async def ready() -> bool:
                state = app.datastore.get("pod")
                return app.grpc_port != 0 and state is not None and state.metrics is not None

            await wait_until(ready, "epp serve and its first scrape")
            async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
                for _ in range(24):
                    words = " ".join(f"w{rng.randrange(10**9)}" for _ in range(rng.randint(100, 1_500)))
                    body = {
                        "model": p.model,
                        "messages": [{"role": "user", "content": words}],
                        "max_tokens": 1,
                    }
                    answer = await extproc_route(app.grpc_port, body)
                    assert answer.destination == f"{url.host}:{url.port}"
                    response = await client.post(f"{url}/v1/chat/completions", json=body)
                    assert response.status_code == 200, response.text
                    await asyncio.sleep(0.05)
        finally:
            app.request_stop()
            await asyncio.wait_for(task, 10)
    model = load.rates.model("pod")
    assert prior == 5_000.0 and model.samples >= 5
    assert model.rate == pytest.approx(p.prefill_tokens_per_s, rel=0.3), (model.rate, model.samples)
    assert abs(model.rate - p.prefill_tokens_per_s) < abs(prior - p.prefill_tokens_per_s)


def test_the_mapping_accepts_the_older_hits_counter_name() -> None:
    # vLLM 0.7-0.9 exported `vllm:gpu_prefix_cache_hits_total`.
    text = FIXTURE.replace("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
    assert parse_vllm_metrics(text).prefix_cache_hits == 256.0


def test_a_non_finite_prefill_counter_is_left_out_and_the_scrape_stands() -> None:
    m = scrape(float("nan"), BASE[1], BASE[2], BASE[3], at=1.0)
    assert m.prompt_tokens is None and m.prefill_time_s == BASE[2] and m.waiting == 0
    assert ScrapeRates().offer("p", m) is None

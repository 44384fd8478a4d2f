"""End-to-end: the multi-round QA client against a fleet of simulated vLLM pods."""

import pytest

from bench.multi_round_qa import run_benchmark
from bench.sim.fleet import SimFleet
from bench.sim.profiles import get_profile
from tests.test_mrqa_prompts import make_cfg

PROFILE = "qwen2.5-7b-a10"


@pytest.mark.slow
async def test_two_users_two_rounds_against_two_pods() -> None:
    async with SimFleet(pods=2, profile=PROFILE, time_scale=20.0) as fleet:
        cfg = make_cfg(
            num_users=2,
            num_rounds=2,
            qps=1.0,
            shared_system_prompt=200,
            user_history_prompt=100,
            answer_len=16,
            model=get_profile(PROFILE).model,
            base_urls=tuple(f"{url}/v1" for url in fleet.urls),
            time=10.0,
            time_scale=20.0,
            show_progress=False,
        )
        result = await run_benchmark(cfg)
    ok = [r for r in result.records if r.ok]
    assert ok, [(r.status, r.error) for r in result.records]
    assert all(r.status in ("ok", "cancelled") for r in result.records)
    assert all(r.ttft is not None and r.ttft > 0 for r in ok)
    assert all(r.generation_tokens == 16 and r.prompt_tokens > 300 for r in ok)
    assert {r.base_url for r in ok} == set(cfg.base_urls)
    by_round = {(r.user_id, r.round): r for r in ok}
    users = [u for (u, n) in by_round if n == 1 and (u, 2) in by_round]
    assert users, "a user should have finished both rounds"
    for user in users:
        assert by_round[(user, 2)].prompt_tokens > by_round[(user, 1)].prompt_tokens + 16
    assert result.summary.finished == len(ok)
    assert result.summary.avg_ttft > 0

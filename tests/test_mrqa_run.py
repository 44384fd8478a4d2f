"""run_benchmark and `epp bench multi-round-qa` against fake OpenAI-compatible servers."""

import asyncio
import csv
from pathlib import Path

import pytest

from bench.multi_round_qa import run_benchmark
from epp.cli import main
from tests.test_mrqa_prompts import make_cfg
from tests.test_mrqa_support import ServerBehaviour, closed_port_url, fake_server


async def test_history_grows_with_the_servers_answers(tmp_path: Path) -> None:
    behaviour = ServerBehaviour(token_delay=0.001)
    async with fake_server(behaviour) as url:
        cfg = make_cfg(
            num_users=2,
            num_rounds=3,
            qps=20.0,
            answer_len=4,
            base_urls=(url,),
            time=1.0,
            request_with_user_id=True,
            show_progress=False,
            output=tmp_path / "r.csv",
        )
        result = await run_benchmark(cfg)
    done = [r for r in result.records if r.status == "ok"]
    assert len(done) >= 4 and all(r.status in ("ok", "cancelled") for r in result.records)
    checked = 0
    for user in {r.user_id for r in done}:
        # A user's requests are sequential, so the server saw them in round order.
        records = sorted((r for r in result.records if r.user_id == user), key=lambda r: r.round)
        bodies = [b["messages"] for b in behaviour.requests if b["user"] == str(user)]
        for i in range(min(len(records), len(bodies)) - 1):
            if records[i].status != "ok" or records[i + 1].status != "ok":
                continue
            earlier, later = bodies[i], bodies[i + 1]
            assert later[: len(earlier)] == earlier
            assert later[len(earlier)] == {"role": "assistant", "content": records[i].answer}
            assert records[i + 1].prompt_tokens > records[i].prompt_tokens
            checked += 1
    assert checked, "some user should have finished two consecutive rounds"
    with (tmp_path / "r.csv").open() as handle:
        assert len(list(csv.reader(handle))) == len(result.records) + 1
    assert result.summary.finished == len(done)


async def test_base_urls_are_used_in_turn() -> None:
    first, second = ServerBehaviour(), ServerBehaviour()
    async with fake_server(first) as url1, fake_server(second) as url2:
        cfg = make_cfg(
            num_users=3,
            num_rounds=2,
            qps=20.0,
            answer_len=2,
            base_urls=(url1, url2),
            time=0.5,
            show_progress=False,
        )
        result = await run_benchmark(cfg)
    urls = [r.base_url for r in result.records]
    assert urls[::2] == [url1] * len(urls[::2]) and urls[1::2] == [url2] * len(urls[1::2])
    assert len(first.requests) >= 2 and len(second.requests) >= 2


async def test_failing_server_is_recorded_and_users_are_replaced() -> None:
    async with fake_server(ServerBehaviour(error_status=503)) as url:
        cfg = make_cfg(num_users=2, num_rounds=3, qps=20.0, base_urls=(url,), time=0.5, show_progress=False)
        result = await run_benchmark(cfg)
    assert result.records and all(r.status in ("http_503", "cancelled") for r in result.records)
    assert result.summary.failed == sum(r.status == "http_503" for r in result.records)
    assert result.summary.finished == 0
    assert len({r.user_id for r in result.records}) > 2


async def test_time_scale_paces_in_simulated_seconds() -> None:
    async with fake_server(ServerBehaviour()) as url:
        cfg = make_cfg(
            num_users=2,
            num_rounds=2,
            qps=4.0,
            answer_len=2,
            base_urls=(url,),
            time=2.0,
            time_scale=4.0,
            show_progress=False,
        )
        loop = asyncio.get_running_loop()
        wall_start = loop.time()
        result = await run_benchmark(cfg)
        wall = loop.time() - wall_start
    assert result.duration >= 2.0
    assert wall < result.duration  # ran faster than simulated time
    assert all(0.0 <= r.launch_time <= result.duration for r in result.records)


async def test_stop_event_cancels_requests_in_flight() -> None:
    async with fake_server(ServerBehaviour(first_token_delay=30.0)) as url:
        cfg = make_cfg(num_users=2, num_rounds=2, qps=10.0, base_urls=(url,), show_progress=False)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        result = await run_benchmark(cfg, stop)
    assert result.records and all(r.status == "cancelled" for r in result.records)
    assert result.summary.on_the_fly == len(result.records)


CLI_ARGS = [
    "bench",
    "multi-round-qa",
    "--num-users",
    "2",
    "--num-rounds",
    "2",
    "--shared-system-prompt",
    "10",
    "--user-history-prompt",
    "10",
    "--answer-len",
    "4",
    "--model",
    "m",
    "--no-progress",
]


def test_cli_writes_summary_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    code = main(
        [*CLI_ARGS, "--qps", "20", "--time", "0.3", "--base-url", closed_port_url(), "--output", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "==================== Performance summary ======================" in printed
    assert "  Failed requests: " in printed
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["status"] for row in rows} <= {"connection_error", "cancelled"}


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CLI_ARGS, "--qps", "0", "--base-url", "http://127.0.0.1:1/v1"]) == 2
    assert "qps" in capsys.readouterr().err
    assert main([*CLI_ARGS, "--qps", "1", "--base-url", "127.0.0.1:1"]) == 2
    assert "must start with http://" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    args = [*CLI_ARGS, "--qps", "1", "--base-url", "http://127.0.0.1:1/v1", "--sharegpt", str(bad)]
    assert main(args) == 2
    assert f"ShareGPT data: {bad}: entry 0" in capsys.readouterr().err

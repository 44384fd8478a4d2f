"""Streaming measurement and error handling of the multi-round QA client against a fake server."""

import httpx

from bench.multi_round_qa.client import ChatClient, RequestRecord, SimClock
from bench.multi_round_qa.session import LaunchOrder
from tests.test_mrqa_support import ServerBehaviour, closed_port_url, fake_server

ORDER = LaunchOrder(user_id=7, round=1, messages=[{"role": "user", "content": "x" * 400}], max_tokens=5)


async def send(base_url: str, time_scale: float = 1.0, with_user_id: bool = False) -> RequestRecord:
    async with httpx.AsyncClient(timeout=10.0) as http:
        clock = SimClock(time_scale)
        client = ChatClient(http, "m", clock, request_with_user_id=with_user_id)
        record = RequestRecord(ORDER.user_id, ORDER.round, base_url, launch_time=0.0)
        await client.send(ORDER, base_url, record)
        return record


async def test_ttft_is_at_least_the_first_token_delay() -> None:
    behaviour = ServerBehaviour(first_token_delay=0.2, token_delay=0.02)
    async with fake_server(behaviour) as url:
        record = await send(url)
    assert record.status == "ok", record.error
    assert record.ttft is not None and record.finish_time is not None
    assert record.ttft >= 0.2
    assert record.ttft < record.finish_time - record.launch_time
    assert record.itl is not None and record.itl >= 0.02
    assert record.prompt_tokens == 100 and record.generation_tokens == 5
    assert record.answer == "w0 w1 w2 w3 w4 "
    assert record.generation_time is not None and record.generation_time > 0
    body = behaviour.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and "user" not in body


async def test_time_scale_multiplies_measured_times() -> None:
    behaviour = ServerBehaviour(first_token_delay=0.1)
    async with fake_server(behaviour) as url:
        record = await send(url, time_scale=10.0)
    assert record.ttft is not None and record.ttft >= 1.0


async def test_user_id_is_sent_when_asked() -> None:
    behaviour = ServerBehaviour()
    async with fake_server(behaviour) as url:
        await send(url, with_user_id=True)
    assert behaviour.requests[0]["user"] == "7"
    assert behaviour.headers[0]["x-user-id"] == "7"


async def test_http_error_is_recorded_with_status_and_message() -> None:
    async with fake_server(ServerBehaviour(error_status=429)) as url:
        record = await send(url)
    assert record.status == "http_429"
    assert record.error == "server is saturated"
    assert record.ttft is None and record.finish_time is not None


async def test_connection_error_is_recorded() -> None:
    record = await send(closed_port_url())
    assert record.status == "connection_error"
    assert "ConnectError" in record.error


async def test_error_inside_the_stream_is_recorded() -> None:
    async with fake_server(ServerBehaviour(stream_error_after=2)) as url:
        record = await send(url)
    assert record.status == "stream_error"
    assert record.error == "engine died"

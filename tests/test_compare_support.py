"""Helpers for the comparison tests."""

from bench.multi_round_qa import RequestRecord


def record(ttft: float | None, launch: float, ok: bool = True) -> RequestRecord:
    """A finished request launched at `launch` whose first token came `ttft` later."""
    finish = launch + (ttft or 0.0) + 1.0
    return RequestRecord(
        user_id=0,
        round=1,
        base_url="http://gw/v1",
        launch_time=launch,
        finish_time=finish,
        ttft=ttft,
        generation_time=1.0,
        generation_tokens=10,
        status="ok" if ok else "http_503",
    )

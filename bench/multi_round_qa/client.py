"""Sends one streamed chat completion and measures it: TTFT, inter-token latency, token counts, status."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench.multi_round_qa.session import LaunchOrder

STATUS_OK = "ok"
STATUS_CANCELLED = "cancelled"


@dataclass
class RequestRecord:
    """One request's outcome. Times are simulated seconds; launch/finish are relative to the run's start."""

    user_id: int
    round: int
    base_url: str
    launch_time: float
    finish_time: float | None = None
    ttft: float | None = None
    itl: float | None = None
    generation_time: float | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    status: str = STATUS_OK
    error: str = ""
    answer: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


class SimClock:
    """Simulated seconds since `start()`: wall-clock seconds times `time_scale`."""

    def __init__(self, time_scale: float) -> None:
        self.time_scale = time_scale
        self._wall_start = time.perf_counter()

    def now(self) -> float:
        return (time.perf_counter() - self._wall_start) * self.time_scale

    def wall_seconds(self, simulated: float) -> float:
        return simulated / self.time_scale


class _StreamError(Exception):
    """The server sent an error object inside the event stream."""


class ChatClient:
    """Posts chat completions with `stream: true` and usage reporting to the given base URL."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        model: str,
        clock: SimClock,
        api_key: str = "EMPTY",
        request_with_user_id: bool = False,
    ) -> None:
        self._http = http
        self._model = model
        self._clock = clock
        self._api_key = api_key
        self._with_user_id = request_with_user_id

    def _request(self, order: LaunchOrder) -> tuple[dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {
            "model": order.model or self._model,
            "messages": order.messages,
            "max_tokens": order.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        if self._with_user_id:
            body["user"] = str(order.user_id)
            headers["x-user-id"] = str(order.user_id)
        return body, headers

    async def send(self, order: LaunchOrder, base_url: str, record: RequestRecord) -> None:
        """Send `order` and fill `record` in place (so a cancelled send leaves what it measured)."""
        body, headers = self._request(order)
        record.launch_time = self._clock.now()
        try:
            async with self._http.stream(
                "POST", f"{base_url}/chat/completions", content=orjson.dumps(body), headers=headers
            ) as response:
                if response.status_code != 200:
                    record.status = f"http_{response.status_code}"
                    record.error = _error_message(await response.aread())
                else:
                    await self._read_stream(response, record)
        except _StreamError as exc:
            record.status, record.error = "stream_error", str(exc)
        except httpx.TimeoutException as exc:
            record.status, record.error = "timeout", type(exc).__name__
        except httpx.HTTPError as exc:
            record.status, record.error = "connection_error", f"{type(exc).__name__}: {exc}"
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, IndexError) as exc:
            record.status, record.error = "bad_response", f"{type(exc).__name__}: {exc}"
        record.finish_time = self._clock.now()
        if record.ok and record.ttft is not None:
            record.generation_time = record.finish_time - (record.launch_time + record.ttft)

    async def _read_stream(self, response: httpx.Response, record: RequestRecord) -> None:
        token_times: list[float] = []
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = orjson.loads(payload)
            if "error" in chunk:
                raise _StreamError(_error_message(payload.encode()))
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("reasoning_content")
                if text:
                    token_times.append(self._clock.now())
                    parts.append(text)
        record.answer = "".join(parts)
        if token_times:
            record.ttft = token_times[0] - record.launch_time
            if len(token_times) > 1:
                record.itl = (token_times[-1] - token_times[0]) / (len(token_times) - 1)
        if usage is not None:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.generation_tokens = int(usage.get("completion_tokens") or 0)
        else:
            # Without a usage chunk, each content chunk counts as one generated token.
            record.generation_tokens = len(token_times)


def _error_message(raw: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        parsed = orjson.loads(raw)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except orjson.JSONDecodeError:
        pass
    return raw[:200].decode("utf-8", errors="replace")

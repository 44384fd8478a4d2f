"""One simulated vLLM pod: the engine core driven by an asyncio loop in (scaled) real time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass, field

import xxhash

from bench.sim.clock import SimClock
from bench.sim.engine import EngineCore, SimRequest, TokenOutput
from bench.sim.faults import FaultState
from bench.sim.metrics import PodMetrics
from bench.sim.profiles import SimProfile
from bench.sim.protocol import ApiError, GenerationParams
from bench.sim.tokenizer import Tokenizer

_FILLER_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what up out more can said "
    "about other into some could them time these two may then do first any my now such like our over man"
)
FILLER_WORDS = tuple(_FILLER_TEXT.split())
# Host jitter tolerated before the engine's timeline re-anchors to the clock (wall seconds).
MAX_LAG_WALL_S = 0.005


@dataclass(eq=False)
class RequestStream:
    """A submitted request and the queue its tokens arrive on (None marks the end)."""

    request: SimRequest
    params: GenerationParams
    model: str
    created: int
    seed: int
    queue: asyncio.Queue[TokenOutput | None] = field(default_factory=asyncio.Queue)

    def token_text(self, index: int) -> str:
        """Deterministic filler text of the `index`-th generated token."""
        h = xxhash.xxh64_intdigest(index.to_bytes(4, "little"), seed=self.seed)
        return " " + FILLER_WORDS[h % len(FILLER_WORDS)]


class SimPod:
    """Engine + metrics + faults of one pod. `start()` launches its engine loop in the running event loop."""

    def __init__(
        self,
        profile: SimProfile,
        *,
        served_model_name: str | None = None,
        lora_modules: tuple[str, ...] = (),
        max_loras: int = 1,
        time_scale: float = 1.0,
        seed: int = 0,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.profile = profile
        self.model_name = served_model_name or profile.model
        self.lora_modules = lora_modules
        self.max_loras = max_loras
        self.seed = seed
        self.clock = SimClock(time_scale)
        self.tokenizer = tokenizer or Tokenizer()
        self.fault = FaultState()
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._streams: dict[str, RequestStream] = {}
        self._task: asyncio.Task[None] | None = None
        self.restart()

    def restart(self) -> None:
        """Simulate a pod restart: empty KV cache and queues, fresh metrics and process start time."""
        old = getattr(self, "_streams", {})
        for stream in list(old.values()):
            stream.queue.put_nowait(None)
        self._streams = {}
        self.engine = EngineCore(self.profile, self.max_loras)
        self.start_time = time.time()
        self.metrics = PodMetrics(self.engine, self.model_name, self.max_loras, self.start_time)
        self._last_end: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{id(self)}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- requests -------------------------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> tuple[str, str | None]:
        """(model name to echo, LoRA adapter or None); ApiError 404 for a model this pod does not serve."""
        if model is None or model == self.model_name:
            return self.model_name, None
        if model in self.lora_modules:
            return model, model
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def submit(self, params: GenerationParams) -> RequestStream:
        """Tokenise and queue a validated request; ApiError for an unknown model or an over-long prompt."""
        model, lora = self.resolve_model(params.model)
        ids = (
            params.prompt_ids
            if params.prompt_ids is not None
            else self.tokenizer.encode(params.prompt_text or "")
        )
        p = self.profile
        room = p.max_model_len - len(ids)
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            raise ApiError(
                400,
                f"This model's maximum context length is {p.max_model_len} tokens. However, you requested "
                f"{len(ids) + (params.max_tokens or 1)} tokens ({len(ids)} in the messages, "
                f"{params.max_tokens or 1} in the completion). Please reduce the length of the messages or "
                "completion.",
                "max_tokens" if room >= 1 else "messages",
            )
        key = xxhash.xxh64_intdigest(bytes(str(ids[-64:]), "ascii"), seed=self.seed) ^ len(ids)
        stop_after: int | None = None
        max_tokens = params.max_tokens
        if max_tokens is None:
            if params.chat:
                low, high = p.chat_answer_tokens
                stop_after = None if params.ignore_eos else low + key % (high - low + 1)
                max_tokens = room
            else:
                max_tokens = min(16, room)  # vLLM's default for /v1/completions
        prefix = "chatcmpl" if params.chat else "cmpl"
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        req = SimRequest(request_id, ids, max_tokens, self.clock.now(), lora=lora, stop_after=stop_after)
        stream = RequestStream(req, params, model, int(time.time()), key)
        self._streams[request_id] = stream
        self.engine.add_request(req)
        self._wake.set()
        return stream

    def abort(self, stream: RequestStream) -> None:
        """Forget a request whose client went away."""
        if self._streams.pop(stream.request.request_id, None) is not None:
            self.engine.abort(stream.request)

    # -- engine loop ----------------------------------------------------------------------------------------
    def _step_start(self) -> float:
        now = self.clock.now()
        if self._last_end is not None and now - self._last_end < MAX_LAG_WALL_S * self.clock.time_scale:
            return max(self._last_end, now - MAX_LAG_WALL_S * self.clock.time_scale)
        return now

    async def _run(self) -> None:
        while True:
            engine = self.engine
            step = engine.schedule(self._step_start()) if engine.has_work() else None
            if step is None:
                self._last_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self.clock.wall_delay(step.end)
            await asyncio.sleep(max(delay, 0.0))
            if engine is not self.engine:
                continue  # restarted while the step ran
            self._last_end = step.end
            outputs = engine.complete(step)
            self.metrics.observe(outputs)
            for out in outputs:
                stream = self._streams.get(out.request.request_id)
                if stream is None:
                    continue
                stream.queue.put_nowait(out)
                if out.finished:
                    del self._streams[out.request.request_id]
                    stream.queue.put_nowait(None)

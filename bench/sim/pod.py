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
from bench.sim.kv_events import KVEventPublisher
from bench.sim.metrics import PodMetrics
from bench.sim.profiles import SimProfile
from bench.sim.protocol import ApiError, GenerationParams
from epp.tokenization.simulated import SimulatorTokenizer, Tokenizer

_FILLER_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what up out more can said "
    "about other into some could them time these two may then do first any my now such like our over man"
)
FILLER_WORDS = tuple(_FILLER_TEXT.split())
# Host jitter tolerated before the engine's timeline re-anchors to the clock (wall seconds).
MAX_LAG_WALL_S = 0.005
VLLM_VERSION = "0.32.0"  # the vLLM the simulator copies; part of `system_fingerprint`


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
        """Deterministic filler text of the `index`-th generated token.

        A chat answer's first word has no leading space (it follows the template's newline, as a real
        model's does), so the answer re-tokenises to the same ids in the next round and its blocks hit.
        """
        h = xxhash.xxh64_intdigest(index.to_bytes(4, "little"), seed=self.seed)
        word = FILLER_WORDS[h % len(FILLER_WORDS)]
        return word if index == 0 and self.params.chat else " " + word


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
        enable_lora: bool | None = None,
        enable_prompt_tokens_details: bool = False,
        kv_events: KVEventPublisher | None = None,
    ) -> None:
        self.profile = profile
        self.kv_events = kv_events
        self.enable_lora = bool(lora_modules) if enable_lora is None else enable_lora
        self.enable_prompt_tokens_details = enable_prompt_tokens_details
        self.model_name = served_model_name or profile.model
        # vLLM 0.32's default `--fingerprint-mode full`: "vllm-<version>-<8 hex of the config hash>".
        config = repr((profile, self.model_name, lora_modules, max_loras)).encode()
        self.system_fingerprint = f"vllm-{VLLM_VERSION}-{xxhash.xxh64_hexdigest(config)[:8]}"
        self.lora_modules = lora_modules
        self.max_loras = max_loras
        self.seed = seed
        self.clock = SimClock(time_scale)
        self.tokenizer = tokenizer or Tokenizer()
        # The picker's `simulator` tokenizer is this same object's logic: its ids are the pod's ids.
        self.prompt_tokenizer = SimulatorTokenizer(self.tokenizer, profile.bos_token_id)
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
        sink = None
        if self.kv_events is not None:
            self.kv_events.restart()
            sink = self.kv_events.publish
        self.engine = EngineCore(self.profile, self.max_loras, kv_event_sink=sink)
        self.start_time = time.time()
        self.metrics = PodMetrics(
            self.engine, self.model_name, self.max_loras if self.enable_lora else None, self.start_time
        )
        self._last_end: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{id(self)}")
        if self.kv_events is not None:
            self.kv_events.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.kv_events is not None:
            await self.kv_events.close()

    # -- requests -------------------------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> tuple[str, str | None]:
        """(model name to echo, LoRA adapter or None); ApiError 404 for a model this pod does not serve."""
        if model is None or model == self.model_name:
            return self.model_name, None
        if model in self.lora_modules:
            return model, model
        raise ApiError(404, f"The model `{model}` does not exist. Valid aliases: {self.model_name}.", "model")

    def _prompt_ids(self, params: GenerationParams) -> list[int]:
        """Token ids of the prompt, validated like vLLM 0.32's input processing (400s, never a crash)."""
        if params.prompt_ids is not None:
            ids = params.prompt_ids
            vocab = self.profile.vocab_size or self.tokenizer.vocab_size
            for token in (min(ids, default=0), max(ids, default=0)):  # vLLM reports the low end first
                if not 0 <= token < vocab:
                    raise ApiError(400, f"Token id {token} is out of vocabulary")
        else:
            ids = self.prompt_tokenizer.text_ids(params.prompt_text or "")
        if not ids:
            raise ApiError(400, "The decoder prompt cannot be empty")
        limit = self.profile.max_model_len
        if len(ids) > limit:  # the renderer's check; a text prompt is tokenised only up to limit + 1 tokens
            count = f"at least {limit + 1}" if params.prompt_ids is None else str(len(ids))
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{count} input tokens, which exceeds this limit even without any output tokens. Please "
                "reduce the length of the input prompt.",
                "input_tokens",
            )
        if len(ids) == limit:  # the engine's input processor: no room for one output token
            raise ApiError(
                400,
                f"The decoder prompt (length {limit}) plus the number of requested output tokens "
                f"(at least 1) is longer than the maximum model length of {limit}. Make sure that "
                "`max_model_len` is no smaller than the number of text tokens (prompt + requested output "
                "tokens).",
            )
        return ids

    def submit(self, params: GenerationParams) -> RequestStream:
        """Tokenise and queue a validated request; ApiError for an unknown model or an unusable prompt.

        Like vLLM 0.32, `max_tokens` beyond the context left is clamped (the answer finishes with "length");
        only a prompt that fills the whole context is refused.
        """
        model, lora = self.resolve_model(params.model)
        ids = self._prompt_ids(params)
        p = self.profile
        room = p.max_model_len - len(ids)
        key = xxhash.xxh64_intdigest(bytes(str(ids[-64:]), "ascii"), seed=self.seed) ^ len(ids)
        stop_after: int | None = None
        max_tokens = None if params.max_tokens is None else min(params.max_tokens, room)
        if max_tokens is None:
            if params.chat:
                low, high = p.chat_answer_tokens
                stop_after = None if params.ignore_eos else low + key % (high - low + 1)
                max_tokens = room
            else:
                max_tokens = min(16, room)  # vLLM's default for /v1/completions
        prefix = "chatcmpl" if params.chat else "cmpl"
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        req = SimRequest(
            request_id,
            ids,
            max_tokens,
            self.clock.now(),
            lora=lora,
            stop_after=stop_after,
            cache_salt=params.cache_salt,
        )
        stream = RequestStream(req, params, model, int(time.time()), key)
        # Generated tokens hash (decode blocks) like the streamed text re-tokenised in the next round.
        req.output_token = lambda i: self.tokenizer.encode(stream.token_text(i))[0]
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

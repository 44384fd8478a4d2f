"""Start the front end a variant's workload goes through and yield the OpenAI base URLs to send to."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO

import httpx

from bench.compare.variants import FrontKind, Variant
from bench.peers import PeerRouter

READY_PREFIX = "epp gateway listening on "


def _pump_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


class GatewayProcess:
    """`epp gateway` as a subprocess on a free port; `.base_url` is its root URL once it is ready."""

    def __init__(self, args: Sequence[str], startup_timeout: float = 30.0) -> None:
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None
        # stderr goes to a file: an undrained pipe would block the gateway once it logged 64 KiB.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "epp.cli", "gateway", "--host", "127.0.0.1", "--port", "0", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        try:
            self.base_url = self._wait_ready_line()
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_ready_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump_lines, args=(self._proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                self._proc.wait(timeout=5)
                raise RuntimeError(f"epp gateway exited before it was ready: {self.stderr_tail()}")
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip().rstrip("/")
        raise TimeoutError(f"epp gateway did not print its ready line within {self.startup_timeout}s")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"epp gateway at {self.base_url} did not answer /healthz")
                time.sleep(0.05)

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-chars:].strip()

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_args(variant: Variant, pod_urls: Sequence[str], seed: int) -> list[str]:
    """`epp gateway` flags for a variant: the pods as host:port, and its strategy or config file."""
    endpoints = ",".join(url.split("://", 1)[-1] for url in pod_urls)
    args = ["--endpoints", endpoints, "--seed", str(seed), "--log-level", "WARNING"]
    if variant.config is not None:
        args += ["--config", str(variant.config)]
    if variant.strategy is not None:
        args += ["--strategy", variant.strategy]
    return args


@contextlib.contextmanager
def open_frontend(variant: Variant, pod_urls: Sequence[str], seed: int) -> Iterator[list[str]]:
    """Run the variant's front end for the duration of the block; yields the base URLs (…/v1) to use."""
    if variant.kind is FrontKind.DIRECT:
        yield [f"{url}/v1" for url in pod_urls]
    elif variant.kind is FrontKind.GATEWAY:
        with GatewayProcess(gateway_args(variant, pod_urls, seed)) as gateway:
            yield [f"{gateway.base_url}/v1"]
    else:
        assert variant.peer is not None and variant.policy is not None
        with PeerRouter(variant.peer, variant.policy, list(pod_urls)) as router:
            yield [f"{router.base_url}/v1"]

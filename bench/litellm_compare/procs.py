"""Child processes of the benchmark: the counting taps and LiteLLM's proxy (in its own venv)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

LITELLM_VERSION = "1.106.12"  # 1.107+ need `litellm-proxy`, not on PyPI; 1.107.0 was a compromised release


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot report the one they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; RuntimeError if `proc` exits first, TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TapProcess:
    """`with TapProcess(["127.0.0.1:8001", ...]) as tap:` relays `tap.ports[i]` to upstream i.

    `tap.arrivals(i)` are the monotonic times at which requests for upstream i arrived.
    """

    def __init__(self, upstreams: Sequence[str], startup_timeout: float = 10.0) -> None:
        self.upstreams = list(upstreams)
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self._arrivals: list[list[float]] = [[] for _ in upstreams]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            parts = raw.decode().split()
            if parts[:1] == ["req"] and len(parts) == 3:
                with self._lock:
                    self._arrivals[int(parts[1])].append(float(parts[2]))
            elif parts[:1] == ["listen"] and len(parts) == 3:
                self.ports.append(int(parts[2]))
            elif parts == ["ready"]:
                self._ready.set()

    def arrivals(self, index: int) -> list[float]:
        with self._lock:
            return list(self._arrivals[index])

    def __enter__(self) -> Self:
        cmd = [sys.executable, "-m", "bench.litellm_compare.tap", *self.upstreams]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True).start()
        if not self._ready.wait(self.startup_timeout):
            _stop(self._proc)
            raise TimeoutError("tap did not get ready")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            _stop(self._proc)


def ensure_litellm_venv(venv: Path, version: str = LITELLM_VERSION, log: IO[str] = sys.stderr) -> Path:
    """The `litellm` executable of `venv`, creating the venv and installing litellm[proxy] on first use."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    started = time.monotonic()
    print(f"creating {venv} and installing litellm[proxy]=={version} (about a minute)", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"]
    subprocess.run(pip, check=True)
    print(f"installed litellm in {time.monotonic() - started:.0f}s", file=log, flush=True)
    return exe


class LiteLLMProcess:
    """`litellm --config FILE --port PORT` (0: a free one); `.base_url` once /health/liveliness answers."""

    def __init__(self, exe: Path, config: Path, port: int = 0, startup_timeout: float = 120.0) -> None:
        self.exe = exe
        self.config = config
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def log_tail(self, chars: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-chars:].decode(errors="replace")

    def __enter__(self) -> Self:
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        cmd = [str(self.exe), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_http_ok(f"{self.base_url}/health/liveliness", self.startup_timeout, self._proc)
        except BaseException as exc:
            tail = self.log_tail()
            self.__exit__(None, None, None)
            raise RuntimeError(f"litellm did not start: {exc}\n{tail}") from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

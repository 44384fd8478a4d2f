"""A fast fixed backend: nginx serving N "pods" that answer every request with canned vLLM responses.

Each pod is one nginx server block on its own loopback port, answering `/v1/chat/completions` and
`/v1/completions` with a fixed OpenAI JSON body, `/v1/models`, `/health`, and `/metrics` with a real vLLM
scrape (so pickers see schedulable, idle pods). All pods share one nginx worker process, far faster than any
router in front of it, so time spent above the direct baseline is the router's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
import orjson

from bench.peers import free_port
from epp.process_group import stop_group

VLLM_METRICS = Path(__file__).with_name("vllm_metrics.txt")  # a real vLLM 0.32 scrape (shared/fixtures)
MODEL = "tiny-llama"  # the model_name in the metrics fixture

CHAT_COMPLETION = {
    "id": "chatcmpl-overhead",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A short canned answer from the fixed backend."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 512, "completion_tokens": 10, "total_tokens": 522},
}
COMPLETION = {
    "id": "cmpl-overhead",
    "object": "text_completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [{"index": 0, "text": " A short canned answer.", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 512, "completion_tokens": 5, "total_tokens": 517},
}
MODELS = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 4096}],
}


class BackendError(RuntimeError):
    """nginx is missing or did not start."""


def find_nginx() -> str:
    """The nginx binary (Debian package `nginx`), on PATH or in /usr/sbin."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BackendError("nginx is not installed: apt-get install nginx (scripts/bootstrap.sh does)")
    return found


def _json_literal(body: object) -> str:
    """A JSON body as an nginx single-quoted string."""
    return "'" + orjson.dumps(body).decode().replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_nginx_conf(ports: list[int], metrics_path: Path, workdir: Path, run_as_root: bool) -> str:
    """nginx.conf for one pod per port, all served by a single worker process."""
    servers = []
    for port in ports:
        servers.append(
            f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        default_type application/json;
        location = /v1/chat/completions {{ return 200 {_json_literal(CHAT_COMPLETION)}; }}
        location = /v1/completions {{ return 200 {_json_literal(COMPLETION)}; }}
        location = /v1/models {{ return 200 {_json_literal(MODELS)}; }}
        location = /health {{ return 200 ''; }}
        location = /metrics {{ default_type text/plain; alias {metrics_path}; }}
        location / {{ return 404 '{{"error": {{"message": "not found", "type": "not_found"}}}}'; }}
    }}"""
        )
    user = "user root root;" if run_as_root else ""
    return f"""{user}
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    client_body_buffer_size 1m;
    client_max_body_size 64m;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    {"".join(servers)}
}}
"""


class NginxBackend:
    """`with NginxBackend(pods=4) as backend:` serves canned pods at `backend.urls` until exit.

    nginx runs in its own process group (`backend.proc.pid` is its leader), stopped on exit.
    """

    def __init__(self, pods: int = 4, host: str = "127.0.0.1", startup_timeout: float = 10.0) -> None:
        if pods < 1:
            raise ValueError(f"the backend needs at least one pod, got {pods}")
        self.pods = pods
        self.host = host
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.ports]

    @property
    def endpoints(self) -> list[str]:
        """The pods as host:port."""
        return [f"{self.host}:{p}" for p in self.ports]

    def start(self) -> None:
        nginx = find_nginx()
        self._dir = tempfile.TemporaryDirectory(prefix="epp-overhead-nginx-")
        workdir = Path(self._dir.name)
        metrics = workdir / "metrics.txt"
        shutil.copyfile(VLLM_METRICS, metrics)
        self.ports = [free_port(self.host) for _ in range(self.pods)]
        conf = workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(self.ports, metrics, workdir, os.geteuid() == 0), "utf-8")
        self.proc = subprocess.Popen(
            [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready(workdir)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, workdir: Path) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            for url in self.urls:
                while True:
                    if self.proc.poll() is not None:
                        log = (workdir / "error.log").read_text("utf-8", "replace")[-1000:]
                        raise BackendError(f"nginx exited with {self.proc.returncode}: {log}")
                    try:
                        if client.get(f"{url}/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise BackendError(f"nginx pod {url} did not answer /health")
                    time.sleep(0.02)

    def stop(self) -> None:
        """Stop nginx (SIGQUIT: graceful, then SIGKILL of its group)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                stop_group(self.proc, signal.SIGQUIT, grace_s=5)
            self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> NginxBackend:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

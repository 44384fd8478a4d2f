"""Debian's `prometheus` as a child process on a free loopback port, with its own TSDB folder.

The binary missing is an error (scripts/bootstrap.sh installs the package); nothing here touches a system
Prometheus service.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from epp.process_group import stop_child


def binary(name: str) -> str:
    """Path of `prometheus` or `promtool`; raises when the Debian package is not installed."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (apt-get install prometheus; scripts/bootstrap.sh)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusProcess:
    """`with PrometheusProcess(config_yaml, folder) as prom:` serves at `prom.url` until exit.

    `folder` holds the config and the TSDB (and the log, `prometheus.log`); rule files the config names
    must be absolute paths or relative to `folder`.
    """

    def __init__(self, config: str, folder: Path, startup_timeout: float = 30.0) -> None:
        self.folder = folder
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    @property
    def log_path(self) -> Path:
        return self.folder / "prometheus.log"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "prometheus.yml"
        config_path.write_text(self.config)
        args = [
            binary("prometheus"),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus was not ready within {self.startup_timeout}s")
            time.sleep(0.1)

    def reload(self, config: str, expect: str) -> None:
        """Write `config` and SIGHUP Prometheus; returns once its loaded config contains `expect`."""
        assert self._proc is not None
        self.config = config
        (self.folder / "prometheus.yml").write_text(config)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + self.startup_timeout
        while expect not in self.api("status/config")["yaml"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus did not reload: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a Prometheus HTTP API answer; raises on an API error (bad query, ...)."""
        response = self._client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar becomes a one-sample list)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, str]:
        """scrapeUrl -> health of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def stop(self) -> None:
        if self._proc is not None:
            stop_child(self._proc)
        self._proc = None
        self._client.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PromQLError(RuntimeError):
    """Prometheus refused a query."""

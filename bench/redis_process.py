"""Debian's redis-server for the cache benchmarks: a free loopback port, a temporary folder, AOF on."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from epp.process_group import stop_child


class RedisProcess:
    """One redis-server; `stop()` and `start()` again keep its folder (and so its append-only file)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self._binary = binary
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--logfile", str(self.folder / "redis.log")]  # fmt: skip
        self._proc = proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = self.folder / "redis.log"
                    raise SystemExit(f"redis-server did not start (log: {log})") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            stop_child(self._proc)
        self._proc = None


@contextmanager
def redis_server() -> Iterator[RedisProcess]:
    """A started RedisProcess, stopped (and its folder removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="epp-cache-bench-") as folder:
        server = RedisProcess(Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.stop()

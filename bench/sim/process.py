"""Run `epp sim` as a subprocess (for end-to-end tests and benchmarks) and wait until its pods answer."""

from __future__ import annotations

from bench.epp_process import EppProcess


class SimProcess(EppProcess):
    """`with SimProcess(["--pods", "2", "--profile", "tiny"]) as sim:` runs the simulator until exit.

    `sim.urls` are the pods' base URLs, read from the command's output once it printed its ready line and
    every pod answered /health.
    """

    def __init__(
        self, args: list[str], startup_timeout: float = 30.0, cpus: frozenset[int] | None = None
    ) -> None:
        super().__init__("sim", args, startup_timeout, cpus)
        self.urls: list[str] = []

    def _wait_ready(self) -> None:
        for line in self.read_until(lambda line: line.startswith("ready")):
            parts = line.split()
            if parts[:1] == ["pod"] and len(parts) >= 3:
                self.urls.append(parts[2])
        for url in self.urls:
            self.wait_http_ok(f"{url}/health")

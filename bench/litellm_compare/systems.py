"""Start each compared system in front of the two tapped providers and say where clients send."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.compare.frontends import GatewayProcess
from bench.litellm_compare.configs import (
    CLIENT_MODEL,
    MODEL,
    ROUTE_HOST,
    Policy,
    epp_resolve_flags,
    epp_traffic_config,
    litellm_config,
)
from bench.litellm_compare.load import Target
from bench.litellm_compare.procs import LiteLLMProcess

SYSTEMS = ("direct", "litellm", "epp")
CHAT = "/v1/chat/completions"


class NotRunnable(RuntimeError):
    """The system cannot run here (say why in the message)."""


@dataclass(frozen=True, slots=True)
class SystemContext:
    policy: Policy
    seed: int
    litellm_exe: Path | None  # None: litellm not installed / not requested
    litellm_port: int = 0


def epp_gateway_routes_providers() -> bool:
    """Whether this checkout's `epp gateway` takes provider host overrides (`--resolve`)."""
    out = subprocess.run(
        [sys.executable, "-m", "epp.cli", "gateway", "--help"], capture_output=True, text=True, check=False
    )
    return "--resolve" in out.stdout


@contextlib.contextmanager
def open_system(
    name: str, providers: tuple[str, str], tap_ports: tuple[int, int], ctx: SystemContext
) -> Iterator[Target]:
    """Run system `name` for the block; `providers` are the tapped base URLs of A and B."""
    with tempfile.TemporaryDirectory(prefix="litellm-compare-") as tmp:
        if name == "direct":  # the client splits 50/50 itself: no gateway, no fallback
            yield Target([f"{u}{CHAT}" for u in providers], MODEL)
        elif name == "litellm":
            if ctx.litellm_exe is None:
                raise NotRunnable("litellm is not installed (see --litellm-venv)")
            config = Path(tmp) / "litellm.yaml"
            config.write_text(litellm_config(providers, ctx.policy))
            with LiteLLMProcess(ctx.litellm_exe, config, ctx.litellm_port) as proxy:
                yield Target([f"{proxy.base_url}{CHAT}"], CLIENT_MODEL)
        elif name == "epp":
            if not epp_gateway_routes_providers():
                raise NotRunnable("`epp gateway` has no --resolve yet: it does not route provider hosts")
            config = Path(tmp) / "traffic.yaml"
            config.write_text(epp_traffic_config(ctx.policy))
            args = ["--config", str(config), *epp_resolve_flags(tap_ports)]
            args += ["--seed", str(ctx.seed), "--log-level", "WARNING"]
            gateway = GatewayProcess(args)
            try:
                gateway.start()
            except (RuntimeError, TimeoutError) as exc:
                last = str(exc).strip().splitlines()[-1]
                raise NotRunnable(f"`epp gateway` did not start ({last})") from exc
            try:
                yield Target([f"{gateway.base_url}{CHAT}"], CLIENT_MODEL, {"Host": ROUTE_HOST})
            finally:
                gateway.stop()
        else:
            raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")

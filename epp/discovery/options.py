"""`--discovery kubernetes|file:PATH` and its settings (light: the CLI imports it for every command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WatchSettings:
    """Kubernetes watch timing: each watch request's `timeoutSeconds` and the reconnect back-off."""

    watch_timeout_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    seed: int | None = None  # the back-off jitter's (tests)


@dataclass(frozen=True)
class DiscoveryOptions:
    """What the flags asked for; `mode` is `kubernetes` or `file`."""

    mode: str
    path: Path | None = None  # file mode
    kube_api: str | None = None  # kubernetes mode: an explicit apiserver URL instead of the in-cluster one
    kube_token_file: Path | None = None  # with kube_api
    kube_ca_file: Path | None = None  # with kube_api
    pool_name: str | None = None  # default: the config's InferencePool
    pool_namespace: str | None = None  # default: the pool's, else the pod's own namespace, else "default"
    poll_interval_s: float = 1.0  # file mode
    watch: WatchSettings = field(default_factory=WatchSettings)


def parse_discovery(value: str) -> tuple[str, Path | None]:
    """`kubernetes` or `file:PATH` -> (mode, path); ValueError otherwise (an argparse type)."""
    if value == "kubernetes":
        return "kubernetes", None
    if value.startswith("file:") and value.removeprefix("file:"):
        return "file", Path(value.removeprefix("file:"))
    raise ValueError("expected `kubernetes` or `file:PATH`")

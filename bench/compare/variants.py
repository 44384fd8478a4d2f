"""What is compared: epp gateway strategies, EndpointPickerConfig files, peer routers, or no router."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from epp.config.loader import load_config
from epp.config.routing_strategy import RoutingStrategy, parse_strategy

BASELINE = RoutingStrategy.ROUND_ROBIN.value
# The client sends to the pods in turn itself (no router): a reference for the gateway's overhead.
DIRECT = "DIRECT"
DEFAULT_STRATEGIES: tuple[str, ...] = ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "PREFIX_CACHE", "LOAD_AWARE")
PEER_POLICIES: tuple[str, ...] = ("cache_aware", "round_robin")


class FrontKind(Enum):
    """Which front end the workload goes through."""

    GATEWAY = "epp gateway"
    PEER = "peer router"
    DIRECT = "no router"


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a name for the table and how to start its front end."""

    name: str
    kind: FrontKind
    strategy: str | None = None
    config: Path | None = None
    peer: str | None = None
    policy: str | None = None

    @property
    def slug(self) -> str:
        """The name as a file-name part."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name.lower())


def parse_strategy_list(text: str) -> list[str]:
    """`ROUND_ROBIN,PREFIX_CACHE` -> the names, checked; ValueError naming a bad one."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("--strategies needs at least one name")
    for name in names:
        if name != DIRECT:
            parse_strategy(name)
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies lists a name twice: {text}")
    return names


def build_variants(strategies: Sequence[str], configs: Sequence[Path], peers: Sequence[str]) -> list[Variant]:
    """The variants in run order; each config file is validated first (ConfigError when invalid)."""
    variants = [
        Variant(name, FrontKind.DIRECT) if name == DIRECT else Variant(name, FrontKind.GATEWAY, strategy=name)
        for name in strategies
    ]
    for path in configs:
        load_config([path], os.environ)
        variants.append(Variant(f"config:{path.stem}", FrontKind.GATEWAY, config=path))
    for peer in peers:
        for policy in PEER_POLICIES:
            variants.append(Variant(f"{peer}/{policy}", FrontKind.PEER, peer=peer, policy=policy))
    return variants


def baseline_name(names: Sequence[str]) -> str:
    """ROUND_ROBIN when it ran, else the first variant."""
    return BASELINE if BASELINE in names else names[0]

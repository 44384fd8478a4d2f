"""What is compared: epp gateway strategies, EndpointPickerConfig files, peer routers, or no router.

A gateway variant's name may end in `@N`: the gateway runs N worker processes (`epp gateway --workers N`),
each with its own picker, so each one's approximate prefix index learns only its own picks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from epp.config.kv_events import effective_kv_events
from epp.config.loader import load_config
from epp.config.routing_strategy import RoutingStrategy, parse_strategy

BASELINE = RoutingStrategy.ROUND_ROBIN.value
# The client sends to the pods in turn itself (no router): a reference for the gateway's overhead.
DIRECT = "DIRECT"
# The precise prefix scorer over the pods' KV events (docs/precise-prefix.md): a bench config, not a built-in.
# PRECISE: PREFIX_CACHE's affinity rule over it; PRECISE_WEIGHTED: a weighted score against least-request;
# PRECISE_TOKENS: PREFIX_TOKENS's token-aware rule over it.
PRECISE = "PRECISE"
PRECISE_WEIGHTED = "PRECISE_WEIGHTED"
PRECISE_TOKENS = "PRECISE_TOKENS"
PRECISE_TOKENS_R2 = "PRECISE_TOKENS_R2"  # PRECISE_TOKENS with `replicas: 2`, for 2 workers
PRECISE_CONFIGS: dict[str, Path] = {
    PRECISE: Path(__file__).resolve().parent / "precise_prefix.yaml",
    PRECISE_WEIGHTED: Path(__file__).resolve().parent / "precise_weighted.yaml",
    PRECISE_TOKENS: Path(__file__).resolve().parent / "precise_tokens.yaml",
    PRECISE_TOKENS_R2: Path(__file__).resolve().parent / "precise_tokens_r2.yaml",
}
MAX_WORKERS = 16
DEFAULT_STRATEGIES: tuple[str, ...] = (
    "ROUND_ROBIN",
    "RANDOM",
    "LEAST_REQUEST",
    "PREFIX_CACHE",
    "LOAD_AWARE",
    "PREFIX_TOKENS",
)
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
    workers: int = 1
    kv_events: bool = False  # the pods must publish KV events (the picker follows them)

    @property
    def slug(self) -> str:
        """The name as a file-name part."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name.lower())


def split_workers(name: str) -> tuple[str, int]:
    """`PREFIX_CACHE@2` -> ("PREFIX_CACHE", 2); no suffix -> 1 worker. ValueError when N is not 1..16."""
    base, sep, count = name.partition("@")
    if not sep:
        return name, 1
    if not count.isdigit() or not 1 <= int(count) <= MAX_WORKERS:
        raise ValueError(f"{name!r}: the worker count after '@' must be an integer from 1 to {MAX_WORKERS}")
    return base, int(count)


def parse_strategy_list(text: str) -> list[str]:
    """`ROUND_ROBIN,PREFIX_CACHE@2,PRECISE@2` -> the names, checked; ValueError naming a bad one."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("--strategies needs at least one name")
    for name in names:
        base, _ = split_workers(name)
        if base == DIRECT and base != name:
            raise ValueError(f"{name!r}: {DIRECT} has no router, so no workers")
        if base != DIRECT and base not in PRECISE_CONFIGS:
            parse_strategy(base)
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies lists a name twice: {text}")
    return names


def needs_kv_events(path: Path) -> bool:
    """Whether the config's picker follows KV events (a precise scorer, or a `kvEvents` section);
    ConfigError when the file is invalid."""
    picker = load_config([path], os.environ).picker_config
    return effective_kv_events(picker.kv_events, [p.type for p in picker.plugins]) is not None


def strategy_variant(name: str) -> Variant:
    """A `--strategies` name as a variant: DIRECT, a built-in strategy or one of PRECISE_CONFIGS, with its
    workers."""
    if name == DIRECT:
        return Variant(name, FrontKind.DIRECT)
    base, workers = split_workers(name)
    if base in PRECISE_CONFIGS:
        return Variant(name, FrontKind.GATEWAY, config=PRECISE_CONFIGS[base], workers=workers, kv_events=True)
    return Variant(name, FrontKind.GATEWAY, strategy=base, workers=workers)


def build_variants(strategies: Sequence[str], configs: Sequence[Path], peers: Sequence[str]) -> list[Variant]:
    """The variants in run order; each config file is validated first (ConfigError when invalid)."""
    variants = [strategy_variant(name) for name in strategies]
    for path in configs:
        kv_events = needs_kv_events(path)
        variants.append(Variant(f"config:{path.stem}", FrontKind.GATEWAY, config=path, kv_events=kv_events))
    for peer in peers:
        for policy in PEER_POLICIES:
            variants.append(Variant(f"{peer}/{policy}", FrontKind.PEER, peer=peer, policy=policy))
    return variants


def baseline_name(names: Sequence[str]) -> str:
    """ROUND_ROBIN when it ran, else the first variant."""
    return BASELINE if BASELINE in names else names[0]

"""Built-in routing strategies: named EndpointPickerConfig documents shipped as package data."""

from __future__ import annotations

from enum import Enum
from importlib import resources
from typing import Any

import yaml

from epp.config.errors import ConfigError, ConfigIssue, DocumentRef, show_value
from epp.config.picker_config import EndpointPickerConfig

STRATEGY_ANNOTATION = "inference.networking.x-k8s.io/routing-strategy"
# Keys of an EndpointPickerConfig document that are not part of the picker config itself.
HEADER_KEYS = frozenset({"apiVersion", "kind", "metadata"})


class RoutingStrategy(Enum):
    """Values of the InferencePool routing-strategy annotation."""

    PREFIX_CACHE = "PREFIX_CACHE"
    PREFIX_TOKENS = "PREFIX_TOKENS"  # prefix affinity bounded by estimated wait in tokens (learned rates)
    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LOAD_AWARE = "LOAD_AWARE"

    @property
    def profile_name(self) -> str:
        """The scheduling profile's name: lower kebab case, e.g. `prefix-cache`."""
        return self.value.lower().replace("_", "-")

    @property
    def resource_name(self) -> str:
        return f"{self.value.lower()}.yaml"


DEFAULT_STRATEGY = RoutingStrategy.PREFIX_TOKENS
VALID_NAMES = ", ".join(s.value for s in RoutingStrategy)


def parse_strategy(name: str) -> RoutingStrategy:
    """`PREFIX_CACHE` -> RoutingStrategy.PREFIX_CACHE; ValueError listing the valid names otherwise."""
    try:
        return RoutingStrategy(name)
    except ValueError:
        raise ValueError(f"must be one of {VALID_NAMES} (got {show_value(name)})") from None


def picker_config_body(document: dict[str, Any]) -> dict[str, Any]:
    """The EndpointPickerConfig fields of a document (everything but apiVersion, kind, metadata)."""
    return {k: v for k, v in document.items() if k not in HEADER_KEYS}


def builtin_strategy(name: str | RoutingStrategy) -> EndpointPickerConfig:
    """A new EndpointPickerConfig for a built-in strategy; ConfigError for an unknown name."""
    if isinstance(name, RoutingStrategy):
        strategy = name
    else:
        try:
            strategy = parse_strategy(name)
        except ValueError as exc:
            raise ConfigError([ConfigIssue(DocumentRef("strategy"), str(exc))]) from None
    text = resources.files("epp.config.strategies").joinpath(strategy.resource_name).read_text("utf-8")
    return EndpointPickerConfig.model_validate(picker_config_body(yaml.safe_load(text)))

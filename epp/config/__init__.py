"""Kubernetes-shaped configuration: InferencePool, InferenceModel, EndpointPickerConfig and friends.

`load_config(paths, env)` reads multi-document YAML files (the documents a user applies to a cluster) and
returns a validated EppConfig, or raises one ConfigError naming file, document, field and reason for every
problem found.
"""

from epp.config.documents import OtherDocument
from epp.config.endpoints import StaticEndpoints, make_endpoint, parse_address, parse_endpoints
from epp.config.errors import ConfigError, Redactor
from epp.config.gie import InferenceModel, InferenceModelSpec, InferencePool, InferencePoolSpec, TargetModel
from epp.config.loader import load_config, load_config_text
from epp.config.model_registry import ModelRegistry
from epp.config.picker_config import EndpointPickerConfig, PluginSpec, ProfilePluginRef, SchedulingProfileSpec
from epp.config.result import EppConfig
from epp.config.routing_strategy import (
    DEFAULT_STRATEGY,
    STRATEGY_ANNOTATION,
    RoutingStrategy,
    builtin_strategy,
    parse_strategy,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGY_ANNOTATION",
    "ConfigError",
    "EndpointPickerConfig",
    "EppConfig",
    "InferenceModel",
    "InferenceModelSpec",
    "InferencePool",
    "InferencePoolSpec",
    "ModelRegistry",
    "OtherDocument",
    "PluginSpec",
    "ProfilePluginRef",
    "Redactor",
    "RoutingStrategy",
    "SchedulingProfileSpec",
    "StaticEndpoints",
    "TargetModel",
    "builtin_strategy",
    "load_config",
    "load_config_text",
    "make_endpoint",
    "parse_address",
    "parse_endpoints",
    "parse_strategy",
]

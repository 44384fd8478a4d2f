"""Gateway API Inference Extension kinds epp consumes: InferencePool and InferenceModel.

Specs ignore fields epp does not use (real GIE versions add fields, e.g. `spec.endpointPickerRef`), but
every field epp needs is required and checked. GIE v1's InferencePool shape (`targetPorts`,
`selector.matchLabels`) is accepted too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, field_validator, model_validator

from epp.config.numbers import StrictInt
from epp.config.routing_strategy import DEFAULT_STRATEGY, STRATEGY_ANNOTATION, RoutingStrategy
from epp.scheduling.types import Criticality

GIE_GROUP = "inference.networking.x-k8s.io"
POOL_API_VERSIONS = (f"{GIE_GROUP}/v1alpha2", f"{GIE_GROUP}/v1", "inference.networking.k8s.io/v1")
MODEL_API_VERSIONS = (f"{GIE_GROUP}/v1alpha2", f"{GIE_GROUP}/v1")
CRITICALITIES = ", ".join(c.value for c in Criticality)

_LENIENT = ConfigDict(extra="ignore", populate_by_name=True)


class ObjectMeta(BaseModel):
    model_config = _LENIENT

    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PoolMeta(ObjectMeta):
    routing_strategy: RoutingStrategy = Field(
        default=DEFAULT_STRATEGY, validation_alias=AliasPath("annotations", STRATEGY_ANNOTATION)
    )


class ExtensionRef(BaseModel):
    """The endpoint picker service the gateway calls for this pool."""

    model_config = _LENIENT

    name: str = Field(min_length=1)
    group: str | None = None
    kind: str | None = None
    port_number: StrictInt | None = Field(
        default=None, ge=1, le=65535, validation_alias=AliasChoices("portNumber", "port", "port_number")
    )
    failure_mode: Literal["FailOpen", "FailClose"] | None = Field(default=None, alias="failureMode")

    @field_validator("port_number", mode="before")
    @classmethod
    def _v1_port(cls, value: Any) -> Any:
        return value.get("number") if isinstance(value, dict) else value  # GIE v1: `port: {number: N}`


class InferencePoolSpec(BaseModel):
    model_config = _LENIENT

    selector: dict[str, str]
    target_port_number: StrictInt = Field(ge=1, le=65535, alias="targetPortNumber")
    extension_ref: ExtensionRef | None = Field(
        default=None, validation_alias=AliasChoices("extensionRef", "endpointPickerRef", "extension_ref")
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_v1_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        selector = data.get("selector")
        if isinstance(selector, dict) and set(selector) == {"matchLabels"}:
            data["selector"] = selector["matchLabels"]
        ports = data.get("targetPorts")
        if (
            "targetPortNumber" not in data
            and isinstance(ports, list)
            and ports
            and isinstance(ports[0], dict)
        ):
            data["targetPortNumber"] = ports[0].get("number")
        return data


class InferencePool(BaseModel):
    """A pool of model-server pods selected by label; its annotation picks the routing strategy."""

    model_config = _LENIENT

    api_version: str = Field(alias="apiVersion")
    kind: Literal["InferencePool"] = "InferencePool"
    metadata: PoolMeta
    spec: InferencePoolSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def routing_strategy(self) -> RoutingStrategy:
        """From the routing-strategy annotation; DEFAULT_STRATEGY (PREFIX_TOKENS) when it is absent."""
        return self.metadata.routing_strategy


class PoolRef(BaseModel):
    model_config = _LENIENT

    group: str = GIE_GROUP
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class TargetModel(BaseModel):
    """A model (usually a LoRA adapter) that requests for the InferenceModel are rewritten to."""

    model_config = _LENIENT

    name: str = Field(min_length=1)
    weight: StrictInt | None = Field(default=None, ge=0, le=1_000_000)


class InferenceModelSpec(BaseModel):
    model_config = _LENIENT

    model_name: str = Field(min_length=1, alias="modelName")
    criticality: Criticality = Criticality.STANDARD
    pool_ref: PoolRef = Field(alias="poolRef")
    target_models: list[TargetModel] = Field(default_factory=list, alias="targetModels")

    @field_validator("criticality", mode="before")
    @classmethod
    def _known_criticality(cls, value: Any) -> Any:
        if value is None:
            return Criticality.STANDARD
        if isinstance(value, Criticality):
            return value
        if not isinstance(value, str) or value not in {c.value for c in Criticality}:
            raise ValueError(f"must be one of {CRITICALITIES}")
        return Criticality(value)

    @field_validator("target_models")
    @classmethod
    def _usable_weights(cls, targets: list[TargetModel]) -> list[TargetModel]:
        if not targets:
            return targets
        names = [t.name for t in targets]
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"target names must be unique, repeated: {', '.join(repeated)}")
        weighted = [t.weight is not None for t in targets]
        if any(weighted) and not all(weighted):
            raise ValueError("set weight on every target or on none (none means equal weights)")
        if all(weighted) and not any(t.weight for t in targets):
            raise ValueError("at least one target needs a positive weight")
        return targets

    def target_weights(self) -> list[tuple[str, int]]:
        """(target name, weight) with weight > 0; equal weights when none are set."""
        return [(t.name, 1 if t.weight is None else t.weight) for t in self.target_models if t.weight != 0]


class InferenceModel(BaseModel):
    """A served model name: its criticality and the targets its requests are rewritten to."""

    model_config = _LENIENT

    api_version: str = Field(alias="apiVersion")
    kind: Literal["InferenceModel"] = "InferenceModel"
    metadata: ObjectMeta
    spec: InferenceModelSpec

    @property
    def name(self) -> str:
        return self.metadata.name

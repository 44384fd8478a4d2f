"""The `kvEvents` section of EndpointPickerConfig: where each pod's vLLM KV-event publisher is.

Either `discover: true` (ask each pod's `GET /kv_event_sources`), or an `endpoint` template such as
`tcp://{host}:5557` (placeholders `{host}`, `{port}`, `{name}` of the pod), or per-pod `pods:` entries; a
`pods:` entry wins over both. `bind: true` when vLLM's endpoint is a plain address (vLLM then connects, so
epp binds it): that needs explicit addresses, discovery cannot give them.
"""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from epp.config.numbers import FiniteFloat

PLACEHOLDERS = frozenset({"host", "port", "name"})
SCHEMES = ("tcp://", "ipc://", "inproc://")
PRECISE_SCORER_TYPE = "precise-prefix-cache-scorer"


def _check_template(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(SCHEMES):
        raise ValueError(f"must start with one of {', '.join(SCHEMES)}, got {value!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template {value!r}: {exc}") from None
    unknown = sorted(fields - PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: {{host}}, {{port}}, {{name}})")
    return value


class KVEventSourceSpec(BaseModel):
    """One pod's publisher, given explicitly."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    endpoint: str
    replay_endpoint: str | None = Field(default=None, alias="replayEndpoint")
    topic: str | None = None  # None: the section's topic

    @field_validator("endpoint", "replay_endpoint")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return _check_template(value)


class ReconnectSpec(BaseModel):
    """Back-off between attempts to (re)open a pod's subscription (discovery failed, socket error)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    initial_seconds: FiniteFloat = Field(default=0.1, gt=0, alias="initialSeconds")
    max_seconds: FiniteFloat = Field(default=5.0, gt=0, alias="maxSeconds")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSpec:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("maxSeconds must be at least initialSeconds")
        return self


class KVEventsSpec(BaseModel):
    """Subscribe to every pod's KV events (precise prefix routing)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    enabled: bool = True
    discover: bool = False
    endpoint: str | None = None
    replay_endpoint: str | None = Field(default=None, alias="replayEndpoint")
    topic: str = ""
    bind: bool = False
    pods: dict[str, KVEventSourceSpec] = Field(default_factory=dict)
    replay_timeout_ms: int = Field(default=1_000, ge=1, le=60_000, strict=True, alias="replayTimeoutMs")
    # After a loss with no replay, a pod's view counts as rebuilt once followed for this long without a gap
    # (it then holds a subset of the pod's blocks: under-credit, never stale credit). 0: only an exact
    # rebuild (a replay from seq 0 or an AllBlocksCleared) ends the unknown state.
    rebuild_after_seconds: FiniteFloat = Field(default=30.0, ge=0, alias="rebuildAfterSeconds")
    reconnect: ReconnectSpec = Field(default_factory=ReconnectSpec)

    @field_validator("endpoint", "replay_endpoint")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return _check_template(value)

    @model_validator(mode="after")
    def _one_source(self) -> KVEventsSpec:
        if self.discover and self.endpoint is not None:
            raise ValueError("set either discover: true or an endpoint template, not both")
        if self.replay_endpoint is not None and self.endpoint is None:
            raise ValueError("replayEndpoint needs an endpoint template (discovery finds replay sockets)")
        if self.bind and self.discover:
            raise ValueError("bind: true needs explicit endpoints (endpoint or pods), not discover")
        if self.enabled and not (self.discover or self.endpoint is not None or self.pods):
            raise ValueError("kvEvents needs discover: true, an endpoint template or pods entries")
        return self


def effective_kv_events(spec: KVEventsSpec | None, plugin_types: list[str]) -> KVEventsSpec | None:
    """The section to follow: as configured, or discovery when a precise scorer is used without one;
    None when KV events are off."""
    if spec is not None:
        return spec if spec.enabled else None
    if PRECISE_SCORER_TYPE in plugin_types:
        return KVEventsSpec(discover=True)
    return None

"""Outlier-detection config as Istio writes it (DestinationRule ``trafficPolicy.outlierDetection``).

Field names and defaults follow Istio's API reference; ``maxEjectionTime`` is Envoy's field (Istio does
not expose it) and, when left out, becomes ``max(300s, baseEjectionTime)`` as in Envoy's and istiod's
translation. Unlike Istio, where ``maxEjectionPercent: 0`` cannot be told from "unset" and means
Envoy's 10%, an explicit 0 here means no host is ever ejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from epp.health.outlier import OutlierSettings

OUTLIER_ANNOTATION_PREFIX = "outlier-detection.epp.io/"

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ms|us|µs|ns|h|m|s)"
_DURATION_RE = re.compile(rf"(?:{_PART})+")
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")


def parse_duration(text: str | int | float) -> float:
    """Seconds from "1h", "2m", "10s", "500ms", "1.5s", "1m30s" (Go/Istio style) or a bare number."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"duration must be a string like '10s' or a number of seconds, got {text!r}")
    if isinstance(text, str):
        s = text.strip()
        if not s:
            raise ValueError("duration is empty; write it like '10s', '500ms' or '1m30s'")
        if s[0] == "-":
            raise ValueError(f"duration must be > 0, got {text!r}")
        if _NUMBER_RE.fullmatch(s):
            seconds = float(s)
        elif _DURATION_RE.fullmatch(s):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART_RE.findall(s))
        else:
            raise ValueError(
                f"invalid duration {text!r}: expected a number with a unit h, m, s, ms, us or ns "
                "(e.g. '10s', '500ms', '1m30s'), or a bare number of seconds"
            )
    else:
        seconds = float(text)
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {text!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be > 0, got {text!r}")
    return seconds


def _strict_int(value: object) -> int:
    # Annotation values arrive as strings, so decimal integer strings are accepted; bools and anything
    # fractional ("3.5", 3.0) are not.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got the boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"expected an integer, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
StrictCount = Annotated[int, BeforeValidator(_strict_int)]


class OutlierDetectionSpec(BaseModel):
    """Istio's ``OutlierDetection`` (plus Envoy's ``maxEjectionTime``), camelCase as Istio writes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    consecutive_5xx_errors: StrictCount = Field(default=5, ge=0, alias="consecutive5xxErrors")
    consecutive_gateway_errors: StrictCount = Field(default=0, ge=0, alias="consecutiveGatewayErrors")
    # Durations are stored in seconds: 10s, 30s and 300s.
    interval: Duration = Field(default=10.0, alias="interval")
    base_ejection_time: Duration = Field(default=30.0, alias="baseEjectionTime")
    max_ejection_time: Duration = Field(default=300.0, alias="maxEjectionTime")
    max_ejection_percent: StrictCount = Field(default=10, ge=0, le=100, alias="maxEjectionPercent")
    min_health_percent: StrictCount = Field(default=0, ge=0, le=100, alias="minHealthPercent")

    @model_validator(mode="after")
    def _max_not_below_base(self) -> OutlierDetectionSpec:
        if "max_ejection_time" in self.model_fields_set and self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"maxEjectionTime ({self.max_ejection_time:g}s) must be >= "
                f"baseEjectionTime ({self.base_ejection_time:g}s)"
            )
        return self

    def to_settings(self) -> OutlierSettings:
        """The detector settings; an unset maxEjectionTime is max(300s, baseEjectionTime) as in Envoy."""
        max_ejection = self.max_ejection_time
        if "max_ejection_time" not in self.model_fields_set:
            max_ejection = max(max_ejection, self.base_ejection_time)
        return OutlierSettings(
            consecutive_5xx=self.consecutive_5xx_errors,
            consecutive_gateway_errors=self.consecutive_gateway_errors,
            interval_s=self.interval,
            base_ejection_time_s=self.base_ejection_time,
            max_ejection_time_s=max_ejection,
            max_ejection_percent=float(self.max_ejection_percent),
            min_health_percent=float(self.min_health_percent),
        )


_ALIASES = {f.alias: name for name, f in OutlierDetectionSpec.model_fields.items() if f.alias}


def outlier_spec_from_annotations(annotations: Mapping[str, str]) -> OutlierDetectionSpec | None:
    """The spec from ``outlier-detection.epp.io/<camelCaseField>`` annotations; None if there are none."""
    data: dict[str, Any] = {}
    key_of: dict[str, str] = {}
    for key, value in annotations.items():
        if not key.startswith(OUTLIER_ANNOTATION_PREFIX):
            continue
        field = key[len(OUTLIER_ANNOTATION_PREFIX) :]
        if field not in _ALIASES:
            raise ValueError(
                f"annotation {key!r}: unknown outlier-detection field {field!r}; "
                f"expected one of {', '.join(sorted(_ALIASES))}"
            )
        data[field] = value
        key_of[field] = key
    if not data:
        return None
    try:
        return OutlierDetectionSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            where = key_of.get(str(loc[0])) if loc else None
            where = where or ", ".join(sorted(key_of.values()))
            problems.append(f"annotation {where!r}: {err['msg']}")
        raise ValueError("; ".join(problems)) from None

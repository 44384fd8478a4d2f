"""Reading the apiserver's JSON: which endpoints a Pod gives, what an InferencePool selects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.config.routing_strategy import STRATEGY_ANNOTATION
from epp.datastore import Endpoint
from epp.health.outlier_settings import OUTLIER_ANNOTATION_PREFIX

DEFAULT_POOL_API_VERSION = "inference.networking.k8s.io/v1"
MODEL_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"


@dataclass(frozen=True)
class PoolTarget:
    """What an InferencePool's spec says about its pods: the labels they carry and the ports to use."""

    selector: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]

    @property
    def label_selector(self) -> str:
        """The `labelSelector` query value (`a=b,c=d`)."""
        return ",".join(f"{k}={v}" for k, v in self.selector)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector)


def pool_target(pool: Mapping[str, Any]) -> PoolTarget:
    """From an InferencePool object, v1 (`selector.matchLabels`, `targetPorts: [{number}]`) or v1alpha2
    (`selector: {k: v}`, `targetPortNumber`); ValueError naming the field when it cannot be used."""
    spec = pool.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("spec is missing")
    selector = spec.get("selector")
    if isinstance(selector, dict) and ("matchLabels" in selector or "matchExpressions" in selector):
        if selector.get("matchExpressions"):
            raise ValueError("spec.selector.matchExpressions is not supported (use matchLabels)")
        selector = selector.get("matchLabels")
    if (
        not isinstance(selector, dict)
        or not selector
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items())
    ):
        raise ValueError("spec.selector must be a non-empty map of label strings")
    ports: list[Any]
    if isinstance(spec.get("targetPorts"), list):
        ports = [p.get("number") if isinstance(p, dict) else None for p in spec["targetPorts"]]
    else:
        ports = [spec.get("targetPortNumber")]
    if not ports or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports
    ):
        raise ValueError("spec.targetPorts[].number / spec.targetPortNumber must be ports in 1..65535")
    return PoolTarget(tuple(sorted(selector.items())), tuple(ports))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, condition Ready=True, an IP, not being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or not status.get("podIP"):
        return False
    conditions = status.get("conditions") or []
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict)
    )


def pod_endpoints(pod: Mapping[str, Any], target: PoolTarget) -> list[Endpoint]:
    """The pod's endpoints if it is selected and ready: one per target port (`<pod>-rank-<i>` when the
    pool has several, as GIE names them), none otherwise."""
    labels = labels_of(pod)
    if not target.matches(labels) or not pod_ready(pod):
        return []
    name = str(pod["metadata"]["name"])
    ip = str(pod["status"]["podIP"])
    host = f"[{ip}]" if ":" in ip else ip
    pairs = tuple(sorted(labels.items()))
    if len(target.ports) == 1:
        return [Endpoint(name=name, host=host, port=target.ports[0], labels=pairs)]
    return [
        Endpoint(name=f"{name}-rank-{i}", host=host, port=port, labels=pairs)
        for i, port in enumerate(target.ports)
    ]


def collection_path(api_version: str, namespace: str, plural: str) -> str:
    """`/api/v1/namespaces/ns/pods` for the core group, `/apis/group/version/namespaces/ns/plural` else."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def picking_annotations(annotations: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The pool annotations epp reads at start-up (routing strategy, outlier detection), sorted."""
    return tuple(
        sorted(
            (str(k), str(v))
            for k, v in annotations.items()
            if k == STRATEGY_ANNOTATION or str(k).startswith(OUTLIER_ANNOTATION_PREFIX)
        )
    )

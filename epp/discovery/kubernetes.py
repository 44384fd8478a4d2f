"""`--discovery kubernetes`: the pods an InferencePool selects, followed through the apiserver's watch.

Three reflectors (epp.discovery.reflector): the InferencePool itself (a changed selector restarts the pod
watch with the new labelSelector, changed target ports re-map the pods already known), its pods (ready,
with an IP, not being deleted, labels still matching: a relabelled pod leaves) and the InferenceModels
(changes are only logged: the model registry is built at start-up, so they need a restart). While the
apiserver cannot be reached the datastore keeps the last known endpoints; `status` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from prometheus_client import CollectorRegistry

from epp.datastore import Endpoint
from epp.discovery.backoff import Backoff
from epp.discovery.kube_client import KubeClient
from epp.discovery.kube_objects import (
    MODEL_API_VERSION,
    PoolTarget,
    collection_path,
    picking_annotations,
    pod_endpoints,
    pool_target,
)
from epp.discovery.options import WatchSettings
from epp.discovery.reflector import Objects, Reflector
from epp.discovery.status import DiscoveryMetrics, DiscoveryStatus

logger = logging.getLogger(__name__)

Sink = Callable[[list[Endpoint]], None]


@dataclass(frozen=True)
class PoolRef:
    """Which InferencePool to follow, and what the config already said about it (None: nothing)."""

    name: str
    namespace: str
    api_version: str
    target: PoolTarget | None = None
    annotations: tuple[tuple[str, str], ...] | None = None
    model_names: frozenset[str] = frozenset()


class KubernetesDiscovery:
    def __init__(
        self,
        client: KubeClient,
        pool: PoolRef,
        sink: Sink,
        registry: CollectorRegistry,
        settings: WatchSettings | None = None,
    ) -> None:
        self.pool = pool
        self.status = DiscoveryStatus(DiscoveryMetrics(registry, "kubernetes"))
        self.target = pool.target
        self._client = client
        self._sink = sink
        self._settings = settings = settings or WatchSettings()
        self._rng = random.Random(settings.seed)
        self._annotations = pool.annotations
        self._models: str | None = None  # fingerprint of the InferenceModels at the first sync
        self._tasks: dict[str, asyncio.Task[None]] = {}
        ns = pool.namespace
        self.pool_reflector = self._reflector(
            "inferencepools",
            collection_path(pool.api_version, ns, "inferencepools"),
            {"fieldSelector": f"metadata.name={pool.name}"},
            self._on_pool,
        )
        self.model_reflector = self._reflector(
            "inferencemodels",
            collection_path(MODEL_API_VERSION, ns, "inferencemodels"),
            {},
            self._on_models,
            optional=True,
        )
        self.pod_reflector: Reflector | None = None

    def _reflector(
        self,
        resource: str,
        path: str,
        params: dict[str, str],
        on_change: Callable[[Objects], None],
        optional: bool = False,
    ) -> Reflector:
        s = self._settings
        return Reflector(
            self._client,
            resource,
            path,
            params,
            on_change,
            self._on_ok,
            self.status.failed,
            self.status.metrics,
            Backoff(s.backoff_initial_s, s.backoff_max_s, random.Random(self._rng.random())),
            s.watch_timeout_s,
            optional=optional,
        )

    def start(self) -> None:
        self._spawn("inferencepools", self.pool_reflector)
        self._spawn("inferencemodels", self.model_reflector)
        if self.target is not None:  # the config's copy of the pool: start on it, the apiserver's wins
            self._watch_pods(self.target)

    async def close(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()

    def _spawn(self, name: str, reflector: Reflector) -> None:
        old = self._tasks.pop(name, None)
        if old is not None:
            old.cancel()
        self._tasks[name] = asyncio.create_task(reflector.run(), name=f"discovery-{name}")

    def _watch_pods(self, target: PoolTarget) -> None:
        path = collection_path("v1", self.pool.namespace, "pods")
        self.pod_reflector = self._reflector(
            "pods", path, {"labelSelector": target.label_selector}, self._on_pods
        )
        self._spawn("pods", self.pod_reflector)

    def _on_ok(self) -> None:
        if self.pod_reflector is not None and self.pod_reflector.synced:
            self.status.synced(self.status.endpoints)

    # -- the pool ------------------------------------------------------------------------------------
    def _on_pool(self, objects: Objects) -> None:
        pool = next(
            (o for o in objects.values() if o.get("metadata", {}).get("name") == self.pool.name), None
        )
        if pool is None:
            logger.warning(
                "InferencePool %s/%s not found: keeping the %d last known endpoints",
                self.pool.namespace,
                self.pool.name,
                self.status.endpoints,
            )
            return
        try:
            target = pool_target(pool)
        except ValueError as exc:
            logger.warning("InferencePool %s: %s; keeping the previous selector", self.pool.name, exc)
            return
        annotations = picking_annotations(pool.get("metadata", {}).get("annotations") or {})
        if self._annotations is not None and annotations != self._annotations:
            logger.warning("InferencePool %s annotations changed: restart to apply", self.pool.name)
        self._annotations = annotations
        if target == self.target:
            return
        old, self.target = self.target, target
        logger.info(
            "InferencePool %s: selector %s, ports %s", self.pool.name, target.label_selector, target.ports
        )
        if old is None or old.selector != target.selector:
            self._watch_pods(target)  # a new labelSelector: list and watch again
        elif self.pod_reflector is not None:
            self._on_pods(self.pod_reflector.objects)  # same pods, other ports

    # -- the pods ------------------------------------------------------------------------------------
    def _on_pods(self, objects: Objects) -> None:
        target = self.target
        if target is None:
            return
        endpoints = [e for pod in objects.values() for e in pod_endpoints(pod, target)]
        self._sink(endpoints)
        self.status.synced(len(endpoints))

    # -- the models ----------------------------------------------------------------------------------
    def _on_models(self, objects: Objects) -> None:
        mine = sorted(
            (
                o
                for o in objects.values()
                if (o.get("spec") or {}).get("poolRef", {}).get("name") == self.pool.name
            ),
            key=lambda o: str(o.get("metadata", {}).get("name")),
        )
        fingerprint = orjson.dumps(
            [[o.get("metadata", {}).get("name"), o.get("spec")] for o in mine]
        ).decode()
        if self._models is None:
            names = frozenset(str((o.get("spec") or {}).get("modelName")) for o in mine)
            if names != self.pool.model_names:
                logger.warning(
                    "InferenceModels in the cluster (%s) differ from the config's (%s): restart to apply",
                    ", ".join(sorted(names)) or "none",
                    ", ".join(sorted(self.pool.model_names)) or "none",
                )
        elif fingerprint != self._models:
            logger.warning("InferenceModels of pool %s changed: restart to apply", self.pool.name)
        self._models = fingerprint

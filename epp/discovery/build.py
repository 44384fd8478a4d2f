"""Building the discovery source `DiscoveryOptions` ask for (epp.core calls it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry

from epp.config import EppConfig
from epp.datastore import Endpoint
from epp.discovery.file_source import FileDiscovery
from epp.discovery.kube_client import KubeClient, KubeConfigError, explicit, in_cluster
from epp.discovery.kube_objects import DEFAULT_POOL_API_VERSION, PoolTarget, picking_annotations, pool_target
from epp.discovery.kubernetes import KubernetesDiscovery, PoolRef
from epp.discovery.options import DiscoveryOptions
from epp.discovery.status import DiscoveryStatus


class Discovery(Protocol):
    """A started source hands the whole membership to its sink on every change."""

    status: DiscoveryStatus

    def start(self) -> None: ...

    async def close(self) -> None: ...


def build_discovery(
    options: DiscoveryOptions,
    config: EppConfig,
    sink: Callable[[list[Endpoint]], None],
    registry: CollectorRegistry,
    env: Mapping[str, str],
) -> Discovery:
    """The source `options` ask for, not started; ValueError (KubeConfigError) when it cannot be set up."""
    if options.mode == "file":
        if options.path is None:
            raise ValueError("--discovery file: needs a path")
        return FileDiscovery(options.path, sink, registry, options.poll_interval_s)
    if options.mode != "kubernetes":
        raise ValueError(f"unknown discovery mode {options.mode!r}")
    if options.kube_api:
        connection = explicit(options.kube_api, options.kube_token_file, options.kube_ca_file)
    else:
        connection = in_cluster(env)
    return KubernetesDiscovery(
        KubeClient(connection),
        _pool_ref(options, config, connection.namespace),
        sink,
        registry,
        options.watch,
    )


def _pool_ref(options: DiscoveryOptions, config: EppConfig, own_namespace: str | None) -> PoolRef:
    pool = config.pools.get(options.pool_name) if options.pool_name else config.pool
    name = options.pool_name or (pool.name if pool is not None else None)
    if not name:
        which = f"{len(config.pools)} InferencePools" if config.pools else "no InferencePool"
        raise KubeConfigError(f"--discovery kubernetes: the config has {which}; name one with --pool-name")
    namespace = (
        options.pool_namespace or (pool.metadata.namespace if pool else None) or own_namespace or "default"
    )
    if pool is None:
        return PoolRef(name, namespace, DEFAULT_POOL_API_VERSION)
    target: PoolTarget | None
    try:
        # The config keeps the first target port only; the apiserver's copy brings the others.
        spec = {"selector": pool.spec.selector, "targetPortNumber": pool.spec.target_port_number}
        target = pool_target({"spec": spec})
    except ValueError:
        target = None  # the apiserver's copy will say
    return PoolRef(
        name,
        namespace,
        pool.api_version,
        target,
        picking_annotations(pool.metadata.annotations),
        frozenset(config.models),
    )

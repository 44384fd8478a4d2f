"""Where a pod's KV-event publishers are: from the `kvEvents` config section or its `GET /kv_event_sources`.

vLLM answers `/kv_event_sources` with one entry per data-parallel rank, in one of three shapes:

- vLLM 0.32 (the installed release, `tests/fixtures/vllm/vllm-0.32/kv-event-sources.json`): a map from the
  rank to that rank's `--kv-events-config` with its ports already offset, `{"0": {"enable_kv_cache_events":
  true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": null, "topic": "kv", ...}}`;
- later releases: `{"sources": [{data_parallel_rank, endpoint, replay_endpoint, topic}, ...]}`;
- the simulator (bench.sim) and some releases: that list as a bare JSON array.

A bound endpoint is reported with its wildcard address (`tcp://*:5557`, `tcp://0.0.0.0:41001`): the pod's own
host is put in its place so it can be dialled. A 0.32 config whose endpoint is a plain address means vLLM
connects to it (the subscriber must bind), which discovery cannot do: SourceError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from epp.config.kv_events import KVEventsSpec
from epp.datastore import Endpoint

WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]", "::", "[::0]")


class SourceError(Exception):
    """The pod's publishers could not be found (discovery answered badly or not at all)."""


@dataclass(frozen=True)
class SourceAddress:
    """One publisher (one data-parallel rank) of a pod."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""
    rank: int | None = None


def reachable(endpoint: str, host: str) -> str:
    """`endpoint` with a wildcard address replaced by `host` (IPv6 hosts bracketed)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme != "tcp":
        return endpoint
    address, _, port = rest.rpartition(":")
    if address in WILDCARD_HOSTS:
        dial = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"tcp://{dial}:{port}"
    return endpoint


def _binds(endpoint: str) -> bool:
    """vLLM's rule: it binds a wildcard or ipc/inproc endpoint and connects to any other."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def _config_entries(body: dict[str, Any]) -> list[dict[str, Any]]:
    """vLLM 0.32's {rank: KVEventsConfig}, as list entries; publishers that are off or not ZeroMQ left out."""
    entries = []
    for key, config in body.items():
        if not isinstance(config, dict) or not str(key).isdigit():
            raise SourceError("/kv_event_sources: expected {rank: config} or a list of sources")
        if not config.get("enable_kv_cache_events", True) or config.get("publisher", "zmq") != "zmq":
            continue
        endpoint = config.get("endpoint")
        if isinstance(endpoint, str) and not _binds(endpoint):
            raise SourceError(
                f"/kv_event_sources: rank {key} connects to {endpoint} (a plain address): set kvEvents bind: "
                "true with that address under pods"
            )
        entries.append({**config, "data_parallel_rank": int(key)})
    return entries


def parse_sources(body: Any, host: str) -> list[SourceAddress]:
    """The publishers a `/kv_event_sources` answer lists; SourceError when it is not one of its shapes."""
    if isinstance(body, dict) and "sources" in body:
        items = body["sources"]
    elif isinstance(body, dict):
        items = _config_entries(body)
    else:
        items = body
    if not isinstance(items, list):
        raise SourceError('/kv_event_sources: expected {rank: config}, a JSON array or {"sources": [...]}')
    out: list[SourceAddress] = []
    for i, item in enumerate(items):
        endpoint = item.get("endpoint") if isinstance(item, dict) else None
        if not isinstance(endpoint, str) or not endpoint:
            raise SourceError(f"/kv_event_sources: entry {i} has no endpoint")
        if endpoint.rsplit(":", 1)[-1] in ("*", "0"):
            raise SourceError(f"/kv_event_sources: entry {i} has no port to dial ({endpoint})")
        replay = item.get("replay_endpoint")
        topic = item.get("topic") or ""
        rank = item.get("data_parallel_rank")
        out.append(
            SourceAddress(
                reachable(endpoint, host),
                reachable(replay, host) if isinstance(replay, str) and replay else None,
                topic if isinstance(topic, str) else "",
                rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
            )
        )
    return sorted(out, key=lambda s: (s.rank is None, s.rank or 0))


async def discover(client: httpx.AsyncClient, endpoint: Endpoint) -> list[SourceAddress]:
    """Ask the pod; SourceError when it cannot be reached or answers badly."""
    url = f"{endpoint.base_url}/kv_event_sources"
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise SourceError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise SourceError(f"GET {url}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise SourceError(f"GET {url}: not JSON") from None
    return parse_sources(body, endpoint.host)


def configured_sources(spec: KVEventsSpec, endpoint: Endpoint) -> list[SourceAddress] | None:
    """The pod's publisher from the config (its `pods:` entry, else the template); None: discover it."""
    fill = {"host": endpoint.host, "port": endpoint.port, "name": endpoint.name}
    entry = spec.pods.get(endpoint.name)
    if entry is not None:
        replay = None if entry.replay_endpoint is None else entry.replay_endpoint.format(**fill)
        topic = spec.topic if entry.topic is None else entry.topic
        return [SourceAddress(entry.endpoint.format(**fill), replay, topic)]
    if spec.endpoint is not None:
        replay = None if spec.replay_endpoint is None else spec.replay_endpoint.format(**fill)
        return [SourceAddress(spec.endpoint.format(**fill), replay, spec.topic)]
    if spec.discover:
        return None
    return []  # neither: this pod is not followed (only the `pods:` entries are)

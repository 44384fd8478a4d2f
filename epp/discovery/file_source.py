"""`--discovery file:PATH`: a YAML file of endpoints with labels, polled and re-read when it changes.

The file (one YAML document)::

    selector: {app: vllm}          # optional: only endpoints whose labels include all of these
    endpoints:
      - address: 10.0.0.1:8000     # host:port ([v6]:port)
        name: pod-a                # optional, default the address; unique
        labels: {app: vllm, zone: a}

A StaticEndpoints document (`apiVersion: epp.dev/v1alpha1`, `spec.endpoints: [{name, address}]`) is read
too. A file that cannot be read or parsed changes nothing: the last good endpoints stay, `epp_discovery_up`
drops to 0 and one WARNING says why. Removing an endpoint only stops new picks; requests already sent to it
finish (the datastore forgets it, the transport holds its own connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from epp.config.endpoints import STATIC_ENDPOINTS_API_VERSIONS, StaticEndpoints, make_endpoint, parse_address
from epp.config.safe_yaml import MAX_CONFIG_BYTES, load_documents
from epp.datastore import Endpoint
from epp.discovery.status import DiscoveryMetrics, DiscoveryStatus

logger = logging.getLogger(__name__)

Sink = Callable[[list[Endpoint]], None]


class FileEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str
    name: str | None = Field(default=None, min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _host_port(cls, address: str) -> str:
        host, port = parse_address(address)
        return f"{host}:{port}"


class DiscoveryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selector: dict[str, str] = Field(default_factory=dict)
    endpoints: list[FileEndpoint] = Field(default_factory=list)


class FileFormatError(ValueError):
    """The file is not a discovery file; the text says where."""


def parse_discovery_file(text: str) -> list[Endpoint]:
    """The endpoints a discovery file lists (its selector applied); FileFormatError when it is bad."""
    docs: list[Any] = []
    try:
        load_documents(text, docs)
    except Exception as exc:  # yaml.YAMLError and safe_yaml's refusals
        raise FileFormatError(f"not YAML: {exc}") from None
    docs = [d for d in docs if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise FileFormatError(f"expected one YAML mapping, got {len(docs)} documents")
    doc = docs[0]
    try:
        if doc.get("kind") == "StaticEndpoints" or doc.get("apiVersion") in STATIC_ENDPOINTS_API_VERSIONS:
            return StaticEndpoints.model_validate(doc).to_endpoints()
        parsed = DiscoveryFile.model_validate(doc)
    except ValidationError as exc:
        raise FileFormatError(_first_errors(exc)) from None
    selected = [e for e in parsed.endpoints if parsed.selector.items() <= e.labels.items()]
    endpoints = [
        Endpoint(**_fields(make_endpoint(e.address, e.name)), labels=tuple(sorted(e.labels.items())))
        for e in selected
    ]
    repeated = sorted(n for n, count in Counter(e.name for e in endpoints).items() if count > 1)
    if repeated:
        raise FileFormatError(f"endpoint names used twice: {', '.join(repeated)}")
    return endpoints


def _fields(endpoint: Endpoint) -> dict[str, Any]:
    return {"name": endpoint.name, "host": endpoint.host, "port": endpoint.port}


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:limit]]
    return "; ".join(parts)


class FileDiscovery:
    """Polls `path` every `interval_s` (mtime and size, then a content hash) and hands each good version's
    endpoints to `sink`."""

    def __init__(self, path: Path, sink: Sink, registry: CollectorRegistry, interval_s: float = 1.0) -> None:
        self.path = path
        self._sink = sink
        self._interval = interval_s
        self.status = DiscoveryStatus(DiscoveryMetrics(registry, "file"))
        self._stat: tuple[int, int] | None = None
        self._digest: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Read the file now (the first picks see its endpoints), then follow it."""
        self.check()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="discovery-file")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:  # a bug, not a bad file: keep the endpoints, keep polling
                logger.exception("discovery file check failed")

    def check(self) -> bool | None:
        """Re-read if the file changed: True applied, False refused (last endpoints kept), None unchanged."""
        try:
            st = self.path.stat()
        except OSError as exc:
            return self._refuse(f"cannot stat: {exc.strerror}", None)
        stat = (st.st_mtime_ns, st.st_size)
        if stat == self._stat and self.status.up:
            return None
        if st.st_size > MAX_CONFIG_BYTES:
            return self._refuse(f"larger than {MAX_CONFIG_BYTES} bytes", stat)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return self._refuse(f"cannot read: {exc.strerror}", None)
        digest = hashlib.sha256(data).hexdigest()
        self._stat = stat
        if digest == self._digest:
            return None  # touched, not changed (or the same bad version: warned already)
        self._digest = digest
        try:
            endpoints = parse_discovery_file(data.decode("utf-8", errors="replace"))
        except FileFormatError as exc:
            return self._refuse(str(exc), stat)
        self._sink(endpoints)
        self.status.metrics.events.labels("file", "file", "reload").inc()
        logger.info("discovery file %s: %d endpoints", self.path, len(endpoints))
        self.status.synced(len(endpoints))
        return True

    def _refuse(self, reason: str, stat: tuple[int, int] | None) -> bool:
        self._stat = stat
        if stat is None:
            self._digest = None  # unreadable: the same content coming back is a change
        if self.status.up or not self.status.since:
            self.status.failed(str(self.path), reason)
        return False

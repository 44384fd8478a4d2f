"""EppConfig: everything a run needs from the user's documents, typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from epp.config.cache import CacheSettings
from epp.config.documents import OtherDocument
from epp.config.errors import Redactor
from epp.config.gie import InferencePool
from epp.config.model_registry import ModelRegistry
from epp.config.picker_config import EndpointPickerConfig
from epp.config.traffic.config import TrafficConfig
from epp.datastore import Endpoint
from epp.health.outlier import OutlierSettings


@dataclass(frozen=True)
class EppConfig:
    """The loaded configuration.

    `picker_config` is the explicit EndpointPickerConfig document if there is one, else the built-in
    strategy selected by --strategy or the pool's annotation; `strategy_name` names it for metrics and logs
    (a built-in's name such as `PREFIX_CACHE`, or the document's metadata.name).
    """

    pools: dict[str, InferencePool]
    models: ModelRegistry
    picker_config: EndpointPickerConfig
    strategy_name: str
    static_endpoints: list[Endpoint] = field(default_factory=list)
    other_documents: list[OtherDocument] = field(default_factory=list)
    sources: tuple[Path, ...] = ()
    redactor: Redactor = field(default_factory=Redactor)  # scrubs expanded env values from text for logs
    outlier_settings: OutlierSettings = field(default_factory=OutlierSettings)
    # LLMProvider/LLMRoute/DestinationRule/VirtualService documents, validated; None when there are none.
    traffic: TrafficConfig | None = None
    # The response cache (its WasmPlugin, ConfigMap or LLMCache document); None when nothing configures it.
    cache: CacheSettings | None = None

    @property
    def pool(self) -> InferencePool | None:
        """The pool when the config has exactly one."""
        return next(iter(self.pools.values())) if len(self.pools) == 1 else None

    def documents_of_kind(self, kind: str) -> list[OtherDocument]:
        return [d for d in self.other_documents if d.kind == kind]

    def __repr__(self) -> str:
        # Names only: document bodies may hold expanded API keys.
        others = [f"{d.kind}/{d.name}" for d in self.other_documents]
        if self.traffic is not None:
            others += [f"LLMProvider/{p.metadata.name}" for p in self.traffic.providers.values()]
            others += [f"LLMRoute/{r.metadata.name}" for r in self.traffic.routes.values()]
        endpoints = [e.address for e in self.static_endpoints]
        text = (
            f"EppConfig(pools={sorted(self.pools)}, models={sorted(self.models)}, "
            f"strategy={self.strategy_name!r}, static_endpoints={endpoints}, "
            f"other_documents={others}, sources={[str(s) for s in self.sources]})"
        )
        return self.redactor.redact(text)

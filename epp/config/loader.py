"""load_config: files of multi-document YAML -> EppConfig, or one ConfigError listing every problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from epp.config.cache_build import collect_cache, is_cache_document
from epp.config.documents import OtherDocument, ParsedDocument, PickerDocument, parse_document
from epp.config.endpoints import StaticEndpoints
from epp.config.errors import ConfigError, ConfigIssue, DocumentRef, Redactor, format_loc
from epp.config.gie import InferenceModel, InferencePool
from epp.config.model_registry import ModelRegistry
from epp.config.picker_config import EndpointPickerConfig
from epp.config.result import EppConfig
from epp.config.routing_strategy import (
    DEFAULT_STRATEGY,
    STRATEGY_ANNOTATION,
    builtin_strategy,
    parse_strategy,
)
from epp.config.safe_yaml import MAX_CONFIG_BYTES, UnsafeYAMLError, load_documents
from epp.config.traffic.build import RawDocument, collect_traffic, is_traffic_document
from epp.datastore import Endpoint
from epp.health.outlier_settings import OutlierDetectionSpec, outlier_spec_from_annotations

STRATEGY_PATH = format_loc(("metadata", "annotations", STRATEGY_ANNOTATION))


def load_config(paths: Sequence[Path], env: Mapping[str, str], *, strategy: str | None = None) -> EppConfig:
    """Load and validate every document of `paths`; `strategy` (e.g. `--strategy`) overrides the config's."""
    texts: list[tuple[str, str]] = []
    issues: list[ConfigIssue] = []
    for path in paths:
        try:
            texts.append((str(path), read_config_file(Path(path))))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            issues.append(ConfigIssue(DocumentRef(str(path)), f"cannot read file: {reason}"))
        except ValueError as exc:
            issues.append(ConfigIssue(DocumentRef(str(path)), str(exc)))
    return _load(texts, env, strategy, tuple(Path(p) for p in paths), issues)


def read_config_file(path: Path) -> str:
    """The file's text; ValueError past MAX_CONFIG_BYTES (read no further, so /dev/zero is harmless too)."""
    with path.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(_too_large())
    return data.decode("utf-8")


def _too_large() -> str:
    return f"file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB (MAX_CONFIG_BYTES); split it"


def load_config_text(
    text: str, env: Mapping[str, str], *, source: str = "<string>", strategy: str | None = None
) -> EppConfig:
    """Like load_config, for YAML held in a string; `source` names it in errors."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(DocumentRef(source), _too_large())])
    return _load([(source, text)], env, strategy, (), [])


def split_documents(source: str, text: str) -> tuple[list[Any], list[ConfigIssue]]:
    """The documents of one YAML stream; a syntax error ends the stream with an issue naming the line."""
    documents: list[Any] = []
    try:
        load_documents(text, documents)
    except UnsafeYAMLError as exc:
        where = DocumentRef(source, exc.document, exc.kind, exc.name)
        return documents, [ConfigIssue(where, exc.reason, format_loc(exc.path), exc.line, exc.column)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"YAML syntax error: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark:
            reason += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return documents, [ConfigIssue(DocumentRef(source), reason, line=line, column=column)]
    except yaml.YAMLError as exc:
        return documents, [ConfigIssue(DocumentRef(source), f"YAML error: {exc}")]
    return documents, []


def _load(
    texts: list[tuple[str, str]],
    env: Mapping[str, str],
    strategy: str | None,
    paths: tuple[Path, ...],
    issues: list[ConfigIssue],
) -> EppConfig:
    parsed: list[ParsedDocument] = []
    raw_docs: list[RawDocument] = []  # every document, raw: build_traffic expands ${ENV} in its own kinds
    for source, text in texts:
        documents, syntax_issues = split_documents(source, text)
        issues += syntax_issues
        for index, raw in enumerate(documents, start=1):
            if raw is None:  # an empty document, e.g. after a trailing `---`
                continue
            if isinstance(raw, Mapping):
                raw_docs.append((source, index, raw))
            if not is_traffic_document(raw) and not is_cache_document(raw):
                parsed.append(parse_document(raw, source, index, env))
    pools = {d.value.name for d in parsed if isinstance(d.value, InferencePool)}
    traffic, traffic_issues, secrets = collect_traffic(raw_docs, env, pools)
    cache, cache_issues, cache_secrets = collect_cache(raw_docs, env)
    redactor = Redactor({value for doc in parsed for value in doc.used_values} | secrets | cache_secrets)
    issues += [issue for doc in parsed for issue in doc.issues]
    issues += traffic_issues + cache_issues
    if not issues:
        assembler = _Assembler(parsed)
        config = assembler.assemble(strategy, paths, redactor)
        issues += assembler.issues
    if issues:
        raise ConfigError(issues, redactor)
    has_traffic = traffic.providers or traffic.routes or traffic.destination_rules or traffic.fallbacks
    return dataclasses.replace(config, traffic=traffic if has_traffic else None, cache=cache)


class _Assembler:
    """Cross-document checks (unique names, pool references) and the choice of the picker config."""

    def __init__(self, parsed: list[ParsedDocument]) -> None:
        self.parsed = parsed
        self.issues: list[ConfigIssue] = []

    def _of(self, kind: type[Any]) -> list[tuple[DocumentRef, Any]]:
        return [(doc.where, doc.value) for doc in self.parsed if isinstance(doc.value, kind)]

    def _unique(self, items: list[tuple[DocumentRef, str]], path: str, what: str) -> None:
        first: dict[str, DocumentRef] = {}
        for where, key in items:
            if key in first:
                seen = first[key]
                reason = f'{what} "{key}" is already defined in {seen.source} document {seen.index}'
                self.issues.append(ConfigIssue(where, reason, path))
            first.setdefault(key, where)

    def _check_pool_ref(self, where: DocumentRef, name: str | None, pools: dict[str, Any], path: str) -> None:
        if pools and name is not None and name not in pools:
            reason = f'no InferencePool named "{name}" in the config (pools: {", ".join(pools)})'
            self.issues.append(ConfigIssue(where, reason, path))

    def assemble(self, strategy: str | None, paths: tuple[Path, ...], redactor: Redactor) -> EppConfig:
        pool_docs: list[tuple[DocumentRef, InferencePool]] = self._of(InferencePool)
        model_docs: list[tuple[DocumentRef, InferenceModel]] = self._of(InferenceModel)
        static_docs: list[tuple[DocumentRef, StaticEndpoints]] = self._of(StaticEndpoints)
        self._unique([(w, p.name) for w, p in pool_docs], "metadata.name", "InferencePool")
        self._unique([(w, m.name) for w, m in model_docs], "metadata.name", "InferenceModel")
        self._unique([(w, m.spec.model_name) for w, m in model_docs], "spec.modelName", "modelName")
        pools = {p.name: p for _, p in pool_docs}
        for where, model in model_docs:
            self._check_pool_ref(where, model.spec.pool_ref.name, pools, "spec.poolRef.name")
        endpoints: list[Endpoint] = []
        names: set[str] = set()  # a set, not a scan of `endpoints`: 20k endpoints took 30 s
        for where, static in static_docs:
            self._check_pool_ref(where, static.spec.pool_ref, pools, "spec.poolRef")
            for i, endpoint in enumerate(static.to_endpoints()):
                if endpoint.name in names:
                    reason = f'endpoint name "{endpoint.name}" is already used'
                    self.issues.append(ConfigIssue(where, reason, f"spec.endpoints[{i}]"))
                names.add(endpoint.name)
                endpoints.append(endpoint)
        picker, strategy_name = self._picker(strategy, pool_docs)
        outlier = self._outlier(picker, pool_docs)
        others: list[OtherDocument] = [doc for _, doc in self._of(OtherDocument)]
        # With issues the config is discarded; skipping the registry avoids its duplicate-name ValueError.
        registry = ModelRegistry([] if self.issues else [m for _, m in model_docs])
        return EppConfig(
            pools, registry, picker, strategy_name, endpoints, others, paths, redactor, outlier.to_settings()
        )

    def _outlier(
        self, picker: EndpointPickerConfig, pool_docs: list[tuple[DocumentRef, InferencePool]]
    ) -> OutlierDetectionSpec:
        """The EndpointPickerConfig's `outlierDetection`, else the pool's annotations, else the defaults."""
        specs: list[tuple[DocumentRef, OutlierDetectionSpec]] = []
        for where, pool in pool_docs:
            try:
                spec = outlier_spec_from_annotations(pool.metadata.annotations)
            except ValueError as exc:
                self.issues.append(ConfigIssue(where, str(exc), "metadata.annotations"))
                continue
            if spec is not None:
                specs.append((where, spec))
        if picker.outlier_detection is not None:
            return picker.outlier_detection
        if len({s.model_dump_json() for _, s in specs}) > 1:
            reason = "pools set different outlier-detection annotations; use one EndpointPickerConfig section"
            self.issues.append(ConfigIssue(specs[1][0], reason, "metadata.annotations"))
        return specs[0][1] if specs else OutlierDetectionSpec()

    def _picker(
        self, strategy: str | None, pool_docs: list[tuple[DocumentRef, InferencePool]]
    ) -> tuple[EndpointPickerConfig, str]:
        """--strategy, else the EndpointPickerConfig document, else the pools' strategy, else the default."""
        picker_docs: list[tuple[DocumentRef, PickerDocument]] = self._of(PickerDocument)
        for where, _ in picker_docs[1:]:
            first = picker_docs[0][0]
            reason = f"only one EndpointPickerConfig is allowed (first {first.source} document {first.index})"
            self.issues.append(ConfigIssue(where, reason))
        if strategy is not None:
            try:
                chosen = parse_strategy(strategy)
            except ValueError as exc:
                self.issues.append(ConfigIssue(DocumentRef("strategy"), str(exc)))
                chosen = DEFAULT_STRATEGY
            return builtin_strategy(chosen), chosen.value
        if picker_docs:
            _, doc = picker_docs[0]
            return doc.config, doc.name or "EndpointPickerConfig"
        chosen = pool_docs[0][1].routing_strategy if pool_docs else DEFAULT_STRATEGY
        for where, pool in pool_docs[1:]:
            if pool.routing_strategy is not chosen:
                reason = (
                    f"pools select different routing strategies ({chosen.value} and "
                    f"{pool.routing_strategy.value}); use one, an EndpointPickerConfig document or --strategy"
                )
                self.issues.append(ConfigIssue(where, reason, STRATEGY_PATH))
        return builtin_strategy(chosen), chosen.value

"""Offline schema checks for Kubernetes manifests: built-in kinds against `kubernetes-validate`'s strict
schemas, custom resources against the openAPIV3Schema of our CRDs, and the CRDs' structural rules.

A custom resource is checked as the apiserver does with strict field validation (kubectl's default since
1.27): an unknown field is an error unless the schema says `x-kubernetes-preserve-unknown-fields`. OpenAPI
v3.0 schemas are draft-4 JSON Schema plus extensions, so they run under jsonschema's Draft4Validator after
`nullable` and `x-kubernetes-int-or-string` are turned into types. A document that passes the schema then
has its defaults applied and the CEL rules (`x-kubernetes-validations`) evaluated (bench.k8s_cel).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import yaml

from bench.k8s_cel import apply_defaults, rule_failures

OLDEST_KUBERNETES = "1.25.0"  # the oldest version kubernetes-validate 1.37.0 ships schemas for
CRD_KIND = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
# Keys a structural schema must not set inside allOf/anyOf/oneOf/not (apiextensions' structural rules).
_NOT_IN_JUNCTORS = ("type", "description", "default", "additionalProperties", "nullable")
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed check: which document, where in it, and why."""

    source: str
    document: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.source}: {self.document}{where}: {self.message}"


def describe(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{doc.get('kind')}/{name} ({doc.get('apiVersion')})"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file (a document that is not a mapping is kept, to be reported)."""
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d is not None]


def strict_schema(schema: Any) -> Any:
    """A CRD openAPIV3Schema as draft-4 JSON Schema with strict field validation."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        out["additionalProperties"] = False
    return out


def structural_issues(schema: Any, path: str = "", in_junctor: bool = False) -> Iterator[str]:
    """Where a CRD schema breaks the structural rules the apiserver enforces on apiextensions.k8s.io/v1."""
    if not isinstance(schema, dict):
        return
    if in_junctor:
        for key in _NOT_IN_JUNCTORS:
            if key in schema:
                yield f"{path or '.'}: {key} is not allowed inside allOf/anyOf/oneOf/not"
    else:
        escapes = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")
        if "type" not in schema and not any(schema.get(key) for key in escapes):
            yield f"{path or '.'}: no type (structural schemas need one at every level)"
        if "properties" in schema and "additionalProperties" in schema:
            yield f"{path or '.'}: properties and additionalProperties are mutually exclusive"
        if schema.get("type") == "array" and "items" not in schema:
            yield f"{path or '.'}: an array needs items"
    for name, sub in (schema.get("properties") or {}).items():
        yield from structural_issues(sub, f"{path}.{name}", in_junctor)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from structural_issues(schema["additionalProperties"], f"{path}.*", in_junctor)
    if isinstance(schema.get("items"), dict):
        yield from structural_issues(schema["items"], f"{path}[]", in_junctor)
    for junctor in _JUNCTORS:
        subs = schema.get(junctor)
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs else []):
            yield from structural_issues(sub, f"{path}.{junctor}[{i}]", True)


class CrdCatalog:
    """The CRDs of some directories, by (apiVersion, kind) of the resources they define."""

    def __init__(self, *crd_dirs: Path) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self.raw_schemas: dict[tuple[str, str], dict[str, Any]] = {}  # with the x-kubernetes-* extensions
        self.problems: list[Problem] = []
        self.files = sorted(p for d in crd_dirs for p in d.glob("*.yaml"))
        for path in self.files:
            for doc in load_documents(path):
                if (doc.get("apiVersion"), doc.get("kind")) == CRD_KIND:
                    self._add(path, doc)

    def _add(self, path: Path, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            for issue in structural_issues(schema):
                self.problems.append(Problem(str(path), describe(crd), version["name"], issue))
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            self.schemas[key] = strict_schema(schema)
            self.raw_schemas[key] = schema

    def defines(self, doc: Mapping[str, Any]) -> bool:
        return (doc.get("apiVersion"), doc.get("kind")) in self.schemas

    def validate(self, doc: dict[str, Any], source: str, k8s_version: str) -> list[Problem]:
        key = (doc["apiVersion"], doc["kind"])
        validator = jsonschema.Draft4Validator(self.schemas[key])
        problems = [
            Problem(source, describe(doc), _path(e.absolute_path), e.message)
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        ]
        if not problems:  # CEL rules assume the schema holds (types, required fields)
            raw = self.raw_schemas[key]
            failures = rule_failures(raw, apply_defaults(raw, doc))
            problems = [Problem(source, describe(doc), path, message) for path, message in failures]
        return problems + _metadata_problems(doc, source, k8s_version)


def _metadata_problems(doc: dict[str, Any], source: str, k8s_version: str) -> list[Problem]:
    """A custom resource's metadata is an ObjectMeta: checked with the built-in schema, via a ConfigMap."""
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": copy.deepcopy(doc.get("metadata", {}))}
    try:
        kubernetes_validate.validate(probe, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [Problem(source, describe(doc), _path(exc.path), exc.message)]
    return []


def validate_builtin(doc: dict[str, Any], source: str, k8s_version: str) -> list[Problem] | None:
    """Strict validation of a built-in kind; None when kubernetes-validate has no schema for it."""
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as exc:
        return [Problem(source, describe(doc), _path(exc.path), exc.message)]
    return []


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)

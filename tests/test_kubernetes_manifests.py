"""deploy/kubernetes without external tools: the CRDs are structural and valid CustomResourceDefinitions,
every example and seed document validates against its CRD (or the built-in schema), a typo fails, and
epp's own loader reads the examples."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.k8s_schemas import (
    OLDEST_KUBERNETES,
    CrdCatalog,
    load_documents,
    strict_schema,
    structural_issues,
    validate_builtin,
)
from bench.k8s_validate import CRDS, EXAMPLES, KUSTOMIZE_BASE, SEED_CONFIGS, check_files, check_text
from epp.config.loader import load_config

# Kinds owned by Gateway API, Istio, Envoy Gateway: no schema ships here, so they are listed, not passed.
FOREIGN_KINDS = {
    "BackendTrafficPolicy",
    "DestinationRule",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "VirtualService",
    "WasmPlugin",
}
EXPECTED_CRDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModel"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"),
    ("istio.alibabacloud.com/v1beta1", "LLMProvider"),
    ("istio.alibabacloud.com/v1beta1", "LLMRoute"),
    ("epp.dev/v1alpha1", "StaticEndpoints"),
    ("epp.dev/v1alpha1", "LLMCache"),
}


@pytest.fixture(scope="module")
def catalog() -> CrdCatalog:
    return CrdCatalog(CRDS)


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def test_the_crds_cover_every_kind_epp_reads_and_are_structural(catalog: CrdCatalog) -> None:
    assert set(catalog.schemas) == EXPECTED_CRDS
    assert [str(p) for p in catalog.problems] == []


def _crd_files() -> list[Path]:
    return [p for p in _yaml_files(CRDS) if p.name != "kustomization.yaml"]


@pytest.mark.parametrize("path", _crd_files(), ids=lambda p: p.name)
def test_each_crd_file_is_a_valid_custom_resource_definition(path: Path) -> None:
    (crd,) = load_documents(path)
    assert validate_builtin(crd, path.name, OLDEST_KUBERNETES) == []


def test_the_crd_kustomization_lists_every_crd_file() -> None:
    listed = yaml.safe_load((CRDS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in _crd_files()]


def test_every_example_and_seed_document_validates(catalog: CrdCatalog) -> None:
    report = check_files(_yaml_files(EXAMPLES) + _yaml_files(SEED_CONFIGS), catalog)
    assert [str(p) for p in report.problems] == []
    assert report.checked["custom resources"] >= 12
    assert {entry.split("/")[0] for entry in report.not_validated} == FOREIGN_KINDS


def test_the_seed_pool_and_model_are_validated_against_the_v1alpha2_crds(catalog: CrdCatalog) -> None:
    docs = load_documents(SEED_CONFIGS / "ack-prefix-cache.yaml")
    ours = [d for d in docs if catalog.defines(d)]
    assert [d["kind"] for d in ours] == ["InferencePool", "InferenceModel"]
    for doc in ours:
        assert catalog.validate(doc, "seed", OLDEST_KUBERNETES) == []


def _pool_example() -> dict[str, Any]:
    return load_documents(EXAMPLES / "inferencepool-v1.yaml")[0]


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda d: d["spec"].__setitem__("targetPortss", [{"number": 8000}]), "targetPortss"),
        (lambda d: d["spec"]["endpointPickerRef"].__setitem__("failureMod", "FailOpen"), "failureMod"),
        (lambda d: d["spec"].pop("targetPorts"), "'targetPorts' is a required property"),
        (lambda d: d["spec"]["targetPorts"][0].__setitem__("number", 70000), "70000"),
        (lambda d: d["spec"]["endpointPickerRef"].__setitem__("failureMode", "Open"), "'Open' is not one of"),
        (lambda d: d["metadata"].__setitem__("lables", {"a": "b"}), "lables"),
        (lambda d: d["spec"]["targetPorts"].append({"number": 8000}), "port number must be unique"),
        (lambda d: d["spec"]["endpointPickerRef"].pop("port"), "port is required when kind is 'Service'"),
    ],
    ids=[
        "unknown-spec-field",
        "unknown-nested-field",
        "missing-required",
        "out-of-range",
        "enum",
        "metadata",
        "cel-unique-ports",
        "cel-after-defaulting",
    ],
)
def test_a_typo_in_a_custom_resource_fails(catalog: CrdCatalog, edit, complaint: str) -> None:
    doc = copy.deepcopy(_pool_example())
    assert catalog.validate(doc, "example", OLDEST_KUBERNETES) == []
    edit(doc)
    problems = catalog.validate(doc, "example", OLDEST_KUBERNETES)
    assert problems and any(complaint in p.message for p in problems), problems


def test_a_typo_in_a_seed_document_fails(catalog: CrdCatalog) -> None:
    text = (SEED_CONFIGS / "asm-llm-routing.yaml").read_text().replace("backendRefs:", "backendRef:", 1)
    report = check_text(text, "seed with a typo", catalog)
    assert any("backendRef" in p.message for p in report.problems)


def _base_manifests() -> list[Path]:
    # kustomization.yaml is kustomize's; config.yaml is the ConfigMap's content (checked below).
    return [p for p in _yaml_files(KUSTOMIZE_BASE) if p.name not in ("kustomization.yaml", "config.yaml")]


@pytest.mark.parametrize("path", _base_manifests(), ids=lambda p: p.name)
def test_each_plain_manifest_of_the_base_is_valid_alone(path: Path, catalog: CrdCatalog) -> None:
    report = check_text(path.read_text(), path.name, catalog)
    assert [str(p) for p in report.problems] == [] and report.not_validated == []


def test_a_typo_in_a_deployment_fails_the_strict_builtin_schema() -> None:
    (deployment,) = load_documents(KUSTOMIZE_BASE / "deployment.yaml")
    assert validate_builtin(deployment, "base", OLDEST_KUBERNETES) == []
    deployment["spec"]["replicass"] = 2
    problems = validate_builtin(deployment, "base", OLDEST_KUBERNETES)
    assert problems and "replicass" in problems[0].message


def test_strict_schema_forbids_unknown_fields_except_where_preserved() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string", "nullable": True}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "port": {"x-kubernetes-int-or-string": True},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert strict["properties"]["a"]["properties"]["b"]["type"] == ["string", "null"]
    assert "additionalProperties" not in strict["properties"]["free"]
    assert strict["properties"]["port"]["type"] == ["integer", "string"]


def test_structural_rules_are_checked() -> None:
    bad = {
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "list": {"type": "array"},
            "choice": {"type": "object", "oneOf": [{"type": "object"}]},
        },
    }
    issues = list(structural_issues(bad))
    assert any(i.startswith(".untyped: no type") for i in issues)
    assert any(i.startswith(".both: properties and additionalProperties") for i in issues)
    assert any(i.startswith(".list: an array needs items") for i in issues)
    assert any(i.startswith(".choice.oneOf[0]: type is not allowed") for i in issues)


def test_epp_loads_the_examples(tmp_path: Path) -> None:
    key = tmp_path / "dashscope"
    key.write_text("sk-test\n")
    paths = []
    for path in _yaml_files(EXAMPLES):
        copy_path = tmp_path / path.name
        copy_path.write_text(path.read_text().replace("/var/run/secrets/llm/dashscope", str(key)))
        paths.append(copy_path)
    config = load_config(paths, {})
    assert set(config.pools) == {"vllm-llama3-8b", "vllm-qwen-pool"}
    assert config.traffic is not None and config.cache is not None


def test_the_kustomize_base_config_is_the_pool_object_epp_reads() -> None:
    (in_config,) = load_documents(KUSTOMIZE_BASE / "config.yaml")
    (pool,) = load_documents(KUSTOMIZE_BASE / "inferencepool.yaml")
    assert in_config == pool
    assert set(load_config([KUSTOMIZE_BASE / "config.yaml"], {}).pools) == {"vllm-pool"}


def test_cel_rules_see_defaults_and_skip_transition_rules(catalog: CrdCatalog) -> None:
    (_, model) = load_documents(EXAMPLES / "inferencemodel-lora.yaml")
    assert catalog.validate(model, "example", OLDEST_KUBERNETES) == []  # has `self == oldSelf` on modelName
    del model["spec"]["targetModels"][1]["weight"]
    (problem,) = catalog.validate(model, "example", OLDEST_KUBERNETES)
    assert problem.path == "spec.targetModels"
    assert problem.message == "Weights should be set for all models, or none of the models."
    pool = _pool_example()
    pool["spec"]["endpointPickerRef"]["kind"] = "ExternalPicker"  # not a Service: no port needed
    pool["spec"]["endpointPickerRef"].pop("port")
    assert catalog.validate(pool, "example", OLDEST_KUBERNETES) == []

"""Bad documents: every ConfigError names the file, the document, the field path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config import STRATEGY_ANNOTATION, ConfigError, load_config, load_config_text

BAD = Path(__file__).parent / "fixtures" / "config" / "bad"


def error_for(name: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config([BAD / name], env or {})
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "bad-criticality.yaml",
            'bad-criticality.yaml: document 1 (InferenceModel "foo"): spec.criticality: '
            'must be one of Critical, Standard, Sheddable (got "Urgent")',
        ),
        (
            "negative-weight.yaml",
            'document 1 (InferenceModel "lora"): spec.targetModels[1].weight: '
            "must be greater than or equal to 0 (got -1)",
        ),
        (
            "zero-weights.yaml",
            'document 1 (InferenceModel "lora"): spec.targetModels: '
            "at least one target needs a positive weight",
        ),
        (
            "bad-port.yaml",
            'document 1 (InferencePool "pool"): spec.targetPortNumber: '
            "must be less than or equal to 65535 (got 70000)",
        ),
        (
            "unknown-strategy.yaml",
            'document 1 (InferencePool "pool"): '
            'metadata.annotations["inference.networking.x-k8s.io/routing-strategy"]: '
            "must be one of PREFIX_CACHE, PREFIX_TOKENS, LEAST_REQUEST, ROUND_ROBIN, RANDOM, LOAD_AWARE "
            '(got "FASTEST")',
        ),
        (
            "bad-api-version.yaml",
            'document 1 (InferencePool "pool"): apiVersion: InferencePool needs one of '
            "inference.networking.x-k8s.io/v1alpha2, inference.networking.x-k8s.io/v1, "
            'inference.networking.k8s.io/v1 (got "inference.networking.x-k8s.io/v9")',
        ),
        (
            "bad-kind.yaml",
            'document 1 (InferencePol "pool"): kind: '
            "unknown kind for inference.networking.x-k8s.io/v1alpha2: "
            'expected one of InferencePool, InferenceModel (got "InferencePol")',
        ),
        ("missing-kind.yaml", "missing-kind.yaml: document 2: kind: required field is missing"),
        (
            "duplicate-plugin.yaml",
            "document 1 (EndpointPickerConfig): plugins[2].name: "
            'plugin name "queue-scorer" is already used by plugins[0]',
        ),
        (
            "unknown-plugin-ref.yaml",
            'document 1 (EndpointPickerConfig "typo"): schedulingProfiles[0].plugins[1].pluginRef: '
            'unknown plugin "max-score-pikcer" (defined: queue-scorer, max-score-picker)',
        ),
        (
            "syntax-error.yaml",
            "syntax-error.yaml: line 7, column 13: YAML syntax error: mapping values are not allowed here",
        ),
        (
            "unset-env.yaml",
            'unset-env.yaml: document 1 (LLMProvider "provider"): '
            "spec.configs.defaultConfig.openAIConfig.apiKey: "
            "environment variable EPP_TEST_UNSET_KEY is not set",
        ),
        (
            "missing-model-name.yaml",
            'document 1 (InferenceModel "nameless"): spec.modelName: required field is missing',
        ),
        (
            "unknown-pool-ref.yaml",
            'document 2 (InferenceModel "m"): spec.poolRef.name: '
            'no InferencePool named "other-pool" in the config (pools: pool)',
        ),
        (
            "bad-endpoint.yaml",
            'document 1 (StaticEndpoints "pods"): spec.endpoints[1].address: '
            'port must be a number in 1..65535 (got "127.0.0.1:http")',
        ),
    ],
)
def test_bad_document_error_names_file_document_field_and_reason(name: str, expected: str) -> None:
    message = error_for(name)
    assert expected in message
    assert str(BAD / name) in message


def test_all_validation_errors_are_reported_not_just_the_first() -> None:
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m}
spec:
  modelName: m
  criticality: Urgent
  poolRef: {name: p}
  targetModels: [{name: a, weight: 1}, {name: b, weight: -5}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: p}
spec: {selector: {app: x}, targetPortNumber: 0}
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, source="pool.yaml")
    assert len(info.value.issues) == 3
    message = str(info.value)
    assert message.startswith("3 configuration errors:")
    assert 'pool.yaml: document 1 (InferenceModel "m"): spec.criticality:' in message
    assert 'pool.yaml: document 1 (InferenceModel "m"): spec.targetModels[1].weight:' in message
    assert 'pool.yaml: document 2 (InferencePool "p"): spec.targetPortNumber:' in message


def test_errors_from_several_files_are_collected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config([BAD / "bad-port.yaml", BAD / "bad-criticality.yaml"], {})
    assert len(info.value.issues) == 2
    assert any("bad-port.yaml" in issue for issue in info.value.issues)
    assert any("bad-criticality.yaml" in issue for issue in info.value.issues)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read file: No such file or directory"):
        load_config([missing], {})


def test_document_that_is_not_a_mapping() -> None:
    with pytest.raises(
        ConfigError, match=r"x\.yaml: document 2: must be a mapping with apiVersion and kind \(list\)"
    ):
        load_config_text("apiVersion: v1\nkind: ConfigMap\n---\n- a\n- b\n", {}, source="x.yaml")


def test_empty_kind_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"document 1: kind: must be a non-empty string"):
        load_config_text("apiVersion: v1\nkind: ''\n", {})


def test_duplicate_pool_and_model_names() -> None:
    pool = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {name: p}\n"
    pool += "spec: {selector: {app: x}, targetPortNumber: 8000}\n"
    model = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata: {name: NAME}\n"
    )
    model += "spec: {modelName: same, poolRef: {name: p}}\n"
    text = "---\n".join([pool, pool, model.replace("NAME", "a"), model.replace("NAME", "b")])
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, source="dup.yaml")
    message = str(info.value)
    assert (
        'dup.yaml: document 2 (InferencePool "p"): metadata.name: '
        'InferencePool "p" is already defined in dup.yaml document 1' in message
    )
    assert (
        'dup.yaml: document 4 (InferenceModel "b"): spec.modelName: '
        'modelName "same" is already defined in dup.yaml document 3' in message
    )


def test_unknown_strategy_override_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy: must be one of PREFIX_CACHE, .*LOAD_AWARE \(got \"FAST\"\)"
    ):
        load_config_text("", {}, strategy="FAST")


def test_two_picker_configs_are_an_error() -> None:
    picker = (Path(__file__).parent / "fixtures" / "config" / "good" / "custom-picker.yaml").read_text()
    with pytest.raises(
        ConfigError,
        match=r"document 2 \(EndpointPickerConfig \"queue-only\"\): only one EndpointPickerConfig",
    ):
        load_config_text(picker + "---\n" + picker, {})


def test_pools_with_different_strategies_need_a_choice() -> None:
    def pool(name: str, strategy: str) -> str:
        return (
            "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\n"
            f"metadata: {{name: {name}, annotations: {{{STRATEGY_ANNOTATION}: {strategy}}}}}\n"
            "spec: {selector: {app: x}, targetPortNumber: 8000}\n"
        )

    text = pool("a", "RANDOM") + "---\n" + pool("b", "LOAD_AWARE")
    with pytest.raises(ConfigError, match=r"document 2 .*pools select different routing strategies"):
        load_config_text(text, {})
    assert load_config_text(text, {}, strategy="RANDOM").strategy_name == "RANDOM"

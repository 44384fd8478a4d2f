"""`${NAME}` expansion, and that expanded values (API keys) never show up in errors or reprs."""

from __future__ import annotations

import pytest

from epp.config import ConfigError, load_config_text
from epp.config.envvars import expand_env

SECRET = "sk-very-secret-value-42"


def test_expands_references_in_nested_string_values_only() -> None:
    data = {"a": "${X}", "b": ["pre-${X}-${Y}-post", 3, None, True], "${X}": "key untouched"}
    result = expand_env(data, {"X": "one", "Y": "two"})
    assert result.value == {"a": "one", "b": ["pre-one-two-post", 3, None, True], "${X}": "key untouched"}
    assert result.expanded_paths == [("a",), ("b", 0)]
    assert result.missing == [] and result.invalid == []
    assert data["a"] == "${X}"  # input not modified


def test_double_dollar_escapes_a_literal_reference() -> None:
    result = expand_env({"a": "$${UNSET}", "b": "$${X}/${X}"}, {"X": "v"})
    assert result.value == {"a": "${UNSET}", "b": "${X}/v"}
    assert result.missing == []
    assert result.expanded_paths == [("b",)]


def test_missing_and_invalid_references_are_recorded_with_paths() -> None:
    result = expand_env({"s": {"k": ["${NOPE}", "${BAD-NAME}"]}}, {})
    assert result.missing == [(("s", "k", 0), "NOPE")]
    assert result.invalid == [(("s", "k", 1), "${BAD-NAME}")]


def test_text_without_references_is_unchanged() -> None:
    result = expand_env({"a": "$HOME and $ and {braces}"}, {"HOME": "/root"})
    assert result.value == {"a": "$HOME and $ and {braces}"}


def test_empty_value_is_a_valid_expansion() -> None:
    assert expand_env({"a": "x${E}y"}, {"E": ""}).value == {"a": "xy"}


def test_expanded_values_reach_typed_fields() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {name: p}\n"
        "spec: {selector: {app: '${APP}'}, targetPortNumber: '${PORT}'}\n"
    )
    pool = load_config_text(text, {"APP": "vllm", "PORT": "8123"}).pools["p"]
    assert pool.spec.selector == {"app": "vllm"}
    assert pool.spec.target_port_number == 8123


def test_invalid_reference_is_a_config_error() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '${1X}'}\n"
    with pytest.raises(
        ConfigError, match=r'document 1 \(ConfigMap "c"\): data.a: invalid environment reference \$\{1X\}'
    ):
        load_config_text(text, {})


def test_error_for_another_field_does_not_leak_an_expanded_key() -> None:
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: m
  annotations: {apiKey: "${API_KEY}", mixed: "Bearer ${API_KEY}"}
spec:
  modelName: m
  criticality: Urgent
  poolRef: {name: p}
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {"API_KEY": SECRET}, source="m.yaml")
    assert 'spec.criticality: must be one of Critical, Standard, Sheddable (got "Urgent")' in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert all(SECRET not in issue for issue in info.value.issues)


def test_invalid_expanded_value_is_not_echoed() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata: {name: m}\n"
        "spec: {modelName: m, criticality: '${CRIT}', poolRef: {name: p}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {"CRIT": SECRET})
    message = str(info.value)
    assert message.endswith("spec.criticality: must be one of Critical, Standard, Sheddable")
    assert SECRET not in message


def test_expanded_value_in_a_cross_reference_message_is_scrubbed() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer, name: '${N}'}, {type: max-score-picker, name: '${N}'}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: '${N}'}]}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {"N": SECRET})
    assert 'plugins[1].name: plugin name "***" is already used by plugins[0]' in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_variable_error_names_variable_file_and_document_only() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
    text += "stringData: {key: '${API_KEY}', other: '${SET}'}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {"SET": SECRET}, source="secrets.yaml")
    assert str(info.value) == (
        'secrets.yaml: document 1 (Secret "s"): stringData.key: environment variable API_KEY is not set'
    )


def test_repr_of_config_and_documents_does_not_leak_keys() -> None:
    text = (
        "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\n"
        "spec: {host: api.example.com, configs: {defaultConfig: {openAIConfig: {apiKey: '${API_KEY}'}}}}\n"
    )
    config = load_config_text(text, {"API_KEY": SECRET})
    assert config.traffic is not None
    key = config.traffic.providers["api.example.com"].spec.openai_for(None).api_key
    assert key is not None and key.get_secret_value() == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert SECRET not in repr(config.traffic)
    assert "LLMProvider/p" in repr(config)
    assert config.redactor.redact(f"Authorization: Bearer {SECRET}") == "Authorization: Bearer ***"
    assert SECRET not in repr(config.redactor)

"""`epp check-config`: summary on success, the ConfigError on failure, never a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "config"


def test_check_config_summarizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(FIXTURES / "good" / "local-pool.yaml")]) == 0
    out = capsys.readouterr().out
    assert "strategy: LOAD_AWARE" in out
    assert "InferencePool local-pool: port 8100, selector {'app': 'vllm'}, routing LOAD_AWARE" in out
    assert (
        "InferenceModel travel-helper: Sheddable, targets travel-helper-v1 (90), travel-helper-v2 (10)" in out
    )
    assert "endpoint pod-b: [::1]:8101" in out


def test_check_config_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(FIXTURES / "bad" / "bad-port.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("epp check-config: ")
    assert "spec.targetPortNumber: must be less than or equal to 65535 (got 70000)" in err


def test_check_config_does_not_print_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "sk-cli-secret-0123456789"
    monkeypatch.setenv("EPP_TEST_API_KEY", secret)
    path = tmp_path / "provider.yaml"
    path.write_text(
        "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\n"
        "spec: {host: api.example.com, configs: {defaultConfig: {openAIConfig: "
        "{model: m1, apiKey: '${EPP_TEST_API_KEY}'}}}}\n"
    )
    assert main(["check-config", str(path), "--strategy", "RANDOM"]) == 0
    out = capsys.readouterr().out
    assert "strategy: RANDOM" in out
    assert "LLMProvider p: api.example.com/v1/chat/completions, model m1" in out
    assert secret not in out


def test_check_config_rejects_bad_traffic_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(
        "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvder\nmetadata: {name: p}\nspec: {}\n"
        "---\napiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: q}\nspec: {}\n"
    )
    assert main(["check-config", str(path), "--strategy", "RANDOM"]) == 2
    err = capsys.readouterr().err
    assert 'document 1 (LLMProvder "p"): kind: unknown kind "LLMProvder": did you mean LLMProvider?' in err
    assert 'document 2 (LLMProvider "q"): spec.host: required field is missing' in err

"""build_traffic: the ASM seeds load unchanged; every bad document is a precise, secret-free error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.config.traffic.build import RawDocument, build_traffic
from epp.config.traffic.config import TrafficConfigError
from epp.health.outlier import OutlierSettings

SEEDS = Path(__file__).parent / "fixtures" / "seed-configs"
ROUTING = SEEDS / "asm-llm-routing.yaml"
FALLBACK = SEEDS / "asm-fallback.yaml"
KEY = "sk-dashscope-very-secret"
ENV = {"DASHSCOPE_API_KEY": KEY, "MOONSHOT_API_KEY": "sk-moonshot-very-secret"}


def load(path: Path) -> list[RawDocument]:
    docs = yaml.safe_load_all(path.read_text())
    return [(str(path), i, d) for i, d in enumerate(docs, start=1) if d is not None]


def errors(docs: list[RawDocument], env: dict[str, str] = ENV, **kw: Any) -> str:
    with pytest.raises(TrafficConfigError) as info:
        build_traffic(docs, env, **kw)
    return str(info.value)


def provider(host: str = "p.example.com", name: str = "p", **spec: Any) -> dict[str, Any]:
    body = {"host": host, "configs": {"defaultConfig": {"openAIConfig": {"model": "m", "apiKey": KEY}}}}
    body.update(spec)
    return {
        "apiVersion": "istio.alibabacloud.com/v1beta1",
        "kind": "LLMProvider",
        "metadata": {"name": name},
        "spec": body,
    }


def route(rules: list[dict[str, Any]], host: str = "r.example.com", name: str = "r") -> dict[str, Any]:
    spec = {"host": host, "rules": rules}
    return {
        "apiVersion": "istio.alibabacloud.com/v1beta1",
        "kind": "LLMRoute",
        "metadata": {"name": name},
        "spec": spec,
    }


def docs_of(*bodies: dict[str, Any]) -> list[RawDocument]:
    return [("t.yaml", i, b) for i, b in enumerate(bodies, start=1)]


def test_routing_seed_loads_unchanged():
    docs = load(ROUTING)
    before = copy.deepcopy(docs)
    config = build_traffic(docs, ENV)
    assert docs == before  # the input is not modified (env expansion works on a copy)
    assert set(config.providers) == {"dashscope.aliyuncs.com", "api.moonshot.cn"}
    dash = config.providers["dashscope.aliyuncs.com"].spec
    assert dash.path == "/compatible-mode/v1/chat/completions"
    assert dash.openai_for(None).model == "qwen-1.8b-chat"
    assert dash.openai_for("vip-route").model == "qwen-turbo"
    vip_key = dash.openai_for("vip-route").api_key
    assert vip_key is not None and vip_key.get_secret_value() == KEY
    assert set(config.routes) == {"dashscope.aliyuncs.com", "demo-llm-server"}
    assert [r.weight for r in config.routes["demo-llm-server"].spec.rules[0].backend_refs] == [50, 50]


def test_fallback_seed_loads_with_outlier_settings_and_fallback():
    config = build_traffic(load(FALLBACK), ENV)
    assert config.fallbacks == {"asm-llm-provider-test.com": "dashscope.aliyuncs.com"}
    assert config.fallback_chain("asm-llm-provider-test.com") == ("dashscope.aliyuncs.com",)
    policy = config.upstream("asm-llm-provider-test.com", 80)
    assert policy.outlier == OutlierSettings(
        consecutive_5xx=1, interval_s=1.0, base_ejection_time_s=10.0, max_ejection_percent=100.0
    )
    assert policy.tls.enabled and policy.tls.verify and policy.tls.sni == "asm-llm-provider-test"
    # Only port 80 has settings in the seed; another port gets none (Istio: no outlier detection).
    assert config.upstream("asm-llm-provider-test.com", 443).outlier is None
    assert config.upstream("dashscope.aliyuncs.com", 80).outlier is None
    test = config.providers["asm-llm-provider-test.com"].spec.openai_for(None)
    assert test.api_key is not None and test.api_key.get_secret_value() == "test-api-key"


def test_istio_outlier_defaults_and_durations():
    dr: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "d"},
        "spec": {"host": "p.example.com", "trafficPolicy": {"outlierDetection": {}}},
    }
    config = build_traffic(docs_of(provider(), dr), ENV)
    assert config.upstream("p.example.com").outlier == OutlierSettings(
        consecutive_5xx=5,
        interval_s=10.0,
        base_ejection_time_s=30.0,
        max_ejection_percent=10.0,
        min_health_percent=0,
    )
    dr["spec"]["trafficPolicy"]["outlierDetection"] = {"interval": "500ms", "baseEjectionTime": "1m"}
    outlier = build_traffic(docs_of(provider(), dr), ENV).upstream("p.example.com").outlier
    assert outlier is not None and (outlier.interval_s, outlier.base_ejection_time_s) == (0.5, 60.0)
    dr["spec"]["trafficPolicy"]["outlierDetection"] = {"interval": "10 parsecs"}
    assert "spec.trafficPolicy.outlierDetection.interval: invalid duration" in errors(docs_of(provider(), dr))


def test_unknown_provider_host_in_route():
    bad = route([{"name": "a", "backendRefs": [{"providerHost": "nope.example.com"}]}])
    msg = errors(docs_of(provider(), bad))
    assert 't.yaml: document 2 (LLMRoute "r"): spec.rules[0].backendRefs[0].providerHost' in msg
    assert 'no LLMProvider has host "nope.example.com" (known: p.example.com)' in msg


def test_weights_summing_to_zero():
    refs = [{"providerHost": "p.example.com", "weight": 0}, {"providerHost": "p.example.com", "weight": 0}]
    msg = errors(docs_of(provider(), route([{"backendRefs": refs}])))
    assert 'document 2 (LLMRoute "r"): spec.rules[0].backendRefs: weights sum to 0' in msg


def test_duplicate_provider_host():
    msg = errors(docs_of(provider(name="a"), provider(name="b")))
    assert (
        'document 2 (LLMProvider "b"): spec.host: an LLMProvider for host "p.example.com" is already' in msg
    )
    assert 'defined in t.yaml document 1 (LLMProvider "a")' in msg


def test_fallback_to_unknown_host():
    docs = load(FALLBACK)
    docs[-1][2]["spec"]["http"][0]["route"][0]["fallback"]["target"]["host"] = "dashscope.aliyuncs.co"
    msg = errors(docs)
    assert (
        'document 4 (VirtualService "test-fallback-llm-vs"): spec.http[0].route[0].fallback.target.host'
        in msg
    )
    assert 'fallback to unknown host "dashscope.aliyuncs.co"' in msg
    assert str(FALLBACK) in msg


def test_unset_env_names_variable_and_field():
    msg = errors(load(ROUTING), {"MOONSHOT_API_KEY": "x" * 10})
    assert (
        'document 1 (LLMProvider "dashscope-qwen"): spec.configs.defaultConfig.openAIConfig.apiKey: ' in msg
    )
    assert "environment variable DASHSCOPE_API_KEY is not set" in msg
    assert "no LLMProvider has host" not in msg  # no cascade from the broken provider


def test_regex_that_does_not_compile():
    rules = [
        {
            "name": "x",
            "matches": [{"headers": {"user-type": {"regex": "sub(scriber"}}}],
            "backendRefs": [{"providerHost": "p.example.com"}],
        }
    ]
    msg = errors(docs_of(provider(), route(rules)))
    assert "spec.rules[0].matches[0].headers.user-type.regex: regex does not compile: missing )" in msg


def test_match_needs_exactly_one_kind():
    rules = [
        {
            "matches": [{"headers": {"a": {"exact": "x", "prefix": "y"}}}],
            "backendRefs": [{"providerHost": "p.example.com"}],
        }
    ]
    assert "needs exactly one of exact, prefix, regex" in errors(docs_of(provider(), route(rules)))


def test_misspelt_kind_is_named():
    doc = provider()
    doc["kind"] = "LLMProvder"
    msg = errors(docs_of(doc))
    assert (
        't.yaml: document 1 (LLMProvder "p"): kind: unknown kind "LLMProvder": did you mean LLMProvider?'
        in msg
    )


def test_other_kinds_are_skipped_and_wrong_api_version_is_an_error():
    other = {
        "apiVersion": "istio.alibabacloud.com/v1beta1",
        "kind": "ASMLocalRateLimiter",
        "metadata": {"name": "x"},
    }
    pool = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": "x"},
    }
    assert build_traffic(docs_of(other, pool, provider()), ENV).providers
    doc = provider()
    doc["apiVersion"] = "istio.alibabacloud.com/v1"
    assert "apiVersion: LLMProvider needs apiVersion istio.alibabacloud.com/v1beta1" in errors(docs_of(doc))


def test_misspelt_field_of_ours_is_rejected_mesh_fields_are_ignored():
    assert "spec.hots: unknown field" in errors(docs_of(provider(hots="x")))
    ok = provider(workloadSelector={"labels": {"app": "sleep"}})
    assert build_traffic(docs_of(ok), ENV).providers
    bad = provider()
    bad["spec"]["configs"]["defaultConfig"]["openAIConfig"]["modle"] = "m"
    assert "spec.configs.defaultConfig.openAIConfig.modle: unknown field" in errors(docs_of(bad))


def test_route_specific_config_for_no_rule_is_a_typo():
    doc = provider(configs={"routeSpecificConfigs": {"vip-rout": {"openAIConfig": {"model": "t"}}}})
    rules = [{"name": "vip-route", "backendRefs": [{"providerHost": "p.example.com"}]}]
    msg = errors(docs_of(doc, route(rules)))
    assert 'spec.configs.routeSpecificConfigs["vip-rout"]: no LLMRoute rule named "vip-rout"' in msg


def test_unknown_inference_pool():
    rules = [{"backendRefs": [{"inferencePool": "pool-a"}]}]
    assert build_traffic(docs_of(route(rules)), ENV, pools={"pool-a"}).routes
    assert 'no InferencePool named "pool-a"' in errors(docs_of(route(rules)), pools={"pool-b"})
    both = [{"backendRefs": [{"inferencePool": "pool-a", "providerHost": "p.example.com"}]}]
    assert "needs exactly one of providerHost, inferencePool" in errors(docs_of(provider(), route(both)))


def test_unsupported_istio_fields_are_errors():
    docs = load(FALLBACK)
    docs[-1][2]["spec"]["http"][0]["match"] = [{"headers": {"a": {"exact": "b"}}}]
    assert "spec.http[0]: match is not supported by epp" in errors(docs)
    docs = load(FALLBACK)
    docs[2][2]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = "MUTUAL"
    assert "tls mode MUTUAL is not supported" in errors(docs)


def test_secret_file_form(tmp_path: Path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-secret\n")
    doc = provider()
    doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]["apiKey"] = {"secretFile": str(key_file)}
    config = build_traffic(docs_of(doc), {})
    key = config.providers["p.example.com"].spec.openai_for(None).api_key
    assert key is not None and key.get_secret_value() == "sk-from-file-secret"
    doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]["apiKey"] = {
        "secretFile": str(tmp_path / "missing")
    }
    msg = errors(docs_of(doc), {})
    assert "openAIConfig.apiKey: cannot read secretFile" in msg and "No such file" in msg


def test_api_key_never_shown():
    for config in (build_traffic(load(ROUTING), ENV), build_traffic(load(FALLBACK), ENV)):
        dash = config.providers["dashscope.aliyuncs.com"]
        for text in (str(config), repr(config), repr(dash), str(dash.spec.openai_for(None))):
            assert KEY not in text and "test-api-key" not in text
    # A bad key type, a bad neighbour field and a duplicate host: none of the messages shows the key.
    doc = provider(path="no-slash")
    doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]["stream"] = KEY
    dup = provider(name="b")
    dup["spec"]["configs"]["defaultConfig"]["openAIConfig"]["apiKey"] = 12345678
    msg = errors(docs_of(doc, dup))
    assert KEY not in msg and "12345678" not in msg
    assert "spec.path" in msg and "openAIConfig.apiKey: must be a string" in msg
    env_doc = provider()
    env_doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]["stream"] = "${DASHSCOPE_API_KEY}"
    msg = errors(docs_of(env_doc))
    assert "openAIConfig.stream" in msg and KEY not in msg

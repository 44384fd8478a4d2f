"""Loading good documents: the seed configs users already write, and epp's own local-run documents."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from epp.config import (
    DEFAULT_STRATEGY,
    ConfigError,
    EndpointPickerConfig,
    RoutingStrategy,
    builtin_strategy,
    load_config,
    load_config_text,
)
from epp.datastore import Endpoint
from epp.scheduling.types import Criticality

SEED = Path(__file__).parent / "fixtures" / "seed-configs"  # copied from shared/fixtures
GOOD = Path(__file__).parent / "fixtures" / "config" / "good"
KEYS = {"DASHSCOPE_API_KEY": "sk-dashscope-0123456789", "MOONSHOT_API_KEY": "sk-moonshot-9876543210"}


def test_ack_prefix_cache_seed_loads() -> None:
    config = load_config([SEED / "ack-prefix-cache.yaml"], {})
    pool = config.pools["vllm-qwen-pool"]
    assert config.pool is pool
    assert pool.routing_strategy is RoutingStrategy.PREFIX_CACHE
    assert pool.spec.target_port_number == 8000
    assert pool.spec.selector == {"app": "qwen"}
    assert (
        pool.spec.extension_ref is not None and pool.spec.extension_ref.name == "inference-gateway-ext-proc"
    )
    assert config.strategy_name == "PREFIX_CACHE"
    assert config.picker_config == builtin_strategy("PREFIX_CACHE")

    spec = config.models.lookup("/model/qwen")
    assert spec is not None
    assert spec.criticality is Criticality.CRITICAL
    assert [(t.name, t.weight) for t in spec.target_models] == [("/model/qwen", 100)]
    assert config.models.choose_target("/model/qwen", random.Random(1)) == "/model/qwen"

    kinds = [(d.kind, d.name) for d in config.other_documents]
    assert kinds == [
        ("GatewayClass", "qwen-inference-gateway-class"),
        ("Gateway", "qwen-inference-gateway"),
        ("HTTPRoute", "qwen-backend"),
        ("HTTPRoute", "qwen-backend-no-inference"),
        ("BackendTrafficPolicy", "backend-timeout"),
    ]
    gateway = config.documents_of_kind("Gateway")[0]
    assert gateway.source == str(SEED / "ack-prefix-cache.yaml")
    assert gateway.index == 4
    assert [listener["port"] for listener in gateway.body["spec"]["listeners"]] == [8080, 8081]
    assert config.sources == (SEED / "ack-prefix-cache.yaml",)


@pytest.mark.parametrize(
    ("name", "kinds", "providers"),
    [
        ("asm-llm-routing.yaml", [], ["dashscope.aliyuncs.com", "api.moonshot.cn"]),
        ("asm-fallback.yaml", [], ["asm-llm-provider-test.com", "dashscope.aliyuncs.com"]),
        ("asm-llm-cache.yaml", [], None),
    ],
)
def test_asm_seed_configs_load(name: str, kinds: list[str], providers: list[str] | None) -> None:
    # Traffic kinds go to TrafficConfig, the cache's WasmPlugin and ConfigMap to CacheSettings (not
    # other_documents, which would hold their expanded keys and password).
    config = load_config([SEED / name], KEYS)
    assert [d.kind for d in config.other_documents] == kinds
    assert (config.cache is not None) == (name == "asm-llm-cache.yaml")
    assert (list(config.traffic.providers) if config.traffic else None) == providers
    assert config.pools == {}
    assert len(config.models) == 0
    assert config.strategy_name == DEFAULT_STRATEGY.value  # no pool, no picker document: the default


def test_asm_routing_keys_are_expanded_into_traffic_config() -> None:
    config = load_config([SEED / "asm-llm-routing.yaml"], KEYS)
    assert config.traffic is not None
    qwen = config.traffic.providers["dashscope.aliyuncs.com"].spec
    key = qwen.openai_for(None).api_key
    assert key is not None and key.get_secret_value() == KEYS["DASHSCOPE_API_KEY"]
    assert qwen.openai_for("vip-route").model == "qwen-turbo"
    assert list(config.traffic.routes) == ["dashscope.aliyuncs.com", "demo-llm-server"]
    assert KEYS["DASHSCOPE_API_KEY"] not in repr(config)
    assert config.redactor.redact(KEYS["MOONSHOT_API_KEY"]) == "***"


@pytest.mark.parametrize(
    ("name", "variables", "index"),
    [
        ("asm-llm-routing.yaml", ["DASHSCOPE_API_KEY", "MOONSHOT_API_KEY"], 1),
        ("asm-fallback.yaml", ["DASHSCOPE_API_KEY"], 2),
    ],
)
def test_asm_seed_configs_without_keys_name_the_missing_variable(
    name: str, variables: list[str], index: int
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([SEED / name], {})
    message = str(info.value)
    for variable in variables:
        assert f"environment variable {variable} is not set" in message
    assert (
        f'document {index} (LLMProvider "dashscope-qwen"): spec.configs.defaultConfig.openAIConfig.apiKey'
        in message
    )
    assert str(SEED / name) in message


def test_seed_files_load_together() -> None:
    # asm-fallback.yaml defines dashscope.aliyuncs.com again: a duplicate host is an error.
    files = sorted(f for f in SEED.glob("*.yaml") if f.name != "asm-fallback.yaml")
    config = load_config(files, KEYS)
    assert list(config.pools) == ["vllm-qwen-pool"]
    assert len(config.other_documents) == 5  # Gateway/HTTPRoute...; the cache's two are CacheSettings
    assert config.cache is not None
    assert config.traffic is not None and len(config.traffic.routes) == 2
    with pytest.raises(
        ConfigError, match=r'an LLMProvider for host "dashscope.aliyuncs.com" is already defined'
    ):
        load_config(sorted(SEED.glob("*.yaml")), KEYS)


def test_local_pool_document_set() -> None:
    config = load_config([GOOD / "local-pool.yaml"], {})
    pool = config.pools["local-pool"]
    assert pool.routing_strategy is RoutingStrategy.LOAD_AWARE
    assert config.strategy_name == "LOAD_AWARE"
    assert pool.spec.extension_ref is not None
    assert pool.spec.extension_ref.port_number == 9002
    assert pool.spec.extension_ref.failure_mode == "FailOpen"
    assert config.static_endpoints == [
        Endpoint("127.0.0.1:8100", "127.0.0.1", 8100),
        Endpoint("pod-b", "[::1]", 8101),
    ]
    travel = config.models.lookup("travel-helper")
    assert travel is not None and travel.criticality is Criticality.SHEDDABLE
    base = config.models.lookup("/model/qwen")
    assert base is not None and base.criticality is Criticality.STANDARD
    assert config.models.choose_target("/model/qwen", random.Random(0)) == "/model/qwen"
    assert config.models.lookup("unknown") is None


def test_picker_document_overrides_the_pools_strategy() -> None:
    config = load_config([GOOD / "local-pool.yaml", GOOD / "custom-picker.yaml"], {})
    assert config.strategy_name == "queue-only"
    assert [p.name for p in config.picker_config.plugins] == ["queue-scorer", "picker"]
    profile = config.picker_config.scheduling_profiles[0]
    assert [(r.plugin_ref, r.weight) for r in profile.plugins] == [("queue-scorer", 2.0), ("picker", 1.0)]


def test_strategy_argument_overrides_annotation_and_picker_document() -> None:
    config = load_config([GOOD / "local-pool.yaml", GOOD / "custom-picker.yaml"], {}, strategy="ROUND_ROBIN")
    assert config.strategy_name == "ROUND_ROBIN"
    assert config.picker_config == builtin_strategy(RoutingStrategy.ROUND_ROBIN)


def test_gie_v1_pool_shape_is_accepted() -> None:
    config = load_config([GOOD / "gie-v1-pool.yaml"], {})
    pool = config.pools["v1-pool"]
    assert pool.spec.target_port_number == 8000
    assert pool.spec.selector == {"app": "vllm"}
    assert pool.spec.extension_ref is not None and pool.spec.extension_ref.port_number == 9002
    assert config.strategy_name == "ROUND_ROBIN"


def test_pool_without_annotation_uses_the_default_strategy() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1\nkind: InferencePool\nmetadata: {name: p}\n"
        "spec: {selector: {app: x}, targetPortNumber: 8000}\n"
    )
    config = load_config_text(text, {})
    assert config.pools["p"].routing_strategy is DEFAULT_STRATEGY is RoutingStrategy.PREFIX_TOKENS
    assert config.strategy_name == "PREFIX_TOKENS"


def test_empty_config_gives_the_default_strategy() -> None:
    config = load_config_text("# nothing here\n---\n", {})
    assert config.pools == {} and config.other_documents == [] and config.static_endpoints == []
    assert isinstance(config.picker_config, EndpointPickerConfig)
    assert config.strategy_name == "PREFIX_TOKENS"


def test_other_gie_kinds_and_unknown_groups_are_kept() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\nmetadata: {name: o}\n"
        "---\napiVersion: example.com/v1\nkind: Whatever\nspec: {x: 1}\n"
    )
    config = load_config_text(text, {}, source="mixed.yaml")
    assert [(d.kind, d.name, d.source, d.index) for d in config.other_documents] == [
        ("InferenceObjective", "o", "mixed.yaml", 1),
        ("Whatever", None, "mixed.yaml", 2),
    ]


def test_model_pool_ref_is_not_checked_without_pools() -> None:
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata: {name: m}\n"
        "spec: {modelName: m, poolRef: {name: elsewhere}}\n"
    )
    assert "m" in load_config_text(text, {}).models


def test_static_endpoint_names_must_be_unique_across_documents() -> None:
    doc = (
        "apiVersion: epp.dev/v1alpha1\nkind: StaticEndpoints\nmetadata: {name: NAME}\n"
        "spec: {endpoints: [{address: '127.0.0.1:8100'}]}\n"
    )
    with pytest.raises(
        ConfigError, match=r'document 2 \(StaticEndpoints "b"\): spec.endpoints\[0\]: endpoint name'
    ):
        load_config_text(doc.replace("NAME", "a") + "---\n" + doc.replace("NAME", "b"), {})

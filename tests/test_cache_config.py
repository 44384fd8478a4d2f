"""The cache's configuration: the seed's WasmPlugin + ConfigMap load unchanged, LLMCache adds epp's settings,
REDIS_* from the environment win, and every bad field is an error naming file, document and field (never the
Redis password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config import ConfigError, load_config, load_config_text
from epp.config.cache import CacheSettings, host_without_port, summary_lines
from epp.config.cache_build import settings_from_env

SEED = Path(__file__).parent / "fixtures" / "seed-configs" / "asm-llm-cache.yaml"
SECRET = "redis-pass-0123456789"

PLUGIN = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: llm-cache}
spec:
  url: oci://example.invalid/asm-wasm-llm-cache:v1
  phase: STATS
  pluginConfig:
    {host_match: "api\\\\.example\\\\.com", path_match: "/v1/.*", service: cache.local, port: 8080}
"""
CONFIGMAP = f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: cache-env}}
data: {{REDIS_ADDRESS: "10.0.0.1:6380", REDIS_PASSWORD: "{SECRET}", REDIS_EXPIRED_SECONDS: "30", OTHER: x}}
"""
LLMCACHE = """\
apiVersion: epp.dev/v1alpha1
kind: LLMCache
metadata: {name: cache}
spec:
  lookupTimeout: 20ms
  defaultTTL: 2m
  memoryBytes: 1048576
  cacheSampled: true
  namespace: team-a
  semantic: {enabled: true, models: ["qwen-*"], routes: ["/v1/chat/*"], threshold: 0.92}
"""


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env or {}, source="c.yaml")
    return str(info.value)


def test_seed_loads_unchanged_into_settings() -> None:
    config = load_config([SEED], {})
    cache = config.cache
    assert cache is not None
    assert config.other_documents == []  # the cache's documents are read, not kept raw
    assert cache.host_match.pattern == "dashscope.aliyuncs.com" and cache.path_match.pattern == ".*"
    assert cache.fail_open is True
    assert cache.backend == "service"
    assert cache.service_url == "http://asm-wasm-cache-service-example.default.svc.cluster.local:80"
    assert (cache.redis.address, cache.redis.host, cache.redis.port) == ("redis:6379", "redis", 6379)
    assert cache.redis.password.get_secret_value() == ""
    assert cache.redis.expire_s == 600 and cache.default_ttl_s == 600.0
    assert cache.lookup_timeout_s == 0.05
    assert cache.plugin == "llm-cache"
    assert not cache.semantic.enabled
    assert cache.selects("dashscope.aliyuncs.com", "/compatible-mode/v1/chat/completions")
    assert cache.selects("DashScope.aliyuncs.com:443", "/v1/chat/completions?x=1")
    assert not cache.selects("api.moonshot.cn", "/v1/chat/completions")
    assert not cache.selects("evil-dashscope.aliyuncs.com", "/")  # whole-host match, as in Istio


def test_environment_overrides_the_configmap() -> None:
    env = {"REDIS_ADDRESS": "127.0.0.1:7001", "REDIS_PASSWORD": SECRET, "REDIS_EXPIRED_SECONDS": "5"}
    cache = load_config([SEED], env).cache
    assert cache is not None
    assert cache.redis.address == "127.0.0.1:7001"
    assert cache.redis.password.get_secret_value() == SECRET
    assert cache.default_ttl_s == 5.0
    assert SECRET not in repr(cache) and SECRET not in "\n".join(summary_lines(cache))


def test_plugin_configmap_and_llmcache_together() -> None:
    config = load_config_text("---\n".join([PLUGIN, CONFIGMAP, LLMCACHE]), {}, source="c.yaml")
    cache = config.cache
    assert cache is not None
    assert cache.selects("api.example.com:80", "/v1/chat/completions")
    assert not cache.selects("api.example.com", "/health")
    assert cache.fail_open is False  # the WasmPlugin sets no failStrategy: Istio's default FAIL_CLOSE
    assert cache.service_url == "http://cache.local:8080"
    assert cache.redis.address == "10.0.0.1:6380" and cache.redis.expire_s == 30
    assert cache.default_ttl_s == 120.0  # LLMCache's defaultTTL wins over REDIS_EXPIRED_SECONDS
    assert (cache.lookup_timeout_s, cache.memory_bytes, cache.cache_sampled) == (0.02, 1048576, True)
    assert cache.namespace == "team-a"
    assert cache.semantic.threshold == 0.92
    assert cache.semantic_for("qwen-turbo", "/v1/chat/completions")
    assert not cache.semantic_for("qwen-turbo", "/v1/completions")
    assert not cache.semantic_for("llama", "/v1/chat/completions")
    assert SECRET not in repr(config) and SECRET not in repr(cache)
    assert config.redactor.redact(f"x {SECRET} y") == "x *** y"


def test_llmcache_alone_is_in_process_and_fail_open() -> None:
    cache = load_config_text(LLMCACHE, {}).cache
    assert cache is not None
    assert cache.backend == "in-process" and cache.service_url is None and cache.fail_open
    assert cache.selects("anything", "/v1/chat/completions")
    assert cache.redis.address == "127.0.0.1:6379"
    text = LLMCACHE.replace(
        "spec:\n", "spec:\n  serviceURL: http://127.0.0.1:9000/\n  failStrategy: FAIL_CLOSE\n"
    )
    cache = load_config_text(text, {}).cache
    assert cache is not None and cache.backend == "service" and cache.service_url == "http://127.0.0.1:9000"
    assert not cache.fail_open


def test_no_cache_documents_no_settings() -> None:
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: b}\n"
    plugin = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: auth}\n"
        "spec: {url: oci://x/auth:v1, pluginConfig: {issuer: y}}\n"
    )
    config = load_config_text(other + "---\n" + plugin, {"REDIS_ADDRESS": "not an address"})
    assert config.cache is None
    assert [d.kind for d in config.other_documents] == ["ConfigMap", "WasmPlugin"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'host_match: "api',
            'host_match: "(api',
            "spec.pluginConfig.host_match: value error, regex does not",
        ),
        ("port: 8080", "port: '80x'", "spec.pluginConfig.port: value error, must be a port in 1..65535"),
        ("port: 8080", "port: 70000", "spec.pluginConfig.port: value error, must be a port"),
        (
            "service: cache.local",
            "service: 'http://x'",
            "spec.pluginConfig.service: value error, must be a DNS",
        ),
        ("port: 8080}", "port: 1, hostmatch: x}", "spec.pluginConfig.hostmatch: unknown field"),
        (
            "phase: STATS",
            "failStrategy: FAIL_SOMETIMES",
            "spec.failStrategy: must be 'FAIL_OPEN' or 'FAIL_CLOSE'",
        ),
        ("phase: STATS", "failstrategy: FAIL_OPEN", "spec.failstrategy: unknown field"),
        (", service: cache.local", "", "spec.pluginConfig.service: required field is missing"),
    ],
)
def test_plugin_errors_name_the_field(old: str, new: str, expected: str) -> None:
    assert old in PLUGIN
    message = error_of(PLUGIN.replace(old, new))
    assert message.lower().startswith('c.yaml: document 1 (wasmplugin "llm-cache"): ')
    assert expected.lower().replace("value error, ", "") in message.lower()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"10.0.0.1:6380"', '"redis"', "data.REDIS_ADDRESS: expected host:port"),
        ('"10.0.0.1:6380"', '"redis:99999"', "data.REDIS_ADDRESS: port must be a number in 1..65535"),
        ('"30"', '"0"', "data.REDIS_EXPIRED_SECONDS: must be a positive integer number of seconds"),
        ('"30"', '"1.5"', "data.REDIS_EXPIRED_SECONDS: must be a positive integer"),
        ('"30"', '"-3"', "data.REDIS_EXPIRED_SECONDS: must be a positive integer"),
        (f'"{SECRET}"', "12345678", "data.REDIS_PASSWORD: must be a string"),
    ],
)
def test_configmap_errors_name_the_field(old: str, new: str, expected: str) -> None:
    message = error_of(CONFIGMAP.replace(old, new))
    assert message.startswith('c.yaml: document 1 (ConfigMap "cache-env"): ' + expected), message
    assert SECRET not in message and "12345678" not in message


def test_environment_errors_name_the_variable_never_the_password() -> None:
    message = error_of(CONFIGMAP, {"REDIS_EXPIRED_SECONDS": "soon", "REDIS_ADDRESS": f"{SECRET}"})
    assert "environment: REDIS_EXPIRED_SECONDS: must be a positive integer" in message
    assert "environment: REDIS_ADDRESS: expected host:port" in message
    # The password from the ConfigMap is redacted wherever it appears (here: echoed as a bad address).
    assert SECRET not in message
    with pytest.raises(ConfigError, match="REDIS_EXPIRED_SECONDS"):
        settings_from_env({"REDIS_EXPIRED_SECONDS": "0"})
    settings = settings_from_env({"REDIS_ADDRESS": "[::1]:6390", "REDIS_EXPIRED_SECONDS": "7"})
    assert (settings.redis.host, settings.redis.port, settings.default_ttl_s) == ("::1", 6390, 7.0)


def test_password_from_an_env_reference_is_redacted() -> None:
    text = CONFIGMAP.replace(SECRET, "${PW}").replace('"30"', '"never"')
    message = error_of(text, {"PW": SECRET})
    assert "REDIS_EXPIRED_SECONDS" in message and SECRET not in message
    cache = load_config_text(CONFIGMAP.replace(SECRET, "${PW}"), {"PW": SECRET}).cache
    assert cache is not None and cache.redis.password.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("lookupTimeout: 20ms", "lookupTimeout: soon", "spec.lookupTimeout: invalid duration"),
        ("lookupTimeout: 20ms", "lookupTimeout: 1h", "spec.lookupTimeout: must be less than or equal to 10"),
        ("threshold: 0.92", "threshold: 1.5", "spec.semantic.threshold: must be less than or equal to 1"),
        ("threshold: 0.92", "threshold: high", "spec.semantic.threshold: must be a number in (0, 1]"),
        ("memoryBytes: 1048576", "memoryBytes: -1", "spec.memoryBytes: must be greater than or equal to 0"),
        ("cacheSampled: true", "cacheSampled: yes please", "spec.cacheSampled: must be a valid boolean"),
        ("namespace: team-a", "namespaces: team-a", "spec.namespaces: unknown field"),
        ("lookupTimeout: 20ms", "backend: Service", "spec.backend: backend Service needs serviceURL"),
        ("lookupTimeout: 20ms", "backend: Remote", "spec.backend: must be 'Service' or 'InProcess'"),
        ("lookupTimeout: 20ms", "hostMatch: '[a-'", "spec.hostMatch: value error, regex does not compile"),
    ],
)
def test_llmcache_errors_name_the_field(old: str, new: str, expected: str) -> None:
    assert old in LLMCACHE
    message = error_of(LLMCACHE.replace(old, new))
    assert message.startswith('c.yaml: document 1 (LLMCache "cache"): '), message
    assert expected.replace("value error, ", "") in message, message


def test_cross_document_errors() -> None:
    message = error_of("---\n".join([PLUGIN, PLUGIN.replace("llm-cache}", "llm-cache-2}")]))
    assert (
        'document 2 (WasmPlugin "llm-cache-2"): only one cache WasmPlugin is allowed (first: c.yaml'
        in message
    )
    message = error_of("---\n".join([CONFIGMAP, CONFIGMAP]))
    assert "document 2" in message and "only one cache ConfigMap with REDIS_* settings" in message
    message = error_of("---\n".join([PLUGIN, LLMCACHE.replace("spec:\n", "spec:\n  hostMatch: x\n")]))
    assert 'spec.hostMatch: also set by WasmPlugin "llm-cache" (spec.pluginConfig.host_match)' in message
    message = error_of(LLMCACHE.replace("epp.dev/v1alpha1", "epp.dev/v1"))
    assert "apiVersion: LLMCache needs one of epp.dev/v1alpha1" in message
    message = error_of(LLMCACHE.replace("kind: LLMCache", "kind: LLMCahce"))
    assert "expected one of" in message and "LLMCache" in message


def test_settings_helpers() -> None:
    assert host_without_port("[::1]:8080") == "[::1]"
    assert host_without_port("Example.COM.") == "example.com"
    assert host_without_port("::1") == "::1"
    defaults = CacheSettings()
    assert defaults.selects("x", "/anything") and defaults.fail_open and defaults.backend == "in-process"
    changed = defaults.with_redis(address="h:1")
    assert changed.redis.address == "h:1" and defaults.redis.address == "127.0.0.1:6379"

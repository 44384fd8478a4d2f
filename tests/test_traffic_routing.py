"""TrafficRouter, rewrite_body and the resolve/TLS helpers, on the ASM seed documents."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from epp.config.traffic.build import build_traffic
from epp.config.traffic.documents import OpenAIConfig
from epp.config.traffic.policy import UpstreamTLS
from epp.traffic.resolve import Address, OverrideResolver, parse_overrides, tls_context
from epp.traffic.routing import BodyError, TrafficRouter, rewrite_body, split_host

SEEDS = Path(__file__).parent / "fixtures" / "seed-configs"
ENV = {"DASHSCOPE_API_KEY": "sk-dash-secret", "MOONSHOT_API_KEY": "sk-moon-secret"}


def router(name: str, seed: int = 7) -> TrafficRouter:
    path = SEEDS / name
    docs = [(str(path), i, d) for i, d in enumerate(yaml.safe_load_all(path.read_text()), 1) if d]
    return TrafficRouter(build_traffic(docs, ENV), random.Random(seed))


def model_of(choice_body: bytes) -> object:
    return orjson.loads(choice_body)["model"]


PLAIN = b'{"messages":[{"role":"user","content":"hi"}]}'


def test_subscriber_header_takes_vip_rule():
    r = router("asm-llm-routing.yaml")
    choice = r.choose("dashscope.aliyuncs.com", {"user-type": "subscriber"})
    assert choice is not None and (choice.route, choice.rule) == ("dashscope-route", "vip-route")
    assert choice.target.host == "dashscope.aliyuncs.com"
    assert model_of(choice.target.rewrite(PLAIN).body) == "qwen-turbo"
    assert choice.target.path_and_query() == "/compatible-mode/v1/chat/completions"
    assert choice.target.upstream_headers(None) == {"authorization": "Bearer sk-dash-secret"}


def test_default_rule_and_port_and_case():
    r = router("asm-llm-routing.yaml")
    for host, headers in [
        ("dashscope.aliyuncs.com", {}),
        ("DashScope.Aliyuncs.com:80", {"user-type": "free"}),
        ("dashscope.aliyuncs.com.", {"user-type": "subscriber-not"}),
    ]:
        choice = r.choose(host, headers)
        assert choice is not None and choice.rule is None and choice.port == 80
        assert model_of(choice.target.rewrite(PLAIN).body) == "qwen-1.8b-chat"
    choice = r.choose("dashscope.aliyuncs.com:8080", {})
    assert choice is not None and choice.port == 8080
    assert r.choose("unknown.example.com", {}) is None


def test_weighted_split_is_fifty_fifty():
    r = router("asm-llm-routing.yaml", seed=12345)
    n = 2000
    hits = {"dashscope.aliyuncs.com": 0, "api.moonshot.cn": 0}
    for _ in range(n):
        choice = r.choose("demo-llm-server", {})
        assert choice is not None and choice.rule == "migrate-rule"
        assert choice.target.host is not None
        hits[choice.target.host] += 1
    # Binomial(2000, 0.5): sd ~ 22.4; 4 sd either side.
    assert abs(hits["dashscope.aliyuncs.com"] - n / 2) < 4 * (n * 0.25) ** 0.5
    models = {model_of(r.choose("demo-llm-server", {}).target.rewrite(PLAIN).body) for _ in range(50)}  # type: ignore[union-attr]
    assert models == {"qwen-1.8b-chat", "moonshot-v1-8k"}


def test_zero_weight_backend_never_chosen():
    path = SEEDS / "asm-llm-routing.yaml"
    docs = [(str(path), i, d) for i, d in enumerate(yaml.safe_load_all(path.read_text()), 1) if d]
    docs[3][2]["spec"]["rules"][0]["backendRefs"][1]["weight"] = 0
    r = TrafficRouter(build_traffic(docs, ENV), random.Random(1))
    assert {r.choose("demo-llm-server", {}).target.host for _ in range(200)} == {"dashscope.aliyuncs.com"}  # type: ignore[union-attr]


def test_provider_host_directly_with_fallback():
    r = router("asm-fallback.yaml")
    choice = r.choose("asm-llm-provider-test.com", {})
    assert choice is not None and choice.route is None and choice.rule is None
    assert model_of(choice.target.rewrite(PLAIN).body) == "test-model"
    assert [t.host for t in choice.fallbacks] == ["dashscope.aliyuncs.com"]
    assert model_of(choice.fallbacks[0].rewrite(PLAIN).body) == "qwen1.5-72b-chat"
    assert choice.fallbacks[0].upstream_headers(None) == {"authorization": "Bearer sk-dash-secret"}
    policy = r.config.upstream(choice.target.host or "", choice.port)
    assert policy.outlier is not None and policy.outlier.consecutive_5xx == 1


def test_rewrite_sets_model_and_stream():
    cfg = OpenAIConfig(model="m", stream=False)
    out = rewrite_body(b'{"model":"client","stream":true,"stream_options":{"include_usage":true}}', cfg)
    assert orjson.loads(out.body) == {"model": "m", "stream": False}
    assert (out.stream, out.client_asked_usage) == (False, False)
    out = rewrite_body(b'{"model":"client"}', cfg, keep_client_model=True)
    assert orjson.loads(out.body) == {"model": "client", "stream": False}
    out = rewrite_body(b"{}", cfg, keep_client_model=True)  # keepClientModel fills a missing model
    assert orjson.loads(out.body)["model"] == "m"


def test_rewrite_streaming_adds_usage_and_reports_client_ask():
    cfg = OpenAIConfig(model="m", stream=True)
    out = rewrite_body(PLAIN, cfg)
    assert orjson.loads(out.body)["stream_options"] == {"include_usage": True}
    assert (out.stream, out.client_asked_usage) == (True, False)
    asked = b'{"stream":true,"stream_options":{"include_usage":true},"model":"m"}'
    out = rewrite_body(asked, OpenAIConfig())
    assert out.body == asked and out.client_asked_usage  # nothing to change: same bytes
    out = rewrite_body(b'{"stream":true,"stream_options":{"other":1}}', OpenAIConfig())
    assert orjson.loads(out.body)["stream_options"] == {"other": 1, "include_usage": True}


def test_rewrite_without_model_and_bad_bodies():
    out = rewrite_body(PLAIN, OpenAIConfig())
    assert out.body == PLAIN and not out.stream
    for bad in (b"not json", b"[1]", b'"x"'):
        with pytest.raises(BodyError):
            rewrite_body(bad, OpenAIConfig(model="m"))


def test_split_host():
    assert split_host("Example.COM:8080") == ("example.com", 8080)
    assert split_host("example.com") == ("example.com", None)
    assert split_host("[::1]:443") == ("::1", 443)
    assert split_host("example.com:notaport") == ("example.com", None)


def test_parse_overrides():
    got = parse_overrides(["API.moonshot.cn:443=127.0.0.1:8443", "h:80=[::1]:9000"])
    assert got == {
        Address("api.moonshot.cn", 443): Address("127.0.0.1", 8443),
        Address("h", 80): Address("::1", 9000),
    }
    for bad in ("h:443", "h=127.0.0.1:1", "h:443=127.0.0.1", "h:0=a:1", "h:1=a:99999"):
        with pytest.raises(ValueError, match="resolve override"):
            parse_overrides([bad])


async def test_override_resolver_connects_locally_and_keeps_host():
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        resolver = OverrideResolver(parse_overrides([f"dashscope.aliyuncs.com:80=127.0.0.1:{port}"]))
        connector = aiohttp.TCPConnector(resolver=resolver)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://dashscope.aliyuncs.com/") as resp,
        ):
            assert resp.status == 200 and await resp.text() == "ok"
    finally:
        await runner.cleanup()
    assert seen == ["dashscope.aliyuncs.com"]


def test_tls_context_verifies_by_default(tmp_path: Path):
    ctx = tls_context(UpstreamTLS())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    off = tls_context(UpstreamTLS(verify=False))
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    with pytest.raises((FileNotFoundError, ssl.SSLError)):
        tls_context(UpstreamTLS(ca_file=str(tmp_path / "missing.pem")))


def test_tls_context_with_ca_file():
    certifi = pytest.importorskip("certifi")
    ctx = tls_context(UpstreamTLS(ca_file=certifi.where()))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.get_ca_certs()


def test_provider_extras_headers_query_and_client_credentials():
    doc = {
        "apiVersion": "istio.alibabacloud.com/v1beta1",
        "kind": "LLMProvider",
        "metadata": {"name": "p"},
        "spec": {
            "host": "p.example.com",
            "headers": {"X-Team": "a"},
            "queryParams": {"api-version": "2024-06-01"},
            "passClientCredentials": True,
            "configs": {"defaultConfig": {"openAIConfig": {"apiKey": "sk-fallback-key"}}},
        },
    }
    r = TrafficRouter(build_traffic([("t.yaml", 1, doc)], {}), random.Random(0))
    target = r.choose("p.example.com", {}).target  # type: ignore[union-attr]
    assert target.path_and_query() == "/v1/chat/completions?api-version=2024-06-01"
    assert target.upstream_headers("Bearer client") == {"x-team": "a", "authorization": "Bearer client"}
    assert target.upstream_headers(None) == {"x-team": "a", "authorization": "Bearer sk-fallback-key"}

"""The seed traffic documents behind real Envoy: epp's ext_proc chooses the provider (TrafficRouter), the
rendered routes, TLS clusters, outlier detection and aggregate fallback clusters do the rest.

Providers are simulator pods behind TLS (a trustme CA), one SimFleet per provider so each checks its own
API key like vLLM's --api-key; a recording wrapper maps `/compatible-mode/v1/...` (the seed's DashScope
path, which the sim does not serve) to `/v1/...` after noting what arrived.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
import uvicorn

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.fleet import SimFleet, _EmbeddedServer, bind_socket
from tests.test_envoy_support import envoy_stat, poll

pytestmark = pytest.mark.slow

SEEDS = Path(__file__).parent / "fixtures" / "seed-configs"
KEYS = {"DASHSCOPE_API_KEY": "sk-dash-7f3a91c2e5", "MOONSHOT_API_KEY": "sk-moon-42b8d06e11"}
TEST_KEY = "test-api-key"  # literal in asm-fallback.yaml
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Seen:
    path: str
    authority: str
    authorization: str
    body: dict[str, Any]


class Recorder:
    """ASGI wrapper: records each request, then serves `/compatible-mode/v1/...` as `/v1/...`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[Seen] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        raw = b"".join(m.get("body", b"") for m in messages)
        self.seen.append(
            Seen(
                scope["path"],
                headers.get("host", ""),
                headers.get("authorization", ""),
                orjson.loads(raw or b"{}"),
            )
        )
        path = scope["path"].removeprefix("/compatible-mode")
        scope = {**scope, "path": path, "raw_path": path.encode()}

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


@dataclass
class Provider:
    host: str
    key: str
    models: tuple[str, ...]
    fleet: SimFleet = field(init=False)
    recorder: Recorder = field(init=False)
    port: int = 0

    def __post_init__(self) -> None:
        self.fleet = SimFleet(
            1,
            "tiny",
            time_scale=50.0,
            served_model_name=self.models[0],
            lora_modules=self.models[1:],
            api_key=self.key,
        )
        self.recorder = Recorder(self.fleet.apps[0])


class TLSProviders:
    """Providers served over TLS (one certificate for all their hosts) by one event loop in a thread."""

    def __init__(self, providers: list[Provider], tmp: Path) -> None:
        self.providers = {p.host: p for p in providers}
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(*self.providers)
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._cert, self._key = tmp / "cert.pem", tmp / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self._cert))
        cert.private_key_pem.write_to_path(str(self._key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[uvicorn.Server] = []
        self._tasks: list[asyncio.Task[None]] = []

    def __enter__(self) -> TLSProviders:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        for provider in self.providers.values():
            sock = bind_socket("127.0.0.1", 0)
            provider.port = sock.getsockname()[1]
            config = uvicorn.Config(
                provider.recorder,
                lifespan="off",
                log_level="warning",
                access_log=False,
                ssl_certfile=str(self._cert),
                ssl_keyfile=str(self._key),
            )
            server = _EmbeddedServer(config)  # leaves the test process's signal handlers alone
            provider.fleet.pods[0].start()
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not all(s.started for s in self._servers):  # noqa: ASYNC110 (uvicorn has no started event)
            await asyncio.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for p in self.providers.values():
                p.fleet.pods[0].fault.clear()
            for s in self._servers:
                s.should_exit = True
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for p in self.providers.values():
                await p.fleet.pods[0].stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set_fault(self, host: str, mode: str) -> None:
        pod = self.providers[host].fleet.pods[0]
        self._loop.call_soon_threadsafe(pod.fault.set, mode, 503)

    def resolve(self) -> tuple[str, ...]:
        return tuple(f"{h}:443=127.0.0.1:{p.port}" for h, p in self.providers.items())


@pytest.fixture(scope="module")
def keys_in_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in KEYS}
    os.environ.update(KEYS)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _stack(seed: str | Path, providers: TLSProviders, fail_open: bool = False) -> EnvoyStack:
    """A stack for a seed (a name in SEEDS, or a path) whose providers are `providers`."""
    options = StackOptions(
        config_paths=[str(SEEDS / seed)],
        fail_open=fail_open,
        wait_for_pods=False,  # no pool: providers only
        resolve=providers.resolve(),
        upstream_ca_file=str(providers.ca_file),
        envoy_log_level="info",
        serve_args=("--seed", "7"),
    )
    return EnvoyStack(options=options)


@pytest.fixture(scope="module")
def routing(
    keys_in_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvoyStack, TLSProviders]]:
    providers = [
        Provider("dashscope.aliyuncs.com", KEYS["DASHSCOPE_API_KEY"], ("qwen-1.8b-chat", "qwen-turbo")),
        Provider("api.moonshot.cn", KEYS["MOONSHOT_API_KEY"], ("moonshot-v1-8k",)),
    ]
    with (
        TLSProviders(providers, tmp_path_factory.mktemp("tls")) as tls,
        _stack("asm-llm-routing.yaml", tls) as stack,
    ):
        yield stack, tls


@pytest.fixture(scope="module")
def fallback(
    keys_in_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvoyStack, TLSProviders]]:
    providers = [
        Provider("asm-llm-provider-test.com", TEST_KEY, ("test-model",)),
        Provider("dashscope.aliyuncs.com", KEYS["DASHSCOPE_API_KEY"], ("qwen1.5-72b-chat",)),
    ]
    with (
        TLSProviders(providers, tmp_path_factory.mktemp("tls")) as tls,
        _stack("asm-fallback.yaml", tls) as stack,
    ):
        yield stack, tls


def chat(stack: EnvoyStack, host: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions", json=CHAT, headers={"host": host, **headers}, timeout=30
    )


def test_default_and_subscriber_models(routing: tuple[EnvoyStack, TLSProviders]) -> None:
    stack, tls = routing
    dashscope = tls.providers["dashscope.aliyuncs.com"].recorder
    plain = chat(stack, "dashscope.aliyuncs.com", authorization="Bearer client-own-key")
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == "qwen-1.8b-chat"
    vip = chat(stack, "dashscope.aliyuncs.com", **{"user-type": "subscriber"})
    assert vip.status_code == 200, vip.text
    assert vip.json()["model"] == "qwen-turbo"
    first, second = dashscope.seen[-2:]
    for seen in (first, second):
        assert seen.path == "/compatible-mode/v1/chat/completions"
        assert seen.authority == "dashscope.aliyuncs.com"
        # The provider's key replaced the client's; epp's internal headers are gone.
        assert seen.authorization == f"Bearer {KEYS['DASHSCOPE_API_KEY']}"
        assert seen.body["stream"] is False
    assert (first.body["model"], second.body["model"]) == ("qwen-1.8b-chat", "qwen-turbo")


def test_weighted_split_within_binomial_tolerance(routing: tuple[EnvoyStack, TLSProviders]) -> None:
    stack, tls = routing
    before = {h: len(p.recorder.seen) for h, p in tls.providers.items()}
    n = 200
    models = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            r = client.post(
                f"{stack.base_url}/v1/chat/completions", json=CHAT, headers={"host": "demo-llm-server"}
            )
            assert r.status_code == 200, r.text
            models.append(r.json()["model"])
    moonshot = len(tls.providers["api.moonshot.cn"].recorder.seen) - before["api.moonshot.cn"]
    dashscope = len(tls.providers["dashscope.aliyuncs.com"].recorder.seen) - before["dashscope.aliyuncs.com"]
    assert moonshot + dashscope == n
    # 50/50 over 200: sd = sqrt(200 * 0.25) ~ 7.1; +-32 is 4.5 sd (a false failure about 1 in 150,000).
    assert abs(moonshot - n / 2) <= 32, (moonshot, dashscope)
    assert models.count("moonshot-v1-8k") == moonshot and models.count("qwen-1.8b-chat") == dashscope
    last = tls.providers["api.moonshot.cn"].recorder.seen[-1]
    assert last.path == "/v1/chat/completions" and last.authorization == f"Bearer {KEYS['MOONSHOT_API_KEY']}"


def test_unmatched_host_path_and_bad_body_are_json_errors(routing: tuple[EnvoyStack, TLSProviders]) -> None:
    stack, _ = routing
    bad = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=b"[1]",
        headers={"host": "demo-llm-server"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_body", bad.text
    get = httpx.get(f"{stack.base_url}/v1/chat/completions", headers={"host": "api.moonshot.cn"}, timeout=30)
    assert get.status_code == 405 and get.json()["error"]["code"], get.text


def test_api_keys_in_no_log_or_config(routing: tuple[EnvoyStack, TLSProviders]) -> None:
    stack, _ = routing
    assert chat(stack, "api.moonshot.cn").status_code == 200
    assert stack.envoy is not None and stack.epp is not None
    texts = {
        "envoy log": stack.envoy.log_text(),
        "epp log": stack.epp.log_text(),
        "envoy yaml": (stack.envoy.log_path.parent / "envoy.yaml").read_text(),
        "epp metrics": httpx.get(f"{stack.epp_url}/metrics", timeout=5).text,
    }
    for key in KEYS.values():
        for what, text in texts.items():
            assert key not in text, f"the API key is in the {what}"


def test_faulty_provider_ejected_and_fallback_takes_its_traffic(
    fallback: tuple[EnvoyStack, TLSProviders],
) -> None:
    stack, tls = fallback
    broken_host, fallback_host = "asm-llm-provider-test.com", "dashscope.aliyuncs.com"
    broken, good = tls.providers[broken_host].recorder, tls.providers[fallback_host].recorder
    healthy = chat(stack, broken_host)
    assert healthy.status_code == 200 and healthy.json()["model"] == "test-model", healthy.text
    assert broken.seen[-1].authorization == f"Bearer {TEST_KEY}"
    tls.set_fault(broken_host, "error")
    tried = len(broken.seen)
    # The first 5xx ejects it (consecutive5xxErrors: 1) and that request is retried on the fallback, with
    # the fallback's own model and key: the client sees no error at all.
    for _ in range(20):
        r = chat(stack, broken_host)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "qwen1.5-72b-chat"
    assert len(broken.seen) - tried == 1, "an ejected provider got requests"
    assert good.seen[-1].authorization == f"Bearer {KEYS['DASHSCOPE_API_KEY']}"
    assert good.seen[-1].path == "/compatible-mode/v1/chat/completions"
    assert (
        envoy_stat(
            stack.admin_url, f"cluster.provider_{broken_host}.outlier_detection.ejections_enforced_total"
        )
        == 1
    )
    # Healed, it gets traffic again once the 10 s baseEjectionTime is over (checked at the 1 s interval).
    tls.set_fault(broken_host, "none")
    ejected_until = len(broken.seen)

    def back() -> bool:
        r = chat(stack, broken_host)
        assert r.status_code == 200, r.text
        return len(broken.seen) > ejected_until and r.json()["model"] == "test-model"

    poll(back, "the healed provider to get traffic again", deadline_s=15.0)


RULES_HOST = "rules.example"
RULES = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata:
  name: flaky
spec:
  host: flaky.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {model: flaky-model, stream: false, apiKey: sk-flaky-0c1d}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata:
  name: spare
spec:
  host: spare.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {model: spare-model, stream: false, apiKey: sk-spare-9e8f}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: flaky-fallback
spec:
  hosts: [flaky.example.com]
  http:
  - route:
    - destination: {host: flaky.example.com}
      fallback:
        target: {host: spare.example.com}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata:
  name: rules
spec:
  host: rules.example
  rules:
  - name: strict
    timeout: 1500ms
    retries: 0
    matches:
    - headers:
        x-tier: {exact: strict}
    backendRefs:
    - providerHost: flaky.example.com
  - name: patient
    timeout: 1s
    backendRefs:
    - providerHost: flaky.example.com
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EnvoyStack, TLSProviders]]:
    tmp = tmp_path_factory.mktemp("rules")
    (tmp / "rules.yaml").write_text(RULES)
    providers = [
        Provider("flaky.example.com", "sk-flaky-0c1d", ("flaky-model",)),
        Provider("spare.example.com", "sk-spare-9e8f", ("spare-model",)),
    ]
    with TLSProviders(providers, tmp) as tls, _stack(tmp / "rules.yaml", tls) as stack:
        yield stack, tls


def test_rule_retries_zero_relays_the_5xx_and_timeout_is_a_json_504(
    rules: tuple[EnvoyStack, TLSProviders],
) -> None:
    stack, tls = rules
    flaky, spare = (tls.providers[h].recorder for h in ("flaky.example.com", "spare.example.com"))
    strict = {"x-tier": "strict"}
    ok = chat(stack, RULES_HOST, **strict)
    assert ok.status_code == 200 and ok.json()["model"] == "flaky-model", ok.text
    tls.set_fault("flaky.example.com", "error")
    spared = len(spare.seen)
    # The provider's own host keeps the default (one retry, on the fallback): the client sees no error.
    fallen_back = chat(stack, "flaky.example.com")
    assert fallen_back.status_code == 200 and fallen_back.json()["model"] == "spare-model", fallen_back.text
    assert len(spare.seen) == spared + 1
    # The rule's `retries: 0`: the provider's 503 is the client's answer, its JSON body relayed.
    relayed = chat(stack, RULES_HOST, **strict)
    assert relayed.status_code == 503, relayed.text
    assert relayed.json()["error"]["message"] == "Simulated pod failure."
    assert len(spare.seen) == spared + 1, "retries: 0 tried the fallback"
    # `timeout: 1500ms` on a provider that never answers: a JSON 504 after about that long.
    tls.set_fault("flaky.example.com", "hang")
    tried = len(flaky.seen)
    started = time.monotonic()
    timed_out = chat(stack, RULES_HOST, **strict)
    elapsed = time.monotonic() - started
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.headers["content-type"].startswith("application/json")
    assert timed_out.json()["error"]["code"] == "upstream_unavailable"
    assert 1.4 <= elapsed < 5.0, elapsed
    assert len(flaky.seen) == tried + 1 and len(spare.seen) == spared + 1
    # `timeout: 1s` with the default retry: the timed-out attempt is retried on the fallback.
    started = time.monotonic()
    retried = chat(stack, RULES_HOST)
    elapsed = time.monotonic() - started
    assert retried.status_code == 200 and retried.json()["model"] == "spare-model", retried.text
    assert 0.9 <= elapsed < 5.0, elapsed
    tls.set_fault("flaky.example.com", "none")

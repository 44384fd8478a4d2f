"""Outlier-detection timing and limits, and fail-open safety, of the traffic documents behind real Envoy.

Each test runs its own stack on a copy of a seed with a short baseEjectionTime (2 s), so the timing is
measured in seconds; the bounds allow one 1 s sweep interval of slack and assert ordering, not exact times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.envoy_stack.stack import EnvoyStack
from tests.test_envoy_support import envoy_stat, poll
from tests.test_envoy_traffic import (
    KEYS,
    SEEDS,
    TEST_KEY,
    Provider,
    TLSProviders,
    _stack,
    chat,
    keys_in_env,  # noqa: F401 (a fixture)
)

# serial: the ejection times are measured in seconds (Makefile, unit).
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.usefixtures("keys_in_env")]

BROKEN, FALLBACK = "asm-llm-provider-test.com", "dashscope.aliyuncs.com"


def _seed_copy(tmp: Path, seed: str, *edits: tuple[str, str]) -> Path:
    """`seed` with each (old, new) replaced once, written to `tmp`."""
    text = (SEEDS / seed).read_text("utf-8")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp / seed
    path.write_text(text, "utf-8")
    return path


@contextmanager
def _fallback_stack(tmp: Path, *edits: tuple[str, str]) -> Iterator[tuple[EnvoyStack, TLSProviders]]:
    providers = [
        Provider(BROKEN, TEST_KEY, ("test-model",)),
        Provider(FALLBACK, KEYS["DASHSCOPE_API_KEY"], ("qwen1.5-72b-chat",)),
    ]
    seed = _seed_copy(tmp, "asm-fallback.yaml", ("baseEjectionTime: 10s", "baseEjectionTime: 2s"), *edits)
    with TLSProviders(providers, tmp) as tls, _stack(seed, tls) as stack:
        yield stack, tls


def _ejections(stack: EnvoyStack) -> int:
    return envoy_stat(
        stack.admin_url, f"cluster.provider_{BROKEN}.outlier_detection.ejections_enforced_total"
    )


def _served_by(stack: EnvoyStack) -> str:
    r = chat(stack, BROKEN)
    assert r.status_code == 200, r.text  # never a client-visible error: a failed attempt is retried
    model = r.json()["model"]
    assert isinstance(model, str)
    return model


def test_second_ejection_lasts_twice_as_long(tmp_path: Path) -> None:
    with _fallback_stack(tmp_path) as (stack, tls):
        broken = tls.providers[BROKEN].recorder
        assert _served_by(stack) == "test-model"
        tls.set_fault(BROKEN, "error")
        assert _served_by(stack) == "qwen1.5-72b-chat"  # the first 5xx ejects it (consecutive5xxErrors 1)
        first_at = time.monotonic()
        assert _ejections(stack) == 1
        # Still failing: back after 2 s x 1, its first request fails and ejects it again at once, before a
        # sweep could decay the multiplier, so this ejection is the second in a row.
        tried = len(broken.seen)
        poll(lambda: _served_by(stack) and len(broken.seen) > tried, "the first return", deadline_s=10.0)
        second_at = time.monotonic()
        assert _ejections(stack) == 2
        # Envoy 1.40 still sends some attempts to a just re-ejected provider until its next sweep (each
        # retried on the fallback: no client error); after that it is out of service.
        while time.monotonic() < second_at + 1.5:
            assert _served_by(stack) == "qwen1.5-72b-chat"
        out = len(broken.seen)
        tls.set_fault(BROKEN, "none")
        poll(lambda: _served_by(stack) == "test-model", "the second return", deadline_s=15.0)
        back_at = time.monotonic()
        assert len(broken.seen) == out + 1, "the ejected provider got requests"
    first, second = second_at - first_at, back_at - second_at
    # Envoy returns a host at the first 1 s sweep after base x times-ejected: 2..3 s, then 4..5 s.
    assert 1.8 <= first <= 4.0, (first, second)
    assert 3.8 <= second <= 7.0, (first, second)
    assert second >= first + 1.0, (first, second)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(("minHealthPercent: 0", "minHealthPercent: 50"), id="minHealthPercent-above-healthy"),
        pytest.param(("maxEjectionPercent: 100", "maxEjectionPercent: 0"), id="maxEjectionPercent-0"),
    ],
)
def test_ejection_without_effect_keeps_traffic_on_the_provider(tmp_path: Path, edit: tuple[str, str]) -> None:
    """A one-host provider cluster: ejected, 0% of it is healthy, below any minHealthPercent > 0 (Envoy's
    panic, every host routable); maxEjectionPercent 0 never ejects. Either way every request tries the
    provider first, and its 5xx is retried on the fallback, so the client still sees no error."""
    with _fallback_stack(tmp_path, edit) as (stack, tls):
        broken = tls.providers[BROKEN].recorder
        tls.set_fault(BROKEN, "error")
        tried = len(broken.seen)
        for _ in range(5):
            assert _served_by(stack) == "qwen1.5-72b-chat"
        assert len(broken.seen) - tried == 5, "the ejection took the provider out of service"
        tls.set_fault(BROKEN, "none")
        assert _served_by(stack) == "test-model"  # at once: no ejection time to wait out


def test_fail_open_ignores_client_routing_headers(tmp_path: Path) -> None:
    """epp down and the listener failing open: a client's own x-epp-* headers are stripped before routing,
    so they cannot pick a provider (and its cluster) or the pool; the request gets the unrouted 503."""
    providers = [
        Provider(BROKEN, TEST_KEY, ("test-model",)),
        Provider(FALLBACK, KEYS["DASHSCOPE_API_KEY"], ("qwen1.5-72b-chat",)),
    ]
    with TLSProviders(providers, tmp_path) as tls, _stack("asm-fallback.yaml", tls, fail_open=True) as stack:
        assert _served_by(stack) == "test-model"
        assert stack.epp is not None
        stack.epp.stop()
        seen = len(tls.providers[BROKEN].recorder.seen)
        for headers in (
            {"x-epp-provider": BROKEN},
            {"x-epp-provider": FALLBACK, "x-epp-rule": "fallback-route"},
            {"x-epp-pool": "1"},
            {"x-epp-upstream": BROKEN, "x-epp-provider": BROKEN},
        ):
            r = chat(stack, BROKEN, **headers)
            assert r.status_code == 503, (headers, r.text)
            assert r.json()["error"]["code"] == "no_provider", (headers, r.text)
        assert len(tls.providers[BROKEN].recorder.seen) == seen

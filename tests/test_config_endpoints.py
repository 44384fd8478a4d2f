"""Static endpoints from the `--endpoints` string and from `host:port` addresses."""

from __future__ import annotations

import pytest

from epp.config import ConfigError, parse_address, parse_endpoints
from epp.datastore import Endpoint


def test_plain_and_named_items() -> None:
    assert parse_endpoints("127.0.0.1:8100, 127.0.0.1:8101,pod-c=localhost:9000,") == [
        Endpoint("127.0.0.1:8100", "127.0.0.1", 8100),
        Endpoint("127.0.0.1:8101", "127.0.0.1", 8101),
        Endpoint("pod-c", "localhost", 9000),
    ]


def test_ipv6_needs_brackets() -> None:
    assert parse_address("[::1]:8000") == ("[::1]", 8000)
    with pytest.raises(ValueError, match="IPv6 addresses need brackets"):
        parse_address("::1:8000")


def test_empty_text_gives_no_endpoints() -> None:
    assert parse_endpoints("") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", 'item 1 "127.0.0.1": expected host:port'),
        ("a:1,127.0.0.1:99999", 'item 2 "127.0.0.1:99999": port must be a number in 1..65535'),
        ("127.0.0.1:http", 'item 1 "127.0.0.1:http": port must be a number in 1..65535'),
        ("127.0.0.1:0", "port must be a number in 1..65535"),
        ("http://127.0.0.1:80", "expected host:port without scheme or path"),
        (":8000", "expected host:port"),
        ("=127.0.0.1:80", "empty name before '='"),
        ("a=h:1,a=h:2", 'endpoint name "a" is used twice'),
    ],
)
def test_bad_items_are_clear(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoints(text)
    assert str(info.value).startswith("--endpoints: ")
    assert reason in str(info.value)


def test_every_bad_item_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoints("x,127.0.0.1:1,y:z")
    assert len(info.value.issues) == 2

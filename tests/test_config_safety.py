"""Hostile config files and flags: each is refused in bounded time with file, document, field and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from epp.cli import build_parser
from epp.config import ConfigError, load_config, load_config_text, safe_yaml
from epp.config.safe_yaml import MAX_CONFIG_BYTES

POOL = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata:\n  name: pool\n"
    "spec:\n  selector: {app: x}\n"
)
PICKER = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nmetadata: {name: p}\n"
    "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
    "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: WEIGHT}, "
    "{pluginRef: max-score-picker}]}]\n"
)
BOMB = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a: &a [lol, lol, lol, lol, lol]\n"
    + "".join(
        f"  {c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
)


def epp(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env or {}, source="hostile.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BOMB,
            'hostile.yaml: line 5, column 6: document 1 (ConfigMap "lol"): data.a: anchor &a: anchors and '
            "aliases are not allowed",
        ),
        ("a: " + "[" * 900 + "]" * 900 + "\n", "document 1: a[0][0]"),
        (
            POOL + "  targetPortNumber: 8000\n  targetPortNumber: 9000\n",
            'line 8, column 3: document 1 (InferencePool "pool"): spec.targetPortNumber: duplicate key '
            '"targetPortNumber" (first at line 7)',
        ),
        (
            POOL + "  targetPortNumber: true\n",
            'document 1 (InferencePool "pool"): spec.targetPortNumber: must be an integer, not a boolean',
        ),
        (PICKER.replace("WEIGHT", ".inf"), "schedulingProfiles[0].plugins[0].weight: .inf is not allowed"),
        (PICKER.replace("WEIGHT", ".nan"), "schedulingProfiles[0].plugins[0].weight: .nan is not allowed"),
        (PICKER.replace("WEIGHT", "true"), "weight: must be a number, not a boolean"),
        (POOL + "  targetPortNumber: 1" + ":0" * 100_000 + "\n", "number is longer than 100 characters"),
    ],
    ids=[
        "alias-bomb",
        "deep-nesting",
        "duplicate-key",
        "bool-port",
        "inf-weight",
        "nan-weight",
        "bool-weight",
        "huge-int",
    ],
)
def test_hostile_yaml_is_refused(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_nesting_limit_is_named() -> None:
    assert f"nesting is deeper than {safe_yaml.MAX_DEPTH} levels" in error_of(
        "a: " + "{b: " * 900 + "}" * 900
    )


def test_expanded_non_finite_weight_is_refused() -> None:
    message = error_of(PICKER.replace("WEIGHT", "'${W}'"), {"W": "inf"})
    assert "schedulingProfiles[0].plugins[0].weight: must be a finite number" in message


def test_pure_python_parser_refuses_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_yaml, "FAST_PARSER", False)
    assert "anchors and aliases are not allowed" in error_of(BOMB)
    assert "duplicate key" in error_of(POOL + "  targetPortNumber: 1\n  targetPortNumber: 2\n")


def test_syntax_errors_keep_pyyaml_messages() -> None:
    assert "line 2, column 5: YAML syntax error: mapping values are not allowed here" in error_of(
        "a: b\nc: d: e\n"
    )


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=f"{path}: file is larger than 4 MiB"):
        load_config([path], {})
    assert "<string>: file is larger than 4 MiB" in error_of_text("#" * (MAX_CONFIG_BYTES + 1))


def error_of_text(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {})
    return str(info.value)


def test_alias_bomb_exits_2_quickly_from_every_command(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    runs = [
        epp("check-config", str(path)),
        epp(
            "serve",
            "--config",
            str(path),
            "--endpoints",
            "127.0.0.1:1",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ),
        epp("gateway", "--config", str(path), "--endpoints", "127.0.0.1:1", "--port", "0"),
    ]
    for run in runs:
        assert run.returncode == 2, run.stderr
        assert f"{path}: line 5, column 6: document 1 (ConfigMap" in run.stderr


def test_many_static_endpoints_load_in_bounded_time(tmp_path: Path) -> None:
    lines = [
        "apiVersion: epp.dev/v1alpha1",
        "kind: StaticEndpoints",
        "metadata: {name: many}",
        "spec:",
        "  endpoints:",
    ]
    lines += [f"  - {{name: pod-{i}, address: '10.0.{i // 250}.{i % 250}:8000'}}" for i in range(20_000)]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines) + "\n")
    run = epp("check-config", str(path), timeout=60)  # took 44 s when endpoint names were checked pairwise
    assert run.returncode == 0, run.stderr
    assert "endpoint pod-19999: 10.0.79.249:8000" in run.stdout


def test_duplicate_static_endpoint_is_named() -> None:
    text = (
        "apiVersion: epp.dev/v1alpha1\nkind: StaticEndpoints\nmetadata: {name: s}\n"
        "spec: {endpoints: [{name: a, address: 'h:1'}, {name: a, address: 'h:2'}]}\n"
    )
    assert (
        'document 1 (StaticEndpoints "s"): spec.endpoints[1]: endpoint name "a" is already used'
        in error_of(text)
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--scrape-interval", "0"],
        ["serve", "--scrape-interval", "nan"],
        ["serve", "--scrape-timeout", "inf"],
        ["serve", "--staleness", "-1"],
        ["serve", "--max-attempts", "0"],
        ["serve", "--grpc-port", "70000"],
        ["serve", "--http-port", "true"],
        ["serve", "--seed", "1_0"],
        ["gateway", "--scrape-interval", "nan"],
        ["gateway", "--connect-timeout", "1e309"],
        ["gateway", "--port", "-1"],
        ["gateway", "--max-body-bytes", "0"],
        ["envoy", "config", "--upstream-idle-timeout", "nan"],
        ["envoy", "config", "--retries", "-1"],
        ["envoy", "config", "--admin-port", "65536"],
        ["envoy", "config", "--grpc-port", "x"],
        ["envoy", "config", "--port", "1.5"],
        ["envoy", "up", "--concurrency", "0"],
        ["envoy", "up", "--fallback-endpoints", "-1"],
    ],
)
def test_numeric_flags_are_checked(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: " in err and "must be" in err


def test_zero_scrape_interval_exits_2() -> None:
    run = epp(
        "serve",
        "--endpoints",
        "127.0.0.1:1",
        "--scrape-interval",
        "0",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
    )
    assert run.returncode == 2
    assert "--scrape-interval: must be a positive, finite number of seconds" in run.stderr

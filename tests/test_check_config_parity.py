"""`epp check-config` rejects the picker configs `epp serve` and `epp gateway` reject, with one message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SEED = Path(__file__).parent / "fixtures" / "seed-configs"
HEADER = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nmetadata: {name: p}\n"
)
PICKERS = {
    "unknown plugin type": (
        "plugins: [{type: no-such-scorer}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: no-such-scorer}, "
        "{pluginRef: max-score-picker}]}]\n",
        "unknown plugin type 'no-such-scorer'",
    ),
    "bad parameters": (
        "plugins: [{type: queue-scorer, parameters: {bogus: 1}}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}, "
        "{pluginRef: max-score-picker}]}]\n",
        "parameter 'bogus'",
    ),
    "no picker": (
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]\n",
        "needs exactly one picker",
    ),
    "no profile": (
        "plugins: [{type: queue-scorer}]\nschedulingProfiles: []\n",
        "config has no scheduling profile",
    ),
}


def epp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("case", sorted(PICKERS))
def test_check_config_agrees_with_serve_and_gateway(case: str, tmp_path: Path) -> None:
    body, expected = PICKERS[case]
    path = tmp_path / "picker.yaml"
    path.write_text(HEADER + body)
    runs = {
        "check-config": epp("check-config", str(path)),
        "serve": epp(
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
        "gateway": epp("gateway", "--config", str(path), "--endpoints", "127.0.0.1:1", "--port", "0"),
    }
    messages = set()
    for command, run in runs.items():
        assert run.returncode == 2, (command, run.stderr)
        assert expected in run.stderr and str(path) in run.stderr, (command, run.stderr)
        messages.add(run.stderr.split(f"{path}: ", 1)[1])
    assert len(messages) == 1, messages  # the same reason, after each command's own prefix


@pytest.mark.parametrize("name", ["ack-prefix-cache.yaml", "asm-llm-cache.yaml"])
def test_seed_configs_still_pass(name: str) -> None:
    run = epp("check-config", str(SEED / name))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("strategy: ")

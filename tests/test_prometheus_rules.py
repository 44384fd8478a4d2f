"""deploy/prometheus/ checked by Debian's promtool: the scrape config, the rules, and their unit tests.

Debian builds Prometheus without Kubernetes service discovery, so `promtool check config` runs on a copy of
prometheus.yml whose `kubernetes_sd_configs` are swapped for an empty static list (everything else,
relabelling included, is checked as written); the discovery blocks themselves are checked here for shape.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.observe.config import DEPLOY, local_config, rule_files
from bench.observe.prometheus import binary

TESTS_DIR = DEPLOY / "tests"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def all_rules() -> list[dict[str, Any]]:
    return [rule for path in rule_files() for group in load(path)["groups"] for rule in group["rules"]]


def test_promtool_is_installed() -> None:
    assert "promtool" in promtool("--version").stdout + promtool("--version").stderr


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = load(DEPLOY / "prometheus.yml")
    for job in config["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs")
        assert sd == [{"role": "pod"}], job["job_name"]
        job["static_configs"] = []
    assert [job["job_name"] for job in config["scrape_configs"]] == ["epp", "vllm"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copytree(DEPLOY / "rules", tmp_path / "rules")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rule files found" in result.stdout + result.stderr


def test_local_config_passes_promtool(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(local_config({"127.0.0.1:9000": "gateway"}, ["127.0.0.1:8001"], interval_s=1))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_promtool() -> None:
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", sorted(TESTS_DIR.glob("*.test.yml")), ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_rule_file_has_unit_tests() -> None:
    tested = {Path(f).name for t in TESTS_DIR.glob("*.test.yml") for f in load(t)["rule_files"]}
    assert tested == {p.name for p in rule_files()}


def test_every_alert_is_unit_tested_firing() -> None:
    fired: set[str] = set()
    for path in TESTS_DIR.glob("*.test.yml"):
        for case in load(path)["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    assert len(alerts) >= 12
    assert alerts - fired == set()


def test_alerts_say_severity_and_what_to_do() -> None:
    for rule in all_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_recording_rules_follow_the_naming_convention() -> None:
    # level:metric:operations (https://prometheus.io/docs/practices/rules/)
    for rule in all_rules():
        if "record" in rule:
            assert rule["record"].count(":") == 2, rule["record"]

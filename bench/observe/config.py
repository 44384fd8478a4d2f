"""A Prometheus config for local targets, with the job names and rules of deploy/prometheus/.

deploy/prometheus/prometheus.yml finds pods through Kubernetes; here the same two jobs (`epp`, `vllm`)
list their targets statically, with the labels the Kubernetes relabelling would add (`pod`, `component`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES_DIR = DEPLOY / "rules"


def rule_files(folder: Path = RULES_DIR) -> list[Path]:
    return sorted(folder.glob("*.rules.yml"))


def local_config(
    epp_targets: Mapping[str, str],
    vllm_targets: Sequence[str],
    interval_s: float = 15.0,
    rules: Sequence[Path] | None = None,
) -> str:
    """YAML scraping `epp_targets` (host:port -> component: picker or gateway) and `vllm_targets`."""
    interval = f"{interval_s:g}s"

    def target(address: str, **labels: str) -> dict[str, object]:
        return {"targets": [address], "labels": {"pod": address, **labels}}

    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in (rule_files() if rules is None else rules)],
        "scrape_configs": [
            {
                "job_name": "epp",
                "static_configs": [target(a, component=c) for a, c in epp_targets.items()],
            },
            {"job_name": "vllm", "static_configs": [target(a) for a in vllm_targets]},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)

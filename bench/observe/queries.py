"""Every PromQL expression of the dashboards (deploy/grafana/*.json) and rules (deploy/prometheus/rules/),
made runnable as instant queries: template variables select everything, `$__rate_interval` becomes a window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.observe.config import rule_files

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
_LABEL_VALUES = re.compile(r"label_values\((.+), *(\w+)\)")


@dataclass(frozen=True)
class Query:
    source: str  # "epp-picker.json: Decisions by result [A]" or "epp.rules.yml: EppNoReadyEndpoints"
    expr: str


def dashboard_files(folder: Path = GRAFANA_DIR) -> list[Path]:
    return sorted(folder.glob("*.json"))


def substitute(expr: str, rate_window: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's variables replaced: `$__rate_interval` (and `$__interval`) by `rate_window`,
    a dashboard variable by its value in `variables` (".*" for an all-selecting regex)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("__rate_interval", "__interval", "__range"):
            return rate_window
        if name not in variables:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def _panels(model: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(path: Path, rate_window: str = "1m") -> list[Query]:
    """The panel targets of one dashboard, each variable selecting all its values."""
    model = json.loads(path.read_text())
    variables = {v["name"]: v.get("allValue") or ".*" for v in model["templating"]["list"]}
    out = []
    for v in model["templating"]["list"]:
        if v["type"] == "query":  # label_values(METRIC, LABEL): the values come from METRIC's series
            found = _LABEL_VALUES.fullmatch(substitute(v["query"], rate_window, variables))
            assert found is not None, v["query"]
            metric, label = found.groups()
            out.append(Query(f"{path.name}: variable ${v['name']}", f"group by ({label}) ({metric})"))
    for panel in _panels(model):
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], rate_window, variables)
            out.append(Query(f"{path.name}: {panel['title']} [{target['refId']}]", expr))
    return out


def rule_queries(paths: Iterable[Path] | None = None) -> list[Query]:
    """The expression of every recording and alerting rule."""
    out = []
    for path in rule_files() if paths is None else paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append(Query(f"{path.name}: {rule.get('record') or rule['alert']}", rule["expr"]))
    return out


def all_queries(rate_window: str = "1m") -> list[Query]:
    queries = [q for path in dashboard_files() for q in dashboard_queries(path, rate_window)]
    return queries + rule_queries()

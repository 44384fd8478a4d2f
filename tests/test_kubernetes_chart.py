"""The Helm chart and the kustomize base through the real tools (helm, kubectl kustomize from
deploy/kubernetes/tools/install-tools.sh), validated offline against Kubernetes 1.25 (the oldest
kubernetes-validate ships). A missing tool fails these tests: it is an install step, not an option."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import k8s_validate
from bench.k8s_schemas import OLDEST_KUBERNETES, CrdCatalog
from bench.k8s_validate import (
    CHART,
    CRDS,
    FOREIGN_SCHEMAS,
    KUSTOMIZE_BASE,
    check_text,
    helm_template,
    kustomize_build,
    tool,
)
from epp.cli import build_parser

pytestmark = pytest.mark.slow
VALUE_FILES = k8s_validate.chart_value_files()


def _values_id(values: Path | None) -> str:
    return values.name if values else "defaults"


@pytest.fixture(scope="module")
def catalog() -> CrdCatalog:
    return CrdCatalog(CRDS, FOREIGN_SCHEMAS)


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _values(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return path


def test_the_tools_are_installed_and_real() -> None:
    helm = subprocess.run([tool("helm"), "version", "--short"], capture_output=True, text=True, check=True)
    kubectl = subprocess.run(
        [tool("kubectl"), "version", "--client"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith("v4.")
    assert "Kustomize Version: v5" in kubectl.stdout


def test_the_whole_validation_passes() -> None:
    report = k8s_validate.validate_all()
    print(report.summary())
    assert [str(p) for p in report.problems] == []
    assert report.checked["helm lint runs"] == len(k8s_validate.chart_value_files()) >= 3
    assert report.checked["epp configs loaded"] >= 4
    assert report.checked["CRD versions"] == 8
    assert report.not_validated and all("tests/fixtures/seed-configs" in e for e in report.not_validated)


@pytest.mark.parametrize("values", VALUE_FILES, ids=_values_id)
def test_each_values_file_renders_valid_objects(values: Path | None, catalog: CrdCatalog) -> None:
    report = check_text(helm_template(values), "helm template", catalog, OLDEST_KUBERNETES)
    assert [str(p) for p in report.problems] == []
    assert report.checked["built-in objects"] >= 10


def test_picker_defaults(catalog: CrdCatalog) -> None:
    docs = _docs(helm_template())
    (deployment,) = _by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve" and "--discovery=kubernetes" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 9002, "http": 9003}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (role,) = _by_kind(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): ["get", "list", "watch"],
        (
            ("inference.networking.k8s.io", "inference.networking.x-k8s.io"),
            ("inferencepools", "inferencemodels"),
        ): ["get", "list", "watch"],
    }
    assert _by_kind(docs, "ClusterRole") == [] and _by_kind(docs, "StatefulSet") == []
    assert len(_by_kind(docs, "CustomResourceDefinition")) == 8


def test_gateway_mode_with_redis_and_cache_service() -> None:
    docs = _docs(helm_template(CHART / "ci" / "gateway-cache-values.yaml"))
    deployments = {d["metadata"]["name"]: d for d in _by_kind(docs, "Deployment")}
    gateway = deployments["epp-ci"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["args"][0] == "gateway" and "--port=8000" in gateway["args"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["REDIS_ADDRESS"]["value"] == "epp-ci-redis:6379"
    assert env["DASHSCOPE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "llm-keys", "key": "dashscope"}
    cache = deployments["epp-ci-cache"]["spec"]["template"]["spec"]["containers"][0]
    assert cache["args"][:2] == ["cache", "serve"]
    (redis,) = _by_kind(docs, "StatefulSet")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


def test_a_misspelt_value_is_rejected_by_values_schema(tmp_path: Path) -> None:
    done = subprocess.run(
        [tool("helm"), "template", "r", str(CHART), "-f", _values(tmp_path, "replicaCountt: 2\n")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "replicaCountt" in done.stderr


def test_an_unknown_mode_is_rejected_by_values_schema(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="mode"):
        helm_template(_values(tmp_path, "mode: router\n"))


def test_a_typo_in_a_template_fails_the_strict_validation(tmp_path: Path, catalog: CrdCatalog) -> None:
    chart = tmp_path / "epp"
    shutil.copytree(CHART, chart)
    deployment = chart / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("  replicas:", "  replicass:", 1))
    report = check_text(helm_template(chart=chart), "typo'd chart", catalog)
    assert [p.document for p in report.problems] == ["Deployment/epp-ci (apps/v1)"]
    assert "replicass" in report.problems[0].message


def test_a_typo_in_the_kustomize_base_fails_the_strict_validation(
    tmp_path: Path, catalog: CrdCatalog
) -> None:
    base = tmp_path / "base"
    shutil.copytree(KUSTOMIZE_BASE, base)
    assert check_text(kustomize_build(base), "base", catalog).problems == []
    service = base / "service.yaml"
    service.write_text(service.read_text().replace("targetPort: http", "targetPorts: http", 1))
    report = check_text(kustomize_build(base), "typo'd base", catalog)
    assert report.problems and "targetPorts" in report.problems[0].message


def test_a_bad_epp_config_in_the_chart_fails(tmp_path: Path, catalog: CrdCatalog) -> None:
    values = _values(
        tmp_path, "endpointPickerConfig:\n  plugins: [{type: no-such-plugin}]\n  schedulingProfiles: []\n"
    )
    report = check_text(helm_template(values), "bad picker config", catalog)
    assert report.problems and report.problems[0].path == "data.config.yaml"
    assert "no-such-plugin" in report.problems[0].message


def test_the_kustomize_base_renders_the_picker() -> None:
    docs = _docs(kustomize_build())
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "InferencePool",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    (configmap,) = _by_kind(docs, "ConfigMap")
    (deployment,) = _by_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"] != "epp"  # hashed name


def _epp_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    return [c for pod in pods for c in pod["containers"] if c["image"].startswith("epp:")]


@pytest.mark.parametrize("values", VALUE_FILES, ids=_values_id)
def test_every_flag_the_chart_passes_is_one_epp_accepts(values: Path | None) -> None:
    containers = _epp_containers(_docs(helm_template(values)))
    containers += _epp_containers(_docs(kustomize_build()))
    assert containers
    parser = build_parser()
    for container in containers:
        try:
            parser.parse_args(container["args"])
        except SystemExit as exc:  # argparse's way of refusing a flag
            pytest.fail(f"epp rejects {container['name']}'s args {container['args']}: exit {exc.code}")

"""Every metric a dashboard or rule queries is one epp documents (docs/operations.md, "Metrics reference") or
one vLLM 0.32 serves (tests/fixtures/vllm/), and every recorded series a rule or panel reads is recorded."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.observe.config import rule_files
from bench.observe.queries import all_queries

ROOT = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
OURS = ("llm_d_epp_", "epp_", "gen_ai_")
SUFFIXES = ("_bucket", "_sum", "_count")


def documented() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Metrics reference", 1)[1]
    return set(re.findall(r"`([a-z0-9_:]+)`", section))


def vllm_names() -> set[str]:
    text = (ROOT / "tests" / "fixtures" / "vllm" / "vllm-0.32-metrics.txt").read_text()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def queried() -> set[str]:
    names: set[str] = set()
    for q in all_queries():
        no_strings = re.sub(r'"[^"]*"', '""', q.expr)
        names |= {t for t in TOKEN.findall(no_strings) if t.startswith((*OURS, "vllm:")) or t.count(":") == 2}
    return names


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_queried_epp_metric_is_documented() -> None:
    docs = documented()
    ours = {n for n in queried() if n.startswith(OURS)}
    assert len(ours) > 40
    missing = sorted(n for n in ours if n not in docs and family(n) not in docs)
    assert not missing, f"not in docs/operations.md's Metrics reference: {missing}"


def test_every_queried_vllm_metric_is_served_by_vllm() -> None:
    served = vllm_names()
    theirs = {n for n in queried() if n.startswith("vllm:")}
    assert len(theirs) > 8
    assert sorted(theirs - served) == []


def test_every_recorded_series_read_is_recorded() -> None:
    reads = {n for n in queried() if n.count(":") == 2 and not n.startswith("vllm:")}
    assert reads and reads <= recorded(), sorted(reads - recorded())

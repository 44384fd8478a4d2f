"""Where a benchmark result comes from: the commit, hashes of the routing configs, the machine."""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bench.compare.variants import FrontKind, Variant
from epp.config.routing_strategy import parse_strategy

_REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def command_line(args: argparse.Namespace) -> str:
    """The command that ran, quoted for a shell: the arguments epp.cli.main parsed (not sys.argv, which
    differs when main is called with its own)."""
    return shlex.join(["epp", *args.argv])


def commit_info() -> dict[str, Any]:
    """HEAD's hash and whether the work tree differs from it (None when not a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def config_hash(variant: Variant) -> str | None:
    """First 16 hex digits of the SHA-256 of the config the variant runs: its file or built-in strategy."""
    if variant.config is not None:
        return _sha256(variant.config.read_bytes())
    if variant.kind is FrontKind.GATEWAY and variant.strategy is not None:
        name = parse_strategy(variant.strategy).resource_name
        return _sha256(resources.files("epp.config.strategies").joinpath(name).read_bytes())
    return None


def config_hashes(variants: Sequence[Variant]) -> dict[str, str | None]:
    return {v.name: config_hash(v) for v in variants}


def machine_info() -> dict[str, Any]:
    """nproc, the CPU model from /proc/cpuinfo and the load averages now."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "loadavg": [round(x, 2) for x in os.getloadavg()]}

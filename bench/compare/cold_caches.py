"""Cold prefix caches on pods that are already running (`--endpoints`): reset them, or salt the prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import httpx


def reset_prefix_caches(urls: Sequence[str], timeout: float = 10.0) -> bool:
    """POST /reset_prefix_cache on every pod; True when all answered 2xx.

    vLLM serves it only with VLLM_SERVER_DEV_MODE=1, and answers 200 even when blocks in use kept it from
    resetting; the simulator does the same.
    """
    ok = True
    with httpx.Client(timeout=timeout) as client:
        for url in urls:
            try:
                ok = client.post(f"{url}/reset_prefix_cache").is_success and ok
            except httpx.HTTPError:
                ok = False
    return ok


def run_salt(workload: str, variant: str, run: int, started: float) -> str:
    """A prompt opening unique to one run, of the same length for every run."""
    digest = hashlib.sha256(f"{started}-{workload}-{variant}-{run}".encode()).hexdigest()[:12]
    return f"[run {digest}] "

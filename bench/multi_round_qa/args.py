"""Command-line flags of the multi-round QA workload, shared by `epp bench multi-round-qa` and `compare`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.multi_round_qa.sharegpt import DEFAULT_SAMPLE

# (flag, type, help) of the flags that shape the workload.
_SHAPE_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--num-users", int, "Active users in the steady state"),
    ("--num-rounds", int, "Questions each user asks"),
    ("--qps", float, "Overall request rate (per simulated second)"),
    ("--shared-system-prompt", int, "Shared system prompt (tokens)"),
    ("--user-history-prompt", int, "Per-user history prompt (tokens)"),
    ("--answer-len", int, "Answer length (tokens), sent as max_tokens"),
)


def add_workload_arguments(p: argparse.ArgumentParser, defaults: Mapping[str, float] | None = None) -> None:
    """The workload's shape and client flags; a shape flag (or --time) with a value in `defaults`
    (keyed by dest, e.g. `num_users`) is optional, the others are required."""
    defaults = defaults or {}
    for flag, kind, text in _SHAPE_FLAGS:
        dest = flag[2:].replace("-", "_")
        if dest in defaults:
            p.add_argument(flag, type=kind, default=defaults[dest], help=f"{text} (default {defaults[dest]})")
        else:
            p.add_argument(flag, type=kind, required=True, help=text)
    time_help = "Seconds (simulated) to launch requests for"
    if "time" in defaults:
        p.add_argument(
            "--time", type=float, default=defaults["time"], help=f"{time_help} (default %(default)s)"
        )
    else:
        p.add_argument("--time", type=float, help=f"{time_help}; default: until ^C")
    p.add_argument("--api-key", default="EMPTY", help="Bearer token (default: EMPTY)")
    p.add_argument(
        "--sharegpt",
        nargs="?",
        type=Path,
        const=DEFAULT_SAMPLE,
        help="Take questions from a ShareGPT JSON file (the shipped generated sample when no path is given)",
    )
    p.add_argument("--init-user-id", type=int, default=0, help="Id of the first user")
    p.add_argument(
        "--request-with-user-id",
        action="store_true",
        help="Send the user id in the request (`user` field and x-user-id header)",
    )
    p.add_argument(
        "--log-interval",
        type=float,
        default=defaults.get("log_interval", 30.0),
        help="Seconds (simulated) between summaries (default %(default)s)",
    )
    p.add_argument("--request-timeout", type=float, default=600.0, help="Wall s to connect or await a chunk")
    p.add_argument("--no-progress", action="store_true", help="Do not show the progress bar")


def workload_fields(args: argparse.Namespace) -> dict[str, Any]:
    """BenchConfig fields given by the flags of add_workload_arguments."""
    return {
        "num_users": args.num_users,
        "num_rounds": args.num_rounds,
        "qps": args.qps,
        "shared_system_prompt": args.shared_system_prompt,
        "user_history_prompt": args.user_history_prompt,
        "answer_len": args.answer_len,
        "time": args.time,
        "sharegpt": args.sharegpt,
        "init_user_id": args.init_user_id,
        "request_with_user_id": args.request_with_user_id,
        "log_interval": args.log_interval,
        "api_key": args.api_key,
        "request_timeout": args.request_timeout,
        "show_progress": not args.no_progress,
    }

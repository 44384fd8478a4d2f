"""`epp demo`: a short strategy comparison (`epp bench compare` with small defaults) on 4 simulated pods.

The workload has the seed scenario's shape (a handful of users, a shared system prompt, a long history per
user) with histories long enough that all users' conversations do not fit in one pod's KV cache (84,800
tokens on the A10 profile), at a rate where round-robin queues: round-robin spreads each conversation over
every pod and keeps re-prefilling it, while prefix-aware routing keeps each user on one pod. 9 users rather
than the seed's 8: the workload's arrivals are periodic, and with a user count that the pod count divides,
round-robin would send each user to the same pod every round (accidental affinity).
"""

from __future__ import annotations

import argparse

from bench.compare.cli import add_compare_arguments, run_compare

DEMO_STRATEGIES = ("ROUND_ROBIN", "PREFIX_CACHE", "LOAD_AWARE")
# About 30 wall seconds per strategy, so the demo takes about two minutes.
DEMO_TIME_SCALE = 4.0
DEMO_WORKLOAD: dict[str, float] = {
    "num_users": 9,
    "num_rounds": 15,
    "qps": 1.2,
    "shared_system_prompt": 1000,
    "user_history_prompt": 10000,
    "answer_len": 100,
    "time": 120.0,
    "log_interval": 1e9,
}


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    add_compare_arguments(p, DEMO_WORKLOAD, DEMO_STRATEGIES, results_prefix="demo")
    p.set_defaults(time_scale=DEMO_TIME_SCALE)


def run_demo(args: argparse.Namespace) -> int:
    return run_compare(args)

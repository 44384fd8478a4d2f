"""`epp sim`: serve N simulated vLLM pods on loopback ports until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from bench.sim.fleet import SimFleet
from bench.sim.kv_events import KVEventsConfig
from bench.sim.profiles import PROFILES
from epp import event_loop


def register(subparsers: Any) -> None:
    """Add the `sim` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser("sim", help="Run simulated vLLM pods.")
    p.add_argument("--pods", type=int, default=1, help="number of pods (default 1)")
    p.add_argument("--base-port", type=int, default=8100, help="pod i listens on base+i; 0 picks free ports")
    p.add_argument("--profile", default="qwen2.5-7b-a10", choices=sorted(PROFILES), help="model/GPU profile")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-loras", type=int, default=1, help="distinct LoRA adapters per batch")
    p.add_argument("--lora-modules", nargs="*", default=[], help="LoRA adapter names served")
    p.add_argument(
        "--block-size", type=int, default=None, help="KV block size in tokens (default: profile's)"
    )
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: profile's)")
    p.add_argument("--enable-lora", action="store_true", help="LoRA on (implied by --lora-modules)")
    p.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="usage.prompt_tokens_details.cached_tokens",
    )
    p.add_argument(
        "--kv-events-config",
        default=None,
        help='vLLM\'s KV-events JSON, e.g. {"enable_kv_cache_events": true, "publisher": "zmq", '
        '"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5657", "topic": "kv"}; pod i: ports + i',
    )
    p.add_argument("--served-model-name", default=None, help="model name (default: the profile's model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on /v1 like vLLM's --api-key (default: env VLLM_API_KEY)",
    )
    p.set_defaults(func=run)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = SimFleet(
        pods=args.pods,
        profile=args.profile,
        time_scale=args.time_scale,
        seed=args.seed,
        max_loras=args.max_loras,
        lora_modules=tuple(args.lora_modules),
        served_model_name=args.served_model_name,
        host=args.host,
        base_port=args.base_port,
        log_level=args.log_level,
        api_key=args.api_key if args.api_key is not None else os.environ.get("VLLM_API_KEY"),
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        enable_lora=args.enable_lora,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        kv_events=KVEventsConfig.from_json(args.kv_events_config) if args.kv_events_config else None,
    )
    async with fleet:
        for i, url in enumerate(fleet.urls):
            print(f"pod {i} {url}", flush=True)
        print(f"ready {len(fleet.urls)} pods profile={args.profile} time_scale={args.time_scale}", flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of `epp sim`."""
    if args.time_scale <= 0:
        print("epp sim: --time-scale must be positive", file=sys.stderr)
        return 2
    try:
        event_loop.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"epp sim: {exc}", file=sys.stderr)
        return 1
    return 0

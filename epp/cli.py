"""The `epp` command. Each subsystem adds its own subcommands through a `register(subparsers)` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands. Each defines `register(subparsers) -> None` and gives its parsers
# `set_defaults(func=...)`: a callable taking the parsed namespace and returning an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "bench.cli",
    "epp.config.cli",
    "epp.servers.cli",
    "bench.sim.cli",
    "epp.envoy_gateway.cli",
    "gateway.cli",
    "epp.cache.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epp", description="Endpoint picker and gateway for vLLM pods.")
    parser.add_argument("--version", action="version", version="epp 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

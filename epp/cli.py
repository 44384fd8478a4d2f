"""The `epp` command. Each subsystem adds its own subcommands through a `register(subparsers)` function.

Only the module of the command being run is imported (`epp gateway` never loads the benchmark harness);
`epp --help` or an unknown command imports them all, so the help and the error list every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands. Each defines `register(subparsers) -> None` and gives its parsers
# `set_defaults(func=...)`: a callable taking the parsed namespace and returning an exit code. main() adds
# `argv` to the namespace, the arguments it parsed, for commands that record how they were run.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "bench.cli",
    "epp.config.cli",
    "epp.servers.cli",
    "bench.sim.cli",
    "epp.envoy_gateway.cli",
    "gateway.cli",
    "epp.cache.cli",
)
# Command name -> the module of SUBCOMMAND_MODULES that registers it.
COMMAND_MODULES: dict[str, str] = {
    "bench": "bench.cli",
    "demo": "bench.cli",
    "check-config": "epp.config.cli",
    "serve": "epp.servers.cli",
    "sim": "bench.sim.cli",
    "envoy": "epp.envoy_gateway.cli",
    "gateway": "gateway.cli",
    "cache": "epp.cache.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with `command`'s alone when it is a known one."""
    parser = argparse.ArgumentParser(prog="epp", description="Endpoint picker and gateway for vLLM pods.")
    parser.add_argument("--version", action="version", version="epp 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    known = COMMAND_MODULES.get(command) if command is not None else None
    for module_name in (known,) if known is not None else SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (epp's own options take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(args_in))
    args = parser.parse_args(args_in)
    args.argv = args_in
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The `epp` command loads only the module of the command it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from epp.cli import COMMAND_MODULES, SUBCOMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_command_maps_to_the_module_that_registers_it() -> None:
    assert set(COMMAND_MODULES.values()) == set(SUBCOMMAND_MODULES)
    assert _commands(build_parser()) == set(COMMAND_MODULES)
    for command, module in COMMAND_MODULES.items():
        alone = _commands(build_parser(command))
        assert command in alone, (command, module)
        assert alone == {c for c, m in COMMAND_MODULES.items() if m == module}


def test_an_unknown_command_is_told_the_known_ones() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "epp.cli", "gatway"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "invalid choice: 'gatway'" in proc.stderr and "gateway" in proc.stderr


def test_product_commands_load_no_bench_module() -> None:
    code = (
        "import sys, epp.cli\n"
        "for argv in (['gateway', '--help'], ['serve', '--help'], ['cache', '--help']):\n"
        "    try:\n"
        "        epp.cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"

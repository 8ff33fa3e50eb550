"""What the command-line tools share: how a parser is made, the config options, RUN_DIR."""

from __future__ import annotations

import argparse
from pathlib import Path


def command_parser(command: str, description: str, epilog: str | None = None):
    """An ``ArgumentParser`` whose usage names the command as it is run."""
    return argparse.ArgumentParser(
        prog=f"python -m jaxrl_impala.{command}", description=description, epilog=epilog
    )


def add_config_options(parser: argparse.ArgumentParser, set_example: str) -> None:
    """``--config YAML`` and ``--set KEY=VALUE ...`` (the config's defaults, then the preset,
    then the overrides)."""
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="a preset, e.g. configs/driving.yaml (default: none, the built-in defaults)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config keys, e.g. {set_example} (values parsed as YAML); several per "
        "--set, and --set repeatable (default: none)",
    )


def add_run_dir(parser: argparse.ArgumentParser, holding: str) -> None:
    """The positional ``RUN_DIR``, a run directory holding ``holding``."""
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help=f"a run directory (with {holding})"
    )

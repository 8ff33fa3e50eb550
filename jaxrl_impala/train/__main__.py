"""The training CLI: ``python -m jaxrl_impala.train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxrl_impala.cli import add_config_options, command_parser
from jaxrl_impala.config import ConfigError, dump_yaml, load_config
from jaxrl_impala.errors import TrainError
from jaxrl_impala.io.rundir import make_run_dir
from jaxrl_impala.train.trainer import Trainer


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "train",
        "Train an agent with CPU actors and a jit-compiled learner. The config is "
        "the defaults, then the --config preset, then the --set overrides (every key: "
        "docs/config.md). Outputs go to RUN_DIR (run.dir, or runs/ and run.name or a "
        "timestamp): config.yaml, "
        "metrics.jsonl, TensorBoard events in tb/, checkpoints/, plots/*.png and one log per "
        "actor in logs/. Ctrl-C or SIGTERM stops the run cleanly (final checkpoint) and exits "
        "0; a second Ctrl-C exits 130 at once. Exit status 1: the run failed; 2: a bad config "
        "or command line.",
        epilog="example: python -m jaxrl_impala.train --config configs/cartpole.yaml",
    )
    add_config_options(parser, "learner.lr=1e-4")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its newest checkpoint, with its config.yaml and any --set "
        "applied; --config is ignored (default: a new run)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit without training (default: off)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
            config = load_config(run_dir / "config.yaml", args.set)
        else:
            config = load_config(args.config, args.set)
            run_dir = make_run_dir(config)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        print(f"run dir: {run_dir}")
        return Trainer(config, run_dir, resume=bool(args.resume)).run()
    except (ConfigError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the trainer started
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The training CLI: ``python -m jaxrl_impala.train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxrl_impala.config import ConfigError, dump_yaml, load_config
from jaxrl_impala.errors import TrainError
from jaxrl_impala.io.rundir import make_run_dir
from jaxrl_impala.train.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrl_impala.train",
        description="Train an agent with CPU actors and a jit-compiled learner.",
    )
    parser.add_argument("--config", help="YAML preset, e.g. configs/driving.yaml")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys (repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config")
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

"""The plot CLI: ``python -m jaxrl_impala.plot RUN_DIR``."""

from __future__ import annotations

import argparse
import sys

from jaxrl_impala.cli import add_run_dir, command_parser
from jaxrl_impala.io.plots import plot_run


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "plot",
        "Plot a run's metrics.jsonl into RUN_DIR/plots/: learning_curve.png "
        "(training and evaluation return against env steps and against wall-clock time), "
        "throughput.png (env steps/s) and policy_lag.png, titled with the env id and the "
        "algorithm of the run's config.yaml. The trainer writes them at the end of a run; this "
        "redraws them, e.g. while a run is going. Prints the paths it wrote. Exit status 2: "
        "RUN_DIR has no metrics.jsonl.",
    )
    add_run_dir(parser, "metrics.jsonl")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"error: {run_dir} has no metrics.jsonl", file=sys.stderr)
        return 2
    for path in plot_run(run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

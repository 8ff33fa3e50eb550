"""The plot CLI: ``python -m jaxrl_impala.plot RUN_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

from jaxrl_impala.io.plots import plot_run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jaxrl_impala.plot RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"error: {run_dir} has no metrics.jsonl", file=sys.stderr)
        return 2
    for path in plot_run(run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

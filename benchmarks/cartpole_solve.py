"""Wall-clock from the command's start to a greedy evaluation return >= 475 on CartPole-v1.

    python benchmarks/cartpole_solve.py [--seeds 0 1 2] [--config configs/cartpole.yaml]
                                        [--target 475] [--json PATH]

Runs ``python -m jaxrl_impala.train`` once per seed, exactly as a user would, and reads
``metrics.jsonl``: ``wall_time_s`` counts from the command's start, so JAX start-up,
compiles and actor start-up are included. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def solve_once(config: str, seed: int, target: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "jaxrl_impala.train",
            "--config",
            config,
            "--set",
            f"run.dir={run_dir}",
            f"train.seed={seed}",
            f"train.stop_at_eval_return={target}",
            *extra,
        ]
        start = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        elapsed = time.time() - start
        if out.returncode != 0:
            raise RuntimeError(f"seed {seed} failed:\n{out.stderr[-2000:]}")
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_return_mean" in r]
    hit = next((r for r in evals if r["eval_return_mean"] >= target), None)
    return {
        "seed": seed,
        "seconds_to_target": hit["wall_time_s"] if hit else None,
        "env_steps_to_target": hit["env_steps"] if hit else None,
        "final_eval_return": evals[-1]["eval_return_mean"] if evals else None,
        "command_seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=475.0)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--json", default="benchmarks/results/cartpole_solve.json")
    args = parser.parse_args(argv)
    rows = [solve_once(args.config, s, args.target, args.set) for s in args.seeds]
    print(f"{'seed':>4} {'s to ' + str(int(args.target)):>10} {'env steps':>10} {'final eval':>11}")
    for r in rows:
        s = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        n = "-" if r["env_steps_to_target"] is None else str(r["env_steps_to_target"])
        print(f"{r['seed']:>4} {s:>10} {n:>10} {r['final_eval_return']:>11.1f}")
    solved = [r["seconds_to_target"] for r in rows if r["seconds_to_target"] is not None]
    summary = {
        "solved": f"{len(solved)}/{len(rows)}",
        "median_seconds": statistics.median(solved) if solved else None,
        "max_seconds": max(solved) if solved else None,
    }
    print(
        f"solved {summary['solved']}; median {summary['median_seconds']}, "
        f"max {summary['max_seconds']} s from the command's start"
    )
    result = {
        "benchmark": "cartpole_solve",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "config": args.config,
        "target": args.target,
        "results": rows,
        "summary": summary,
    }
    path = ROOT / args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

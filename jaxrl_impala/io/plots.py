"""Plots of a run's ``metrics.jsonl`` (``python -m jaxrl_impala.plot RUN_DIR``).

Writes ``RUN_DIR/plots/learning_curve.png`` (training and evaluation return against env
steps), ``throughput.png`` (env steps/s against wall-clock) and ``policy_lag.png``.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: skip it, keep the rest
    return records


def _series(records: list[dict], x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in records if r.get(y) is not None and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Writes the PNGs and returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []

    def figure(name, panels, xlabel):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        for x, y, label, style in panels:
            xs, ys = _series(records, x, y)
            if xs:
                ax.plot(xs, ys, style, label=label)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:  # a run stopped before its first metrics line has nothing to label
            ax.legend(loc="best")
        ax.set_title(f"{run_dir.name}: {name.replace('_', ' ')}")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    figure(
        "learning_curve",
        [
            ("env_steps", "episode_return_mean", "training episodes (last 100)", "-"),
            ("env_steps", "eval_return_mean", "greedy evaluation", "o-"),
        ],
        "env steps",
    )
    figure("throughput", [("wall_time_s", "sps", "env steps / s", "-")], "wall-clock (s)")
    figure(
        "policy_lag",
        [
            ("env_steps", "policy_lag_mean", "mean", "-"),
            ("env_steps", "policy_lag_max", "max", "--"),
        ],
        "env steps",
    )
    return written

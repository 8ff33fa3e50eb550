"""Plots of a run's ``metrics.jsonl`` (``python -m jaxrl_impala.plot RUN_DIR``).

Writes ``RUN_DIR/plots/learning_curve.png`` (training and evaluation return against env
steps and against wall-clock time, side by side; for DrivingEnv, the scripted controller's
and random actions' returns on the evaluation seeds as reference lines), ``throughput.png``
(env steps/s against wall-clock) and ``policy_lag.png``, each titled with the env id and the
algorithm of the run's ``config.yaml``. :func:`make_figures` builds them without writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from jaxrl_impala.config import ConfigError, load_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ENV_STEPS = "env steps"
WALL_CLOCK = "wall-clock since the command started (s)"  # wall_time_s: see io/rundir.py


class Line(NamedTuple):
    """One metric drawn against the panel's x."""

    y: str  # a key of the metrics records
    label: str
    style: str


class Panel(NamedTuple):
    """One axes of a figure."""

    x: str  # a key of the metrics records
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...]


_RETURNS = (
    Line("episode_return_mean", "training episodes (last 100)", "-"),
    Line("eval_return_mean", "greedy evaluation", "o-"),
    # DrivingEnv: the hand-written drivers on the same evaluation seeds
    Line("eval_scripted_return", "scripted controller (same seeds)", "k--"),
    Line("eval_random_return", "random actions (same seeds)", "k:"),
)
# file name -> (what the title says, panels left to right)
FIGURES: dict[str, tuple[str, tuple[Panel, ...]]] = {
    "learning_curve": (
        "learning curve",
        (
            Panel("env_steps", ENV_STEPS, "episode return", _RETURNS),
            Panel("wall_time_s", WALL_CLOCK, "episode return", _RETURNS),
        ),
    ),
    "throughput": (
        "throughput",
        (Panel("wall_time_s", WALL_CLOCK, "env steps / s", (Line("sps", "env steps / s", "-"),)),),
    ),
    "policy_lag": (
        "policy lag",
        (
            Panel(
                "env_steps",
                ENV_STEPS,
                "policy lag (versions)",
                (Line("policy_lag_mean", "mean", "-"), Line("policy_lag_max", "max", "--")),
            ),
        ),
    ),
}


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: skip it, keep the rest
    return records


def run_title(run_dir: str | Path) -> str:
    """``"APPO on CartPole-v1 (RUN_NAME)"`` from the run's ``config.yaml``; the directory's
    name alone when there is none, or it no longer loads."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    try:
        config = load_config(run_dir / "config.yaml")
    except (ConfigError, OSError):
        return name
    return f"{config.learner.algo.upper()} on {config.env.id} ({name})"


def _series(records: list[dict], x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in records if r.get(y) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def make_figure(records: list[dict], title: str, panels: tuple[Panel, ...]) -> Figure:
    """One figure, its panels side by side, titled ``title``."""
    from matplotlib.figure import Figure  # not pyplot: no global figures, no GUI backend

    fig = Figure(figsize=(5.5 * len(panels), 3.8), dpi=110, layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for line in panel.lines:
            xs, ys = _series(records, panel.x, line.y)
            if xs:
                ax.plot(xs, ys, line.style, label=line.label)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        # A run stopped before its first metrics line has nothing to label; one line is
        # named by the y axis.
        if ax.lines and len(panel.lines) > 1:
            ax.legend(loc="best")
    fig.suptitle(title)
    return fig


def make_figures(records: list[dict], title: str) -> dict[str, Figure]:
    """Every plot of :data:`FIGURES`, by file name (without ``.png``)."""
    return {
        name: make_figure(records, f"{title}: {what}", panels)
        for name, (what, panels) in FIGURES.items()
    }


def plot_run(run_dir: str | Path) -> list[Path]:
    """Writes the PNGs into ``run_dir/plots`` and returns their paths."""
    run_dir = Path(run_dir)
    figures = make_figures(read_metrics(run_dir), run_title(run_dir))
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        written.append(path)
    return written

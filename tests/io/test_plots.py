"""The plots of a run (io/plots.py) and their CLI (python -m jaxrl_impala.plot)."""

import json
import subprocess
import sys

import pytest

from jaxrl_impala.config import dump_yaml, load_config
from jaxrl_impala.io.plots import FIGURES, make_figures, plot_run, read_metrics, run_title

ENV_ID = "CartPole-v1"


def _write_run(run_dir, config=True):
    """A tiny run: training lines, two evaluations, and a last line cut short by a crash."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config:
        c = load_config(overrides=[f"env.id={ENV_ID}", "learner.algo=impala"])
        (run_dir / "config.yaml").write_text(dump_yaml(c))
    lines = []
    for i in range(1, 7):
        lines.append(
            {
                "env_steps": 1000 * i,
                "wall_time_s": 2.0 + i,
                "sps": 900.0 + i,
                "policy_lag_mean": 1.5,
                "policy_lag_max": 3,
                "episode_return_mean": 10.0 * i,
            }
        )
        if i % 3 == 0:
            lines.append({"env_steps": 1000 * i, "wall_time_s": 2.0 + i, "eval_return_mean": i})
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"env_steps": 70'
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_plot_run_writes_the_pngs(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    written = plot_run(run_dir)
    names = ["learning_curve.png", "throughput.png", "policy_lag.png"]
    assert written == [run_dir / "plots" / n for n in names]
    for path in written:
        assert path.stat().st_size > 1000


def test_titles_name_env_and_algo_and_every_axis_is_labelled(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    figures = make_figures(read_metrics(run_dir), run_title(run_dir))
    assert list(figures) == list(FIGURES)
    for name, fig in figures.items():
        title = fig.get_suptitle()
        assert ENV_ID in title and "IMPALA" in title, (name, title)
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax)
            assert ax.lines, (name, ax.get_xlabel())
    curve = figures["learning_curve"].axes
    assert [ax.get_xlabel() for ax in curve] == [
        "env steps",
        "wall-clock since the command started (s)",
    ]
    assert {ax.get_ylabel() for ax in curve} == {"episode return"}
    assert figures["throughput"].axes[0].get_ylabel() == "env steps / s"
    assert figures["policy_lag"].axes[0].get_ylabel() == "policy lag (versions)"
    # the evaluations (every 3000 steps) against both clocks
    evals = [ax.lines[1].get_xydata().tolist() for ax in curve]
    assert evals == [[[3000, 3], [6000, 6]], [[5.0, 3], [8.0, 6]]]


def test_without_config_the_title_is_the_run_dir(tmp_path):
    run_dir = _write_run(tmp_path / "my-run", config=False)
    assert run_title(run_dir) == "my-run"
    fig = make_figures(read_metrics(run_dir), run_title(run_dir))["throughput"]
    assert fig.get_suptitle() == "my-run: throughput"


def test_empty_metrics_still_plot(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    (run_dir / "metrics.jsonl").write_text("")
    assert all(p.is_file() for p in plot_run(run_dir))


@pytest.mark.parametrize("argv", [[], ["a", "b"]], ids=["no-dir", "two-dirs"])
def test_cli_bad_arguments_exit_2(argv):
    proc = _plot_cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m jaxrl_impala.plot")


def test_cli_without_metrics_exits_2_with_an_error_line(tmp_path):
    proc = _plot_cli(str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path} has no metrics.jsonl\n"
    assert not (tmp_path / "plots").exists()


def test_cli_prints_the_paths(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    proc = _plot_cli(str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(run_dir / "plots" / f"{n}.png") for n in FIGURES]


def _plot_cli(*argv):
    cmd = [sys.executable, "-m", "jaxrl_impala.plot", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_driving_runs_curve_draws_the_scripted_and_random_drivers(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    records = read_metrics(run_dir)
    plain = make_figures(records, "t")["learning_curve"].axes[0]
    assert [line.get_label() for line in plain.lines] == [
        "training episodes (last 100)",
        "greedy evaluation",
    ]
    refs = {"eval_scripted_return": 51.7, "eval_random_return": -29.7}
    records = [{**r, **refs} if "eval_return_mean" in r else r for r in records]
    curve = make_figures(records, "t")["learning_curve"].axes[0]
    lines = {line.get_label(): line.get_xydata().tolist() for line in curve.lines}
    assert lines["scripted controller (same seeds)"] == [[3000, 51.7], [6000, 51.7]]
    assert lines["random actions (same seeds)"] == [[3000, -29.7], [6000, -29.7]]

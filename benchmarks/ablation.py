"""The DrivingEnv preset's ablation: each variant trained on the same budget with several
seeds, judged only by the 100-seed ``python -m jaxrl_impala.evaluate`` against the scripted
controller.

    python benchmarks/ablation.py                                 # every variant, seeds 0-2
    python benchmarks/ablation.py --variants preset popart --seeds 0 1 2
    python benchmarks/ablation.py --list

Each run is ``python -m jaxrl_impala.train --config configs/driving.yaml --set train.seed=S
<the variant's overrides>`` in a fresh process (its clock starts at the command's start:
imports, compiles and actor start-up count), then ``python -m jaxrl_impala.evaluate RUN
--episodes 100``. On 2 cores a 20M-step run takes 3-5 minutes and the preset's 60M about
10. Runs go one at a time, since they share the machine's cores. The variants measured
before the preset was kickstarted by the scripted controller keep the preset they were
measured on (``UNTAUGHT``: no teacher; most of them ``BEFORE``: also 20M env steps and gamma
0.995), so that they compare with one another at a few minutes a run.

The JSON is rewritten after every run, and a second command with the same ``--json`` keeps
its results and runs only the (variant, seed) pairs it lacks with the same overrides: an
interrupted ablation loses at most the run in progress. The JSON holds
``results`` (``variant, seed, overrides, command_seconds, fraction_of_scripted, agent,
agent_sem, collisions, route_ends, time_limits``, and for a variant that changes the reward
or another training-only option (``TRAINING_ONLY``), ``default_reward_fraction``: the same
policy scored on DrivingEnv's defaults for them, and ``default_collisions`` there) and
``summary`` per variant (mean, min and max fraction by the default reward, mean
collisions on the default env), plus the machine. The PNG shows every seed's fraction of
the scripted return per variant, by the default reward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import header, save_figure, write

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/driving.yaml"

# The preset before kickstarting (2026-12-06: gamma 0.999, 60M env steps, no teacher). The
# variants measured against it keep it, so that their rows stay comparable.
UNTAUGHT = ["learner.teacher_coef=0.0"]
# The preset before that (gamma 0.995, 20M env steps). Most variants were measured against it
# and keep it, so that their rows stay comparable with one another.
BEFORE = [*UNTAUGHT, "train.total_env_steps=20000000", "learner.gamma=0.995"]

# name -> (overrides, why it is tried)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "preset": (
        [],
        "configs/driving.yaml as it is: gamma 0.999, 60M env steps, kickstarted by the "
        "scripted controller (teacher_loss mse, teacher_coef 1)",
    ),
    "teacher_20m_mse": (
        ["train.total_env_steps=20000000"],
        "the preset on 20M env steps",
    ),
    "teacher_nll": (
        ["learner.teacher_loss=nll", "learner.teacher_coef=0.1"],
        "the distillation as a cross-entropy, -log pi(a_teacher|x): it also shrinks the "
        "policy's spread, and its pull grows as the spread shrinks",
    ),
    "teacher_20m": (
        ["train.total_env_steps=20000000", "learner.teacher_loss=nll", "learner.teacher_coef=0.1"],
        "teacher_nll on 20M env steps",
    ),
    "teacher_20m_003": (
        ["train.total_env_steps=20000000", "learner.teacher_loss=nll", "learner.teacher_coef=0.03"],
        "teacher_20m with a third of the weight: more room to depart from the teacher",
    ),
    "teacher_20m_linear": (
        [
            "train.total_env_steps=20000000",
            "learner.teacher_loss=nll",
            "learner.teacher_coef=0.1",
            "learner.teacher_schedule=linear",
        ],
        "teacher_20m with the weight decaying to 0 over the run",
    ),
    "untaught": (UNTAUGHT, "the preset before: no teacher"),
    "gamma999_100m": (
        [*UNTAUGHT, "train.total_env_steps=100000000"],
        "the preset before on 100M env steps, about as many as 20 minutes allow here",
    ),
    "gamma999_20m": (
        [*UNTAUGHT, "train.total_env_steps=20000000"],
        "the preset before on 20M env steps",
    ),
    "gamma999_lambda": (
        [*UNTAUGHT, "learner.lambda_=0.99"],
        "longer V-trace traces, to match the longer horizon",
    ),
    "before": (BEFORE, "the preset before the one before: gamma 0.995, 20M env steps"),
    "before_60m": (
        [*UNTAUGHT, "train.total_env_steps=60000000", "learner.gamma=0.995"],
        "the preset before on three times the samples (the linear lr schedule stretches)",
    ),
    "no_entropy": (
        [*BEFORE, "learner.entropy_coef=0.0"],
        "no entropy bonus (the preset before 0.005)",
    ),
    "running": (
        [*BEFORE, "learner.entropy_coef=0.0", "learner.return_norm=running"],
        "rewards over the running return std",
    ),
    "popart": (
        [*BEFORE, "learner.entropy_coef=0.0", "learner.return_norm=popart"],
        "PopArt's normalised value head",
    ),
    "wide": ([*BEFORE, "network.hidden=[256,256]"], "a larger network"),
    "layer_norm": ([*BEFORE, "network.layer_norm=true"], "layer-normalised torsos"),
    "epochs3": ([*BEFORE, "learner.epochs=3"], "more passes over each batch"),
    "lambda": ([*BEFORE, "learner.lambda_=0.99"], "longer V-trace traces"),
    "lstm": ([*BEFORE, "network.core=lstm"], "the recurrent core (docs/recurrent.md)"),
    "collision30": (
        [*BEFORE, "env.kwargs.reward_collision=-30.0"],
        "a collision costs 30, not 10, in training and evaluation alike (stricter for the agent)",
    ),
    "preset_collision30": (
        [*UNTAUGHT, "env.kwargs.reward_collision=-30.0"],
        "the preset before with a collision costing 30 (stricter for the agent in its "
        "evaluation too)",
    ),
    "frame_stack2": (
        [*UNTAUGHT, "env.frame_stack=2"],
        "the last two observations: the closing speed of what the LiDAR sees (stepped on the "
        "host, at half the fused actor's speed)",
    ),
    "closing_speed": (
        [*UNTAUGHT, "env.kwargs.lidar_closing_speed=true"],
        "the closing speed of the vehicle on each LiDAR beam, computed in the env (fused)",
    ),
    "collision100": (
        [*UNTAUGHT, "env.kwargs.reward_collision=-100.0"],
        "the preset before with a collision costing 100 in training (scored by the default "
        "reward too)",
    ),
    "gamma9995": ([*UNTAUGHT, "learner.gamma=0.9995"], "a horizon twice the episode's"),
    "pedestrians_often": (
        [*UNTAUGHT, "env.kwargs.pedestrian_wait=[1.0,5.0]"],
        "pedestrians cross 1-5 s apart in training, not 2-15 s: more of the encounters half "
        "the collisions are (scored on the default 2-15 s too)",
    ),
    "forecast": (
        [*UNTAUGHT, "env.kwargs.pedestrian_forecast=true"],
        "each pedestrian track also says when the ego reaches it and where it will be then "
        "(the scripted controller's prediction)",
    ),
    "on_device": ([*BEFORE, "train.mode=on_device"], "the envs on the learner's devices"),
    "on_device_no_entropy": (
        [*BEFORE, "train.mode=on_device", "learner.entropy_coef=0.0"],
        "on device (on-policy) the policy's entropy falls faster than with the actors' lag",
    ),
    "on_device_clip": (
        [*BEFORE, "train.mode=on_device", "learner.entropy_coef=0.0", "learner.clip_eps=0.1"],
        "a tighter trust region on device, where no policy lag slows each update",
    ),
    "on_device_popart": (
        [*BEFORE, "train.mode=on_device", "learner.entropy_coef=0.0", "learner.return_norm=popart"],
        "PopArt in the on-device mode",
    ),
}


# env options a variant may change in training only: its policy is also scored with them
# set back to DrivingEnv's defaults (the task the scripted driver is judged on)
TRAINING_ONLY = ("reward_", "pedestrian_wait")


def default_env(overrides: list[str]) -> list[str]:
    """A variant's training-only ``env.kwargs`` overrides set back to DrivingEnv's defaults
    (none: [])."""
    from jaxrl_impala.envs.config import DrivingConfig

    out = []
    for o in overrides:
        key = o.split("=", 1)[0].removeprefix("env.kwargs.")
        if o.startswith("env.kwargs.") and key.startswith(TRAINING_ONLY):
            value = getattr(DrivingConfig, key)
            value = list(value) if isinstance(value, tuple) else value
            out.append(f"env.kwargs.{key}={json.dumps(value)}")
    return out


def run_one(variant: str, seed: int, workdir: Path, extra: list[str]) -> dict:
    overrides, _ = VARIANTS[variant]
    run_dir = workdir / f"{variant}_s{seed}"
    cmd = [
        sys.executable, "-m", "jaxrl_impala.train", "--config", CONFIG, "--set",
        f"train.seed={seed}", f"run.dir={run_dir}", *overrides, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    train = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    row = {"variant": variant, "seed": seed, "overrides": overrides + extra}
    row["command_seconds"] = round(seconds, 1)
    if train.returncode != 0:
        row["error"] = train.stderr[-2000:]
        return row
    eval_json = run_dir / "eval100.json"
    ev = subprocess.run(
        [sys.executable, "-m", "jaxrl_impala.evaluate", str(run_dir), "--json", str(eval_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if ev.returncode != 0:
        row["error"] = ev.stderr[-2000:]
        return row
    out = json.loads(eval_json.read_text())
    ends = out["agent_ends"]
    default = default_env(overrides + extra)
    if default:  # a shaped reward or a harder task in training: also scored on the env's own
        ev = subprocess.run(
            [sys.executable, "-m", "jaxrl_impala.evaluate", str(run_dir), "--json",
             str(eval_json.with_name("eval100_default_reward.json")), "--set", *default],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if ev.returncode != 0:
            row["error"] = ev.stderr[-2000:]
            return row
        scored = json.loads(eval_json.with_name("eval100_default_reward.json").read_text())
        row["default_reward_fraction"] = round(scored["fraction_of_scripted"], 4)
        row["default_collisions"] = scored["agent_ends"]["collision"]
    row.update(
        env_steps=out["env_steps"],
        fraction_of_scripted=round(out["fraction_of_scripted"], 4),
        agent=round(out["agent"], 2),
        agent_sem=round(out["agent_sem"], 2),
        scripted=round(out["scripted"], 2),
        collisions=ends["collision"],
        route_ends=ends["route_end"],
        time_limits=ends["time_limit"],
    )
    return row


def score(row: dict) -> float:
    """A row's fraction of the scripted return by DrivingEnv's default reward (the one the
    scripted driver is judged by), whatever reward the variant trained on."""
    return row.get("default_reward_fraction", row["fraction_of_scripted"])


def summarise(results: list[dict]) -> dict:
    summary: dict[str, dict] = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        rows = [r for r in results if r["variant"] == variant and "fraction_of_scripted" in r]
        if not rows:
            continue
        fractions = [score(r) for r in rows]
        summary[variant] = {
            "seeds": [r["seed"] for r in rows],
            "mean_fraction": round(sum(fractions) / len(fractions), 4),
            "min_fraction": min(fractions),
            "max_fraction": max(fractions),
            "mean_collisions": round(
                sum(r.get("default_collisions", r["collisions"]) for r in rows) / len(rows), 1
            ),
            "mean_command_seconds": round(sum(r["command_seconds"] for r in rows) / len(rows)),
        }
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    fig, ax = plt.subplots(figsize=(1.2 * max(4, len(names)) + 1, 3.6))
    for i, name in enumerate(names):
        rows = [
            r for r in result["results"] if r["variant"] == name and "fraction_of_scripted" in r
        ]
        ys = [100 * score(r) for r in rows]
        ax.bar(i, result["summary"][name]["mean_fraction"] * 100, color="#9ecae1")
        ax.scatter([i] * len(ys), ys, color="#08519c", zorder=3, s=14)
    ax.axhline(100, color="k", lw=1, ls="--", label="scripted controller")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("% of the scripted return (100 seeds)")
    ax.set_title("DrivingEnv preset ablation: bars the mean, dots the seeds")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/ablation.json")
    p.add_argument("--keep", type=Path, default=None, help="keep the run dirs here")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    args = p.parse_args()
    if args.list:
        for name, (overrides, why) in VARIANTS.items():
            print(f"{name:18s} {' '.join(overrides) or '-':55s} {why}")
        return 0
    result = header("ablation", config=CONFIG)
    result["results"] = []
    if args.json.is_file():  # keep what an earlier command measured
        earlier = json.loads(args.json.read_text())
        result["results"] = [r for r in earlier["results"] if "error" not in r]
        if "note" in earlier:  # what a person wrote about the earlier rows
            result["note"] = earlier["note"]
    # a row counts as done only for the same overrides: a variant redefined, or another --set,
    # runs again (and replaces the row)
    done = {(r["variant"], r["seed"], tuple(r["overrides"])) for r in result["results"]}
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ablation_"))
    for seed in args.seeds:  # seed-major: a cut-short ablation still compares variants
        for variant in args.variants:
            overrides = (*VARIANTS[variant][0], *args.set)
            if (variant, seed, overrides) in done:
                continue
            row = run_one(variant, seed, workdir, args.set)
            result["results"] = [
                r for r in result["results"] if (r["variant"], r["seed"]) != (variant, seed)
            ] + [row]
            result["summary"] = summarise(result["results"])
            got = row.get("fraction_of_scripted")
            print(
                f"{variant} seed {seed}: "
                + (
                    f"{got:.0%} of scripted, {row['collisions']} collisions"
                    if got is not None
                    else "FAILED"
                )
                + f", {row['command_seconds']:.0f} s",
                flush=True,
            )
            write(result, args.json, args.json.with_suffix(".png"), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

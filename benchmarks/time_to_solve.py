"""Time to solve: wall-clock and env steps to a target greedy evaluation return, ours against
Stable-Baselines3 PPO, several seeds, in one run on one machine.

    python benchmarks/time_to_solve.py                    # full: CartPole x 3 seeds, DrivingEnv x 1
    python benchmarks/time_to_solve.py --quick --json /tmp/tts.json

Systems: ``appo``, ``impala`` and ``ppo`` are ``python -m jaxrl_impala.train`` with
``configs/cartpole.yaml`` (or ``configs/driving.yaml``) and ``learner.algo`` set; ``sb3_ppo``
is Stable-Baselines3's PPO (bench-only dependency: ``pip install stable-baselines3`` and a
CPU build of torch) with rl-baselines3-zoo's tuned CartPole-v1 hyperparameters. Every run is
a fresh process and its clock starts at the command's start, so imports, compiles and
actor start-up count for everyone. Both evaluate greedily (10 episodes for CartPole, the
trainer's 16 held-out seeds for DrivingEnv) and stop at the target.

Compile cache (``--compile-cache``): ours compiles its update with XLA, which takes seconds
here; the trainer keeps compiled updates in a persistent cache (``train.compile_cache``).
``cold`` turns the cache off, so every run compiles (a user's first run); ``warm`` gives the
benchmark a fresh cache, filled by one untimed run per system (a user's later runs). In warm
mode SB3 gets an untimed run too (its imports then come from the OS file cache, as ours do).
Each result says which (``compile_cache``: ``cold``, ``warm`` or ``-`` for SB3).

Targets: CartPole-v1 475; DrivingEnv ``--driving-fraction`` (default 0.5) of the scripted
controller's return on the 16 evaluation seeds. A run that misses its target within
``--max-minutes`` counts as not reached (null).

Writes JSON with ``results``: ``{system, env, seed, compile_cache, seconds_to_target,
env_steps_to_target}``
plus the machine, versions and arguments, and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import header, save_figure, write

ROOT = Path(__file__).resolve().parent.parent
OURS = ("appo", "impala", "ppo")
CARTPOLE_TARGET = 475.0

# rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1.
SB3_CARTPOLE = dict(
    n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
    ent_coef=0.0, learning_rate=0.001, clip_range=0.2, total=100_000,
)  # fmt: skip
# No zoo entry exists for DrivingEnv: SB3's defaults on 8 envs (the MLP is 64x64 tanh).
SB3_DRIVING = dict(n_envs=8, total=20_000_000)

# The stop rule of both Stable-Baselines3 workers (this one and benchmarks/recurrent.py's):
# ``evaluate(model)`` every ``eval_every`` env steps; stop at the target or past the time cap.
SB3_STOP = r"""
class Stop(BaseCallback):
    def __init__(self):
        super().__init__(); self.next = spec["eval_every"]; self.hit = None; self.evals = []
    def _on_step(self):
        if time.time() - t0 > spec["max_seconds"]:
            return False  # the cap holds between evaluations too
        if self.num_timesteps >= self.next:
            self.next += spec["eval_every"]
            m = evaluate(self.model)
            self.evals.append((self.num_timesteps, time.time() - t0, m))
            if m >= spec["target"]:
                self.hit = (time.time() - t0, self.num_timesteps); return False
        return True
"""

_SB3_WORKER = (
    r"""
import json, sys, time
t0 = float(sys.argv[1])
spec = json.loads(sys.argv[2])
import numpy as np
import torch
torch.set_num_threads(1)
import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
import jaxrl_impala  # registers jaxrl_impala/Driving-v0

hp = dict(spec["hp"])
n_envs, total = hp.pop("n_envs"), hp.pop("total")
lin = lambda v: (lambda progress: progress * v)
for k in ("learning_rate", "clip_range"):
    if k in hp:
        hp[k] = lin(hp[k])
env = make_vec_env(spec["env_id"], n_envs=n_envs, seed=spec["seed"], env_kwargs=spec["kwargs"])
eval_env = gym.vector.SyncVectorEnv(
    [lambda: gym.make(spec["env_id"], **spec["kwargs"])] * spec["eval_episodes"]
)

def evaluate(model):
    obs, _ = eval_env.reset(seed=spec["eval_seed"])
    ret = np.zeros(spec["eval_episodes"]); done = np.zeros(spec["eval_episodes"], bool)
    while not done.all():
        act, _ = model.predict(obs, deterministic=True)
        obs, r, te, tr, _ = eval_env.step(act)
        ret += np.where(done, 0.0, r); done |= te | tr
    return float(ret.mean())

"""
    + SB3_STOP
    + r"""

cb = Stop()
model = PPO("MlpPolicy", env, seed=spec["seed"], device="cpu", verbose=0, **hp)
model.learn(total_timesteps=total, callback=cb)
print(json.dumps({"hit": cb.hit, "evals": cb.evals}))
"""
)


def run_ours(algo: str, env: str, seed: int, target: float, max_s: float, extra) -> dict:
    """One training command to ``target``; ``extra`` overrides (e.g. the compile cache)."""
    config = "configs/cartpole.yaml" if env == "CartPole-v1" else "configs/driving.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "jaxrl_impala.train", "--config", config, "--set",
            f"run.dir={run_dir}", f"learner.algo={algo}", f"train.seed={seed}",
            f"train.stop_at_eval_return={target}", "eval.gif=false", *extra,
        ]  # fmt: skip
        if env != "CartPole-v1":  # against SB3: no teacher (ours would learn from the
            cmd.append("learner.teacher_coef=0.0")  # controller's actions, SB3 cannot)
        if algo == "impala":  # one gradient step per batch wants a smaller step size
            cmd.append("learner.lr=0.0005" if env == "CartPole-v1" else "learner.lr=0.0003")
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=max_s + 60)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: a clean stop with a final checkpoint
            _, err = proc.communicate(timeout=120)
        elapsed = time.time() - start
        path = run_dir / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    if proc.returncode not in (0, -15) and not rows:
        raise RuntimeError(f"{algo} seed {seed} failed:\n{err.decode()[-2000:]}")
    evals = [r for r in rows if "eval_return_mean" in r]
    hit = next((r for r in evals if r["eval_return_mean"] >= target), None)
    if hit is not None and hit["wall_time_s"] > max_s:
        hit = None
    return {
        "seconds_to_target": hit["wall_time_s"] if hit else None,
        "env_steps_to_target": hit["env_steps"] if hit else None,
        "final_eval_return": evals[-1]["eval_return_mean"] if evals else None,
        "command_seconds": elapsed,
    }


def driving_kwargs() -> dict:
    """The env options of configs/driving.yaml: SB3 sees the same observations as ours."""
    from jaxrl_impala.actor.envs import env_kwargs
    from jaxrl_impala.config import load_config

    return env_kwargs(load_config(ROOT / "configs/driving.yaml"))


def run_sb3(env: str, seed: int, target: float, max_s: float, eval_seed: int) -> dict:
    driving = env != "CartPole-v1"
    spec = {
        "env_id": "jaxrl_impala/Driving-v0" if driving else env,
        "kwargs": driving_kwargs() if driving else {},
        "hp": SB3_DRIVING if driving else SB3_CARTPOLE,
        "seed": seed,
        "target": target,
        "max_seconds": max_s,
        "eval_every": 250_000 if driving else 4096,
        "eval_episodes": 16 if driving else 10,
        "eval_seed": eval_seed,
    }
    start = time.time()
    envvars = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _SB3_WORKER, str(start), json.dumps(spec)],
        cwd=ROOT, capture_output=True, text=True, env=envvars, timeout=max_s + 600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"sb3_ppo seed {seed} failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    hit = res["hit"]
    if hit is not None and hit[0] > max_s:
        hit = None
    return {
        "seconds_to_target": hit[0] if hit else None,
        "env_steps_to_target": hit[1] if hit else None,
        "final_eval_return": res["evals"][-1][2] if res["evals"] else None,
        "command_seconds": time.time() - start,
    }


def driving_target(fraction: float) -> tuple[float, float]:
    from jaxrl_impala.envs import reference_returns

    ref = reference_returns(16, seed=1_000_000)  # the trainer's evaluation seeds (seed 0)
    return fraction * ref["scripted"], ref["scripted"]


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["env"], r["system"], r["compile_cache"]) for r in rows}):
        sel = [r for r in rows if (r["env"], r["system"], r["compile_cache"]) == key]
        secs = [r["seconds_to_target"] for r in sel if r["seconds_to_target"] is not None]
        steps = [r["env_steps_to_target"] for r in sel if r["env_steps_to_target"] is not None]
        out.append(
            {
                "env": key[0],
                "system": key[1],
                "compile_cache": key[2],
                "reached": f"{len(secs)}/{len(sel)}",
                # a miss counts as worse than any hit, so the median is over all seeds
                "median_seconds": _median_with_misses(secs, len(sel)),
                "min_seconds": min(secs) if secs else None,
                "max_seconds": max(secs) if len(secs) == len(sel) and secs else None,
                "median_env_steps": _median_with_misses(steps, len(sel)),
            }
        )
    return out


def _median_with_misses(values: list[float], n: int) -> float | None:
    padded = sorted(values) + [float("inf")] * (n - len(values))
    if not padded:
        return None
    m = statistics.median_low(padded) if n % 2 == 0 else statistics.median(padded)
    return None if m == float("inf") else m


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in result["results"]})
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        rows = [r for r in result["results"] if r["env"] == env]

        def label(r: dict) -> str:
            cache = r.get("compile_cache", "-")
            return r["system"] if cache == "-" else f"{r['system']}\n{cache}"

        systems = sorted({label(r) for r in rows})
        for i, s in enumerate(systems):
            ys = [r["seconds_to_target"] for r in rows if label(r) == s]
            hit = [y for y in ys if y is not None]
            ax.scatter([i] * len(hit), hit, color="C3" if s == "sb3_ppo" else "C0", zorder=3)
            miss = len(ys) - len(hit)
            if miss:
                ax.annotate(f"{miss} not reached", (i, 0), ha="center", fontsize=8)
        ax.set_xticks(range(len(systems)), systems)
        ax.set_ylabel("seconds from the command's start")
        t = result["targets"][env]
        ax.set_title(f"{env}: to eval return {t:.1f}")
        ax.set_ylim(bottom=0)
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed, CartPole only: ~2-3 minutes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--systems", nargs="*", default=[*OURS, "sb3_ppo"])
    p.add_argument("--driving-systems", nargs="*", default=["appo", "sb3_ppo"])
    p.add_argument("--driving-seeds", type=int, nargs="*", default=[0])
    p.add_argument("--driving-fraction", type=float, default=0.5)
    p.add_argument("--max-minutes", type=float, default=3.0, help="CartPole cap per run")
    p.add_argument("--driving-max-minutes", type=float, default=10.0)
    p.add_argument(
        "--compile-cache",
        choices=("cold", "warm", "both"),
        default="both",
        help="ours with JAX's persistent compilation cache off (cold: every run compiles, like "
        "a first run) and/or warm (a fresh cache filled by one untimed run per system, like "
        "any later run); --quick: cold",
    )
    p.add_argument("--json", default="benchmarks/results/time_to_solve.json")
    p.add_argument("--png", help="the plot (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    if args.quick:
        args.seeds, args.driving_systems, args.max_minutes = args.seeds[:1], [], 1.5
        args.compile_cache = "cold"
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        if "sb3_ppo" in args.systems + args.driving_systems:
            print("stable-baselines3 is not installed: sb3_ppo is left out", file=sys.stderr)
            args.systems = [s for s in args.systems if s != "sb3_ppo"]
            args.driving_systems = [s for s in args.driving_systems if s != "sb3_ppo"]
    return args


def make_plan(args: argparse.Namespace, caches: tuple[str, ...]) -> list[tuple]:
    """``(env, system, seed, compile_cache)`` of every timed run, in order."""
    plan = [
        ("CartPole-v1", s, seed, cache)
        for seed in args.seeds
        for s in args.systems
        for cache in (caches if s != "sb3_ppo" else ("-",))
    ]
    driving_cache = "warm" if "warm" in caches else "cold"
    plan += [
        ("DrivingEnv", s, seed, driving_cache if s != "sb3_ppo" else "-")
        for seed in args.driving_seeds
        for s in args.driving_systems
    ]
    return plan


def run_plan(plan: list[tuple], targets: dict, args, caches: tuple[str, ...]) -> list[dict]:
    """Runs the plan (with an untimed warm-up run per system where the cache is warm)."""
    rows = []
    cache_dir = tempfile.TemporaryDirectory(prefix="jaxrl_impala_bench_xla_")
    warmed: set = set()
    for env, system, seed, cache in plan:
        target = targets[env]
        cap = 60 * (args.max_minutes if env == "CartPole-v1" else args.driving_max_minutes)

        def run(seed: int, cache=cache, system=system, env=env, target=target, cap=cap):
            if system == "sb3_ppo":
                return run_sb3(env, seed, target, cap, eval_seed=1_000_000 + 1000 * seed)
            path = cache_dir.name if cache == "warm" else ""
            return run_ours(system, env, seed, target, cap, [f"train.compile_cache={path}"])

        if "warm" in caches and cache != "cold" and (env, system) not in warmed:
            # Untimed: fills the compile cache (ours) and the OS file cache (everyone).
            warmed.add((env, system))
            print(f"{env:12s} {system:8s} warm-up run (not counted)", flush=True)
            run(1000 + seed)
        r = run(seed)
        rows.append({"system": system, "env": env, "seed": seed, "compile_cache": cache, **r})
        s = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f} s"
        print(f"{env:12s} {system:8s} {cache:4s} seed {seed}: {s:>9} "
              f"({r['env_steps_to_target'] or '-'} env steps)", flush=True)  # fmt: skip
    cache_dir.cleanup()
    return rows


def versions() -> dict[str, str]:
    import gymnasium
    import jax

    out = {"jax": jax.__version__, "gymnasium": gymnasium.__version__}
    try:
        import stable_baselines3
        import torch

        out.update(stable_baselines3=stable_baselines3.__version__, torch=torch.__version__)
    except ImportError:
        pass
    return out


RESULT_KEYS = (
    "system",
    "env",
    "seed",
    "compile_cache",
    "seconds_to_target",
    "env_steps_to_target",
    "final_eval_return",
    "command_seconds",
)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    caches = ("cold", "warm") if args.compile_cache == "both" else (args.compile_cache,)
    plan = make_plan(args, caches)
    targets = {"CartPole-v1": CARTPOLE_TARGET}
    scripted = None
    if args.driving_systems:
        targets["DrivingEnv"], scripted = driving_target(args.driving_fraction)
    rows = run_plan(plan, targets, args, caches)
    summary = summarise(rows)
    print(f"\n{'env':12s} {'system':8s} {'cache':5s} {'reached':>7} {'median s':>9} "
          f"{'median steps':>12}")  # fmt: skip
    for s in summary:
        med = "-" if s["median_seconds"] is None else f"{s['median_seconds']:.1f}"
        steps = "-" if s["median_env_steps"] is None else f"{s['median_env_steps']:,}"
        print(f"{s['env']:12s} {s['system']:8s} {s['compile_cache']:5s} {s['reached']:>7} "
              f"{med:>9} {steps:>12}")  # fmt: skip
    result = {
        **header("time_to_solve"),
        "versions": versions(),
        "args": vars(args),
        "targets": targets,
        "driving_scripted_return": scripted,
        "results": [{k: r[k] for k in RESULT_KEYS} for r in rows],
        "summary": summary,
    }
    write(result, ROOT / args.json, ROOT / args.png, plot)
    return result


if __name__ == "__main__":
    main()

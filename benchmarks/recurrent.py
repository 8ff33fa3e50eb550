"""Memory on CartPole without velocities: our LSTM, our MLP and sb3-contrib's RecurrentPPO,
side by side on the same budget, several seeds, one machine.

    python benchmarks/recurrent.py                      # 3 seeds each, ~15 minutes on 2 cores
    python benchmarks/recurrent.py --seeds 0 --systems lstm mlp

Systems, each a fresh process whose clock starts at the command's start (imports, compiles
and actor start-up count):
  ``lstm``: ``python -m jaxrl_impala.train --config configs/cartpole_lstm.yaml``;
  ``mlp``: the same command with ``network.core=none``: a memoryless policy, whose best
    evaluation is reported (it should stay far below 475);
  ``recurrent_ppo``: sb3-contrib's ``RecurrentPPO`` with rl-baselines3-zoo's tuned settings
    for CartPoleNoVel-v1 (bench-only dependency: ``pip install sb3-contrib`` with a CPU build
    of torch; left out when it is not installed).

The budget is the same for all: ``total_env_steps`` env steps (default 200,000, the config's)
and ``--max-minutes`` of wall-clock. Everyone evaluates greedily on 10 episodes every 4,096
env steps (the recurrent ones carrying their state) and stops at 475.

Writes JSON with ``results`` (``system, seed, seconds_to_target, env_steps_to_target,
best_eval_return, command_seconds``) and ``summary``, plus the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import header, save_figure, write
from time_to_solve import SB3_STOP, _median_with_misses

ROOT = Path(__file__).resolve().parent.parent
TARGET = 475.0
CONFIG = "configs/cartpole_lstm.yaml"

# rl-baselines3-zoo hyperparams/ppo_lstm.yml, CartPoleNoVel-v1 (normalize: norm_obs only).
ZOO = dict(
    n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
    ent_coef=0.0, learning_rate=0.001, clip_range=0.2,
)  # fmt: skip

_RECURRENT_PPO_WORKER = (
    r"""
import json, sys, time
t0 = float(sys.argv[1])
spec = json.loads(sys.argv[2])
import numpy as np
import torch
import torch.nn as nn
torch.set_num_threads(1)
import gymnasium as gym
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

class NoVelocity(gym.ObservationWrapper):
    def __init__(self, env):
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Box(box.low[[0, 2]], box.high[[0, 2]])
    def observation(self, obs):
        return obs[[0, 2]].astype(np.float32)

hp = dict(spec["hp"])
n_envs = hp.pop("n_envs")
lin = lambda v: (lambda progress: progress * v)
for k in ("learning_rate", "clip_range"):
    hp[k] = lin(hp[k])
env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=spec["seed"], wrapper_class=NoVelocity)
env = VecNormalize(env, norm_obs=True, norm_reward=False)
n = spec["eval_episodes"]
eval_env = gym.vector.SyncVectorEnv([lambda: NoVelocity(gym.make("CartPole-v1"))] * n)

def evaluate(model):
    obs, _ = eval_env.reset(seed=spec["eval_seed"])
    state, start = None, np.ones(n, bool)
    ret = np.zeros(n); done = np.zeros(n, bool)
    while not done.all():
        act, state = model.predict(
            env.normalize_obs(obs), state=state, episode_start=start, deterministic=True
        )
        obs, r, te, tr, _ = eval_env.step(act)
        start = te | tr
        ret += np.where(done, 0.0, r); done |= te | tr
    return float(ret.mean())

"""
    + SB3_STOP
    + r"""

policy_kwargs = dict(
    ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64, enable_critic_lstm=True,
    net_arch=dict(pi=[64], vf=[64]),
)
cb = Stop()
model = RecurrentPPO(
    "MlpLstmPolicy", env, seed=spec["seed"], device="cpu", verbose=0,
    policy_kwargs=policy_kwargs, **hp,
)
model.learn(total_timesteps=spec["total"], callback=cb)
print(json.dumps({"hit": cb.hit, "evals": cb.evals}))
"""
)


def run_ours(system: str, seed: int, budget: int, max_s: float) -> dict:
    """``configs/cartpole_lstm.yaml`` (``mlp``: with ``network.core=none``) to 475."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "jaxrl_impala.train", "--config", CONFIG, "--set",
            f"run.dir={run_dir}", f"train.seed={seed}", f"train.total_env_steps={budget}",
            f"train.stop_at_eval_return={TARGET}", "eval.gif=false",
        ]  # fmt: skip
        if system == "mlp":
            cmd.append("network.core=none")
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=max_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: a clean stop
            _, err = proc.communicate(timeout=120)
        elapsed = time.time() - start
        path = run_dir / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    if proc.returncode not in (0, -15) and not rows:
        raise RuntimeError(f"{system} seed {seed} failed:\n{err.decode()[-2000:]}")
    evals = [(r["env_steps"], r["wall_time_s"], r["eval_return_mean"]) for r in rows
             if "eval_return_mean" in r]  # fmt: skip
    return _result(evals, max_s, elapsed)


def run_recurrent_ppo(seed: int, budget: int, max_s: float) -> dict:
    spec = {
        "hp": ZOO,
        "seed": seed,
        "total": budget,
        "target": TARGET,
        "max_seconds": max_s,
        "eval_every": 4096,
        "eval_episodes": 10,
        "eval_seed": 1_000_000 + 1000 * seed,  # the trainer's evaluation seeds
    }
    start = time.time()
    envvars = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _RECURRENT_PPO_WORKER, str(start), json.dumps(spec)],
        cwd=ROOT, capture_output=True, text=True, env=envvars, timeout=max_s + 600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"recurrent_ppo seed {seed} failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return _result([tuple(e) for e in res["evals"]], max_s, time.time() - start)


def _result(evals: list[tuple], max_s: float, elapsed: float) -> dict:
    """From ``(env_steps, seconds, eval return)`` rows: the first at the target (within the
    cap), and the best evaluation."""
    hit = next((e for e in evals if e[2] >= TARGET and e[1] <= max_s), None)
    return {
        "seconds_to_target": hit[1] if hit else None,
        "env_steps_to_target": hit[0] if hit else None,
        "best_eval_return": max((e[2] for e in evals), default=None),
        "evals": [list(e) for e in evals],  # (env steps, seconds, eval return)
        "command_seconds": elapsed,
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for system in dict.fromkeys(r["system"] for r in rows):
        sel = [r for r in rows if r["system"] == system]
        secs = [r["seconds_to_target"] for r in sel if r["seconds_to_target"] is not None]
        best = [r["best_eval_return"] for r in sel if r["best_eval_return"] is not None]
        out.append(
            {
                "system": system,
                "reached": f"{len(secs)}/{len(sel)}",
                "median_seconds": _median_with_misses(secs, len(sel)),
                "seconds": [r["seconds_to_target"] for r in sel],
                "best_eval_return": max(best, default=None),
            }
        )
    return out


def plot(result: dict, path: Path) -> None:
    """Every run's evaluations against seconds from its command's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"lstm": "C0", "mlp": "C1", "recurrent_ppo": "C3"}
    for r in result["results"]:
        xs = [e[1] for e in r["evals"]]
        ys = [e[2] for e in r["evals"]]
        first = r["seed"] == result["args"]["seeds"][0]
        label = {"lstm": "ours, LSTM", "mlp": "ours, network.core=none"}.get(r["system"])
        ax.plot(xs, ys, color=colours.get(r["system"], "C2"), alpha=0.8,
                label=(label or "sb3-contrib RecurrentPPO") if first else None)  # fmt: skip
    ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds from the command's start")
    ax.set_ylabel("greedy evaluation return (10 episodes)")
    ax.set_title("CartPole-v1 without velocities (obs_indices [0, 2])")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--systems", nargs="+", default=["lstm", "mlp", "recurrent_ppo"])
    p.add_argument("--total-env-steps", type=int, default=200_000)
    p.add_argument("--max-minutes", type=float, default=6.0)
    p.add_argument("--json", default="benchmarks/results/recurrent.json")
    p.add_argument("--png", help="the plot (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        if "recurrent_ppo" in args.systems:
            print("sb3-contrib is not installed: recurrent_ppo is left out", file=sys.stderr)
            args.systems = [s for s in args.systems if s != "recurrent_ppo"]
    rows = []
    max_s = 60 * args.max_minutes
    for seed in args.seeds:
        for system in args.systems:
            if system == "recurrent_ppo":
                r = run_recurrent_ppo(seed, args.total_env_steps, max_s)
            else:
                r = run_ours(system, seed, args.total_env_steps, max_s)
            rows.append({"system": system, "seed": seed, **r})
            s = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f} s"
            print(
                f"{system:14s} seed {seed}: to {TARGET:.0f}: {s:>8s}  best eval "
                f"{r['best_eval_return']}  (command {r['command_seconds']:.1f} s)",
                flush=True,
            )
    summary = summarise(rows)
    print("\nsystem          reached  median s to 475  best eval")
    for s in summary:
        med = "-" if s["median_seconds"] is None else f"{s['median_seconds']:.1f}"
        print(f"{s['system']:14s}  {s['reached']:>7s}  {med:>15s}  {s['best_eval_return']}")
    result = {
        **header("recurrent"),
        "args": vars(args),
        "target": TARGET,
        "results": rows,
        "summary": summary,
    }
    write(result, Path(args.json), Path(args.png), plot)


if __name__ == "__main__":
    main()

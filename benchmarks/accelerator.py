"""One short run on an accelerator host that refreshes the accelerator figures.

    python benchmarks/accelerator.py --json benchmarks/results/accelerator.json   # <= 5 minutes
    python benchmarks/accelerator.py --quick --json /tmp/accelerator.json         # a CPU check

Measures, one after another on this machine's default JAX device:

* **env alone**: DrivingEnv's pure step in one jitted ``lax.scan`` over T steps, random
  actions, for each ``--envs`` size (env steps/s);
* **fused actor**: the actor's fused unroll (policy + env, `actor.rollout.fused_unroll_fn`)
  at the same sizes, including the copy of the unroll to the host (env steps/s);
* **learner**: the preset's compiled update on batches of ``--batch-unrolls`` x 128 columns
  (samples/s);
* **end to end**, both modes, the preset run for ``--seconds`` after its first update: the
  actors mode with one pinned actor per CPU the learner does not keep (``actors.num=auto``),
  and the on-device mode (env steps/s);
* **time to 80% of the scripted controller**: an on-device run from the command's start
  until a greedy evaluation (``eval.episodes``) reaches 80% of the scripted controller's
  return on the same seeds, capped at ``--target-minutes``.

Writes JSON and a PNG, so one run refreshes docs/benchmarks.md's accelerator table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _results import header, save_figure, write
from throughput import end_to_end

from jaxrl_impala.actor.rollout import fused_unroll_fn, initial_carry
from jaxrl_impala.config import load_config
from jaxrl_impala.envs import DrivingVectorEnv, reference_returns
from jaxrl_impala.train.setup import setup

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "driving.yaml"
T = 32


def _rate(fn, args, steps_per_call: int, seconds: float) -> float:
    """Env steps/s of ``fn(*args)`` (compiled first, then called for ``seconds``)."""
    jax.block_until_ready(fn(*args))
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(fn(*args))
        calls += 1
    return calls * steps_per_call / (time.perf_counter() - start)


def _env_only(step, n: int):
    """T pure env steps of ``n`` envs with random actions, one jitted scan."""

    @jax.jit
    def run(packed, key):
        def body(packed, k):
            actions = jax.random.uniform(k, (n, 3), minval=-1.0, maxval=1.0)
            return step(packed, actions)[0], None

        return jax.lax.scan(body, packed, jax.random.split(key, T))[0]

    return run


def _actor(unroll, params):
    """The fused unroll and its copy to the host, as an actor makes it."""
    return lambda carry, key: jax.device_get(unroll(params.params, params.obs_stats, carry, key)[2])


def env_and_fused_actor(sizes: list[int], seconds: float) -> list[dict]:
    config = load_config(CONFIG)
    s = setup(config)
    params = s.init_state(jax.random.PRNGKey(0))
    rows = []
    for n in sizes:
        env = DrivingVectorEnv(n, **dict(config.env.kwargs))
        obs, _ = env.reset(seed=0)
        step = env.pure_step()
        gamma = config.learner.gamma
        unroll = jax.jit(fused_unroll_fn(s.policy, step, T, s.action_space, gamma))
        carry = initial_carry(env.packed_state, jnp.asarray(obs), n, len(s.term_names))
        key = jax.random.PRNGKey(1)
        rows.append(
            {
                "num_envs": n,
                "env_sps": _rate(_env_only(step, n), (env.packed_state, key), n * T, seconds),
                "fused_actor_sps": _rate(_actor(unroll, params), (carry, key), n * T, seconds),
            }
        )
        print(f"  {n:>6} envs: env alone {rows[-1]['env_sps']:>12,.0f}  fused actor "
              f"{rows[-1]['fused_actor_sps']:>12,.0f} env steps/s", flush=True)  # fmt: skip
        env.close()
    return rows


def learner(batch_unrolls: list[int], iters: int) -> list[dict]:
    """The preset's update on random batches: samples/s per batch size."""
    config = load_config(CONFIG)
    rows = []
    for k in batch_unrolls:
        over = [f"learner.batch_unrolls={k}", "env.num_envs=128"]
        s = setup(load_config(CONFIG, over))
        state = jax.device_put(s.init_state(jax.random.PRNGKey(0)), s.replicated)
        batch = s.example_batch()
        key = jax.device_put(np.asarray(jax.random.PRNGKey(0)), s.replicated)
        state, m = s.update(state, batch, key)
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(iters):
            state, m = s.update(state, batch, key)
        jax.block_until_ready(m)
        per_update = (time.perf_counter() - start) / iters
        samples = k * 128 * config.rollout.length
        rows.append({"columns": k * 128, "samples_per_s": samples / per_update})
        print(f"  learner, {k * 128:>6} columns: {rows[-1]['samples_per_s']:>12,.0f} samples/s")
    return rows


def time_to_target(fraction: float, minutes: float, overrides: list[str]) -> dict:
    """Seconds from the command's start to an evaluation at ``fraction`` of scripted."""
    config = load_config(CONFIG)
    episodes = config.eval.episodes
    seed = 1_000_000  # the trainer's evaluation seeds for train.seed=0
    scripted = reference_returns(episodes, seed=seed, **dict(config.env.kwargs))["scripted"]
    target = fraction * scripted
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "jaxrl_impala.train", "--config", str(CONFIG), "--set",
            *overrides, f"train.stop_at_eval_return={target}", f"run.dir={tmp}/run",
            "eval.gif=false",
        ]  # fmt: skip
        start = time.time()
        try:
            subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=60 * minutes)
        except subprocess.TimeoutExpired:
            pass
        path = Path(tmp) / "run" / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    evals = [r for r in rows if "eval_return_mean" in r]
    hit = next((r for r in evals if r["eval_return_mean"] >= target), None)
    out = {
        "target_fraction": fraction,
        "scripted": scripted,
        "seconds": hit["wall_time_s"] if hit else None,
        "env_steps": hit["env_steps"] if hit else None,
        "best_fraction": max((r["eval_return_mean"] for r in evals), default=0.0) / scripted,
        "wall_clock_s": time.time() - start,
    }
    print(f"  on device to {fraction:.0%} of scripted: {out['seconds']} s", flush=True)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["num_envs"] for r in result["env"]]
    ax.plot(sizes, [r["env_sps"] / 1e6 for r in result["env"]], "o-", label="env alone")
    ax.plot(sizes, [r["fused_actor_sps"] / 1e6 for r in result["env"]], "o-", label="fused actor")
    for name, style in (("actors", "--"), ("on_device", "-.")):
        sps = result["end_to_end"][name]["sps"]
        ax.axhline(sps / 1e6, linestyle=style, color="k", label=f"{name}, end to end")
    ax.set_xscale("log")
    ax.set_xlabel("envs")
    ax.set_ylabel("million env steps / s")
    ax.set_title(f"DrivingEnv on {result['device']}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short windows (CPU)")
    p.add_argument("--envs", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--batch-unrolls", type=int, nargs="+", default=[8, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="end-to-end window per mode")
    p.add_argument("--on-device-envs", type=int, default=16384, help="envs in on-device mode")
    p.add_argument("--target-minutes", type=float, default=2.0)
    p.add_argument("--json", default="benchmarks/results/accelerator.json")
    p.add_argument("--png", help="the plot (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    if args.quick:
        args.envs, args.batch_unrolls, args.seconds = [64, 256], [2], 8.0
        args.on_device_envs, args.target_minutes = 128, 0.5
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    device = str(jax.devices()[0].device_kind)
    print(f"accelerator benchmark on {device}", flush=True)
    env_rows = env_and_fused_actor(args.envs, 2.0 if args.quick else 5.0)
    learner_rows = learner(args.batch_unrolls, 3 if args.quick else 20)
    k = 8
    on_device = ["train.mode=on_device", f"env.num_envs={args.on_device_envs // k}",
                 f"learner.batch_unrolls={k}"]  # fmt: skip
    actors = ["actors.num=auto", "env.num_envs=128", f"learner.batch_unrolls={k}"]
    e2e = {
        "actors": end_to_end(actors, args.seconds, 5.0),
        "on_device": end_to_end(on_device, args.seconds, 5.0),
    }
    for name, r in e2e.items():
        print(f"  end to end, {name}: {r['sps']:,.0f} env steps/s", flush=True)
    target = time_to_target(0.8, args.target_minutes, on_device)
    result = {
        **header("accelerator", device=device),
        "versions": {"jax": jax.__version__},
        "args": vars(args),
        "device": device,
        "env": env_rows,
        "learner": learner_rows,
        "end_to_end": e2e,
        "time_to_80pct_scripted": target,
    }
    write(result, ROOT / args.json, ROOT / args.png, plot)
    return result


if __name__ == "__main__":
    main()

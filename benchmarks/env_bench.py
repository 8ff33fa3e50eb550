"""Env throughput: DrivingVectorEnv against gymnasium's vectorised CartPole and a SyncVectorEnv.

    taskset -c 0 python benchmarks/env_bench.py            # full run, one core
    python benchmarks/env_bench.py --quick --json /tmp/env_bench.json

Every figure is env steps per second (vector steps/s x num_envs) with random actions generated
before the timed loop, measured after a warm-up (which also absorbs the JIT compile) long enough
for episodes to desynchronise (so autoresets are spread as in a long run). Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import jax
import numpy as np

from jaxrl_impala.envs import DrivingEnv, DrivingVectorEnv


def _time_loop(env, actions: np.ndarray, warmup: int) -> float:
    """Seconds per vector step over ``actions[warmup:]``."""
    env.reset(seed=0)
    for a in actions[:warmup]:
        env.step(a)
    t0 = time.perf_counter()
    for a in actions[warmup:]:
        env.step(a)
    return (time.perf_counter() - t0) / (len(actions) - warmup)


def _actions(space: gym.Space, steps: int, seed: int) -> np.ndarray:
    space.seed(seed)
    return np.stack([space.sample() for _ in range(steps)])


def bench_one(name: str, make, n: int, steps: int, warmup: int) -> dict:
    env = make(n)
    acts = _actions(env.action_space, steps + warmup, seed=n)
    t_compile = time.perf_counter()
    env.reset(seed=0)
    env.step(acts[0])
    t_compile = time.perf_counter() - t_compile
    sec = _time_loop(env, acts, warmup)
    env.close()
    row = {
        "env": name,
        "num_envs": n,
        "ms_per_vector_step": sec * 1e3,
        "env_steps_per_s": n / sec,
        "first_step_s": t_compile,
    }
    print(f"{name:34s} {n:6d} {sec * 1e3:10.3f} {n / sec:14,.0f}", flush=True)
    return row


def measure(sizes: list[int], steps: int, warmup: int) -> list[dict]:
    """One row per (env, size): the vector DrivingEnv, CartPole, a SyncVectorEnv of
    DrivingEnvs, the DrivingEnv step run eagerly, and pixel observations."""
    print(f"{'env':34s} {'envs':>6s} {'ms/step':>10s} {'env steps/s':>14s}")
    rows = []
    for n in sizes:
        rows.append(
            bench_one(
                "DrivingVectorEnv vector",
                lambda n: DrivingVectorEnv(n, obs_mode="vector"),
                n,
                steps,
                warmup,
            )
        )
    for n in sizes:
        rows.append(
            bench_one(
                "CartPole-v1 vector_entry_point",
                lambda n: gym.make_vec(
                    "CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point"
                ),
                n,
                steps,
                warmup,
            )
        )
    for n in [s for s in sizes if s <= 64]:
        rows.append(
            bench_one(
                "SyncVectorEnv(DrivingEnv) vector",
                lambda n: gym.vector.SyncVectorEnv([lambda: DrivingEnv(obs_mode="vector")] * n),
                n,
                max(20, steps // 5),
                100,
            )
        )
    # the same step, not compiled: every jnp op dispatched eagerly (the prototype's "numpy-like"
    # execution); a handful of steps is enough to see the gap
    eager_n = 256 if 256 in sizes else sizes[-1]
    with jax.disable_jit():
        rows.append(
            bench_one(
                "DrivingVectorEnv vector (eager)",
                lambda n: DrivingVectorEnv(n, obs_mode="vector"),
                eager_n,
                3,
                1,
            )
        )
    pix_n = 64
    rows.append(
        bench_one(
            "DrivingVectorEnv pixels 64x64x3",
            lambda n: DrivingVectorEnv(n, obs_mode="pixels"),
            pix_n,
            max(30, steps // 3),
            warmup // 2,
        )
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="benchmarks/results/env_bench.json")
    p.add_argument("--quick", action="store_true", help="few steps, fewer sizes")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    args = p.parse_args()
    sizes = args.sizes or ([1, 64, 256] if args.quick else [1, 16, 64, 256, 1024])
    steps, warmup = (60, 100) if args.quick else (300, 300)
    rows = measure(sizes, steps, warmup)

    by = {(r["env"], r["num_envs"]): r["env_steps_per_s"] for r in rows}
    ratios = {}
    for n in sizes:
        drv = by[("DrivingVectorEnv vector", n)]
        ratios[f"driving/cartpole@{n}"] = drv / by[("CartPole-v1 vector_entry_point", n)]
        if ("DrivingVectorEnv vector (eager)", n) in by:
            ratios[f"jit/eager@{n}"] = drv / by[("DrivingVectorEnv vector (eager)", n)]
        if ("SyncVectorEnv(DrivingEnv) vector", n) in by:
            ratios[f"driving/sync@{n}"] = drv / by[("SyncVectorEnv(DrivingEnv) vector", n)]
    print("\nratios (same run):")
    for k, v in ratios.items():
        print(f"  {k:28s} {v:8.3f}")
    best = (
        max(by[("DrivingVectorEnv vector", n)] for n in sizes if n >= 256)
        if any(n >= 256 for n in sizes)
        else None
    )
    if best is not None:
        verdict = "PASS" if best >= 100_000 else "BELOW"
        print(f"\ntarget >= 100,000 env steps/s with 256+ envs (vector obs): {best:,.0f} {verdict}")
    out = {
        "rows": rows,
        "ratios": ratios,
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "jax": jax.__version__,
        "gymnasium": gym.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "quick": args.quick,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

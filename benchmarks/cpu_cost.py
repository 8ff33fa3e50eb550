"""CPU time per env step of each part of a DrivingEnv run, each part alone in this process.

    python benchmarks/cpu_cost.py [--config configs/driving.yaml] [--json PATH]

Parts: the env alone (one vector env of ``env.num_envs``, fixed random actions), an actor
(``Rollout.unroll``: the policy, sampling and unroll assembly around the same env) and the
learner (the config's jitted update on a batch of its shape). For each: env steps/s, cores
busy (process CPU time over wall time) and CPU microseconds per env step.

For an env with a pure JAX step, also the on-device mode's iteration (the rollout on the
learner's devices, then the update; ``train.mode=on_device``).

What it is for: an end-to-end run must pay actor + learner CPU for every env step, on the
same cores that the ceilings of ``throughput.py`` each have to themselves. So

    end-to-end ~ cores / (actor_us + learner_us)   (on device: cores / on_device_us)  and
    pipeline efficiency ~ that / min(env ceiling, learner ceiling),

an estimate of what this machine can show, whatever the transport does. It is not a
strict bound: a part alone spends CPU in XLA's thread pool that it does not spend when it
shares the cores, so the estimate can come out below what throughput.py measures end to end
for the same config.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from _results import header

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn, n: int, steps_per_call: int) -> dict:
    fn()  # warm-up (compiles)
    t, c = time.perf_counter(), _cpu()
    for _ in range(n):
        fn()
    wall, cpu = time.perf_counter() - t, _cpu() - c
    steps = n * steps_per_call
    return {
        "env_steps_per_s": steps / wall,
        "cores_busy": cpu / wall,
        "cpu_us_per_env_step": cpu / steps * 1e6,
    }


def measure(config_path: str, overrides: list[str]) -> dict:
    import jax
    import numpy as np

    from jaxrl_impala import unroll
    from jaxrl_impala.actor.rollout import Rollout
    from jaxrl_impala.config import load_config
    from jaxrl_impala.train.setup import setup

    config = load_config(config_path, ["train.compile_cache=", *overrides])
    T, B = config.rollout.length, config.env.num_envs
    s = setup(config)
    k = s.sizes["local_batch_unrolls"]
    state = jax.device_put(s.init_state(jax.random.PRNGKey(0)), s.replicated)
    example = unroll.to_frame(s.example_unroll())
    rng = np.random.default_rng(0)
    for name, v in example.items():  # non-degenerate inputs for the update
        if name.startswith("obs") and v.dtype == np.float32:
            example[name] = rng.normal(size=v.shape).astype(np.float32)
    batch = s.put_batch(unroll.batch_from_frame(unroll.concat([example] * k)))
    key = jax.device_put(np.asarray(jax.random.PRNGKey(1)), s.replicated)
    box = [state]

    def learner_step():
        box[0], _ = s.update(box[0], batch, key)
        jax.block_until_ready(box[0])

    out = {"learner": _timed(learner_step, 10, k * B * T)}

    rollout = Rollout(config, actor_id=0)
    host = jax.device_get(box[0])
    rollout.set_params(unroll.params_to_frame(host.params, host.obs_stats))
    out["actor"] = _timed(lambda: rollout.unroll(0), 8, T * B)
    actions = np.stack([s.action_space.sample() for _ in range(B)])
    out["env_only"] = _timed(lambda: rollout.env.step(actions), 10 * T, B)
    on_device = hasattr(rollout.env, "pure_step")
    rollout.env.close()
    if on_device:  # train.mode=on_device: the rollout on the learner's devices, then the update
        from jaxrl_impala.train.on_device import OnDeviceBatches

        batches = OnDeviceBatches(s, lambda: (box[0].params, box[0].obs_stats))

        def on_device_step():
            box[0], _ = s.update(box[0], batches.next(0, lambda: True).batch, key)
            jax.block_until_ready(box[0])

        out["on_device"] = _timed(on_device_step, 5, k * B * T)

    cores = os.cpu_count() or 1
    per_step = out["actor"]["cpu_us_per_env_step"] + out["learner"]["cpu_us_per_env_step"]
    env_ceiling = cores / out["env_only"]["cpu_us_per_env_step"] * 1e6
    out["estimate"] = {
        "cores": cores,
        "end_to_end_env_steps_per_s": cores / per_step * 1e6,
        "env_ceiling_from_cpu_cost": env_ceiling,
        "pipeline_efficiency": (cores / per_step * 1e6)
        / min(env_ceiling, cores / out["learner"]["cpu_us_per_env_step"] * 1e6),
    }
    if on_device:
        on_device_us = out["on_device"]["cpu_us_per_env_step"]
        out["estimate"]["on_device_env_steps_per_s"] = cores / on_device_us * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/driving.yaml")
    p.add_argument("--set", nargs="*", action="extend", default=[], help="config overrides")
    p.add_argument("--json", default="benchmarks/results/cpu_cost.json")
    p.add_argument(
        "--all-cpus",
        action="store_true",
        help="let each part use every CPU (default: all on one CPU, as a training run with "
        "train.pin_cpus runs the learner's compute and each actor; XLA's thread pool then "
        "adds idle spinning, not work, to the CPU time)",
    )
    args = p.parse_args(argv)
    os.chdir(ROOT)
    if not args.all_cpus and hasattr(os, "sched_getaffinity"):
        from jaxrl_impala.runtime.cpus import pin_process

        pin_process({min(os.sched_getaffinity(0))})  # before JAX starts its threads
    out = measure(args.config, args.set)
    print(f"{'part':10s} {'env steps/s':>12} {'cores busy':>11} {'CPU us/step':>12}")
    for part in ("env_only", "actor", "learner", "on_device"):
        if part not in out:
            continue
        r = out[part]
        print(f"{part:10s} {r['env_steps_per_s']:12,.0f} {r['cores_busy']:11.2f} "
              f"{r['cpu_us_per_env_step']:12.1f}")  # fmt: skip
    b = out["estimate"]
    cap, eff = b["end_to_end_env_steps_per_s"], b["pipeline_efficiency"]
    print(f"estimate on {b['cores']} cores: end-to-end ~{cap:,.0f} env steps/s, "
          f"pipeline efficiency ~{eff:.0%}")  # fmt: skip
    result = {**header("cpu_cost"), "args": vars(args), **out}
    path = ROOT / args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end throughput of a DrivingEnv training run against its two ceilings, in one run.

    python benchmarks/throughput.py                 # 1, 2, 4 actors x 32, 64, 128 envs
    python benchmarks/throughput.py --quick --json /tmp/throughput.json    # 2-3 minutes
    python benchmarks/throughput.py --quick --mode on_device                # the on-device mode

For every (``actors.num``, ``env.num_envs``) cell, measured one after another on this machine:

* **end-to-end**: ``python -m jaxrl_impala.train --config configs/driving.yaml`` with that many
  actors and envs, run for ``--seconds`` after its first update, then stopped with SIGTERM;
  steady-state env steps/s (env steps over wall-clock across the logged lines after a
  warm-up), the learner's busy fraction (the share of wall-clock it did not wait for its
  next batch), queue depth and policy lag, all from ``metrics.jsonl``;
* **env ceiling**: the same number of actor processes stepping the same vector env with
  random actions and no policy, the way an actor steps it (one jitted scan per unroll),
  each on a CPU of its own, nothing else running (env steps/s, all actors together);
* **learner ceiling**: the same jitted update on synthetic batches of the same shape, in one
  process, nothing else running, driven as the trainer drives it (one update ahead, params
  copied out after every update); env steps/s it can consume. Measured free to use every
  CPU and laid out as a run lays out its learner (``train.pin_cpus``), the better of the
  two counts (both are in the JSON);
* **machine fraction** = end-to-end / the machine's bound, where the bound is the cores
  over the CPU time one env step costs in actor and learner work (``cpu_cost.py``; in the
  on-device mode, the rollout and the update): how much of what this machine can do a run
  gets, in either mode;
* **pipeline efficiency** (kept for one release) = end-to-end / the lower ceiling. It
  punishes a faster learner: on 2 cores the actors and the learner share the CPU in the
  end-to-end run, so 100% is out of reach by construction.

``--mode on_device`` measures the preset end to end in ``train.mode=on_device`` (the envs
step on the learner's devices; no actors, no transport), and ``--mode actors on_device``
(the default) measures both, side by side in the same run.

The default cell (the one that matches ``configs/driving.yaml``) is measured in ``--rounds``
rounds spread over the run; its round with the median efficiency stands for it. The JSON
has a top-level ``pipeline_efficiency`` for that cell, every cell's figures (the default
cell's rounds too), the machine and versions. A PNG beside the JSON plots the three rates
per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import header, save_figure, write

from jaxrl_impala.runtime.cpus import ACTOR_CPU_ENV, pin_actor_from_env, pin_process, split_cpus

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/driving.yaml"
LAYOUT_ENV = "JAXRL_IMPALA_BENCH_LEARNER_LAYOUT"  # learner_ceiling -> its worker


# --------------------------------------------------------------------------- ceilings
def _env_worker(num_envs: int, seconds: float, seed: int) -> None:
    """One actor-like process: steps DrivingVectorEnv with random actions, as the actor steps
    it (one jitted ``lax.scan`` per unroll of ``rollout.length`` steps, the observations
    copied to the host), but with no policy; prints steps/s."""
    pin_actor_from_env()  # before JAX starts its thread pool, as an actor does
    import jax

    from jaxrl_impala.actor.envs import make_vector_env
    from jaxrl_impala.config import load_config

    config = load_config(ROOT / CONFIG, [f"env.num_envs={num_envs}"])
    env = make_vector_env(config, num_envs)
    env.reset(seed=seed)
    space, T, step = env.single_action_space, config.rollout.length, env.pure_step()

    def random_actions(key):
        if hasattr(space, "n"):
            return jax.random.randint(key, (num_envs,), 0, int(space.n))
        return jax.random.uniform(key, (num_envs, *space.shape), minval=-1.0, maxval=1.0)

    @jax.jit
    def unroll(packed, key):
        def body(packed, k):
            packed, obs, *_ = step(packed, random_actions(k))
            return packed, obs

        return jax.lax.scan(body, packed, jax.random.split(key, T))

    packed, key = env.packed_state, jax.random.PRNGKey(seed)
    for _ in range(3):  # compile and desynchronise episodes
        key, sub = jax.random.split(key)
        packed, obs = unroll(packed, sub)
        jax.device_get(obs)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        key, sub = jax.random.split(key)
        packed, obs = unroll(packed, sub)
        jax.device_get(obs)
        n += 1
    print(json.dumps({"sps": n * T * num_envs / (time.perf_counter() - t0)}), flush=True)


def env_ceiling(actors: int, num_envs: int, seconds: float) -> float:
    """Env steps/s of ``actors`` processes together, each on a CPU of its own (round robin
    over every CPU: their best layout alone)."""
    cpus = sorted(os.sched_getaffinity(0))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--_env-worker", str(num_envs), str(seconds), str(i)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", **{ACTOR_CPU_ENV: str(cpus[i % len(cpus)])}),
        )  # fmt: skip
        for i in range(actors)
    ]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["sps"] for p in procs)


def _learner_worker(overrides: list[str], seconds: float) -> None:
    """The trainer's update on random batches of the run's shape, driven as the trainer
    drives it (update v+1 dispatched before v's metrics and params are read); prints env
    steps/s."""
    split = split_cpus() if os.environ.get(LAYOUT_ENV) == "split" else None
    if split:
        pin_process(split[0])  # before JAX starts its threads, as the trainer does
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl_impala import unroll
    from jaxrl_impala.config import load_config
    from jaxrl_impala.runtime.distributed import start_host_copy
    from jaxrl_impala.train.setup import setup

    config = load_config(ROOT / CONFIG, overrides)
    s = setup(config)
    if split:  # then, as the trainer does, free the thread that dispatches the updates
        os.sched_setaffinity(0, split[0] + split[1])
    state = jax.device_put(s.init_state(jax.random.PRNGKey(0)), s.replicated)
    example = unroll.to_frame(s.example_unroll())
    rng = np.random.default_rng(0)
    unrolls = []
    for _ in range(s.sizes["local_batch_unrolls"]):
        u = {k: v.copy() for k, v in example.items()}
        for k, v in u.items():
            if v.dtype.kind == "f" and k not in ("episode_return",):
                u[k] = rng.normal(size=v.shape).astype(v.dtype) * 0.1
        unrolls.append(u)
    batch = unroll.batch_from_frame(unroll.concat(unrolls))
    update, put_batch = s.update, s.put_batch
    snapshot = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
    key = jax.random.PRNGKey(1)
    for _ in range(3):  # compile
        key, sub = jax.random.split(key)
        state, m = update(state, put_batch(batch), sub)
        jax.block_until_ready((m, snapshot((state.params, state.obs_stats))))
    n, t0, in_flight = 0, time.perf_counter(), None
    while time.perf_counter() - t0 < seconds:
        key, sub = jax.random.split(key)
        # the host->device copy of a fresh batch is part of the learner's work
        state, m = update(state, put_batch(batch), sub)
        params = snapshot((state.params, state.obs_stats))  # published every update
        start_host_copy(params)
        if in_flight is not None:
            jax.device_get(in_flight)
        in_flight = (m, params)
        n += 1
    jax.device_get(in_flight)
    dt = time.perf_counter() - t0
    print(json.dumps({"sps": n * s.steps_per_update / dt}), flush=True)


def learner_ceiling(overrides: list[str], seconds: float) -> dict:
    """The update alone, in two layouts: free to use every CPU, and laid out as a training
    run lays out its learner (``train.pin_cpus``: XLA's threads on the learner's CPUs, the
    thread that dispatches the updates free). ``{"all_cpus", "split", "sps"}``, ``sps`` the better
    of the two (XLA's threads help a large update and slow a small one)."""
    out = {}
    for layout in ("all_cpus", "split"):
        env = dict(os.environ, **{LAYOUT_ENV: layout})
        run = subprocess.run(
            [sys.executable, __file__, "--_learner-worker", json.dumps(overrides), str(seconds)],
            capture_output=True, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-2000:])
        out[layout] = json.loads(run.stdout.strip().splitlines()[-1])["sps"]
    return {**out, "sps": max(out.values())}


# --------------------------------------------------------------------------- end to end
def end_to_end(overrides: list[str], seconds: float, warmup: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "jaxrl_impala.train", "--config", CONFIG, "--set",
            f"run.dir={run_dir}", *overrides, "train.total_env_steps=10000000000",
            "train.log_every_s=2", "eval.every_env_steps=0", "eval.episodes=1", "eval.gif=false",
            "train.checkpoint_every_s=100000",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        metrics = run_dir / "metrics.jsonl"
        try:
            t_first = None
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None:
                if t_first is None and metrics.exists() and metrics.stat().st_size > 0:
                    t_first = time.time()
                if t_first is not None and time.time() - t_first >= warmup + seconds:
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"training run failed ({proc.returncode}):\n{err.decode()[-2000:]}")
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    train = [r for r in rows if "sps" in r and "loss" in r]
    t0 = train[0]["wall_time_s"]
    steady = [r for r in train if r["wall_time_s"] - t0 >= warmup] or train[-3:]
    # env steps over wall-clock across the steady window (robust to the logging cadence)
    rate = (steady[-1]["env_steps"] - steady[0]["env_steps"]) / max(
        steady[-1]["wall_time_s"] - steady[0]["wall_time_s"], 1e-9
    )
    return {
        "sps": rate,
        "sps_median_logged": statistics.median(r["sps"] for r in steady),
        "learner_busy_fraction": statistics.median(r["learner_busy_fraction"] for r in steady),
        "queue_depth_mean": statistics.mean(r["queue_depth"] for r in steady),
        "policy_lag_mean": statistics.mean(r["policy_lag_mean"] for r in steady),
        "samples": len(steady),
    }


def machine_bound() -> dict:
    """What this machine can do for the preset, in env steps/s: its cores over the CPU time
    an env step costs in actor and learner work (on device: the rollout and the update),
    each part measured alone by ``cpu_cost.py`` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cpu_cost.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_cost.py"), "--json", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        estimate = json.loads(out.read_text())["estimate"]
    return {
        "actors": estimate["end_to_end_env_steps_per_s"],
        "on_device": estimate.get("on_device_env_steps_per_s"),
        "cores": estimate["cores"],
    }


def _report_machine_fraction(result: dict) -> None:
    """End to end as a fraction of the machine bound, per mode measured (the old pipeline
    efficiency, against the slower ceiling, stays beside it for one release)."""
    bound, fraction = result["machine_bound"], {}
    measured = {"actors": result.get("default_cell", {}).get("end_to_end_sps")}
    measured["on_device"] = result.get("on_device", {}).get("sps")
    for mode, sps in measured.items():
        if sps and bound.get(mode):
            fraction[mode] = sps / bound[mode]
            print(f"{mode}: end to end {sps:,.0f} env steps/s = {fraction[mode]:.0%} of this "
                  f"machine's bound ({bound[mode]:,.0f})")  # fmt: skip
    result["machine_fraction"] = fraction


def measure_cell(actors: int, num_envs: int, seconds: float, warmup: float) -> dict:
    """One round of a cell: end to end, then the two ceilings, one after another."""
    over = [f"actors.num={actors}", f"env.num_envs={num_envs}"]
    e2e = end_to_end(over, seconds, warmup)
    env_c = env_ceiling(actors, num_envs, min(seconds, 15.0))
    learner = learner_ceiling(over, min(seconds, 15.0))
    learn_c = learner["sps"]
    return {
        "end_to_end_sps": e2e["sps"],
        "env_ceiling_sps": env_c,
        "learner_ceiling_sps": learn_c,
        "learner_alone_sps": {k: v for k, v in learner.items() if k != "sps"},
        "pipeline_efficiency": e2e["sps"] / min(env_c, learn_c),
        "bottleneck": "env" if env_c < learn_c else "learner",
        **{k: v for k, v in e2e.items() if k != "sps"},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result.get("cells", [])
    labels = [f"{c['actors']}x{c['num_envs']}" for c in cells]
    x = range(len(cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * (len(cells) + 1)), 4))
    w = 0.27
    ax.bar([i - w for i in x], [c["env_ceiling_sps"] / 1e3 for c in cells], w, label="env only")
    ax.bar(x, [c["learner_ceiling_sps"] / 1e3 for c in cells], w, label="learner only")
    ax.bar([i + w for i in x], [c["end_to_end_sps"] / 1e3 for c in cells], w, label="end to end")
    for i, c in enumerate(cells):
        ax.annotate(f"{c['pipeline_efficiency']:.0%}", (i + w, c["end_to_end_sps"] / 1e3),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    if "on_device" in result:  # one more bar: the preset on device, end to end
        labels.append("on device")
        ax.bar([len(cells) + w], [result["on_device"]["sps"] / 1e3], w, color="C3",
               label="on device, end to end")  # fmt: skip
        x = range(len(labels))
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("actors x envs per actor")
    ax.set_ylabel("thousand env steps / s")
    ax.set_title("DrivingEnv throughput (labels: pipeline efficiency)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the default cell only, short windows")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--num-envs", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--seconds", type=float, default=40.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the default cell, spread over the run; its figures are the round "
        "with the median efficiency (--quick: 1)",
    )
    p.add_argument(
        "--mode",
        nargs="+",
        choices=["actors", "on_device"],
        default=["actors", "on_device"],
        help="train.mode(s) to measure end to end (default: both)",
    )
    p.add_argument("--json", default="benchmarks/results/throughput.json")
    p.add_argument("--png", help="the plot (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    from jaxrl_impala.config import load_config

    default = load_config(ROOT / CONFIG)
    cell0 = (default.actors.num, default.env.num_envs)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 12.0, 8.0, 1
    result = {**header("throughput"), "config": CONFIG, "args": vars(args)}
    if "actors" in args.mode:
        result.update(_actors_mode(args, cell0))
    result["machine_bound"] = machine_bound()
    if "on_device" in args.mode:
        result["on_device"] = end_to_end(["train.mode=on_device"], args.seconds, args.warmup)
        sps = result["on_device"]["sps"]
        actors_sps = result.get("default_cell", {}).get("end_to_end_sps")
        ratio = f" ({sps / actors_sps:.2f}x the actors mode)" if actors_sps else ""
        print(f"on-device end to end (default config): {sps:,.0f} env steps/s{ratio}")
    _report_machine_fraction(result)
    import jax

    result["versions"] = {"jax": jax.__version__}
    write(result, ROOT / args.json, ROOT / args.png, plot)
    return result


def _actors_mode(args, cell0: tuple[int, int]) -> dict:
    """The grid of cells in the actors mode, the default cell in ``args.rounds`` rounds."""
    if args.quick:
        grid = [cell0]
    else:
        grid = [(a, n) for a in args.actors for n in args.num_envs]
        if cell0 not in grid:
            grid.insert(0, cell0)
    # The default cell is measured in --rounds rounds spread over the whole run (first,
    # evenly between the other cells, last): this machine's speed drifts by tens of percent
    # over minutes, and a ratio of runs made minutes apart carries that drift.
    rounds = max(1, args.rounds)
    others = [c for c in grid if c != cell0]
    schedule = [cell0]
    for r in range(1, rounds):
        done = len(schedule) - r  # other cells already in the schedule
        schedule += others[done : round(r * len(others) / (rounds - 1))] + [cell0]
    schedule += others[len(schedule) - rounds :]
    measured: dict[tuple[int, int], list[dict]] = {}
    print(f"{'cell':>8} {'env only':>10} {'learner':>10} {'end-to-end':>11} {'eff':>5} "
          f"{'busy':>5} {'queue':>5} {'lag':>4}", flush=True)  # fmt: skip
    for actors, n in schedule:
        row = measure_cell(actors, n, args.seconds, args.warmup)
        measured.setdefault((actors, n), []).append(row)
        print(
            f"{actors:>3}x{n:<4} {row['env_ceiling_sps']:>10,.0f} "
            f"{row['learner_ceiling_sps']:>10,.0f} {row['end_to_end_sps']:>11,.0f} "
            f"{row['pipeline_efficiency']:>5.0%} {row['learner_busy_fraction']:>5.2f} "
            f"{row['queue_depth_mean']:>5.1f} {row['policy_lag_mean']:>4.1f}",
            flush=True,
        )
    cells = []
    for actors, n in grid:
        rows = measured[(actors, n)]
        cell = {"actors": actors, "num_envs": n, "default": (actors, n) == cell0}
        if len(rows) == 1:
            cell.update(rows[0])
        else:  # the round with the median efficiency stands for the cell
            by_eff = sorted(rows, key=lambda r: r["pipeline_efficiency"])
            cell.update(by_eff[len(by_eff) // 2])
            cell["rounds"] = rows
        cells.append(cell)
    headline = next(c for c in cells if c["default"])
    print(
        f"pipeline efficiency (default config, {cell0[0]} actors x {cell0[1]} envs): "
        f"{headline['pipeline_efficiency']:.0%}"
    )
    return {
        "pipeline_efficiency": headline["pipeline_efficiency"],
        "default_cell": headline,
        "cells": cells,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_env-worker":
        _env_worker(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_learner-worker":
        _learner_worker(json.loads(sys.argv[2]), float(sys.argv[3]))
    else:
        main()

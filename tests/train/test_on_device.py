"""The on-device mode: envs, policy and update on the learner's devices (in-process), its
determinism on 1 and 4 devices, and the CLI wiring (one real run, then a resume)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from inprocess import run_on_device_in_process
from runs import ROOT, final_record, read_metrics, run_train

from jaxrl_impala.actor.envs import env_kwargs
from jaxrl_impala.envs import reference_returns
from jaxrl_impala.train.evaluation import eval_seed

TIME_KEYS = {"wall_time_s", "sps", "learner_busy_fraction", "queue_depth"}
STEPS = ["train.total_env_steps=1024", "eval.every_env_steps=512"]


def _rows(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def test_on_device_runs_train_evaluate_and_are_deterministic(tmp_path):
    code, first, loop = run_on_device_in_process(tmp_path / "a", STEPS)
    assert code == 0
    train = [r for r in first if "loss" in r]
    assert [r["env_steps"] for r in train] == list(range(128, 1025, 128))
    assert all(math.isfinite(r["loss"]) and r["policy_lag_max"] == 0 for r in train)
    assert train[-1]["episodes"] > 0 and "episode_progress" in train[-1]
    evals = [r for r in first if "eval_return_mean" in r]
    assert [r["env_steps"] for r in evals] == [512, 1024]
    # the reference lines: the hand-written drivers on the evaluation's own seeds
    ref = reference_returns(
        loop.config.eval.episodes, seed=eval_seed(loop.config), **env_kwargs(loop.config)
    )
    for r in evals:
        assert r["eval_scripted_return"] == pytest.approx(ref["scripted"], rel=1e-6)
        assert r["eval_random_return"] == pytest.approx(ref["random"], rel=1e-6)
    assert ref["scripted"] > ref["random"]
    assert first[-1]["final"] and int(loop.run.state.step) == 8
    _, second, _ = run_on_device_in_process(tmp_path / "b", STEPS)
    assert _rows(second) == _rows(first)


WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from inprocess import run_on_device_in_process
out = {{}}
for n in (1, 4):
    devices = [f"learner.num_devices={{n}}"]
    _, records, _ = run_on_device_in_process(Path({tmp!r}) / str(n), {steps!r} + devices)
    out[n] = [r for r in records if "loss" in r][:4]
print(json.dumps(out))
"""


def test_one_and_four_devices_agree(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    script = WORKER.format(tests=str(ROOT / "tests"), tmp=str(tmp_path), steps=STEPS)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    assert len(one) == len(four) == 4
    for a, b in zip(one, four, strict=True):
        for key in ("loss", "value_loss", "policy_loss", "entropy", "grad_norm", "episodes"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_the_cli_trains_on_device_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    tiny = [
        "train.mode=on_device",
        "env.num_envs=8",
        "rollout.length=8",
        "network.hidden=[16]",
        "learner.minibatches=2",
        "learner.epochs=1",
        "eval.every_env_steps=0",
        "eval.episodes=2",
        "eval.gif=false",
    ]
    base = ["--config", "configs/driving.yaml", "--set", *tiny, f"run.dir={run_dir}"]
    out = run_train(*base, "train.total_env_steps=2048")
    assert out.returncode == 0, out.stderr[-2000:]
    final = final_record(run_dir)
    assert final["env_steps"] == 2048
    assert not list((run_dir / "logs").glob("actor_*.log")), "an on-device run starts no actor"
    out = run_train("--resume", str(run_dir), "--set", "train.total_env_steps=3072")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    assert final_record(run_dir)["env_steps"] == 3072
    assert any("eval_return_mean" in r for r in read_metrics(run_dir))


def test_an_env_without_a_pure_step_is_a_one_line_error(tmp_path):
    out = run_train(
        "--config", "configs/debug.yaml", "--set", "train.mode=on_device", f"run.dir={tmp_path}"
    )
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: train.mode=on_device needs an env whose step is pure JAX")


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_a_recurrent_policy_on_device_is_exactly_on_policy(tmp_path, core):
    # IMPALA takes one gradient step per batch, so its ratio metrics are those of the params
    # that acted: with the state carried in the scan and re-run by the learner, every rho is 1.
    # (No obs normalisation: the update refreshes the statistics before its loss.)
    recurrent = [f"network.core={core}", "network.core_size=8", "learner.algo=impala"]
    code, records, loop = run_on_device_in_process(
        tmp_path, [*STEPS, *recurrent, "learner.obs_norm=false"]
    )
    assert code == 0 and loop.s.policy.core_size > 0
    train = [r for r in records if "loss" in r]
    assert len(train) == 8 and train[-1]["episodes"] > 0  # episodes ended: states were reset
    for r in train:
        assert r["rho_max"] == pytest.approx(1.0, abs=1e-5)
        assert r["rho_mean"] == pytest.approx(1.0, abs=1e-6)
    assert [r for r in records if "eval_return_mean" in r]  # greedy, stateful evaluation ran


def test_on_device_the_scripted_controller_teaches_from_the_collected_states(tmp_path):
    # learner.teacher_coef on device: the collect step fills the teacher's actions in the
    # compiled scan (the actors' fused unroll, whose rows tests/actor/test_rollout.py checks
    # against the controller) and the update's distillation term reads them.
    code, records, _ = run_on_device_in_process(tmp_path, [*STEPS, "learner.teacher_coef=0.5"])
    train = [r for r in records if "loss" in r]
    assert code == 0 and len(train) == 8
    assert all(r["teacher_weight"] == pytest.approx(0.5) for r in train)
    assert all(math.isfinite(r["teacher_loss"]) for r in train)

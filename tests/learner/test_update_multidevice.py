"""The sharded update on 1, 2 and 4 (forced CPU) devices: same params, no batch all-gather,
and deterministic training runs that write the same metrics on 1 and 4 devices.

JAX reads ``XLA_FLAGS`` once, at start-up, so the multi-device parts run in subprocesses
with ``--xla_force_host_platform_device_count=4`` (this file is also the worker script).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBUG = str(ROOT / "configs" / "debug.yaml")
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
# Wall-clock quantities differ run to run; every other numeric key must match.
TIME_KEYS = {"wall_time_s", "sps", "learner_busy_fraction", "queue_depth"}
T, N, UPDATES = 4, 16, 4
# Each algorithm, APPO with the running return normaliser and APPO and PPO with PopArt (their
# statistics are compared too), recurrent cores (APPO with an LSTM and a burn-in, PPO with a
# GRU), and APPO with an LSTM, a burn-in and a teacher's distillation term on its schedule.
VARIANTS = [
    "appo",
    "ppo",
    "impala",
    "appo+running",
    "appo+popart",
    "ppo+popart",
    "appo+lstm",
    "ppo+gru",
    "appo+lstm+teacher",
]
CORE_SIZE = 4


def four_device_env() -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS=FOUR_DEVICES, JAX_PLATFORMS="cpu")


# --------------------------------------------------------------------------- the worker
def _random_batch(rng: np.random.Generator, core_size: int = 0, teacher: bool = False) -> dict:
    """A CartPole-like batch: 3-d obs, 2 actions, some episode ends and truncations (and a
    recurrent state at step 0 given ``core_size``, a teacher's actions given ``teacher``)."""
    actions = rng.integers(0, 2, (T, N)).astype(np.int32)
    logits = rng.normal(size=(T, N, 2)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    truncated = rng.random((T, N)) < 0.1
    core = {"initial_core": rng.normal(size=(1, N, core_size)).astype(np.float32)}
    taught = {"teacher_actions": rng.integers(0, 2, (T, N)).astype(np.int32)}
    return {
        **(core if core_size else {}),
        **(taught if teacher else {}),
        "obs": rng.normal(size=(T + 1, N, 3)).astype(np.float32),
        "actions": actions,
        "behaviour_logp": np.take_along_axis(logp, actions[..., None], -1)[..., 0],
        "behaviour_dist": logits,
        "rewards": (actions == 1).astype(np.float32) + rng.normal(size=(T, N)).astype(np.float32),
        "terminated": rng.random((T, N)) < 0.1,
        "truncated": truncated,
        "truncation_value": np.where(truncated, rng.normal(size=(T, N)), 0).astype(np.float32),
        "discounted_return": rng.normal(3.0, 2.0, (T, N)).astype(np.float32),
    }


def worker() -> dict:
    """Runs in a 4-device subprocess; prints JSON: final params per algo and device count,
    the compiled update's collectives, and the error for a batch that doesn't split."""
    import gymnasium as gym
    import jax

    from jaxrl_impala.config import ConfigError, load_config
    from jaxrl_impala.learner import init_train_state, make_mesh, make_optimizer, make_update
    from jaxrl_impala.networks import make_policy

    assert jax.device_count() == 4, jax.devices()
    obs_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    act_space = gym.spaces.Discrete(2)
    out: dict = {"params": {}, "collectives": {}}
    for variant in VARIANTS:
        algo, _, extra = variant.partition("+")
        extra, _, teacher = extra.partition("+")
        core = extra if extra in ("lstm", "gru") else "none"
        config = load_config(
            None,
            [
                f"learner.algo={algo}",
                f"learner.return_norm={extra if extra in ('running', 'popart') else 'none'}",
                f"network.core={core}",
                f"network.core_size={CORE_SIZE}",
                f"network.burn_in={1 if core == 'lstm' else 0}",
                f"env.num_envs={N // 2}",
                "learner.batch_unrolls=2",
                "learner.minibatches=2",
                "learner.epochs=2",
                "learner.lr=0.003",
                "network.hidden=[8]",
                f"rollout.length={T}",
                "learner.obs_norm=true",
                f"learner.teacher_coef={0.5 if teacher else 0.0}",
                "learner.teacher_schedule=linear",
                f"train.total_env_steps={8 * T * N}",  # the weight halves over UPDATES
            ],
        )
        policy = make_policy(obs_space, act_space, config.network, obs_norm=True)
        optimizer = make_optimizer(config, 100)
        out["params"][variant] = {}
        for devices in (1, 2, 4):
            update, put_batch, replicated = make_update(
                policy, optimizer, config, make_mesh(devices)
            )
            key = jax.random.PRNGKey(0)
            state = init_train_state(policy, obs_space, optimizer, key, config.learner.return_norm)
            state = jax.device_put(state, replicated)
            rng = np.random.default_rng(0)
            for i in range(UPDATES):
                batch = put_batch(_random_batch(rng, policy.core_size, bool(teacher)))
                if i == 0 and devices == 4:
                    hlo = update.lower(state, batch, jax.random.PRNGKey(i)).compile().as_text()
                    out["collectives"][variant] = {
                        op: hlo.count(f" {op}(")
                        for op in ("all-gather", "all-to-all", "all-reduce", "collective-permute")
                    }
                state, _ = update(state, batch, jax.random.PRNGKey(i))
            leaves = jax.tree.leaves(
                jax.device_get((state.params, state.obs_stats, state.return_stats))
            )
            out["params"][variant][devices] = [np.asarray(x).ravel().tolist() for x in leaves]
    bad = load_config(None, ["env.num_envs=6", "learner.batch_unrolls=2", "learner.minibatches=2"])
    try:
        make_update(policy, make_optimizer(bad, 1), bad, make_mesh(4))
        out["bad_batch_error"] = None
    except ConfigError as e:
        out["bad_batch_error"] = str(e)
    return out


# --------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def worker_result() -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker"],
        cwd=ROOT,
        env=four_device_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_gives_the_same_params_on_1_2_and_4_devices(worker_result, variant):
    runs = worker_result["params"][variant]
    for devices in ("2", "4"):
        for a, b in zip(runs[devices], runs["1"], strict=True):
            # Only the order of the float sums differs between device counts.
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{devices} devices")


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_update_never_gathers_the_batch(worker_result, variant):
    """Minibatches are cut inside each device's columns: gradients are all-reduced, but no
    all-gather / all-to-all moves the batch between devices."""
    ops = worker_result["collectives"][variant]
    assert ops["all-reduce"] > 0
    assert ops["all-gather"] == ops["all-to-all"] == ops["collective-permute"] == 0, ops


def test_batch_that_does_not_split_over_devices_is_a_clear_error(worker_result):
    message = worker_result["bad_batch_error"]
    assert message and "does not split over 4 devices" in message
    for key in ("env.num_envs", "learner.batch_unrolls", "learner.minibatches"):
        assert key in message


def test_stratified_permutation_is_a_shuffle_within_blocks():
    import jax

    from jaxrl_impala.learner import stratified_permutation

    cols = np.asarray(stratified_permutation(jax.random.PRNGKey(3), 24, 4))
    assert cols.shape == (4, 6)
    assert sorted(cols.ravel().tolist()) == list(range(24))  # every column once per epoch
    # minibatch j takes one column from each block of 4 neighbours, blocks in order
    np.testing.assert_array_equal(cols // 4, np.tile(np.arange(6), (4, 1)))
    other = np.asarray(stratified_permutation(jax.random.PRNGKey(4), 24, 4))
    assert not np.array_equal(cols, other)


def _train(run_dir: Path, devices: int) -> list[dict]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrl_impala.train",
            "--config",
            DEBUG,
            "--set",
            f"run.dir={run_dir}",
            "train.deterministic=true",
            "train.total_env_steps=1024",
            f"learner.num_devices={devices}",
        ],
        cwd=ROOT,
        env=four_device_env(),  # the learner sees 4 devices; train.py drops it for actors
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_deterministic_runs_write_the_same_metrics_on_1_and_4_devices(tmp_path):
    one, four = _train(tmp_path / "one", 1), _train(tmp_path / "four", 4)
    assert len(one) == len(four) >= 5
    for a, b in zip(one, four, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - TIME_KEYS:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


if __name__ == "__main__" and "--worker" in sys.argv:
    print(json.dumps(worker()))

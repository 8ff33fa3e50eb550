"""Recurrent policies (``network.core: lstm | gru``), aimed at the bug classes of recurrent
actor-learners: log-probs that disagree between actor and learner (rho never 1 on-policy),
states reset a step late, the state stored after the unroll instead of before it, and the
truncation bootstrap computed from the wrong state.

The rho check runs in a subprocess that sees 4 forced CPU devices (this file is also the
worker script): JAX reads ``XLA_FLAGS`` once, at start-up.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_impala.actor.rollout import Rollout
from jaxrl_impala.algorithms import burn_in, core_inputs
from jaxrl_impala.config import ConfigError, load_config
from jaxrl_impala.networks import make_policy
from jaxrl_impala.unroll import batch_from_frame, concat, params_to_frame

ROOT = Path(__file__).resolve().parents[1]
CORES = ["lstm", "gru"]


def random_params(rollout: Rollout, seed: int, scale: float = 0.5) -> dict:
    """Random weights (so the state matters and actions differ env to env), unit obs stats."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda t: rng.normal(0.0, scale, t.shape).astype(t.dtype), rollout.params_template
    )
    stats = jax.tree.map(lambda t: np.ones(t.shape, t.dtype), rollout.stats_template)
    stats = stats.replace(mean=jax.tree.map(np.zeros_like, stats.mean))
    return params_to_frame(params, stats)


# --------------------------------------------------------------------------- a counter env
class Counter(gym.Env):
    """obs = (steps into the episode / 10, a per-episode constant); reward = the action.
    Each episode lasts a random 2..9 steps: one of 6 or more is truncated by the time limit
    (6), a shorter one terminates. Deterministic given the seed."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(2, 10))
        self.tag = float(self.np_random.uniform(-1, 1))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t / 10.0, self.tag], np.float32)

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= self.length, False, {}


def counter_rollout(core: str, B: int = 6, T: int = 8, overrides=()) -> Rollout:
    config = load_config(
        None,
        [
            f"env.num_envs={B}",
            f"rollout.length={T}",
            "network.hidden=[8]",
            f"network.core={core}",
            "network.core_size=8",
            *overrides,
        ],
    )
    env = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.TimeLimit(Counter(), 6)] * B,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rollout = Rollout(config, actor_id=0, env=env, fused=False)
    rollout.set_params(random_params(rollout, seed=1))
    return rollout


_JITTED: dict = {}


def jitted(policy):
    """``(step, apply_core)`` of ``policy``, jitted once per policy (eager flax calls of a
    scanned cell retrace on every call)."""
    if id(policy) not in _JITTED:
        _JITTED[id(policy)] = (policy, jax.jit(policy.step), jax.jit(policy.apply_core))
    return _JITTED[id(policy)][1:]


def learner_view(rollout: Rollout, frame: dict):
    """What the learner computes from one unroll: (dist, values [T+1, B], core after every
    step [T+1, B, C] before any reset), running the core step by step as the learner's scan
    does, from ``initial_core`` with ``core_inputs``'s resets."""
    _, apply_core = jitted(rollout.policy)
    batch = batch_from_frame(frame)
    inputs = core_inputs(jax.tree.map(jnp.asarray, batch))
    core, resets = inputs["initial_core"][0], inputs["resets"]
    dist, values, *_ = apply_core(rollout.params, rollout.stats, batch["obs"], core, resets)
    cores = []
    for t in range(batch["obs"].shape[0]):
        *_, core = apply_core(
            rollout.params, rollout.stats, batch["obs"][t : t + 1], core, resets[t : t + 1]
        )
        cores.append(core)
    return dist, values, jnp.stack(cores)


# --------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize("core", CORES)
def test_the_state_is_zero_at_the_step_after_an_episode_ends_not_a_step_later(core):
    rollout = counter_rollout(core)
    policy, params, stats = rollout.policy, rollout.params, rollout.stats
    step, _ = jitted(policy)
    checked = 0
    for i in range(3):
        frame, _ = rollout.unroll(policy_version=i)
        done = frame["terminated"] | frame["truncated"]
        _, values, cores = learner_view(rollout, frame)
        for t, b in zip(*np.nonzero(done[:-1]), strict=True):
            obs = frame["obs"][t + 1, b : b + 1]
            fresh = step(params, stats, obs, policy.initial_core(1))
            late = step(params, stats, obs, cores[t, b : b + 1])
            action = frame["actions"][t + 1, b : b + 1]
            # The actor acted at t + 1 from a zero state ...
            want = float(fresh[0].log_prob(action)[0])
            assert frame["behaviour_logp"][t + 1, b] == pytest.approx(want, abs=1e-5)
            # ... and a state carried one step too far would have given another value.
            assert abs(float(late[1][0]) - float(fresh[1][0])) > 1e-4
            # The learner resets at t + 1 too.
            assert float(values[t + 1, b]) == pytest.approx(float(fresh[1][0]), abs=1e-5)
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("core", CORES)
def test_initial_core_is_the_state_before_the_first_step(core):
    rollout = counter_rollout(core)
    first, _ = rollout.unroll(policy_version=0)
    second, _ = rollout.unroll(policy_version=1)
    np.testing.assert_array_equal(first["initial_core"], 0.0)  # a run starts from zeros
    # Run the core over the first unroll's T steps: the state it ends in (zeroed where the
    # last step ended an episode) is the second unroll's initial state.
    _, _, cores = learner_view(rollout, first)
    T = first["rewards"].shape[0]
    done = first["terminated"][T - 1] | first["truncated"][T - 1]
    want = np.where(done[:, None], 0.0, np.asarray(cores[T - 1]))
    assert np.abs(want).max() > 0.01  # a carried state, not zeros
    np.testing.assert_allclose(second["initial_core"][0], want, atol=1e-5)
    # Not the state after the second unroll's own steps.
    _, _, after = learner_view(rollout, second)
    assert np.abs(np.asarray(after[T - 1]) - second["initial_core"][0]).max() > 1e-3


@pytest.mark.parametrize("core", CORES)
def test_a_time_limit_bootstrap_uses_the_state_the_episode_reached(core):
    rollout = counter_rollout(core)
    policy, params, stats = rollout.policy, rollout.params, rollout.stats
    step, _ = jitted(policy)
    checked = 0
    for i in range(4):
        frame, _ = rollout.unroll(policy_version=i)
        cut = frame["truncated"] & ~frame["terminated"]
        _, _, cores = learner_view(rollout, frame)
        for t, b in zip(*np.nonzero(cut), strict=True):
            # The counter's final observation of a truncated episode: step 6, same tag.
            final = np.array([[0.6, frame["obs"][t, b, 1]]], np.float32)
            reached = step(params, stats, final, cores[t, b : b + 1])[1][0]
            zero = step(params, stats, final, policy.initial_core(1))[1][0]
            assert frame["truncation_value"][t, b] == pytest.approx(float(reached), abs=1e-5)
            assert abs(float(reached) - float(zero)) > 1e-4  # the state mattered
            checked += 1
    assert checked >= 3


def test_burn_in_warms_the_state_and_cuts_the_steps():
    rollout = counter_rollout("lstm")
    frame, _ = rollout.unroll(policy_version=0)
    frame, _ = rollout.unroll(policy_version=1)
    batch = jax.tree.map(jnp.asarray, batch_from_frame(frame))
    data = {"obs": batch["obs"], "actions": batch["actions"], **core_inputs(batch)}
    out = burn_in(rollout.policy, rollout.params, rollout.stats, data, 3)
    _, _, cores = learner_view(rollout, frame)
    np.testing.assert_allclose(out["initial_core"][0], cores[2], atol=1e-5)
    np.testing.assert_array_equal(out["obs"], batch["obs"][3:])
    np.testing.assert_array_equal(out["actions"], batch["actions"][3:])
    np.testing.assert_array_equal(out["resets"], data["resets"][3:])
    # The steps after it see what the whole unroll would: same values from step 3 on.
    _, values, _ = learner_view(rollout, frame)
    core = out["initial_core"][0]
    _, v, _ = rollout.policy.apply(rollout.params, rollout.stats, out["obs"], core, out["resets"])
    np.testing.assert_allclose(v, values[3:], atol=1e-5)


def test_recurrent_config_errors():
    with pytest.raises(ConfigError, match="network.core"):
        load_config(None, ["network.core=rnn"])
    with pytest.raises(ConfigError, match="network.burn_in=8"):
        load_config(None, ["network.core=lstm", "rollout.length=8", "network.burn_in=8"])
    with pytest.raises(ConfigError, match="set network.core"):
        load_config(None, ["network.burn_in=2"])
    with pytest.raises(ConfigError, match="repeats"):
        load_config(None, ["env.obs_indices=[0, 0]"])


def test_the_core_state_has_the_documented_width():
    obs, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    width = {}
    for core in ("none", "lstm", "gru"):
        for shared in (True, False):
            config = load_config(
                None,
                [f"network.core={core}", "network.core_size=5", f"network.shared_torso={shared}"],
            )
            policy = make_policy(obs, act, config.network, obs_norm=False)
            params = policy.init(jax.random.PRNGKey(0), obs)
            out = policy.step(params, None, jnp.zeros((4, 3)), policy.initial_core(4))
            width[core, shared] = 0 if out[3] is None else out[3].shape[1]
            assert policy.core_size == width[core, shared]
    assert width == {
        ("none", True): 0,
        ("none", False): 0,
        ("lstm", True): 10,  # (c, h)
        ("lstm", False): 20,  # one core per torso
        ("gru", True): 5,
        ("gru", False): 10,
    }


# --------------------------------------------------------------------------- rho == 1
def _rho_worker() -> dict:
    """In a 4-device process: unrolls of both actor paths on DrivingEnv (episodes of at most
    24 steps: terminations, truncations and autoresets inside them), the learner's log-probs
    of them on 1 and 4 devices, and the largest |log rho|."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxrl_impala.algorithms import _heads
    from jaxrl_impala.learner import make_mesh

    assert jax.device_count() == 4, jax.devices()
    out = {}
    for core in CORES:
        config = load_config(
            "configs/driving.yaml",
            [
                "env.num_envs=16",
                "env.max_episode_steps=24",
                "rollout.length=8",
                "network.hidden=[16]",
                f"network.core={core}",
                "network.core_size=16",
            ],
        )
        for path in ("fused", "stepwise"):
            rollout = Rollout(config, actor_id=0, fused=path == "fused")
            # weights under which some episodes crash (terminate) before the time limit
            rollout.set_params(random_params(rollout, seed={"lstm": 3, "gru": 7}[core], scale=1.0))
            frames = [rollout.unroll(policy_version=i)[0] for i in range(4)]
            rollout.env.close()
            batch = batch_from_frame(concat(frames))  # [T(+1), 64]: 4 unrolls side by side
            terms = {
                "terminated": int(batch["terminated"].sum()),
                "truncated": int((batch["truncated"] & ~batch["terminated"]).sum()),
                "nonzero_initial_core": int((np.abs(batch["initial_core"]) > 0).any(-1).sum()),
            }
            for devices in (1, 4):
                mesh = make_mesh(devices)
                columns = NamedSharding(mesh, P(None, "data"))
                replicated = NamedSharding(mesh, P())

                def log_rhos(params, stats, batch, policy=rollout.policy):
                    data = {"obs": batch["obs"], **core_inputs(batch)}
                    head, _, _ = _heads(policy, params, stats, data)
                    return head.log_prob(batch["actions"]) - batch["behaviour_logp"]

                fn = jax.jit(log_rhos, in_shardings=(replicated, replicated, columns))
                rhos = fn(rollout.params, rollout.stats, jax.device_put(batch, columns))
                out[f"{core}/{path}/{devices}"] = {
                    "max_abs_log_rho": float(np.abs(np.asarray(rhos)).max()),
                    "shards": len(rhos.sharding.device_set),
                    **terms,
                }
    return out


@pytest.fixture(scope="module")
def rho_result() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, __file__, "--rho-worker"],
        cwd=ROOT,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("path", ["fused", "stepwise"])
@pytest.mark.parametrize("core", CORES)
def test_rho_is_exactly_one_at_zero_policy_lag(rho_result, core, path, devices):
    r = rho_result[f"{core}/{path}/{devices}"]
    assert r["shards"] == devices
    # The unrolls hold episode ends of both kinds, and carried (non-zero) initial states.
    assert r["terminated"] > 0 and r["truncated"] > 0 and r["nonzero_initial_core"] > 0, r
    assert r["max_abs_log_rho"] < 1e-5, r


if __name__ == "__main__" and "--rho-worker" in sys.argv:
    print(json.dumps(_rho_worker()))

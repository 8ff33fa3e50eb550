"""FrameStack against a slow per-env history kept by hand, across same-step autoresets."""

from collections import deque

import gymnasium as gym
import numpy as np
import pytest

from jaxrl_impala.actor.envs import make_vector_env
from jaxrl_impala.config import ConfigError, load_config
from jaxrl_impala.envs.wrappers import FrameStack, final_observations


def _vec(n):
    return gym.make_vec(
        "CartPole-v1",
        num_envs=n,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


@pytest.mark.parametrize("k", [2, 3])
def test_frame_stack_matches_a_per_env_history_across_autoresets(k):
    n, steps = 4, 300
    plain, stacked = _vec(n), FrameStack(_vec(n), k)
    assert stacked.single_observation_space.shape == (4 * k,)
    o_plain, _ = plain.reset(seed=7)
    o_stack, _ = stacked.reset(seed=7)
    hist = [deque([o_plain[i]] * k, maxlen=k) for i in range(n)]
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(steps):
        a = rng.integers(0, 2, n)
        o_plain, _, term, trunc, info_p = plain.step(a)
        o_stack, _, term_s, trunc_s, info_s = stacked.step(a)
        np.testing.assert_array_equal(term, term_s)
        done = term | trunc
        final = final_observations(info_p, o_plain, done)
        for i in range(n):
            if done[i]:
                ended = np.concatenate([*list(hist[i])[1:], final[i]])
                np.testing.assert_array_equal(info_s["final_obs"][i], ended)
                hist[i] = deque([o_plain[i]] * k, maxlen=k)  # the new episode
                ends += 1
            else:
                hist[i].append(o_plain[i])
            np.testing.assert_array_equal(o_stack[i], np.concatenate(list(hist[i])))
    assert ends >= 10  # autoresets were exercised


def test_frame_stack_from_config_and_its_errors():
    config = load_config(None, ["env.id=CartPole-v1", "env.frame_stack=3"])
    env = make_vector_env(config, 2)
    assert env.single_observation_space.shape == (12,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 12)
    np.testing.assert_array_equal(obs[:, :4], obs[:, 8:])  # a fresh stack repeats frame 0
    env.close()
    bad = load_config(None, ["env.frame_stack=2", "env.kwargs={obs_mode: dict}", "env.num_envs=2"])
    with pytest.raises(ConfigError, match="env.frame_stack=2: frame stacking needs Box"):
        make_vector_env(bad, 2)
    with pytest.raises(ConfigError, match="env.frame_stack"):
        load_config(None, ["env.frame_stack=0"])


def test_obs_indices_keep_the_chosen_entries_final_observations_too():
    plain = _vec(4)
    cut = make_vector_env(load_config(None, ["env.id=CartPole-v1", "env.obs_indices=[2, 0]"]), 4)
    assert cut.single_observation_space.shape == (2,)
    np.testing.assert_array_equal(
        cut.single_observation_space.high, plain.single_observation_space.high[[2, 0]]
    )
    a, _ = plain.reset(seed=3)
    b, _ = cut.reset(seed=3)
    np.testing.assert_array_equal(b, a[:, [2, 0]])
    ended = 0
    rng = np.random.default_rng(0)
    for _ in range(100):
        actions = rng.integers(0, 2, 4)
        a, _, term, trunc, info_a = plain.step(actions)
        b, _, _, _, info_b = cut.step(actions)
        np.testing.assert_array_equal(b, a[:, [2, 0]])
        done = term | trunc
        if done.any():
            ended += 1
            want = final_observations(info_a, a, done)[:, [2, 0]]
            np.testing.assert_array_equal(final_observations(info_b, b, done), want)
    assert ended > 0
    plain.close()
    cut.close()


def test_obs_indices_keep_drivingenv_pure_step():
    import jax

    config = load_config("configs/driving.yaml", ["env.obs_indices=[0, 5, 9]"])
    env = make_vector_env(config, 2)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (2, 3) and hasattr(env, "pure_step")
    inner = env.env
    packed = env.packed_state
    step = jax.jit(env.pure_step())
    _, pure_obs, *_ = step(packed, np.zeros((2, 3), np.float32))
    full, *_ = inner.step(np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(pure_obs, full[:, [0, 5, 9]], rtol=1e-6)
    env.close()
    # an env without a pure step: a wrapped one does not get one either
    cartpole = make_vector_env(load_config(None, ["env.id=CartPole-v1", "env.obs_indices=[0]"]), 1)
    assert not hasattr(cartpole, "pure_step")
    cartpole.close()


def test_bad_obs_indices_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"env.obs_indices=\[7\].*out of range.*size 4"):
        make_vector_env(load_config(None, ["env.id=CartPole-v1", "env.obs_indices=[7]"]), 1)
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config(None, ["env.obs_indices=[-1]"])

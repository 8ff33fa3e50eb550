"""Networks: shapes for every observation / action kind, running observation statistics."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_impala.config import NetworkConfig
from jaxrl_impala.networks import (
    init_obs_stats,
    make_policy,
    map_value_head,
    normalize_obs,
    sample_obs,
    update_obs_stats,
)

VEC = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
PIX = gym.spaces.Box(0, 255, (16, 16, 2), np.uint8)
ACTIONS = [
    gym.spaces.Discrete(3),
    gym.spaces.Box(-1, 1, (2,), np.float32),
    gym.spaces.MultiDiscrete([2, 3]),
]


@pytest.mark.parametrize(
    "obs_space",
    [VEC, PIX, gym.spaces.Dict({"pixels": PIX, "vector": VEC})],
    ids=["vector", "pixels", "dict"],
)
@pytest.mark.parametrize("action_space", ACTIONS, ids=["discrete", "box", "multidiscrete"])
def test_policy_shapes(obs_space, action_space):
    policy = make_policy(obs_space, action_space, NetworkConfig(hidden=(8,)), obs_norm=True)
    params = policy.init(jax.random.PRNGKey(0), obs_space)
    stats = init_obs_stats(obs_space)
    obs = sample_obs(obs_space, (3, 4))  # [T, B, ...]
    dist, value, dist_params = policy.apply(params, stats, obs)
    assert value.shape == (3, 4)
    a = dist.sample(jax.random.PRNGKey(1))
    assert a.shape[:2] == (3, 4)
    assert dist.log_prob(a).shape == (3, 4)
    assert np.isfinite(np.asarray(dist.entropy())).all()
    if isinstance(action_space, gym.spaces.Box):
        # a state-independent log-std parameter, initialised from the config
        np.testing.assert_allclose(dist.log_std, -0.5)


def test_shared_torso_has_fewer_params():
    count = lambda shared: sum(  # noqa: E731
        x.size
        for x in jax.tree.leaves(
            make_policy(
                VEC, ACTIONS[0], NetworkConfig(hidden=(8,), shared_torso=shared), True
            ).net.init(jax.random.PRNGKey(0), sample_obs(VEC))
        )
    )
    assert count(True) < count(False)


def test_running_obs_stats_match_numpy():
    rng = np.random.default_rng(0)
    stats = init_obs_stats(VEC)
    chunks = [rng.normal(3.0, 2.0, (4, 6, 5)).astype(np.float32) for _ in range(3)]
    for c in chunks:
        stats = update_obs_stats(stats, jnp.asarray(c))
    all_obs = np.concatenate([c.reshape(-1, 5) for c in chunks])
    np.testing.assert_allclose(stats.mean, all_obs.mean(0), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(stats.var, all_obs.var(0), rtol=1e-3, atol=1e-3)
    normed = np.asarray(normalize_obs(stats, jnp.asarray(all_obs)))
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-2)
    np.testing.assert_allclose(normed.std(0), 1.0, atol=1e-2)


def test_pixel_leaves_are_not_normalised():
    space = gym.spaces.Dict({"pixels": PIX, "vector": VEC})
    stats = init_obs_stats(space)
    obs = {"pixels": jnp.full((2, 16, 16, 2), 200, jnp.uint8), "vector": jnp.ones((2, 5)) * 7}
    stats = update_obs_stats(stats, obs)
    out = normalize_obs(stats, obs)
    assert out["pixels"].dtype == jnp.uint8 and int(out["pixels"][0, 0, 0, 0]) == 200


@pytest.mark.parametrize(
    "net", [{}, {"shared_torso": True}, {"core": "gru", "core_size": 4}], ids=str
)
def test_map_value_head_reaches_the_value_and_nothing_else(net):
    """PopArt rescales the value head through `map_value_head`: a zero kernel and a bias of
    5 make every value 5, and the policy's outputs do not move."""
    policy = make_policy(VEC, ACTIONS[1], NetworkConfig(hidden=(8,), **net), obs_norm=False)
    params = policy.init(jax.random.PRNGKey(0), VEC)
    obs = sample_obs(VEC, (3, 4))
    core = policy.initial_core(4)
    resets = jnp.zeros((3, 4), bool) if core is not None else None
    dist, value, dist_params = policy.apply(params, None, obs, core, resets)
    mapped = map_value_head(params, lambda w, b: (jnp.zeros_like(w), b + 5.0))
    _, value2, dist_params2 = policy.apply(mapped, None, obs, core, resets)
    assert not np.allclose(value, 5.0)
    np.testing.assert_allclose(value2, 5.0)
    np.testing.assert_array_equal(dist_params2, dist_params)


def test_layer_norm_normalises_each_torso_layer():
    """``network.layer_norm``: every torso layer gets a LayerNorm, and at init (zero biases)
    the torso no longer sees the observation's scale; without it, it does."""
    outs = {}
    for ln in (False, True):
        policy = make_policy(VEC, ACTIONS[0], NetworkConfig(hidden=(8, 8), layer_norm=ln), False)
        params = policy.init(jax.random.PRNGKey(0), VEC)
        torso = params["params"]["torso_pi"]
        assert sorted(k for k in torso if k.startswith("LayerNorm")) == (
            ["LayerNorm_0", "LayerNorm_1"] if ln else []
        )
        obs = sample_obs(VEC, (4,)) + jnp.arange(5.0)
        _, value, dist_params = policy.apply(params, None, obs)
        _, value_big, dist_params_big = policy.apply(params, None, 100.0 * obs)
        outs[ln] = np.allclose(dist_params, dist_params_big, atol=1e-5)
    assert outs == {False: False, True: True}

"""The compiled update: truncation bootstrapping, and that each algo learns a bandit."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiles import backend_compiles

from jaxrl_impala.algorithms import prepare_rewards
from jaxrl_impala.config import load_config
from jaxrl_impala.learner import (
    init_train_state,
    make_mesh,
    make_optimizer,
    make_update,
    train_state_shapes,
)
from jaxrl_impala.networks import make_policy, policy_step_fn

OBS = gym.spaces.Box(-1, 1, (3,), np.float32)
ACT = gym.spaces.Discrete(2)
T, N = 4, 8


def test_prepare_folds_truncation_bootstrap_and_cuts_traces():
    lc = load_config(None, ["learner.gamma=0.9", "learner.reward_scale=2.0"]).learner
    batch = {
        "rewards": jnp.array([[1.0, 1.0], [1.0, 1.0]]),
        "terminated": jnp.array([[True, False], [False, False]]),
        "truncated": jnp.array([[False, True], [True, True]]),  # [0,0]: both flags
        "truncation_value": jnp.array([[5.0, 10.0], [20.0, 0.0]]),
    }
    rewards, discounts = prepare_rewards(batch, lc)
    # terminated wins over truncated: no bootstrap; truncated: r*2 + 0.9 * V(final obs)
    np.testing.assert_allclose(rewards, [[2.0, 2.0 + 9.0], [2.0 + 18.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(discounts, 0.0)  # every step here ends an episode


def bandit_batch(rng, policy, state):
    """One-step episodes: action 1 pays 1, action 0 pays 0. Actions from the current policy."""
    obs = rng.uniform(-1, 1, (T + 1, N, 3)).astype(np.float32)
    step = policy_step_fn(policy)
    action, logp, dist, _ = step(
        state.params, state.obs_stats, obs[:T], jax.random.PRNGKey(int(rng.integers(1 << 30)))
    )
    action = np.asarray(action)
    return {
        "obs": obs,
        "actions": action,
        "behaviour_logp": np.asarray(logp),
        "behaviour_dist": np.asarray(dist),
        "rewards": (action == 1).astype(np.float32),
        "terminated": np.ones((T, N), bool),
        "truncated": np.zeros((T, N), bool),
        "truncation_value": np.zeros((T, N), np.float32),
    }


def bandit_learner(overrides: list[str]):
    """(policy, state, update, put_batch) for the bandit: 8 envs, one unroll of T steps,
    2 minibatches, a tiny network; ``overrides`` set the rest."""
    base = ["env.num_envs=8", "learner.batch_unrolls=1", "learner.minibatches=2"]
    config = load_config(None, [*base, "network.hidden=[8]", f"rollout.length={T}", *overrides])
    policy = make_policy(OBS, ACT, config.network, obs_norm=config.learner.obs_norm)
    optimizer = make_optimizer(config, 100)
    state = init_train_state(policy, OBS, optimizer, jax.random.PRNGKey(0))
    update, put_batch, replicated = make_update(policy, optimizer, config, make_mesh(1))
    return policy, jax.device_put(state, replicated), update, put_batch


@pytest.mark.parametrize("algo", ["appo", "impala", "ppo"])
def test_every_algo_learns_a_bandit(algo):
    policy, state, update, put_batch = bandit_learner(
        [f"learner.algo={algo}", "learner.epochs=2", "learner.lr=0.01", "learner.obs_norm=false"]
    )
    rng = np.random.default_rng(0)

    def p_good():
        obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
        dist, _, _ = policy.apply(state.params, None, obs)
        return float(jnp.exp(dist.log_prob(jnp.ones(64, jnp.int32))).mean())

    before = p_good()
    for i in range(40):
        state, metrics = update(
            state, put_batch(bandit_batch(rng, policy, state)), jax.random.PRNGKey(i)
        )
    after = p_good()
    assert 0.3 < before < 0.7
    assert after > 0.9, (before, after)
    assert int(state.step) == 40
    for name in ("loss", "entropy", "grad_norm", "kl_behaviour", "explained_variance"):
        assert np.isfinite(float(metrics[name])), name


def test_a_nonfinite_update_leaves_the_state_as_it_was():
    """Updates 2 and 3 get NaN rewards: params, optimiser and normaliser state are kept (bit
    for bit), the step still advances and ``nonfinite`` says so."""
    policy, state, update, put_batch = bandit_learner(["learner.epochs=1"])

    def poisoned(rng, state):
        batch = bandit_batch(rng, policy, state)
        return {**batch, "rewards": np.full_like(batch["rewards"], np.nan)}

    rng = np.random.default_rng(0)
    host = lambda s: jax.tree.map(np.asarray, jax.device_get(s))  # noqa: E731

    state, m = update(state, put_batch(bandit_batch(rng, policy, state)), jax.random.PRNGKey(1))
    assert float(m["nonfinite"]) == 0.0 and np.isfinite(float(m["loss"]))
    good = host(state)
    for i in (2, 3):
        state, m = update(state, put_batch(poisoned(rng, state)), jax.random.PRNGKey(i))
        assert float(m["nonfinite"]) == 1.0 and not np.isfinite(float(m["loss"]))
        now = host(state)
        assert int(now.step) == i
        for a, b in zip(
            jax.tree.leaves((good.params, good.opt_state, good.obs_stats)),
            jax.tree.leaves((now.params, now.opt_state, now.obs_stats)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_the_update_compiled_from_the_state_shapes_serves_the_real_state():
    """The trainer compiles the update before the params exist, from `train_state_shapes`;
    the first call with the real state must find that executable, not compile again."""
    base = ["env.num_envs=8", "learner.batch_unrolls=1", "learner.minibatches=2"]
    config = load_config(None, [*base, "network.hidden=[8]", f"rollout.length={T}"])
    policy = make_policy(OBS, ACT, config.network, obs_norm=config.learner.obs_norm)
    optimizer = make_optimizer(config, 100)
    update, put_batch, replicated = make_update(policy, optimizer, config, make_mesh(1))
    shapes = train_state_shapes(policy, OBS, optimizer, replicated)
    key = jax.device_put(np.asarray(jax.random.PRNGKey(1)), replicated)
    state = init_train_state(policy, OBS, optimizer, jax.random.PRNGKey(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    batch = put_batch(bandit_batch(np.random.default_rng(0), policy, state))
    update.lower(shapes, batch, key).compile()

    with backend_compiles() as compiled:
        state, metrics = update(jax.device_put(state, replicated), batch, key)
        jax.block_until_ready(metrics)
    assert compiled == [], compiled
    assert int(state.step) == 1

"""The compiled update: truncation bootstrapping and V-trace targets against the numpy
reference, the non-finite guard, and that each algo learns a bandit."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from compiles import backend_compiles

from jaxrl_impala import vtrace
from jaxrl_impala.algorithms import prepare_rewards, teacher_loss
from jaxrl_impala.config import load_config
from jaxrl_impala.core.distributions import DiagGaussian
from jaxrl_impala.learner import (
    init_train_state,
    make_mesh,
    make_optimizer,
    make_update,
    train_state_shapes,
)
from jaxrl_impala.networks import VALUE_HEAD, make_policy, policy_step_fn

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


def test_prepare_reads_the_truncation_value_only_where_an_episode_was_truncated():
    """NaN * 0 is NaN: a truncation value that is NaN (or inf) where it is not read must not
    reach the rewards."""
    lc = load_config(None, ["learner.gamma=0.5"]).learner
    batch = {
        "rewards": jnp.ones((2, 3)),
        "terminated": jnp.array([[False, True, True], [False, False, False]]),
        "truncated": jnp.array([[False, False, True], [True, False, False]]),
        "truncation_value": jnp.array([[jnp.nan, jnp.inf, jnp.nan], [4.0, -jnp.inf, jnp.nan]]),
    }
    rewards, discounts = prepare_rewards(batch, lc)
    np.testing.assert_allclose(rewards, [[1.0, 1.0, 1.0], [1.0 + 0.5 * 4.0, 1.0, 1.0]])
    np.testing.assert_allclose(discounts, [[0.5, 0.0, 0.0], [0.0, 0.5, 0.5]])


def episode_data(rng, length: int, width: int):
    """Raw unroll fields with every kind of step: episode ends (terminated), time limits
    (truncated, with the final observation's value), both flags at once, and NaN truncation
    values wherever none may be read."""
    u = rng.random((length, width))
    terminated = u < 0.2
    truncated = (u > 0.8) | (u < 0.07)  # u < 0.07: both flags
    assert (terminated & truncated).any() and (truncated & ~terminated).any()
    assert terminated.any() and (~terminated & ~truncated).sum() > length * width // 2
    tv = np.where(truncated, rng.normal(0.0, 3.0, (length, width)), np.nan)
    return {
        "rewards": rng.normal(size=(length, width)).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "truncation_value": tv.astype(np.float32),
    }


@pytest.mark.parametrize(
    "overrides, thresholds",
    [
        ([], (1.0, 1.0, 1.0, 0.95)),
        (
            ["learner.lambda_=0.8", "learner.clip_rho_threshold=1.5",
             "learner.clip_c_threshold=0.9", "learner.clip_pg_rho_threshold=null"],
            (1.5, 0.9, None, 0.8),
        ),
    ],
)  # fmt: skip
def test_the_learners_vtrace_targets_match_the_reference_at_ends_and_truncations(
    overrides, thresholds
):
    """The learner's data path (`prepare_rewards`, then `vtrace` with the config's
    thresholds) against a reference that reads the raw terminated / truncated flags."""
    lc = load_config(None, ["learner.gamma=0.9", "learner.reward_scale=2.0", *overrides]).learner
    rng = np.random.default_rng(1)
    length, width = 9, 16
    data = episode_data(rng, length, width)
    log_rhos = rng.normal(0.0, 1.0, (length, width)).astype(np.float32)  # both sides of 1
    values = rng.normal(size=(length, width)).astype(np.float32)
    bootstrap = rng.normal(size=width).astype(np.float32)

    rewards, discounts = prepare_rewards(jax.tree.map(jnp.asarray, data), lc)
    got = vtrace(
        log_rhos,
        discounts,
        rewards,
        values,
        bootstrap,
        clip_rho_threshold=lc.clip_rho_threshold,
        clip_c_threshold=lc.clip_c_threshold,
        clip_pg_rho_threshold=lc.clip_pg_rho_threshold,
        lambda_=lc.lambda_,
    )
    rho_bar, c_bar, pg_rho_bar, lambda_ = thresholds
    vs, pg = ref.vtrace_episodes(
        log_rhos, 2.0 * data["rewards"], data["terminated"], data["truncated"],
        data["truncation_value"], values, bootstrap, 0.9,
        clip_rho_threshold=rho_bar, clip_c_threshold=c_bar,
        clip_pg_rho_threshold=pg_rho_bar, lambda_=lambda_,
    )  # fmt: skip
    np.testing.assert_allclose(got.vs, vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.pg_advantages, pg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", ["impala", "appo"])
def test_one_update_trains_on_the_reference_vtrace_targets(algo):
    """One compiled update (one minibatch, one epoch: its losses are those of the params it
    starts from) on 7-step data with episode ends and truncations: its value and policy
    losses equal those computed from the numpy reference's targets."""
    length = 7
    policy, state, update, put_batch = bandit_learner(
        [f"learner.algo={algo}", f"rollout.length={length}", "learner.obs_norm=false",
         "learner.gamma=0.9", "learner.reward_scale=2.0", "learner.lambda_=0.9",
         "learner.clip_rho_threshold=1.5", "learner.epochs=1", "learner.minibatches=1"]
    )  # fmt: skip
    rng = np.random.default_rng(2)
    # Params away from the init, so the values are O(1) and the bootstraps matter.
    params = jax.tree.map(
        lambda x: x + rng.normal(0.0, 0.5, x.shape).astype(x.dtype), jax.device_get(state.params)
    )
    state = state.replace(params=jax.device_put(params))
    obs = rng.uniform(-1, 1, (length + 1, N, 3)).astype(np.float32)
    actions = rng.integers(0, 2, (length, N)).astype(np.int32)
    dist, values, _ = policy.apply(params, None, obs)
    logp = np.asarray(jax.tree.map(lambda x: x[:-1], dist).log_prob(actions), np.float64)
    values = np.asarray(values, np.float64)
    behaviour_logp = (logp - rng.normal(0.0, 0.8, logp.shape)).astype(np.float32)
    data = episode_data(rng, length, N)
    batch = {
        "obs": obs,
        "actions": actions,
        "behaviour_logp": behaviour_logp,
        "behaviour_dist": rng.normal(size=(length, N, 2)).astype(np.float32),
        **data,
    }
    state, metrics = update(state, put_batch(batch), jax.random.PRNGKey(0))
    assert float(metrics["nonfinite"]) == 0.0

    log_rhos = logp - behaviour_logp
    vs, pg = ref.vtrace_episodes(
        log_rhos, 2.0 * data["rewards"], data["terminated"], data["truncated"],
        data["truncation_value"], values[:-1], values[-1], 0.9,
        clip_rho_threshold=1.5, lambda_=0.9,
    )  # fmt: skip
    assert float(metrics["value_loss"]) == pytest.approx(
        0.5 * np.mean((values[:-1] - vs) ** 2), rel=1e-4
    )
    if algo == "impala":
        want = -np.mean(pg * logp)
    else:  # the clipped surrogate on standardised advantages
        adv = (pg - pg.mean()) / (pg.std() + 1e-8)
        ratio = np.exp(log_rhos)
        want = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    assert float(metrics["policy_loss"]) == pytest.approx(want, rel=1e-4, abs=1e-6)


def bandit_batch(rng, policy, state):
    """One-step episodes: action 1 pays 1, action 0 pays 0. Actions from the current policy."""
    obs = rng.uniform(-1, 1, (T + 1, N, 3)).astype(np.float32)
    step = policy_step_fn(policy)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    action, logp, dist, _, _ = step(state.params, state.obs_stats, obs[:T], None, key)
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
    key = jax.random.PRNGKey(0)
    state = init_train_state(policy, OBS, optimizer, key, config.learner.return_norm)
    update, put_batch, replicated = make_update(policy, optimizer, config, make_mesh(1))
    return policy, jax.device_put(state, replicated), update, put_batch


def test_running_return_norm_trains_as_on_rewards_divided_by_the_reference_std():
    """``learner.return_norm=running``: its moments are gymnasium's ``RunningMeanStd`` fed the
    discounted returns step by step (as ``NormalizeReward`` does), and the update equals a
    plain one on rewards divided by that std (after the batch is folded in)."""
    from gymnasium.wrappers.utils import RunningMeanStd

    algo = ["learner.algo=impala", "learner.obs_norm=false", "learner.reward_scale=2.0"]
    policy, normed, update_n, put_n = bandit_learner([*algo, "learner.return_norm=running"])
    _, plain, update_p, put_p = bandit_learner(algo)
    assert plain.return_stats is None
    reference = RunningMeanStd(shape=())
    rng = np.random.default_rng(5)
    for i in range(3):
        batch = bandit_batch(rng, policy, normed)
        batch["rewards"] = rng.normal(1.0, 3.0, (T, N)).astype(np.float32)
        batch["discounted_return"] = rng.normal(5.0 * i, 4.0, (T, N)).astype(np.float32)
        for row in batch["discounted_return"]:  # one env step of N envs at a time
            reference.update(row.astype(np.float64))
        scaled = {**batch, "rewards": batch["rewards"] / np.sqrt(reference.var + 1e-8)}
        normed, m = update_n(normed, put_n(batch), jax.random.PRNGKey(i))
        plain, _ = update_p(plain, put_p(scaled), jax.random.PRNGKey(i))
        got = jax.device_get(normed.return_stats)
        np.testing.assert_allclose(got.mean, reference.mean, rtol=1e-5)
        np.testing.assert_allclose(got.var, reference.var, rtol=1e-5)
        np.testing.assert_allclose(got.count, reference.count, rtol=1e-6)
        assert float(m["return_std"]) == pytest.approx(np.sqrt(reference.var), rel=1e-5)
        for a, b in zip(*(jax.tree.leaves(s.params) for s in (normed, plain)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("algo", ["appo", "ppo"])
def test_popart_trains_as_on_targets_normalised_by_the_reference_statistics(algo):
    """``learner.return_norm=popart`` against a numpy reference: each update folds the
    batch's value targets into the statistics (step ``max(beta, 1/k)``), rescales the value
    head to preserve its outputs, and then trains exactly as a plain update of the rescaled
    params on targets normalised by the new statistics (one-step episodes: the targets are
    the rewards, plus the denormalised bootstrap where an episode was truncated).
    Standardised advantages make the policy's side scale-free."""
    gamma, beta = 0.99, 0.4
    algo = [f"learner.algo={algo}", "learner.obs_norm=false", f"learner.gamma={gamma}"]
    policy, normed, update_n, put_n = bandit_learner(
        [*algo, "learner.return_norm=popart", f"learner.popart_beta={beta}"]
    )
    _, plain, update_p, put_p = bandit_learner(algo)
    rng = np.random.default_rng(6)
    mean, second = 0.0, 1.0  # the statistics, in numpy
    for k in range(1, 4):
        batch = bandit_batch(rng, policy, normed)
        batch["rewards"] = rng.normal(6.0 * k, 4.0, (T, N)).astype(np.float32)
        batch["terminated"][:, : N // 2] = False  # half the episodes hit a time limit
        batch["truncated"][:, : N // 2] = True
        batch["truncation_value"] = rng.normal(size=(T, N)).astype(np.float32)  # normalised
        old_mean, old_std = mean, np.sqrt(second - mean**2)
        bootstrap = np.where(batch["truncated"], old_std * batch["truncation_value"] + old_mean, 0)
        targets = batch["rewards"] + gamma * bootstrap
        step = max(beta, 1.0 / k)
        mean = (1 - step) * mean + step * targets.astype(np.float64).mean()
        second = (1 - step) * second + step * np.square(targets.astype(np.float64)).mean()
        std = np.sqrt(second - mean**2)

        before = jax.device_get(normed)
        head = dict(before.params["params"][VALUE_HEAD])
        head["kernel"] = head["kernel"] * old_std / std
        head["bias"] = (old_std * head["bias"] + old_mean - mean) / std
        rescaled = {"params": {**before.params["params"], VALUE_HEAD: head}}
        plain = jax.device_put(
            before.replace(params=rescaled, return_stats=None), plain.step.sharding
        )
        scaled = {
            **batch,
            "rewards": ((targets - mean) / std).astype(np.float32),
            "truncation_value": np.zeros((T, N), np.float32),
        }
        normed, m_n = update_n(normed, put_n(batch), jax.random.PRNGKey(k))
        plain, m_p = update_p(plain, put_p(scaled), jax.random.PRNGKey(k))

        got = jax.device_get(normed.return_stats)
        np.testing.assert_allclose(got.mean, mean, rtol=1e-5)
        np.testing.assert_allclose(got.second, second, rtol=1e-5)
        assert int(got.updates) == k
        assert float(m_n["return_std"]) == pytest.approx(std, rel=1e-4)
        # The value loss is reported in return units: std^2 times the normalised one.
        assert float(m_n["value_loss"]) == pytest.approx(
            std**2 * float(m_p["value_loss"]), rel=1e-3
        )
        for a, b in zip(*(jax.tree.leaves(s.params) for s in (normed, plain)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert std > 3.0 and mean > 10.0  # not vacuous: far from the initial mean 0, std 1


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


def test_a_huge_importance_ratio_does_not_discard_a_finite_update():
    """log rho of about 200 overflows exp in float32. The loss clips rho and stays finite,
    so the update is kept, and the diagnostics report rho capped, not inf."""
    policy, state, update, put_batch = bandit_learner(["learner.algo=impala"])
    rng = np.random.default_rng(0)
    batch = bandit_batch(rng, policy, state)
    batch["behaviour_logp"] = batch["behaviour_logp"].copy()
    batch["behaviour_logp"][1, 3] = -200.0
    before = jax.tree.leaves(jax.device_get(state.params))
    state, m = update(state, put_batch(batch), jax.random.PRNGKey(0))
    assert float(m["nonfinite"]) == 0.0 and np.isfinite(float(m["loss"]))
    assert float(m["rho_max"]) == pytest.approx(np.exp(30.0), rel=1e-5)
    assert np.isfinite(float(m["rho_mean"]))
    after = jax.tree.leaves(jax.device_get(state.params))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


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


@pytest.mark.parametrize("algo", ["appo", "impala", "ppo"])
def test_the_teacher_term_is_the_reference_cross_entropy_on_its_schedule_and_it_teaches(algo):
    """``learner.teacher_coef``: the loss gains ``weight * mean(-log pi(a_teacher|x))`` (the
    cross-entropy from a numpy log-softmax), the weight decays linearly over the run's
    updates (``teacher_schedule: linear``), and a teacher of the action that pays nothing
    outweighs the bandit's reward for the other."""
    total_updates, coef = 400, 10.0
    common = [
        f"learner.algo={algo}",
        "learner.obs_norm=false",
        "learner.epochs=1",  # one step per update: its loss is that of the params it starts at
        "learner.minibatches=1",
        "learner.lr=0.01",
        f"train.total_env_steps={total_updates * T * N}",
    ]
    teacher = [f"learner.teacher_coef={coef}", "learner.teacher_schedule=linear"]
    policy, state, update, put_batch = bandit_learner([*common, *teacher])
    _, plain, update_p, put_p = bandit_learner(common)
    rng = np.random.default_rng(3)
    for k in range(100):
        batch = bandit_batch(rng, policy, state)
        teach = np.zeros((T, N), np.int32)  # action 0: it pays nothing
        dist, _, _ = policy.apply(jax.device_get(state.params), None, batch["obs"][:T])
        logits = np.asarray(dist.logits, np.float64)
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -log_softmax[..., 0].mean()
        weight = coef * (1.0 - k / total_updates)
        before = jax.device_get(state)  # (the update donates the state)
        key = jax.random.PRNGKey(k)
        state, m = update(state, put_batch({**batch, "teacher_actions": teach}), key)
        assert float(m["teacher_weight"]) == pytest.approx(weight, rel=1e-6)
        assert float(m["teacher_loss"]) == pytest.approx(nll, rel=1e-4)
        if k < 2:  # the same update without the teacher, from the same params
            plain = jax.device_put(before, plain.step.sharding)
            _, m_p = update_p(plain, put_p(batch), key)
            got = float(m["loss"]) - float(m_p["loss"])
            assert got == pytest.approx(weight * nll, rel=1e-3)
    obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    dist, _, _ = policy.apply(state.params, None, obs)
    p_teacher = float(jnp.exp(dist.log_prob(jnp.zeros(64, jnp.int32))).mean())
    assert p_teacher > 0.9, p_teacher


def test_the_teacher_terms_on_box_actions_match_numpy():
    """``teacher_loss`` on a Gaussian head (clip mode): ``nll`` is the Gaussian's negative
    log-density of the teacher's action, ``mse`` the squared distance of the clipped mean
    from it, each weighted per step and averaged over ``[T, N]``."""
    rng = np.random.default_rng(4)
    mean = rng.normal(0.0, 1.0, (T, N, 3)).astype(np.float32)  # some beyond the bounds
    log_std = rng.normal(-1.0, 0.3, (T, N, 3)).astype(np.float32)
    head = DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std), (-1.0,) * 3, (1.0,) * 3)
    teacher = rng.uniform(-1, 1, (T, N, 3)).astype(np.float32)
    weight = rng.uniform(0, 2, (T, N)).astype(np.float32)
    mb = {"teacher_actions": jnp.asarray(teacher), "teacher_weight": jnp.asarray(weight)}
    std = np.exp(log_std.astype(np.float64))
    nll = np.sum(0.5 * ((teacher - mean) / std) ** 2 + np.log(std) + 0.5 * np.log(2 * np.pi), -1)
    mse = np.sum((np.clip(mean, -1, 1) - teacher) ** 2, -1)
    for kind, per_step in (("nll", nll), ("mse", mse)):
        loss, m = teacher_loss(head, mb, kind)
        assert float(loss) == pytest.approx(np.mean(weight * per_step), rel=1e-5), kind
        assert float(m["teacher_loss"]) == pytest.approx(np.mean(per_step), rel=1e-5), kind
    assert teacher_loss(head, {}, "nll")[1] == {}  # no teacher in the batch: no term

"""Losses against numpy loops and hand-checked cases."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from numpy_reference import make_inputs

from jaxrl_impala import (
    appo_loss,
    entropy_loss,
    explained_variance,
    impala_pg_loss,
    ppo_loss,
    ppo_policy_loss,
    value_loss,
)


def _random(seed, t=7, b=3):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(-1.0, 0.4, (t, b)).astype(np.float32),  # logp
        rng.normal(-1.0, 0.4, (t, b)).astype(np.float32),  # behaviour_logp
        rng.normal(size=(t, b)).astype(np.float32),  # advantages
    )


def numpy_ppo(logp, behaviour_logp, adv, eps):
    total, clipped = 0.0, 0
    t_len, b_len = adv.shape
    for t in range(t_len):
        for b in range(b_len):
            r = np.exp(float(logp[t, b]) - float(behaviour_logp[t, b]))
            total += min(r * adv[t, b], min(max(r, 1 - eps), 1 + eps) * adv[t, b])
            clipped += abs(r - 1) > eps
    return -total / adv.size, clipped / adv.size


@pytest.mark.parametrize("seed,eps", [(0, 0.2), (1, 0.1), (2, 0.3)])
def test_ppo_loss_matches_loop(seed, eps):
    logp, blogp, adv = _random(seed)
    loss, metrics = ppo_policy_loss(logp, blogp, adv, eps)
    expected, clip_frac = numpy_ppo(logp, blogp, adv, eps)
    assert 0.0 < clip_frac < 1.0  # both branches of the clip are exercised
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], clip_frac, rtol=1e-6)
    np.testing.assert_allclose(ppo_loss(logp, blogp, adv, eps), expected, rtol=1e-5, atol=1e-6)


def test_ppo_hand_checked_and_gradient():
    # ratio = e^{log 1.5} = 1.5, A = 2, eps = 0.2: min(3.0, 1.2 * 2) = 2.4 -> loss -2.4,
    # and the clipped branch is active, so the gradient w.r.t. logp is zero.
    logp = jnp.log(jnp.array([[1.5]]))
    loss = ppo_loss(logp, jnp.zeros((1, 1)), jnp.array([[2.0]]), 0.2)
    np.testing.assert_allclose(loss, -2.4, rtol=1e-6)
    g = jax.grad(lambda lp: ppo_loss(lp, jnp.zeros((1, 1)), jnp.array([[2.0]]), 0.2))(logp)
    np.testing.assert_allclose(g, 0.0)
    # Inside the clip range the gradient is -ratio * A / N = -1.1 * 2.
    logp = jnp.log(jnp.array([[1.1]]))
    g = jax.grad(lambda lp: ppo_loss(lp, jnp.zeros((1, 1)), jnp.array([[2.0]]), 0.2))(logp)
    np.testing.assert_allclose(g, -2.2, rtol=1e-5)


def test_ppo_approx_kl_is_nonnegative_and_zero_on_policy():
    logp, blogp, adv = _random(3)
    _, m = ppo_policy_loss(logp, blogp, adv, 0.2)
    assert m["approx_kl"] > 0
    _, m = ppo_policy_loss(logp, logp, adv, 0.2)
    np.testing.assert_allclose(m["approx_kl"], 0.0, atol=1e-7)


def test_impala_pg_loss():
    logp, _, adv = _random(4)
    loss, _ = impala_pg_loss(logp, adv)
    expected = -sum(adv[t, b] * logp[t, b] for t in range(7) for b in range(3)) / adv.size
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    g = jax.grad(lambda a: impala_pg_loss(jnp.asarray(logp), a)[0])(jnp.asarray(adv))
    np.testing.assert_array_equal(g, 0.0)  # advantages are constants


def test_value_loss_plain_and_clipped():
    rng = np.random.default_rng(5)
    v, target, old = (rng.normal(size=(6, 2)).astype(np.float32) for _ in range(3))
    loss, m = value_loss(v, target)
    np.testing.assert_allclose(loss, 0.5 * np.mean((v - target) ** 2), rtol=1e-5)
    eps = 0.2
    expected = 0.0
    for t in range(6):
        for b in range(2):
            clipped = old[t, b] + min(max(v[t, b] - old[t, b], -eps), eps)
            expected += max((v[t, b] - target[t, b]) ** 2, (clipped - target[t, b]) ** 2)
    loss, _ = value_loss(v, target, behaviour_values=old, clip_eps=eps)
    np.testing.assert_allclose(loss, 0.5 * expected / v.size, rtol=1e-5)
    with pytest.raises(ValueError, match="behaviour_values"):
        value_loss(v, target, clip_eps=eps)


def test_explained_variance():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_allclose(explained_variance(y, y), 1.0, atol=1e-6)
    np.testing.assert_allclose(explained_variance(np.zeros_like(y), y - y.mean()), 0.0, atol=1e-5)
    pred = y + rng.normal(scale=0.5, size=y.shape).astype(np.float32)
    expected = 1 - np.var(y - pred) / np.var(y)
    np.testing.assert_allclose(explained_variance(pred, y), expected, rtol=1e-4)
    assert explained_variance(y, np.ones_like(y)) == 0.0


def test_entropy_loss():
    ent = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    loss, m = entropy_loss(ent)
    np.testing.assert_allclose(loss, -2.5)
    np.testing.assert_allclose(m["entropy"], 2.5)


def test_appo_loss_combines_vtrace_and_ppo():
    x = make_inputs(9)
    rng = np.random.default_rng(9)
    blogp = rng.normal(-1.0, 0.3, x["rewards"].shape).astype(np.float32)
    logp = blogp + x["log_rhos"] * 0.3
    entropy = rng.uniform(0.5, 1.5, x["rewards"].shape).astype(np.float32)
    loss, m = appo_loss(
        logp,
        blogp,
        x["discounts"],
        x["rewards"],
        x["values"],
        x["bootstrap_value"],
        entropy,
        clip_eps=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
    )
    vs, pg = ref.vtrace(
        logp - blogp, x["discounts"], x["rewards"], x["values"], x["bootstrap_value"]
    )
    pg_loss, _ = numpy_ppo(logp, blogp, pg, 0.2)
    v_loss = 0.5 * np.mean((x["values"] - vs) ** 2)
    expected = pg_loss + 0.5 * v_loss - 0.01 * entropy.mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["value_loss"], v_loss, rtol=1e-4)
    np.testing.assert_allclose(m["rho_mean"], np.exp(logp - blogp).mean(), rtol=1e-5)
    for key in ("clip_fraction", "approx_kl", "explained_variance", "entropy", "rho_max"):
        assert np.isfinite(m[key])


def test_appo_gradient_flows_to_logp_and_values_only_through_the_losses():
    x = {k: jnp.asarray(v) for k, v in make_inputs(10).items()}
    blogp = jnp.full_like(x["rewards"], -1.0)
    entropy = jnp.ones_like(x["rewards"])

    def f(logp, values):
        return appo_loss(
            logp, blogp, x["discounts"], x["rewards"], values, x["bootstrap_value"], entropy
        )[0]

    g_logp, g_values = jax.grad(f, argnums=(0, 1))(blogp + 0.05, x["values"])
    assert np.abs(g_logp).sum() > 0 and np.abs(g_values).sum() > 0
    # The value gradient is exactly value_coef * (V - vs) / N: targets are constants.
    vs = ref.vtrace(
        np.full(x["rewards"].shape, 0.05),
        x["discounts"],
        x["rewards"],
        x["values"],
        x["bootstrap_value"],
    )[0]
    np.testing.assert_allclose(
        g_values, 0.5 * (np.asarray(x["values"]) - vs) / vs.size, rtol=1e-4, atol=1e-6
    )

"""GAE and lambda-returns against numpy references."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import given, settings
from numpy_reference import make_inputs

from jaxrl_impala import gae, lambda_returns

_gae_jit = jax.jit(gae)


@pytest.mark.parametrize("seed,lambda_", [(0, 0.95), (1, 1.0), (2, 0.0), (3, 0.5)])
def test_gae_matches_numpy_reference(seed, lambda_):
    x = make_inputs(seed)
    out = _gae_jit(x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], lambda_)
    ref_adv, ref_ret = ref.gae(
        x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], lambda_
    )
    np.testing.assert_allclose(out.advantages, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.returns, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_hand_checked():
    # T=2, B=1, gamma=1, lambda=0.5, V=[0, 0], bootstrap=2, r=[1, 1]:
    #   delta_1 = 1 + 2 - 0 = 3, delta_0 = 1 + 0 - 0 = 1
    #   A_1 = 3, A_0 = 1 + 0.5 * 3 = 2.5
    out = gae(jnp.ones((2, 1)), jnp.ones((2, 1)), jnp.zeros((2, 1)), jnp.array([2.0]), 0.5)
    np.testing.assert_allclose(out.advantages[:, 0], [2.5, 3.0], rtol=1e-6)


def test_gae_lambda_one_is_monte_carlo_minus_value():
    x = make_inputs(5)
    out = _gae_jit(x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], 1.0)
    expected = ref.n_step_return(x["rewards"], x["discounts"], x["bootstrap_value"])
    np.testing.assert_allclose(out.returns, expected, rtol=1e-5, atol=1e-5)


def test_lambda_returns_one_step_and_full():
    x = make_inputs(6)
    values_tp1 = np.concatenate([x["values"][1:], x["bootstrap_value"][None]])
    one_step = lambda_returns(x["discounts"], x["rewards"], values_tp1, 0.0)
    np.testing.assert_allclose(
        one_step, x["rewards"] + x["discounts"] * values_tp1, rtol=1e-5, atol=1e-5
    )
    full = lambda_returns(x["discounts"], x["rewards"], values_tp1, 1.0)
    expected = ref.n_step_return(x["rewards"], x["discounts"], x["bootstrap_value"])
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)


def test_gae_no_gradient():
    x = {k: jnp.asarray(v) for k, v in make_inputs(7).items()}
    grad = jax.grad(
        lambda v: jnp.sum(gae(x["discounts"], x["rewards"], v, x["bootstrap_value"], 0.9)[0])
    )(x["values"])
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 6), b=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_gae_property_shapes_and_dtypes(t, b, seed):
    x = make_inputs(seed, t, b)
    out = gae(x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], 0.9)
    assert out.advantages.shape == (t, b) and out.returns.shape == (t, b)
    assert out.advantages.dtype == jnp.float32
    ref_adv, _ = ref.gae(x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], 0.9)
    np.testing.assert_allclose(out.advantages, ref_adv, rtol=1e-5, atol=1e-5)

"""V-trace against the O(T^2) numpy reference, known identities and properties."""

import itertools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import given, settings
from numpy_reference import make_inputs

from jaxrl_impala import gae, lambda_returns, vtrace

T, B = 9, 4

_vtrace_jit = jax.jit(
    vtrace,
    static_argnames=("clip_rho_threshold", "clip_c_threshold", "clip_pg_rho_threshold"),
)


CLIPS = [
    dict(clip_rho_threshold=1.0, clip_c_threshold=1.0, clip_pg_rho_threshold=1.0),
    dict(clip_rho_threshold=None, clip_c_threshold=None, clip_pg_rho_threshold=None),
    dict(clip_rho_threshold=2.0, clip_c_threshold=0.5, clip_pg_rho_threshold=1.5),
    dict(clip_rho_threshold=0.7, clip_c_threshold=None, clip_pg_rho_threshold=None),
]


@pytest.mark.parametrize(
    "seed,clips,lambda_", list(itertools.product([0, 1], CLIPS, [1.0, 0.9, 0.5]))
)
def test_vtrace_matches_numpy_reference(seed, clips, lambda_):
    x = make_inputs(seed)
    rhos = np.exp(x["log_rhos"])
    # The inputs exercise both sides of the clip thresholds.
    assert (rhos > 2.0).any() and (rhos < 0.5).any()
    assert (x["discounts"] == 0).any()
    vs, pg = _vtrace_jit(**x, **clips, lambda_=lambda_)
    ref_vs, ref_pg = ref.vtrace(**x, **clips, lambda_=lambda_)
    assert vs.dtype == jnp.float32 and pg.dtype == jnp.float32
    np.testing.assert_allclose(vs, ref_vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pg, ref_pg, rtol=1e-5, atol=1e-5)


def test_clipping_changes_the_result():
    # Guards the reference test against thresholds that silently do nothing.
    x = make_inputs(3)
    clipped = _vtrace_jit(**x, **CLIPS[0])
    unclipped = _vtrace_jit(**x, **CLIPS[1])
    assert np.abs(np.asarray(clipped.vs) - np.asarray(unclipped.vs)).max() > 1e-2
    assert np.abs(np.asarray(clipped.pg_advantages - unclipped.pg_advantages)).max() > 1e-2


def test_hand_checked_case():
    # T=2, B=1, on-policy (rho=1), discount 0.5, lambda 1:
    #   V = [1, 2], bootstrap 4, r = [1, 1]
    #   v_1 = r_1 + 0.5 * 4 = 3;   v_0 = r_0 + 0.5 * v_1 = 2.5
    #   pg_0 = r_0 + 0.5 * v_1 - V_0 = 1 + 1.5 - 1 = 1.5;  pg_1 = 1 + 2 - 2 = 1
    out = vtrace(
        jnp.zeros((2, 1)),
        jnp.full((2, 1), 0.5),
        jnp.ones((2, 1)),
        jnp.array([[1.0], [2.0]]),
        jnp.array([4.0]),
    )
    np.testing.assert_allclose(out.vs[:, 0], [2.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(out.pg_advantages[:, 0], [1.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("lambda_", [1.0, 0.8])
def test_on_policy_equals_lambda_returns(lambda_):
    # With pi = mu and no clipping, V-trace is TD(lambda): vs equals the lambda-returns
    # and the GAE returns.
    x = make_inputs(4)
    x["log_rhos"] = np.zeros_like(x["log_rhos"])
    vs = _vtrace_jit(**x, **CLIPS[1], lambda_=lambda_).vs
    values_tp1 = np.concatenate([x["values"][1:], x["bootstrap_value"][None]])
    expected = lambda_returns(x["discounts"], x["rewards"], values_tp1, lambda_)
    gae_returns = gae(x["discounts"], x["rewards"], x["values"], x["bootstrap_value"], lambda_)
    np.testing.assert_allclose(vs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vs, gae_returns.returns, rtol=1e-5, atol=1e-5)


def test_rho_one_lambda_one_is_bootstrapped_n_step_return():
    x = make_inputs(5)
    x["log_rhos"] = np.zeros_like(x["log_rhos"])
    vs = _vtrace_jit(**x).vs
    expected = ref.n_step_return(x["rewards"], x["discounts"], x["bootstrap_value"])
    np.testing.assert_allclose(vs, expected, rtol=1e-5, atol=1e-5)


def test_no_gradient_through_targets():
    x = {k: jnp.asarray(v) for k, v in make_inputs(6).items()}

    def total(values, bootstrap_value, log_rhos, rewards):
        out = vtrace(log_rhos, x["discounts"], rewards, values, bootstrap_value)
        return jnp.sum(out.vs) + jnp.sum(out.pg_advantages)

    grads = jax.grad(total, argnums=(0, 1, 2, 3))(
        x["values"], x["bootstrap_value"], x["log_rhos"], x["rewards"]
    )
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_split_at_episode_boundary_equals_whole():
    # The trace is cut where an episode ends (discount 0): the part before the cut does not
    # depend on what follows, so V-trace on the prefix equals the whole run's prefix.
    x = make_inputs(7, done_prob=0.0)
    cut = 4
    x["discounts"][cut] = 0.0
    whole = _vtrace_jit(**x)
    prefix = {k: v[: cut + 1] for k, v in x.items() if k != "bootstrap_value"}
    head = _vtrace_jit(**prefix, bootstrap_value=np.full((B,), 123.0, np.float32))
    np.testing.assert_allclose(head.vs, whole.vs[: cut + 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        head.pg_advantages, whole.pg_advantages[: cut + 1], rtol=1e-5, atol=1e-5
    )


def test_batched_equals_per_column_and_jit_equals_eager():
    x = make_inputs(8)
    batched = _vtrace_jit(**x)
    eager = vtrace(**{k: jnp.asarray(v) for k, v in x.items()})
    chex.assert_trees_all_close(batched, eager, rtol=1e-6, atol=1e-6)
    for b in range(B):
        column = {k: v[:, b : b + 1] if v.ndim == 2 else v[b : b + 1] for k, v in x.items()}
        one = _vtrace_jit(**column)
        np.testing.assert_allclose(one.vs[:, 0], batched.vs[:, b], rtol=1e-6, atol=1e-6)


def test_vmap_over_an_outer_axis():
    xs = [make_inputs(s) for s in (10, 11)]
    stacked = {k: np.stack([x[k] for x in xs]) for k in xs[0]}
    out = jax.vmap(lambda d: vtrace(**d))(stacked)
    for i, x in enumerate(xs):
        np.testing.assert_allclose(out.vs[i], _vtrace_jit(**x).vs, rtol=1e-6, atol=1e-6)


def test_shape_errors_are_caught():
    x = make_inputs(12)
    x["bootstrap_value"] = x["bootstrap_value"][:-1]
    with pytest.raises(AssertionError):
        vtrace(**x)


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 6),
    b=st.integers(1, 4),
    lambda_=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_shapes_dtypes_and_reference(t, b, lambda_, seed):
    x = make_inputs(seed, t, b)
    out = vtrace(**{k: jnp.asarray(v) for k, v in x.items()}, lambda_=lambda_)
    assert out.vs.shape == (t, b) and out.pg_advantages.shape == (t, b)
    assert out.vs.dtype == jnp.float32 and out.pg_advantages.dtype == jnp.float32
    ref_vs, ref_pg = ref.vtrace(**x, lambda_=lambda_)
    np.testing.assert_allclose(out.vs, ref_vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantages, ref_pg, rtol=1e-5, atol=1e-5)

"""Action distributions against numpy formulas, sampling frequencies and quadrature."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from jaxrl_impala import Categorical, DiagGaussian, MultiCategorical, distribution_for_space

KEY = jax.random.PRNGKey(0)


def test_categorical_log_prob_entropy_kl():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3, 4)).astype(np.float32)  # [T, B, n]
    other = rng.normal(size=(5, 3, 4)).astype(np.float32)
    actions = rng.integers(0, 4, size=(5, 3))
    d, q = Categorical(logits), Categorical(other)
    lp, lq = ref.log_softmax(logits), ref.log_softmax(other)
    expected_lp = np.take_along_axis(lp, actions[..., None], -1)[..., 0]
    np.testing.assert_allclose(d.log_prob(actions), expected_lp, rtol=1e-5)
    np.testing.assert_allclose(d.entropy(), -(np.exp(lp) * lp).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(d.kl(q), (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(d.mode(), logits.argmax(-1))


def test_categorical_sampling_frequencies():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    d = Categorical(jnp.log(jnp.tile(probs, (20000, 1))))
    samples = np.asarray(d.sample(KEY))
    assert samples.dtype == np.int32
    np.testing.assert_allclose(np.bincount(samples, minlength=4) / 20000, probs, atol=0.015)


def test_categorical_grad_is_onehot_minus_softmax():
    logits = jnp.array([0.3, -1.0, 2.0])
    g = jax.grad(lambda z: Categorical(z).log_prob(jnp.array(1)))(logits)
    np.testing.assert_allclose(g, np.eye(3)[1] - jax.nn.softmax(logits), rtol=1e-5)


def test_multicategorical():
    rng = np.random.default_rng(1)
    nvec = (3, 2, 4)
    logits = rng.normal(size=(6, 9)).astype(np.float32)
    actions = np.stack([rng.integers(0, n, 6) for n in nvec], -1)
    d = MultiCategorical(logits, nvec)
    parts = np.split(logits, [3, 5], axis=-1)
    expected = sum(
        np.take_along_axis(ref.log_softmax(p), actions[:, i : i + 1], -1)[:, 0]
        for i, p in enumerate(parts)
    )
    np.testing.assert_allclose(d.log_prob(actions), expected, rtol=1e-5)
    np.testing.assert_allclose(d.entropy(), sum(Categorical(p).entropy() for p in parts), rtol=1e-5)
    s = np.asarray(d.sample(KEY))
    assert s.shape == (6, 3) and (s < np.array(nvec)).all() and (s >= 0).all()
    np.testing.assert_allclose(d.kl(d), 0.0, atol=1e-6)


def test_gaussian_clip_mode_log_prob_kl_and_to_env():
    rng = np.random.default_rng(2)
    mean, log_std = rng.normal(size=(2, 4, 3)).astype(np.float32) * 0.5
    mean2, log_std2 = rng.normal(size=(2, 4, 3)).astype(np.float32) * 0.5
    d = DiagGaussian(mean, log_std, (-1.0,) * 3, (1.0,) * 3)
    raw = np.asarray(d.sample(KEY))
    np.testing.assert_allclose(
        d.log_prob(raw), ref.gaussian_log_prob(raw, mean, log_std), rtol=1e-5
    )
    ent_expected = np.sum(log_std + 0.5 * np.log(2 * np.pi * np.e), -1)
    np.testing.assert_allclose(d.entropy(), ent_expected, rtol=1e-5)
    q = DiagGaussian(mean2, log_std2, (-1.0,) * 3, (1.0,) * 3)
    np.testing.assert_allclose(
        d.kl(q), ref.gaussian_kl(mean, log_std, mean2, log_std2), rtol=1e-4, atol=1e-6
    )
    env_action = np.asarray(d.to_env(raw * 10))
    assert env_action.min() >= -1 and env_action.max() <= 1


def test_gaussian_squash_density_integrates_to_one_and_matches_change_of_variables():
    low, high = (-2.0,), (3.0,)
    d = DiagGaussian(jnp.array([0.4]), jnp.array([-0.3]), low, high, squash=True)
    a = np.linspace(-2.0 + 1e-4, 3.0 - 1e-4, 200001)[:, None]
    density = np.exp(np.asarray(jax.vmap(d.log_prob)(jnp.asarray(a, jnp.float32))))
    np.testing.assert_allclose(np.trapezoid(density, a[:, 0]), 1.0, atol=2e-3)
    # Change of variables by hand at one point: a = low + (tanh(u)+1)/2 (high-low).
    u = 0.7
    a0 = -2.0 + (np.tanh(u) + 1) / 2 * 5.0
    expected = ref.gaussian_log_prob([u], [0.4], [-0.3]) - np.log(2.5 * (1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(d.log_prob(jnp.array([a0])), expected, rtol=1e-4)


@pytest.mark.parametrize(
    "mean, log_std",
    [
        ((0.0, 0.5), (-1.0, -0.5)),  # narrow: nearly the Gaussian's entropy, shifted
        ((2.0, -1.5), (0.5, 0.0)),  # pushed against a bound
        ((0.0, 0.0), (1.5, 2.0)),  # wide: most mass near the bounds
        ((-3.0, 4.0), (-2.0, 1.0)),
    ],
)
def test_squashed_entropy_matches_a_monte_carlo_reference(mean, log_std):
    low, high = (-1.0, 0.0), (1.0, 2.0)
    d = DiagGaussian(jnp.array(mean), jnp.array(log_std), low, high, squash=True)
    want, stderr = ref.squashed_gaussian_entropy_mc(mean, log_std, low, high)
    assert abs(float(d.entropy()) - want) < 4 * stderr + 1e-3, (float(d.entropy()), want)


def test_squashed_entropy_has_a_maximum_where_the_gaussian_entropy_has_none():
    """The bounded action's entropy is at most the uniform's, log(high - low) per dim, so
    an entropy bonus cannot push the actions to the bounds; the Gaussian's grows without
    end as log_std does."""
    low, high = (-1.0, 0.0), (1.0, 2.0)
    ceiling = np.log(2.0) + np.log(2.0)
    grid = jnp.linspace(-6.0, 6.0, 25)
    mean, log_std = (x.ravel() for x in jnp.meshgrid(grid, grid / 2))
    both = jnp.stack([mean, log_std], -1)  # [625, 2]: the same (mean, log_std) in each dim
    squashed = DiagGaussian(both[:, :1].repeat(2, 1), both[:, 1:].repeat(2, 1), low, high, True)
    ent = np.asarray(squashed.entropy())
    assert np.isfinite(ent).all() and ent.max() <= ceiling + 1e-4

    def entropy(m, s, squash):
        d = DiagGaussian(jnp.full(2, m), jnp.full(2, s), low, high, squash)
        return d.entropy()

    d_log_std = jax.jit(jax.grad(entropy, argnums=1), static_argnums=2)
    assert d_log_std(0.0, -2.0, True) > 0 and d_log_std(0.0, 2.0, True) < 0  # a maximum
    assert d_log_std(0.0, 2.0, False) > 0  # the Gaussian's: none
    assert jax.grad(entropy)(1.5, 0.0, True) < 0  # and away from the bounds
    # finite, with finite gradients, however far out the network's outputs go
    for mean, log_std in ((-50.0, -30.0), (0.0, 0.0), (50.0, 30.0), (0.3, np.log(0.7))):
        d = DiagGaussian(jnp.full(2, mean), jnp.full(2, log_std), low, high, True)
        grads = jax.grad(lambda d: d.entropy())(d)
        assert np.isfinite(float(d.entropy()))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_gaussian_squash_samples_in_bounds_and_log_prob_finite():
    d = DiagGaussian(
        jnp.zeros((1000, 2)), jnp.full((1000, 2), 1.5), (-1.0, 0.0), (1.0, 2.0), squash=True
    )
    a = np.asarray(d.sample(KEY))
    assert (a[:, 0] >= -1).all() and (a[:, 0] <= 1).all()
    assert (a[:, 1] >= 0).all() and (a[:, 1] <= 2).all()
    assert np.isfinite(np.asarray(d.log_prob(a))).all()


@pytest.mark.parametrize(
    "space,param_size,action_shape",
    [
        (gym.spaces.Discrete(5), 5, ()),
        (gym.spaces.MultiDiscrete([3, 2]), 5, (2,)),
        (gym.spaces.Box(-1.0, 1.0, (3,)), 6, (3,)),
    ],
)
def test_distribution_for_space_under_jit_vmap_grad(space, param_size, action_shape):
    size, make = distribution_for_space(space)
    assert size == param_size
    params = jax.random.normal(KEY, (4, 2, size))  # [T, B, P]

    @jax.jit
    def f(p, key):
        d = make(p)
        a = d.sample(key)
        return a, d.log_prob(a), d.entropy(), d.kl(make(p * 0.5)), d.mode()

    a, lp, ent, kl, mode = f(params, KEY)
    assert a.shape == (4, 2, *action_shape) and mode.shape == a.shape
    assert lp.shape == ent.shape == kl.shape == (4, 2)
    assert (np.asarray(kl) >= -1e-6).all()
    g = jax.grad(lambda p: jnp.sum(make(p).log_prob(a)))(params)
    assert g.shape == params.shape and np.isfinite(np.asarray(g)).all()
    v = jax.vmap(lambda p: make(p).entropy())(params)
    np.testing.assert_allclose(v, ent, rtol=1e-5)


def test_unsupported_space_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported action space"):
        distribution_for_space(gym.spaces.Box(-1, 1, (2, 2)))

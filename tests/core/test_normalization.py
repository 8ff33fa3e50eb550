"""Return normalisation's statistics: the running moments against gymnasium's own
``RunningMeanStd``, PopArt's against a numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.wrappers.utils import RunningMeanStd

from jaxrl_impala.core.normalization import (
    PopArt,
    accumulate_return,
    init_moments,
    init_popart,
    preserve_outputs,
    scale_rewards,
    update_moments,
    update_popart,
)


def test_batch_moments_equal_gymnasiums_step_by_step_update():
    """Chan et al.'s parallel update is exact: folding a [T, B] batch at once gives what
    ``RunningMeanStd`` gets from its T rows one at a time (as ``NormalizeReward`` feeds it)."""
    rng = np.random.default_rng(0)
    reference, m = RunningMeanStd(shape=()), init_moments()
    for shift in (0.0, 10.0, -3.0):
        x = rng.normal(shift, 1.0 + abs(shift), (6, 5)).astype(np.float32)
        for row in x:
            reference.update(row.astype(np.float64))
        m = jax.jit(update_moments)(m, jnp.asarray(x))
        np.testing.assert_allclose(m.mean, reference.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.var, reference.var, rtol=1e-5)
        np.testing.assert_allclose(m.count, reference.count, rtol=1e-6)
    rewards = rng.normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_allclose(
        scale_rewards(rewards, m), rewards / np.sqrt(reference.var + 1e-8), rtol=1e-5
    )


def test_the_accumulator_restarts_after_every_episode_end():
    """``accumulate_return`` under ``lax.scan`` against the slow loop of ``NormalizeReward``
    (SAME_STEP autoreset): ``R = gamma * R + r``, reset to 0 after a done."""
    rng = np.random.default_rng(1)
    T, B, gamma = 12, 4, 0.9
    rewards = rng.normal(size=(T, B)).astype(np.float32)
    done = rng.random((T, B)) < 0.25
    assert done.any() and (~done).sum() > T * B // 2

    def body(acc, x):
        value, acc = accumulate_return(acc, x[0], x[1], gamma)
        return acc, value

    acc0 = rng.normal(size=B).astype(np.float32)  # carried in from an earlier unroll
    _, got = jax.lax.scan(body, jnp.asarray(acc0), (jnp.asarray(rewards), jnp.asarray(done)))
    want, acc = np.zeros((T, B)), acc0.astype(np.float64)
    for t in range(T):
        for b in range(B):
            acc[b] = acc[b] * gamma + rewards[t, b]
            want[t, b] = acc[b]
            if done[t, b]:
                acc[b] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_popart_statistics_average_then_follow_an_ema():
    """``update_popart`` against a numpy loop: the k-th batch moves both moments by
    ``max(beta, 1 / k)``, so the first batch sets them and the next average them in, and the
    std is ``sqrt(second - mean^2)``."""
    rng = np.random.default_rng(3)
    beta, p = 0.3, init_popart()
    assert float(p.std) == 1.0 and float(p.denormalize(jnp.asarray(2.0))) == 2.0
    mean, second = 0.0, 1.0
    batches = [rng.normal(20.0 * i, 3.0 + i, (4, 5)).astype(np.float32) for i in range(6)]
    for k, x in enumerate(batches, start=1):
        step = max(beta, 1.0 / k)
        mean = (1 - step) * mean + step * np.mean(x.astype(np.float64))
        second = (1 - step) * second + step * np.mean(np.square(x.astype(np.float64)))
        p = jax.jit(update_popart, static_argnums=2)(p, jnp.asarray(x), beta)
        np.testing.assert_allclose(p.mean, mean, rtol=1e-5)
        np.testing.assert_allclose(p.second, second, rtol=1e-5)
        np.testing.assert_allclose(p.std, np.sqrt(second - mean**2), rtol=1e-4)
        assert int(p.updates) == k
        if k == 2:  # 1 / 2 > beta: the plain average of the two batches so far
            both = np.concatenate(batches[:2])
            np.testing.assert_allclose(p.mean, both.mean(), rtol=1e-5)
            np.testing.assert_allclose(p.std, both.std(), rtol=1e-4)
    # Constant targets: the std stops at its floor instead of 0.
    flat = update_popart(init_popart(), jnp.full((3,), 7.0), 0.5)
    assert float(flat.std) == pytest.approx(1e-4, rel=1e-3)


def test_popart_rescaling_preserves_the_unnormalised_outputs():
    """After the statistics move, the rescaled last layer gives every input the same
    unnormalised value as before, while its normalised output changes."""
    rng = np.random.default_rng(4)
    h = rng.normal(size=(32, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 1)).astype(np.float32)
    bias = rng.normal(size=(1,)).astype(np.float32)
    old = PopArt(jnp.asarray(2.0), jnp.asarray(13.0), jnp.asarray(3))  # std 3
    new = PopArt(jnp.asarray(-5.0), jnp.asarray(125.0), jnp.asarray(4))  # std 10
    k2, b2 = preserve_outputs(jnp.asarray(kernel), jnp.asarray(bias), old, new)
    before = 3.0 * (h @ kernel + bias) + 2.0  # numpy: std * n + mean
    after = 10.0 * (h @ np.asarray(k2) + np.asarray(b2)) - 5.0
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(k2), kernel)

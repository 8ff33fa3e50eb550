"""Return normalisation's statistics against gymnasium's own ``RunningMeanStd``."""

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.wrappers.utils import RunningMeanStd

from jaxrl_impala.core.normalization import (
    accumulate_return,
    init_moments,
    scale_rewards,
    update_moments,
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

"""Return normalisation: running statistics of the discounted return, as gymnasium's
``NormalizeReward`` keeps them, and the reward scaling they give.

The statistics are plain arrays, so a caller holds them in its train state, checkpoints them
and replicates them over devices like any other leaf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def accumulate_return(
    acc: jax.Array, rewards: jax.Array, done: jax.Array, gamma: float
) -> tuple[jax.Array, jax.Array]:
    """One step of the discounted return so far, as ``NormalizeReward`` keeps it.

    Args:
      acc: float [B], the discounted return before this step (0 at an episode's start).
      rewards: float [B], this step's rewards.
      done: bool [B], the episode ended at this step (terminated or truncated).
      gamma: discount factor.

    Returns:
      ``(value, next_acc)``: the return including this step ``gamma * acc + rewards`` (what
      the statistics see), and the accumulator for the next step (0 where ``done``: the env
      autoresets in the same step).
    """
    value = gamma * acc + rewards
    return value, jnp.where(done, 0.0, value)


class Moments(NamedTuple):
    """Running mean and variance of a scalar (Chan et al.'s parallel update, as gymnasium's
    ``RunningMeanStd``: mean 0, var 1, count 1e-4 to start)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def init_moments() -> Moments:
    return Moments(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32), jnp.asarray(1e-4))


def update_moments(m: Moments, x: jax.Array) -> Moments:
    """Folds every entry of ``x`` (any shape, e.g. [T, B]) into ``m``."""
    x = x.astype(jnp.float32)
    n = x.size
    batch_mean, batch_var = jnp.mean(x), jnp.var(x)
    total = m.count + n
    delta = batch_mean - m.mean
    mean = m.mean + delta * n / total
    m2 = m.var * m.count + batch_var * n + jnp.square(delta) * m.count * n / total
    return Moments(mean, m2 / total, total)


def scale_rewards(rewards: jax.Array, m: Moments, eps: float = 1e-8) -> jax.Array:
    """``rewards / sqrt(var + eps)``: ``NormalizeReward``'s scaling (no centring)."""
    return rewards / jnp.sqrt(m.var + eps)

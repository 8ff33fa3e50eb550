"""Return normalisation, two ways, each a few plain arrays a caller holds in its train
state, checkpoints and replicates over devices like any other leaf:

* running statistics of the discounted return, as gymnasium's ``NormalizeReward`` keeps
  them, and the reward scaling they give (`Moments`, `scale_rewards`);
* PopArt (van Hasselt et al., 2016, arXiv:1602.07714; Hessel et al., 2019,
  arXiv:1809.04474): the value head learns normalised values, the statistics of the value
  targets give them back their scale, and a change of the statistics rescales the head's last
  layer so that its unnormalised outputs are preserved (`PopArt`, `update_popart`,
  `preserve_outputs`).
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


POPART_MIN_STD, POPART_MAX_STD = 1e-4, 1e6


class PopArt(NamedTuple):
    """PopArt's statistics of the value targets: their first and second moments, and how
    many batches have been folded in. ``std`` and ``mean`` map a normalised value ``n`` to
    ``std * n + mean``."""

    mean: jax.Array
    second: jax.Array  # E[target^2]
    updates: jax.Array

    @property
    def std(self) -> jax.Array:
        """``sqrt(second - mean^2)``, kept within [1e-4, 1e6] (the paper's bounds)."""
        var = self.second - jnp.square(self.mean)
        return jnp.sqrt(jnp.clip(var, POPART_MIN_STD**2, POPART_MAX_STD**2))

    def denormalize(self, normalised: jax.Array) -> jax.Array:
        return self.std * normalised + self.mean


def init_popart() -> PopArt:
    """Mean 0, std 1: the head's outputs are the values until a batch is folded in."""
    zero = jnp.zeros((), jnp.float32)
    return PopArt(zero, jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32))


def update_popart(p: PopArt, targets: jax.Array, beta: float) -> PopArt:
    """Folds one batch of value ``targets`` (any shape, e.g. [T, B]) into ``p``.

    Each moment moves towards the batch's by ``max(beta, 1 / k)`` at the k-th batch: the
    first batch sets the moments, later ones average them in until ``1 / k`` falls below
    ``beta``, then an exponential moving average with step ``beta`` follows the targets as
    the policy improves (no bias from the initial mean 0, std 1)."""
    x = jax.lax.stop_gradient(targets).astype(jnp.float32)
    k = p.updates + 1
    step = jnp.maximum(beta, 1.0 / k.astype(jnp.float32))
    mean = (1.0 - step) * p.mean + step * jnp.mean(x)
    second = (1.0 - step) * p.second + step * jnp.mean(jnp.square(x))
    return PopArt(mean, second, k)


def preserve_outputs(
    kernel: jax.Array, bias: jax.Array, old: PopArt, new: PopArt
) -> tuple[jax.Array, jax.Array]:
    """The value head's last layer after the statistics move from ``old`` to ``new``, such
    that ``new.denormalize(h @ kernel' + bias') == old.denormalize(h @ kernel + bias)`` for
    every input ``h``: ``kernel * s / s'`` and ``(s * bias + m - m') / s'``."""
    ratio = old.std / new.std
    return kernel * ratio, (old.std * bias + old.mean - new.mean) / new.std

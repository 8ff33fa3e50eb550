"""Generalised advantage estimation and lambda-returns, time-major ``[T, B]``."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrl_impala.core.vtrace import reverse_discounted_sum


class GAEReturns(NamedTuple):
    """Outputs of :func:`gae`.

    Attributes:
      advantages: float [T, B] ``A_t``.
      returns: float [T, B] lambda-returns ``A_t + V(x_t)`` (the value targets).
    """

    advantages: jax.Array
    returns: jax.Array


def gae(
    discounts: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    bootstrap_value: jax.Array,
    lambda_: float | jax.Array,
) -> GAEReturns:
    """Generalised advantage estimation (Schulman et al., 2015, arXiv:1506.02438)::

        delta_t = r_t + discount_t * V(x_{t+1}) - V(x_t)
        A_t     = delta_t + discount_t * lambda_ * A_{t+1},   A_T = 0

    ``rewards[t]`` and ``discounts[t]`` belong to the transition ``x_t -> x_{t+1}``; set
    ``discounts[t] = 0`` where the episode terminates. Outputs are targets: no gradient.

    The arrays come in `vtrace`'s order: discounts, rewards, values, bootstrap value.

    Args:
      discounts: float [T, B] ``gamma * (1 - terminated_t)``.
      rewards: float [T, B].
      values: float [T, B] ``V(x_t)``.
      bootstrap_value: float [B] ``V(x_T)``.
      lambda_: scalar or float [T, B].

    Returns:
      A :class:`GAEReturns` of ``advantages`` [T, B] and ``returns`` [T, B].
    """
    chex.assert_rank([rewards, values, bootstrap_value, discounts], [2, 2, 1, 2])
    chex.assert_type([rewards, values, bootstrap_value, discounts], float)
    chex.assert_equal_shape([rewards, values, discounts])
    chex.assert_equal_shape([values[0], bootstrap_value])

    values_tp1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = rewards + discounts * values_tp1 - values
    advantages = reverse_discounted_sum(deltas, discounts * lambda_)
    advantages = jax.lax.stop_gradient(advantages)
    return GAEReturns(advantages=advantages, returns=jax.lax.stop_gradient(advantages + values))


def lambda_returns(
    discounts: jax.Array,
    rewards: jax.Array,
    values_tp1: jax.Array,
    lambda_: float | jax.Array,
) -> jax.Array:
    """TD(lambda) returns (Sutton & Barto, 2018, eq. 12.18), computed backwards::

        G_t = r_t + discount_t * ((1 - lambda_) * V(x_{t+1}) + lambda_ * G_{t+1})

    with ``G_{T-1}`` bootstrapping fully from ``values_tp1[T-1]``. ``lambda_ = 1`` gives the
    discounted n-step return bootstrapped from the last value; ``lambda_ = 0`` the one-step
    TD target. No gradient flows through the result.

    Args:
      discounts: float [T, B].
      rewards: float [T, B].
      values_tp1: float [T, B] ``V(x_{t+1})``.
      lambda_: scalar or float [T, B].

    Returns:
      float [T, B] returns ``G_t``.
    """
    chex.assert_rank([discounts, rewards, values_tp1], 2)
    chex.assert_type([rewards, discounts, values_tp1], float)
    chex.assert_equal_shape([rewards, discounts, values_tp1])

    lambda_ = jnp.broadcast_to(jnp.asarray(lambda_, rewards.dtype), rewards.shape)
    # Written as G_t - V(x_{t+1})-free form: G_t = r_t + d_t (1-l_t) V_{t+1} + d_t l_t G_{t+1},
    # where the last step uses lambda = 0 so that it bootstraps from V(x_T).
    lambda_ = lambda_.at[-1].set(0.0)
    deltas = rewards + discounts * (1.0 - lambda_) * values_tp1
    return jax.lax.stop_gradient(reverse_discounted_sum(deltas, discounts * lambda_))

"""V-trace off-policy targets (Espeholt et al., 2018, arXiv:1802.01561).

All arrays are time-major: ``[T, B]`` with ``T`` the unroll length and ``B`` the batch.
The whole batch goes through ONE reverse ``lax.scan`` whose carry is ``[B]``; this is
cheaper on CPU than ``vmap`` of a per-column scan (see ``benchmarks/core_bench.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

# Measured on CPU (XLA, jax 0.10): unroll=1 is the fastest of 1..128 at [128, 256]; larger
# unrolls bloat the loop body and run 2-8x slower. Kept as a knob for accelerators.
_SCAN_UNROLL = 1


class VTraceReturns(NamedTuple):
    """Outputs of :func:`vtrace`.

    Attributes:
      vs: float [T, B] V-trace value targets ``v_s``.
      pg_advantages: float [T, B] policy-gradient advantages
        ``clip(rho_s) * (r_s + discount_s * v_{s+1} - V(x_s))``.
    """

    vs: jax.Array
    pg_advantages: jax.Array


def _clip_max(x: jax.Array, threshold: float | None) -> jax.Array:
    return x if threshold is None else jnp.minimum(threshold, x)


def reverse_discounted_sum(
    deltas: jax.Array, decays: jax.Array, *, unroll: int = _SCAN_UNROLL
) -> jax.Array:
    """Computes ``acc_t = deltas_t + decays_t * acc_{t+1}`` backwards in time, ``acc_T = 0``.

    The recurrence behind V-trace, GAE and lambda-returns.

    Args:
      deltas: float [T, B].
      decays: float [T, B], the per-step factor applied to the later accumulation.
      unroll: loop unrolling of the scan (speed only; results are identical).

    Returns:
      float [T, B] accumulated sums.
    """
    chex.assert_equal_shape([deltas, decays])

    def step(acc, xs):
        delta_t, decay_t = xs
        acc = delta_t + decay_t * acc
        return acc, acc

    _, out = jax.lax.scan(
        step,
        jnp.zeros_like(deltas[0]),
        (deltas, decays),
        reverse=True,
        unroll=max(1, min(unroll, deltas.shape[0])),
    )
    return out


def vtrace(
    log_rhos: jax.Array,
    discounts: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    bootstrap_value: jax.Array,
    *,
    clip_rho_threshold: float | None = 1.0,
    clip_c_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
    lambda_: float | jax.Array = 1.0,
) -> VTraceReturns:
    """V-trace value targets and policy-gradient advantages.

    Follows the IMPALA paper (Espeholt et al., 2018, arXiv:1802.01561, section 4.1)::

        rho_s   = min(rho_bar, pi(a_s|x_s) / mu(a_s|x_s))
        c_s     = lambda_ * min(c_bar, pi(a_s|x_s) / mu(a_s|x_s))
        delta_s = rho_s * (r_s + discount_s * V(x_{s+1}) - V(x_s))
        v_s     = V(x_s) + delta_s + discount_s * c_s * (v_{s+1} - V(x_{s+1}))
        pg_adv_s = min(rho_pg_bar, pi/mu) * (r_s + discount_s * v_{s+1} - V(x_s))

    with ``v_T = V(x_T) = bootstrap_value``. Indexing as in the paper: ``rewards[t]`` and
    ``discounts[t]`` belong to the transition ``x_t -> x_{t+1}``; an episode that ends at
    step ``t`` has ``discounts[t] = 0`` (no bootstrap across it). Both outputs are targets:
    they carry no gradient.

    Unlike rlax, ``lambda_ < 1`` enters only through ``c_s`` (as in the paper); the
    policy-gradient advantage always bootstraps from ``v_{s+1}``.

    Args:
      log_rhos: float [T, B] ``log pi(a_t|x_t) - log mu(a_t|x_t)``.
      discounts: float [T, B] ``gamma * (1 - terminated_t)``.
      rewards: float [T, B].
      values: float [T, B] ``V(x_t)`` under the current parameters.
      bootstrap_value: float [B] ``V(x_T)``.
      clip_rho_threshold: ``rho_bar``; ``None`` means no clipping.
      clip_c_threshold: ``c_bar``; ``None`` means no clipping.
      clip_pg_rho_threshold: ``rho_bar`` of the policy-gradient advantage; ``None`` means
        no clipping.
      lambda_: scalar or float [T, B] trace-cutting factor.

    Returns:
      A :class:`VTraceReturns` of ``vs`` [T, B] and ``pg_advantages`` [T, B].
    """
    chex.assert_rank([log_rhos, discounts, rewards, values, bootstrap_value], [2, 2, 2, 2, 1])
    chex.assert_type([log_rhos, discounts, rewards, values, bootstrap_value], float)
    chex.assert_equal_shape([log_rhos, discounts, rewards, values])
    chex.assert_equal_shape([values[0], bootstrap_value])

    rhos = jnp.exp(log_rhos)
    clipped_rhos = _clip_max(rhos, clip_rho_threshold)
    cs = lambda_ * _clip_max(rhos, clip_c_threshold)

    values_tp1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)
    vs_minus_v = reverse_discounted_sum(deltas, discounts * cs)
    vs = vs_minus_v + values

    vs_tp1 = jnp.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    clipped_pg_rhos = _clip_max(rhos, clip_pg_rho_threshold)
    pg_advantages = clipped_pg_rhos * (rewards + discounts * vs_tp1 - values)
    return VTraceReturns(
        vs=jax.lax.stop_gradient(vs), pg_advantages=jax.lax.stop_gradient(pg_advantages)
    )

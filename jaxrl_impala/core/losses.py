"""Policy and value losses for IMPALA, PPO and APPO, time-major ``[T, B]``.

Every loss returns ``(scalar, metrics)`` where ``metrics`` is a dict of scalars, except
:func:`ppo_loss`, whose public contract is a bare scalar (it is the first element of
:func:`ppo_policy_loss`). All are to be minimised.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_impala.core.vtrace import vtrace

Metrics = dict[str, jax.Array]

# The diagnostics report rho = exp(log_rho) with log_rho capped here: exp overflows float32
# above about 88.7, and an inf diagnostic says no more than e^30 (~1e13) does.
MAX_LOG_RHO_METRIC = 30.0


def ratio_metrics(log_rhos: jax.Array) -> Metrics:
    """``rho_mean`` and ``rho_max`` of the importance ratios ``exp(log_rhos)`` [T, B], each
    ratio capped at ``exp(MAX_LOG_RHO_METRIC)`` so the diagnostics stay finite."""
    rhos = jnp.exp(jnp.minimum(log_rhos, MAX_LOG_RHO_METRIC))
    return {"rho_mean": jnp.mean(rhos), "rho_max": jnp.max(rhos)}


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """``1 - Var[targets - predictions] / Var[targets]``; 1 is perfect, <= 0 is useless.

    Returns 0 when the targets have no variance.
    """
    var_targets = jnp.var(targets)
    ev = 1.0 - jnp.var(targets - predictions) / jnp.maximum(var_targets, 1e-8)
    return jnp.where(var_targets > 1e-8, ev, 0.0)


def standardize(x: jax.Array) -> jax.Array:
    """``(x - mean(x)) / (std(x) + 1e-8)``: advantages normalised over the (mini)batch."""
    return (x - x.mean()) / (x.std() + 1e-8)


def ppo_policy_loss(
    logp: jax.Array,
    behaviour_logp: jax.Array,
    advantages: jax.Array,
    clip_eps: float,
) -> tuple[jax.Array, Metrics]:
    """PPO clipped surrogate (Schulman et al., 2017, arXiv:1707.06347, eq. 7), negated.

    ``-mean(min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t))`` with
    ``r_t = exp(logp_t - behaviour_logp_t)``. Advantages are treated as constants.

    Args:
      logp: float [T, B] ``log pi(a_t|x_t)`` under the parameters being optimised.
      behaviour_logp: float [T, B] log-prob of the same actions under the policy that
        collected them (the actor's ``mu`` for APPO, the pre-update policy for PPO).
      advantages: float [T, B].
      clip_eps: the clipping range ``eps``.

    Returns:
      ``(loss, metrics)`` with ``clip_fraction`` (share of samples whose ratio is outside
      ``[1 - eps, 1 + eps]``) and ``approx_kl`` (the ``k3`` estimator of
      KL(behaviour || pi), http://joschu.net/blog/kl-approx.html).
    """
    chex.assert_equal_shape([logp, behaviour_logp, advantages])
    advantages = jax.lax.stop_gradient(advantages)
    log_ratio = logp - jax.lax.stop_gradient(behaviour_logp)
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(
        ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    )
    loss = -jnp.mean(surrogate)
    metrics = {
        "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)),
        "approx_kl": jax.lax.stop_gradient(jnp.mean((ratio - 1.0) - log_ratio)),
    }
    return loss, metrics


def ppo_loss(
    logp: jax.Array, behaviour_logp: jax.Array, advantages: jax.Array, clip_eps: float
) -> jax.Array:
    """PPO clipped surrogate loss, a scalar to minimise. See :func:`ppo_policy_loss`.

    Args:
      logp: float [T, B] log-probs under the parameters being optimised.
      behaviour_logp: float [T, B] log-probs under the behaviour policy.
      advantages: float [T, B].
      clip_eps: the clipping range.
    """
    return ppo_policy_loss(logp, behaviour_logp, advantages, clip_eps)[0]


def impala_pg_loss(logp: jax.Array, pg_advantages: jax.Array) -> tuple[jax.Array, Metrics]:
    """IMPALA policy-gradient loss ``-mean(pg_adv_t * log pi(a_t|x_t))`` (arXiv:1802.01561).

    Args:
      logp: float [T, B] ``log pi(a_t|x_t)``.
      pg_advantages: float [T, B] V-trace advantages (treated as constants).

    Returns:
      ``(loss, metrics)`` with ``pg_advantage_mean``.
    """
    chex.assert_equal_shape([logp, pg_advantages])
    pg_advantages = jax.lax.stop_gradient(pg_advantages)
    return -jnp.mean(pg_advantages * logp), {"pg_advantage_mean": jnp.mean(pg_advantages)}


def value_loss(
    values: jax.Array,
    targets: jax.Array,
    *,
    behaviour_values: jax.Array | None = None,
    clip_eps: float | None = None,
) -> tuple[jax.Array, Metrics]:
    """Squared-error value loss ``0.5 * mean((V - target)^2)``, optionally clipped.

    With ``clip_eps`` and ``behaviour_values`` (the values predicted when the data were
    collected) this is PPO's clipped value loss as in OpenAI baselines::

        V_clip = behaviour_values + clip(V - behaviour_values, -eps, eps)
        loss   = 0.5 * mean(max((V - target)^2, (V_clip - target)^2))

    Args:
      values: float [T, B] predictions under the parameters being optimised.
      targets: float [T, B] (treated as constants).
      behaviour_values: float [T, B]; required when ``clip_eps`` is set.
      clip_eps: clipping range of the value change, or ``None`` for the plain loss.

    Returns:
      ``(loss, metrics)`` with ``explained_variance``.
    """
    chex.assert_equal_shape([values, targets])
    targets = jax.lax.stop_gradient(targets)
    squared = jnp.square(values - targets)
    if clip_eps is not None:
        if behaviour_values is None:
            raise ValueError("value_loss: clip_eps needs behaviour_values")
        chex.assert_equal_shape([values, behaviour_values])
        old = jax.lax.stop_gradient(behaviour_values)
        clipped = old + jnp.clip(values - old, -clip_eps, clip_eps)
        squared = jnp.maximum(squared, jnp.square(clipped - targets))
    loss = 0.5 * jnp.mean(squared)
    return loss, {"explained_variance": explained_variance(values, targets)}


def entropy_loss(entropy: jax.Array) -> tuple[jax.Array, Metrics]:
    """Entropy bonus as a loss: ``-mean(entropy)`` (minimising it raises entropy).

    Args:
      entropy: float [T, B] per-step policy entropy.

    Returns:
      ``(loss, metrics)`` with ``entropy``.
    """
    mean_entropy = jnp.mean(entropy)
    return -mean_entropy, {"entropy": mean_entropy}


def appo_loss(
    logp: jax.Array,
    behaviour_logp: jax.Array,
    discounts: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    bootstrap_value: jax.Array,
    entropy: jax.Array,
    *,
    clip_eps: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    clip_rho_threshold: float | None = 1.0,
    clip_c_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
    lambda_: float = 1.0,
    normalize_advantages: bool = False,
) -> tuple[jax.Array, Metrics]:
    """APPO: PPO's clipped surrogate on V-trace advantages, value loss on V-trace targets.

    The asynchronous PPO of Sample Factory (Petrenko et al., 2020, arXiv:2006.11751): the
    ratio is ``pi / mu`` against the actor's behaviour policy ``mu``, and V-trace corrects
    the targets for the policy lag.

    Args:
      logp: float [T, B] ``log pi(a_t|x_t)`` under the parameters being optimised.
      behaviour_logp: float [T, B] ``log mu(a_t|x_t)`` recorded by the actor.
      discounts: float [T, B] ``gamma * (1 - terminated_t)``.
      rewards: float [T, B].
      values: float [T, B] ``V(x_t)`` under the parameters being optimised.
      bootstrap_value: float [B] ``V(x_T)``.
      entropy: float [T, B] entropy of ``pi(.|x_t)``.
      clip_eps: PPO clipping range.
      value_coef: weight of the value loss.
      entropy_coef: weight of the entropy bonus.
      clip_rho_threshold: V-trace ``rho_bar`` (``None``: no clipping).
      clip_c_threshold: V-trace ``c_bar`` (``None``: no clipping).
      clip_pg_rho_threshold: V-trace policy-gradient ``rho_bar`` (``None``: no clipping).
      lambda_: V-trace ``lambda``.
      normalize_advantages: standardise the advantages over the batch.

    Returns:
      ``(loss, metrics)``: total loss and its terms, ``clip_fraction``, ``approx_kl``,
      ``rho_mean``, ``rho_max``, ``explained_variance``, ``entropy``.
    """
    chex.assert_equal_shape([logp, behaviour_logp, values, rewards, discounts, entropy])
    log_rhos = jax.lax.stop_gradient(logp - behaviour_logp)
    targets = vtrace(
        log_rhos,
        discounts,
        rewards,
        jax.lax.stop_gradient(values),
        jax.lax.stop_gradient(bootstrap_value),
        clip_rho_threshold=clip_rho_threshold,
        clip_c_threshold=clip_c_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold,
        lambda_=lambda_,
    )
    advantages = targets.pg_advantages
    if normalize_advantages:
        advantages = standardize(advantages)
    pg, pg_metrics = ppo_policy_loss(logp, behaviour_logp, advantages, clip_eps)
    vl, vl_metrics = value_loss(values, targets.vs)
    ent, ent_metrics = entropy_loss(entropy)
    loss = pg + value_coef * vl + entropy_coef * ent
    metrics = {
        "loss": loss,
        "policy_loss": pg,
        "value_loss": vl,
        **ratio_metrics(log_rhos),
        **pg_metrics,
        **vl_metrics,
        **ent_metrics,
    }
    return loss, metrics

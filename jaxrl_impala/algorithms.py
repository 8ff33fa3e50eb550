"""The three algorithms as loss builders made from `jaxrl_impala.core`.

Each algorithm is an :class:`Algorithm`: ``prepare(params, stats, data, popart) -> data``
runs once per batch before the epochs (PPO computes its GAE targets and the pre-update
log-probs there), and ``loss(params, stats, minibatch, popart) -> (loss, metrics)`` is what
the optimiser differentiates. The learner chooses the algorithm once, with
:func:`make_algorithm`.

``popart`` is None, or with ``learner.return_norm: popart`` the value targets' statistics
(`core.normalization.PopArt`): the value head's outputs are then normalised values. Each
algorithm works on the values they give back (``std * output + mean``) and weighs its value
loss by ``1 / std^2`` (a value clip by ``std``), which is exactly the loss on the normalised
values and targets, since the statistics are constants of the loss. ``prepare`` then also
returns the batch's ``value_targets`` (V-trace's ``vs`` or GAE's returns, at the params the
batch arrives at), that the update folds into the statistics.

The data the learner hands both (every leaf ``[T(+1), N, ...]``, time-major):
  obs [T+1, N, ...], actions [T, N, ...], behaviour_logp [T, N], behaviour_dist [T, N, P],
  rewards [T, N] (scaled, clipped, truncation bootstraps folded in: :func:`prepare_rewards`),
  discounts [T, N] (``gamma``, 0 at every episode end); and for a recurrent policy
  initial_core [1, N, C] (the state before step 0) and resets [T+1, N] (true where a step
  starts an episode: the core is zeroed before it), see :func:`core_inputs`; with
  ``learner.teacher_coef > 0``, teacher_actions [T, N, ...] (the env's scripted controller's
  action for each step's observation) and teacher_weight [T, N] (the distillation term's
  weight at this update, ``learner.teacher_schedule``), see :func:`teacher_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrl_impala.config import LearnerConfig, update_passes
from jaxrl_impala.core import (
    appo_loss,
    entropy_loss,
    gae,
    impala_pg_loss,
    ppo_policy_loss,
    standardize,
    value_loss,
    vtrace,
)
from jaxrl_impala.core.losses import ratio_metrics
from jaxrl_impala.core.normalization import PopArt
from jaxrl_impala.networks import Policy

Data = dict[str, Any]
LossFn = Callable[[Any, Any, Data, PopArt | None], tuple[jax.Array, dict[str, jax.Array]]]


class Algorithm(NamedTuple):
    """What the update needs to know of an algorithm.

    Attributes:
      loss: ``(params, stats, minibatch, popart) -> (loss, metrics)``, to minimise.
      prepare: ``(params, stats, data, popart) -> data`` once per batch, before the epochs.
      epochs: passes over each batch.
      minibatches: minibatches per pass.
    """

    loss: LossFn
    prepare: Callable[[Any, Any, Data, PopArt | None], Data]
    epochs: int
    minibatches: int


def prepare_rewards(batch: Data, lc: LearnerConfig) -> tuple[jax.Array, jax.Array]:
    """Rewards (scaled, clipped, with truncation bootstraps folded in) and discounts.

    At a time-limit end the final observation's value is added to the reward and the trace
    is cut there, since ``obs[t+1]`` already belongs to the next episode.

    Args:
      batch: ``rewards``, ``terminated``, ``truncated``, ``truncation_value``, each [T, N].
      lc: the learner config (``reward_scale``, ``reward_clip``, ``gamma``).

    Returns:
      ``(rewards, discounts)``, float32 [T, N] each.
    """
    rewards = batch["rewards"] * lc.reward_scale
    if lc.reward_clip is not None:
        rewards = jnp.clip(rewards, -lc.reward_clip, lc.reward_clip)
    truncated = batch["truncated"] & ~batch["terminated"]
    # A select, not ``truncated * truncation_value``: NaN * 0 is NaN, and the value is only
    # meaningful where an episode was truncated.
    bootstrap = jnp.where(truncated, lc.gamma * batch["truncation_value"], 0.0)
    rewards = rewards + bootstrap
    discounts = jnp.where(batch["terminated"] | batch["truncated"], 0.0, lc.gamma)
    return rewards.astype(jnp.float32), discounts.astype(jnp.float32)


def core_inputs(batch: Data) -> Data:
    """A recurrent policy's ``initial_core [1, N, C]`` and ``resets [T+1, N]`` of a batch:
    step ``t + 1`` starts an episode where step ``t`` ended one (terminated or truncated);
    step 0 never resets, since ``initial_core`` was zeroed by the actor already. ``{}`` for
    a batch without ``initial_core``."""
    if batch.get("initial_core") is None:
        return {}
    done = batch["terminated"] | batch["truncated"]
    chex.assert_rank([batch["initial_core"], done], [3, 2])
    chex.assert_equal_shape_suffix([batch["initial_core"][..., 0], done], 1)  # N columns
    resets = jnp.concatenate([jnp.zeros_like(done[:1]), done], axis=0)
    return {"initial_core": batch["initial_core"], "resets": resets}


def burn_in(policy: Policy, params, stats, data: Data, steps: int) -> Data:
    """``data`` less its first ``steps`` steps, its ``initial_core`` the state the core
    reaches over them (with ``params``, no gradient): the steps only warm up the state
    (R2D2's burn-in, Kapturowski et al., 2019). Every time-major leaf is cut at ``steps``."""
    warm = jax.tree.map(lambda x: x[:steps], data["obs"])
    *_, core = policy.apply_core(
        params, stats, warm, data["initial_core"][0], data["resets"][:steps]
    )
    out = {
        k: (v if k == "initial_core" else jax.tree.map(lambda x: x[steps:], v))
        for k, v in data.items()
    }
    out["initial_core"] = jax.lax.stop_gradient(core)[None]
    return out


def _heads(policy: Policy, params, stats, data: Data, popart: PopArt | None = None):
    """(dist over the T acting steps, values [T, N], bootstrap value [N]); the values in
    return units (given back their scale by ``popart``)."""
    core = data.get("initial_core")
    core = None if core is None else core[0]
    dist, values, _ = policy.apply(params, stats, data["obs"], core, data.get("resets"))
    if popart is not None:
        values = popart.denormalize(values)
    head = jax.tree.map(lambda x: x[:-1], dist)
    return head, values[:-1], values[-1]


def _value_coef(lc: LearnerConfig, popart: PopArt | None):
    """The value loss's weight: over ``std^2`` with PopArt, the loss on normalised values."""
    return lc.value_coef if popart is None else lc.value_coef / jnp.square(popart.std)


def _kl_behaviour(policy: Policy, data: Data, head) -> jax.Array:
    return jnp.mean(policy.make_dist(data["behaviour_dist"]).kl(head))


def teacher_loss(head, mb: Data, kind: str = "nll") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Kickstarting's distillation term (Schmitt et al., 2018, arXiv:1803.03835): the mean
    over ``[T, N]`` of ``teacher_weight`` times, per step,

    * ``nll``: ``-log pi(teacher_action | x)``, the cross-entropy of the policy against a
      teacher that acts deterministically (any action space); its pull grows as the
      policy's spread shrinks, and it shrinks that spread itself;
    * ``mse``: ``|mode(pi(x)) - teacher_action|^2`` (Box actions, the mode as the env gets
      it), a pull on the greedy action alone, the same at any spread.

    ``(0, {})`` for a batch without ``teacher_actions``. Metrics: ``teacher_loss`` (the
    unweighted mean) and ``teacher_weight``."""
    if "teacher_actions" not in mb:
        return jnp.zeros((), jnp.float32), {}
    teacher = mb["teacher_actions"]
    if kind == "mse":
        per_step = jnp.sum(jnp.square(head.to_env(head.mode()) - teacher), axis=-1)
    else:
        per_step = -head.log_prob(teacher)
    weight = mb["teacher_weight"]
    chex.assert_equal_shape([per_step, weight])
    metrics = {"teacher_loss": jnp.mean(per_step), "teacher_weight": jnp.mean(weight)}
    return jnp.mean(weight * per_step), metrics


def _total(
    lc: LearnerConfig, pg: tuple, vl: tuple, head, kl: jax.Array, value_coef, mb: Data, extra=None
):
    """``policy + value_coef * value + entropy_coef * entropy (+ teacher)`` losses, and every
    term's metrics (``pg`` and ``vl``: a loss function's ``(loss, metrics)``)."""
    (pg, pg_m), (vl, vl_m) = pg, vl
    ent, ent_m = entropy_loss(head.entropy())
    teacher, teacher_m = teacher_loss(head, mb, lc.teacher_loss)
    total = pg + value_coef * vl + lc.entropy_coef * ent + teacher
    metrics = {"loss": total, "policy_loss": pg, "value_loss": vl, **(extra or {})}
    return total, {**metrics, "kl_behaviour": kl, **pg_m, **vl_m, **ent_m, **teacher_m}


def _vtrace(lc: LearnerConfig, log_rhos, mb: Data, values, bootstrap):
    """V-trace's targets (`core.vtrace`) with the learner's thresholds, values as constants."""
    return vtrace(
        log_rhos,
        mb["discounts"],
        mb["rewards"],
        jax.lax.stop_gradient(values),
        jax.lax.stop_gradient(bootstrap),
        clip_rho_threshold=lc.clip_rho_threshold,
        clip_c_threshold=lc.clip_c_threshold,
        clip_pg_rho_threshold=lc.clip_pg_rho_threshold,
        lambda_=lc.lambda_,
    )


def _vtrace_prepare(policy: Policy, lc: LearnerConfig):
    """APPO's and IMPALA's ``prepare``: nothing, or with PopArt the batch's V-trace targets
    at the params it arrives at (``value_targets``), for the statistics."""

    def prepare(params, stats, data: Data, popart: PopArt | None = None) -> Data:
        if popart is None:
            return data
        head, values, bootstrap = _heads(policy, params, stats, data, popart)
        log_rhos = head.log_prob(data["actions"]) - data["behaviour_logp"]
        targets = _vtrace(lc, log_rhos, data, values, bootstrap)
        return {**data, "value_targets": jax.lax.stop_gradient(targets.vs)}

    return prepare


def make_appo(policy: Policy, lc: LearnerConfig) -> Algorithm:
    """APPO: PPO's clipped surrogate on V-trace advantages (`core.appo_loss`)."""

    def loss(params, stats, mb: Data, popart: PopArt | None = None):
        head, values, bootstrap = _heads(policy, params, stats, mb, popart)
        logp = head.log_prob(mb["actions"])
        total, metrics = appo_loss(
            logp,
            mb["behaviour_logp"],
            mb["discounts"],
            mb["rewards"],
            values,
            bootstrap,
            head.entropy(),
            clip_eps=lc.clip_eps,
            value_coef=_value_coef(lc, popart),
            entropy_coef=lc.entropy_coef,
            clip_rho_threshold=lc.clip_rho_threshold,
            clip_c_threshold=lc.clip_c_threshold,
            clip_pg_rho_threshold=lc.clip_pg_rho_threshold,
            lambda_=lc.lambda_,
            normalize_advantages=lc.normalize_advantages,
        )
        teacher, teacher_m = teacher_loss(head, mb, lc.teacher_loss)
        total = total + teacher
        metrics = {**metrics, "loss": total, **teacher_m}
        return total, {**metrics, "kl_behaviour": _kl_behaviour(policy, mb, head)}

    return Algorithm(loss, _vtrace_prepare(policy, lc), *update_passes(lc))


def make_impala(policy: Policy, lc: LearnerConfig) -> Algorithm:
    """IMPALA: the V-trace policy gradient (Espeholt et al., 2018, arXiv:1802.01561)."""

    def loss(params, stats, mb: Data, popart: PopArt | None = None):
        head, values, bootstrap = _heads(policy, params, stats, mb, popart)
        logp = head.log_prob(mb["actions"])
        log_rhos = jax.lax.stop_gradient(logp - mb["behaviour_logp"])
        targets = _vtrace(lc, log_rhos, mb, values, bootstrap)
        pg = impala_pg_loss(logp, targets.pg_advantages)
        vl = value_loss(values, targets.vs)
        kl = _kl_behaviour(policy, mb, head)
        value_coef = _value_coef(lc, popart)
        return _total(lc, pg, vl, head, kl, value_coef, mb, ratio_metrics(log_rhos))

    return Algorithm(loss, _vtrace_prepare(policy, lc), *update_passes(lc))


def make_ppo(policy: Policy, lc: LearnerConfig) -> Algorithm:
    """PPO (Schulman et al., 2017, arXiv:1707.06347): GAE targets and the pre-update
    log-probs from the params the batch arrives at, then the clipped surrogate."""

    def prepare(params, stats, data: Data, popart: PopArt | None = None) -> Data:
        head, values, bootstrap = _heads(policy, params, stats, data, popart)
        old = gae(data["discounts"], data["rewards"], values, bootstrap, lc.lambda_)
        return {
            **data,
            "advantages": old.advantages,
            "value_targets": old.returns,
            "old_logp": jax.lax.stop_gradient(head.log_prob(data["actions"])),
            "old_values": jax.lax.stop_gradient(values),
        }

    def loss(params, stats, mb: Data, popart: PopArt | None = None):
        head, values, _ = _heads(policy, params, stats, mb, popart)
        logp = head.log_prob(mb["actions"])
        adv = mb["advantages"]
        if lc.normalize_advantages:
            adv = standardize(adv)
        pg = ppo_policy_loss(logp, mb["old_logp"], adv, lc.clip_eps)
        clip = lc.value_clip_eps
        if clip is not None and popart is not None:
            clip = clip * popart.std  # the clip on normalised values
        vl = value_loss(
            values, mb["value_targets"], behaviour_values=mb["old_values"], clip_eps=clip
        )
        kl = _kl_behaviour(policy, mb, head)
        return _total(lc, pg, vl, head, kl, _value_coef(lc, popart), mb)

    return Algorithm(loss, prepare, *update_passes(lc))


ALGORITHMS: dict[str, Callable[[Policy, LearnerConfig], Algorithm]] = {
    "appo": make_appo,
    "impala": make_impala,
    "ppo": make_ppo,
}


def make_algorithm(policy: Policy, lc: LearnerConfig) -> Algorithm:
    """The :class:`Algorithm` that ``learner.algo`` names."""
    return ALGORITHMS[lc.algo](policy, lc)

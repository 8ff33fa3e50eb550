"""The learner: TrainState and ONE jit-compiled update for appo, impala and ppo.

The batch is time-major, ``[T+1, N]`` observations and ``[T, N]`` everything else, with the
N columns sharded over a 1-D ``jax.sharding.Mesh`` of local devices (params replicated);
XLA inserts the gradient all-reduce. Epochs and minibatches run under ``lax.scan``.

Batch fields (numpy or jax arrays):
  obs: [T+1, N, *obs_shape] (a dict of such for dict observations); row T is the bootstrap.
  actions: [T, N, *action_shape] as recorded by the actor (raw Gaussian draws in clip mode).
  behaviour_logp: float32 [T, N] ``log mu(a_t|x_t)``.
  behaviour_dist: float32 [T, N, P] the behaviour distribution's parameters.
  rewards: float32 [T, N].
  terminated, truncated: bool [T, N].
  truncation_value: float32 [T, N] ``V_mu(final obs)`` where ``truncated`` (else 0): the
    value to bootstrap from at a time-limit end, since ``obs[t+1]`` then already belongs
    to the next episode.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_impala.config import Config, derived_sizes
from jaxrl_impala.core import (
    entropy_loss,
    gae,
    impala_pg_loss,
    ppo_policy_loss,
    value_loss,
    vtrace,
)
from jaxrl_impala.networks import ObsStats, Policy, init_obs_stats, sample_obs, update_obs_stats

BATCH_KEYS = (
    "obs",
    "actions",
    "behaviour_logp",
    "behaviour_dist",
    "rewards",
    "terminated",
    "truncated",
    "truncation_value",
)


@flax.struct.dataclass
class TrainState:
    """Everything the update changes; checkpointed as a whole."""

    params: Any
    opt_state: Any
    obs_stats: ObsStats
    step: jax.Array  # updates done


def make_optimizer(config: Config, total_updates: int) -> optax.GradientTransformation:
    lc = config.learner
    if lc.lr_schedule == "linear":
        lr = optax.linear_schedule(lc.lr, 0.0, max(1, total_updates * _grad_steps(config)))
    else:
        lr = lc.lr
    return optax.chain(optax.clip_by_global_norm(lc.max_grad_norm), optax.adam(lr, eps=lc.adam_eps))


def _grad_steps(config: Config) -> int:
    lc = config.learner
    return 1 if lc.algo == "impala" else lc.epochs * lc.minibatches


def init_train_state(
    policy: Policy, obs_space, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    params = policy.net.init(key, sample_obs(obs_space))
    return TrainState(
        params, optimizer.init(params), init_obs_stats(obs_space), jnp.zeros((), jnp.int32)
    )


def make_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` local devices (0: all)."""
    devices = jax.local_devices()
    if num_devices > len(devices):
        raise ValueError(
            f"learner.num_devices={num_devices} but only {len(devices)} local devices exist"
        )
    n = num_devices or len(devices)
    return Mesh(np.asarray(devices[:n]), ("data",))


def _prepare(batch: dict, lc) -> tuple[jax.Array, jax.Array]:
    """Rewards (scaled, clipped, with truncation bootstraps folded in) and discounts."""
    rewards = batch["rewards"] * lc.reward_scale
    if lc.reward_clip is not None:
        rewards = jnp.clip(rewards, -lc.reward_clip, lc.reward_clip)
    truncated = batch["truncated"] & ~batch["terminated"]
    # A time-limit end: bootstrap from the final observation's value, then cut the trace.
    rewards = rewards + lc.gamma * truncated * batch["truncation_value"]
    discounts = lc.gamma * (1.0 - (batch["terminated"] | batch["truncated"]))
    return rewards.astype(jnp.float32), discounts.astype(jnp.float32)


def make_update(
    policy: Policy, optimizer: optax.GradientTransformation, config: Config, mesh: Mesh
):
    """Builds ``update(state, batch, key) -> (state, metrics)``, jitted and sharded."""
    lc = config.learner
    sizes = derived_sizes(config, mesh.size)
    num_mb = 1 if lc.algo == "impala" else lc.minibatches
    mb_size = sizes["minibatch_size"]

    def forward(params, stats, batch):
        dist, values, _ = policy.apply(params, stats, batch["obs"])
        return dist, values

    def loss_fn(params, stats, mb):
        dist, all_values = forward(params, stats, mb)
        values, bootstrap = all_values[:-1], all_values[-1]
        head = jax.tree.map(lambda x: x[:-1], dist)
        logp = head.log_prob(mb["actions"])
        entropy = head.entropy()
        rewards, discounts = mb["rewards_adj"], mb["discounts"]
        if lc.algo == "ppo":
            adv = mb["advantages"]
            if lc.normalize_advantages:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg, pg_m = ppo_policy_loss(logp, mb["old_logp"], adv, lc.clip_eps)
            vl, vl_m = value_loss(
                values, mb["returns"], behaviour_values=mb["old_values"], clip_eps=lc.value_clip_eps
            )
            extra = {}
        else:
            log_rhos = jax.lax.stop_gradient(logp - mb["behaviour_logp"])
            targets = vtrace(
                log_rhos,
                discounts,
                rewards,
                jax.lax.stop_gradient(values),
                jax.lax.stop_gradient(bootstrap),
                clip_rho_threshold=lc.clip_rho_threshold,
                clip_c_threshold=lc.clip_c_threshold,
                clip_pg_rho_threshold=lc.clip_pg_rho_threshold,
                lambda_=lc.lambda_,
            )
            adv = targets.pg_advantages
            if lc.algo == "appo":
                if lc.normalize_advantages:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg, pg_m = ppo_policy_loss(logp, mb["behaviour_logp"], adv, lc.clip_eps)
            else:
                pg, pg_m = impala_pg_loss(logp, adv)
            vl, vl_m = value_loss(values, targets.vs)
            rhos = jnp.exp(log_rhos)
            extra = {"rho_mean": rhos.mean(), "rho_max": rhos.max()}
        ent, ent_m = entropy_loss(entropy)
        loss = pg + lc.value_coef * vl + lc.entropy_coef * ent
        behaviour = policy.make_dist(mb["behaviour_dist"])
        metrics = {
            "loss": loss,
            "policy_loss": pg,
            "value_loss": vl,
            "kl_behaviour": jnp.mean(behaviour.kl(head)),
            **pg_m,
            **vl_m,
            **ent_m,
            **extra,
        }
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def sgd_step(state: TrainState, mb):
        (_, metrics), grads = grad_fn(state.params, state.obs_stats, mb)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=params, opt_state=opt_state), metrics

    def update(state: TrainState, batch: dict, key: jax.Array):
        if policy.obs_norm:
            state = state.replace(obs_stats=update_obs_stats(state.obs_stats, batch["obs"]))
        rewards, discounts = _prepare(batch, lc)
        data = {
            "obs": batch["obs"],
            "actions": batch["actions"],
            "behaviour_logp": batch["behaviour_logp"],
            "behaviour_dist": batch["behaviour_dist"],
            "rewards_adj": rewards,
            "discounts": discounts,
        }
        if lc.algo == "ppo":
            dist, all_values = forward(state.params, state.obs_stats, batch)
            head = jax.tree.map(lambda x: x[:-1], dist)
            old = gae(rewards, all_values[:-1], all_values[-1], discounts, lc.lambda_)
            data.update(
                advantages=old.advantages,
                returns=old.returns,
                old_logp=jax.lax.stop_gradient(head.log_prob(batch["actions"])),
                old_values=jax.lax.stop_gradient(all_values[:-1]),
            )
        n = sizes["batch_size"]

        def epoch(state, key):
            perm = jax.random.permutation(key, n) if num_mb > 1 else jnp.arange(n)
            idx = perm.reshape(num_mb, mb_size)

            def minibatch(state, cols):
                mb = jax.tree.map(lambda x: jnp.take(x, cols, axis=1), data)
                return sgd_step(state, mb)

            return jax.lax.scan(minibatch, state, idx)

        epochs = 1 if lc.algo == "impala" else lc.epochs
        state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, epochs))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["reward_mean"] = jnp.mean(batch["rewards"])
        return state.replace(step=state.step + 1), metrics

    replicated = NamedSharding(mesh, P())
    columns = NamedSharding(mesh, P(None, "data"))
    jitted = jax.jit(
        update,
        in_shardings=(replicated, columns, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )

    def put_batch(batch: dict) -> dict:
        return jax.device_put(batch, columns)

    return jitted, put_batch, replicated


def policy_step_fn(policy: Policy, greedy: bool = False):
    """``step(params, stats, obs [B, ...], key) -> (action, logp, dist_params, value)``."""

    def step(params, stats, obs, key):
        dist, value, dist_params = policy.apply(params, stats, obs)
        action = dist.mode() if greedy else dist.sample(key)
        return action, dist.log_prob(action), dist_params, value

    return step


def value_fn(policy: Policy):
    def value(params, stats, obs):
        return policy.apply(params, stats, obs)[1]

    return value

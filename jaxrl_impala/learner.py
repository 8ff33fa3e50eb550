"""The learner: TrainState and ONE jit-compiled update for appo, impala and ppo.

The batch is time-major, ``[T+1, N]`` observations and ``[T, N]`` everything else, with the
N columns sharded over a 1-D ``jax.sharding.Mesh`` of local devices, or of every learner
process's devices under ``jax.distributed`` (params replicated); XLA inserts the gradient
all-reduce. Epochs and minibatches run under ``lax.scan``; minibatches are cut with
`stratified_permutation`, which never splits T, gives the same minibatches on any device
count and keeps each device's columns on that device.

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


def _init_fn(policy: Policy, obs_space, optimizer: optax.GradientTransformation):
    def init(key):
        params = policy.net.init(key, sample_obs(obs_space))
        return TrainState(
            params, optimizer.init(params), init_obs_stats(obs_space), jnp.zeros((), jnp.int32)
        )

    return init


def train_state_shapes(
    policy: Policy, obs_space, optimizer: optax.GradientTransformation, sharding=None
) -> TrainState:
    """The TrainState as ``jax.ShapeDtypeStruct`` leaves (placed with ``sharding``), from
    tracing alone: enough to compile the update before the params exist."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a raw PRNGKey
    shapes = jax.eval_shape(_init_fn(policy, obs_space, optimizer), key)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def init_train_state(
    policy: Policy, obs_space, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    init = _init_fn(policy, obs_space, optimizer)
    # One compiled program: run eagerly, flax's init dispatches (and compiles) op by op, which
    # takes seconds on a small CPU machine that is starting actors at the same time. It runs
    # once, so XLA may skip its backend optimisations: half the compile (0.9 s -> 0.4 s for
    # CartPole's MLP on 2 cores), params within 1e-5 of the optimised program's.
    no_opt = {"xla_backend_optimization_level": 0}
    return jax.jit(init).lower(key).compile(compiler_options=no_opt)(key)


def make_mesh(num_devices: int) -> Mesh:
    """A 1-D ``"data"`` mesh over the first ``num_devices`` local devices (0: all) of every
    process, in process order (one process: just the local devices).

    With several processes (`jaxrl_impala.distributed`) the mesh is global, so process p's
    share of the batch lives on process p's devices; every process must ask for the same
    number of devices.
    """
    local = jax.local_devices()
    if num_devices > len(local):
        raise ValueError(
            f"learner.num_devices={num_devices} but only {len(local)} local devices exist"
        )
    n = num_devices or len(local)
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.asarray(devices), ("data",))


def stratified_permutation(key: jax.Array, batch_size: int, num_minibatches: int) -> jax.Array:
    """Minibatch column indices, int32 ``[num_minibatches, batch_size // num_minibatches]``.

    The columns are cut into blocks of ``num_minibatches`` consecutive columns and each block
    gets its own random permutation (its own key); minibatch ``j`` takes the ``j``-th column of
    every block's permutation, blocks in order. Two properties follow:

    * it is defined on the global column index, so a key gives the same minibatches (same
      columns, same order) on 1 or N devices: the sharded update equals the single-device one;
    * a device holds ``minibatch_size / N`` whole blocks (`derived_sizes` checks that N divides
      the minibatch), so forming the minibatches gathers only within a device's own columns.

    Every column still lands in exactly one minibatch per epoch (a stratified shuffle: each
    minibatch draws one column from every block of neighbouring envs).
    """
    num_blocks = batch_size // num_minibatches
    keys = jax.random.split(key, num_blocks)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_minibatches))(keys)
    blocks = jnp.arange(num_blocks, dtype=perms.dtype)[:, None] * num_minibatches
    return (perms + blocks).T.astype(jnp.int32)


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
    """Builds ``update(state, batch, key) -> (state, metrics)``, jitted and sharded.

    Returns:
      ``(update, put_batch, replicated)``: the jitted update (``state`` is donated), a function
      moving a host batch onto the mesh (columns sharded over ``"data"``; with several
      processes, this process's columns of the global batch), and the replicated sharding
      for the state and the key.
    """
    lc = config.learner
    num_processes = len({d.process_index for d in mesh.devices.flat})
    sizes = derived_sizes(config, mesh.size, num_processes)
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
    minibatch_columns = NamedSharding(mesh, P(None, None, "data"))

    def sgd_step(state: TrainState, mb):
        (_, metrics), grads = grad_fn(state.params, state.obs_stats, mb)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=params, opt_state=opt_state), metrics

    def update(state: TrainState, batch: dict, key: jax.Array):
        old_state = state  # what a non-finite update falls back to
        if policy.obs_norm:
            # Columns first: flattening [N, T+1] keeps the sharded axis major, so the moments
            # reduce in place (an all-reduce) instead of all-gathering the observations.
            obs_nt = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch["obs"])
            state = state.replace(obs_stats=update_obs_stats(state.obs_stats, obs_nt))
        rewards, discounts = _prepare(batch, lc)
        if lc.inject_nan_from:
            n_update = state.step + 1
            poison = (n_update >= lc.inject_nan_from) & (
                (n_update - lc.inject_nan_from) % lc.inject_nan_every == 0
            )
            rewards = jnp.where(poison, jnp.nan, rewards)
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

        def shuffle(key) -> dict:
            """``data`` cut into minibatches: every leaf ``[num_mb, T(+1), mb_size, ...]``."""
            if num_mb == 1:
                return jax.tree.map(lambda x: x[None], data)
            cols = stratified_permutation(key, n, num_mb)  # [num_mb, mb_size]
            # Column b * num_mb + i is entry i of block b. The gather runs block by block
            # (vmap over the sharded block axis), so each device reads only its own columns.
            within = (cols % num_mb).T  # [mb_size (blocks), num_mb]

            def split(x):
                blocks = x.reshape(x.shape[0], mb_size, num_mb, *x.shape[2:])
                picked = jax.vmap(lambda b, i: b[:, i], in_axes=(1, 0), out_axes=1)(
                    blocks, within
                )  # [T, mb_size, num_mb, ...]
                out = jnp.moveaxis(picked, 2, 0)
                return jax.lax.with_sharding_constraint(out, minibatch_columns)

            return jax.tree.map(split, data)

        def epoch(state, key):
            return jax.lax.scan(sgd_step, state, shuffle(key))

        epochs = 1 if lc.algo == "impala" else lc.epochs
        state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, epochs))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["reward_mean"] = jnp.mean(batch["rewards"])
        # A non-finite loss, gradient or result leaves the state as it was (the step count
        # still advances); the trainer counts these and stops after too many in a row.
        leaves = jax.tree.leaves((metrics, state))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        # One conditional rather than a select per leaf: XLA copied the whole finiteness test
        # into every select's fusion, a third of the update's compile time.
        state = jax.lax.cond(finite, lambda: state, lambda: old_state)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        return state.replace(step=old_state.step + 1), metrics

    replicated = NamedSharding(mesh, P())
    columns = NamedSharding(mesh, P(None, "data"))
    jitted = jax.jit(
        update,
        in_shardings=(replicated, columns, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )

    def put_batch(batch: dict) -> dict:
        """Host batch -> device arrays sharded by columns. With several processes each passes
        its own columns and gets the global batch (process order along the columns)."""
        if num_processes == 1:
            return jax.device_put(batch, columns)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(columns, x), batch)

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

"""TrainState and ONE jit-compiled update for appo, impala and ppo.

The batch is an `Unroll`'s update fields (`unroll.BATCH_FIELDS`), time-major: ``[T+1, N]``
observations, ``[T, N]`` everything else (and ``[1, N, C]`` for a recurrent policy's
``initial_core``: the learner re-runs the core over ``[T+1, N]`` from it, resetting where
the actors did, `algorithms.core_inputs`), with the N columns sharded over a 1-D
``jax.sharding.Mesh`` (`learner.mesh`), params replicated; XLA inserts the gradient
all-reduce. The algorithm's loss (`algorithms`) is chosen once; epochs and minibatches run
under ``lax.scan``; minibatches are cut with `stratified_permutation`, which never splits T,
gives the same minibatches on any device count and keeps each device's columns on that
device.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_impala.algorithms import (
    Algorithm,
    burn_in,
    core_inputs,
    make_algorithm,
    prepare_rewards,
)
from jaxrl_impala.config import Config, LearnerConfig, derived_sizes, update_passes
from jaxrl_impala.core.normalization import (
    Moments,
    PopArt,
    init_moments,
    init_popart,
    preserve_outputs,
    scale_rewards,
    update_moments,
    update_popart,
)
from jaxrl_impala.networks import (
    ObsStats,
    Policy,
    init_obs_stats,
    map_value_head,
    update_obs_stats,
)


@flax.struct.dataclass
class TrainState:
    """Everything the update changes; checkpointed as a whole."""

    params: Any
    opt_state: Any
    obs_stats: ObsStats
    step: jax.Array  # updates done
    # ``learner.return_norm``'s statistics: ``running``, the discounted return's running
    # moments; ``popart``, the value targets' (the value head's scale); ``none``, None.
    return_stats: Moments | PopArt | None = None


def make_optimizer(config: Config, total_updates: int) -> optax.GradientTransformation:
    lc = config.learner
    if lc.lr_schedule == "linear":
        epochs, minibatches = update_passes(lc)
        lr = optax.linear_schedule(lc.lr, 0.0, max(1, total_updates * epochs * minibatches))
    else:
        lr = lc.lr
    return optax.chain(optax.clip_by_global_norm(lc.max_grad_norm), optax.adam(lr, eps=lc.adam_eps))


def _init_fn(policy: Policy, obs_space, optimizer: optax.GradientTransformation, return_norm: str):
    def init(key):
        params = policy.init(key, obs_space)
        return TrainState(
            params,
            optimizer.init(params),
            init_obs_stats(obs_space),
            jnp.zeros((), jnp.int32),
            {"running": init_moments, "popart": init_popart}.get(return_norm, lambda: None)(),
        )

    return init


def train_state_shapes(
    policy: Policy,
    obs_space,
    optimizer: optax.GradientTransformation,
    sharding=None,
    return_norm: str = "none",
) -> TrainState:
    """The TrainState as ``jax.ShapeDtypeStruct`` leaves (placed with ``sharding``), from
    tracing alone: enough to compile the update before the params exist."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a raw PRNGKey
    shapes = jax.eval_shape(_init_fn(policy, obs_space, optimizer, return_norm), key)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def init_train_state(
    policy: Policy,
    obs_space,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    return_norm: str = "none",
) -> TrainState:
    """The initial TrainState; ``return_norm`` is ``learner.return_norm``."""
    init = _init_fn(policy, obs_space, optimizer, return_norm)
    # One compiled program (eagerly, flax's init compiles op by op). It runs once, so XLA may
    # skip its backend optimisations: a faster compile, params within 1e-5 of the optimised.
    no_opt = {"xla_backend_optimization_level": 0}
    return jax.jit(init).lower(key).compile(compiler_options=no_opt)(key)


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


def split_minibatches(
    data: dict, key: jax.Array, num_mb: int, mb_size: int, sharding: NamedSharding
) -> dict:
    """``data`` (leaves ``[T(+1), N, ...]``) cut into minibatches of whole columns: every leaf
    ``[num_mb, T(+1), mb_size, ...]``, the columns drawn by `stratified_permutation`."""
    if num_mb == 1:
        return jax.tree.map(lambda x: x[None], data)
    cols = stratified_permutation(key, num_mb * mb_size, num_mb)  # [num_mb, mb_size]
    # Column b * num_mb + i is entry i of block b. The gather runs block by block (vmap over
    # the sharded block axis), so each device reads only its own columns.
    within = (cols % num_mb).T  # [mb_size (blocks), num_mb]

    def split(x):
        blocks = x.reshape(x.shape[0], mb_size, num_mb, *x.shape[2:])
        picked = jax.vmap(lambda b, i: b[:, i], in_axes=(1, 0), out_axes=1)(blocks, within)
        out = jnp.moveaxis(picked, 2, 0)  # [num_mb, T, mb_size, ...]
        return jax.lax.with_sharding_constraint(out, sharding)

    return jax.tree.map(split, data)


def teacher_weight(lc: LearnerConfig, step: jax.Array, total_updates: int) -> jax.Array:
    """The distillation term's weight at update ``step`` (0-based): ``learner.teacher_coef``,
    decayed linearly to 0 at ``total_updates`` with ``teacher_schedule: linear``."""
    coef = jnp.float32(lc.teacher_coef)
    if lc.teacher_schedule == "linear":
        coef = coef * jnp.clip(1.0 - step.astype(jnp.float32) / max(1, total_updates), 0.0, 1.0)
    return coef


def _algorithm_data(batch: dict, rewards: jax.Array, discounts: jax.Array, weight=None) -> dict:
    """What the algorithms train on (the `algorithms` module docstring): the batch's
    observations, actions and behaviour policy, the prepared ``rewards`` and ``discounts``,
    a recurrent policy's ``initial_core`` and ``resets``, and the ``teacher_actions`` with
    their ``teacher_weight`` (``weight``, a scalar, on every step) when the batch has them."""
    acted = ("obs", "actions", "behaviour_logp", "behaviour_dist")
    data = {
        **{k: batch[k] for k in acted},
        "rewards": rewards,
        "discounts": discounts,
        **core_inputs(batch),
    }
    if "teacher_actions" in batch:
        data["teacher_actions"] = batch["teacher_actions"]
        data["teacher_weight"] = jnp.full(discounts.shape, weight, jnp.float32)
    return data


def _normalize_returns(state: TrainState, batch: dict, return_norm: str):
    """``learner.return_norm`` on a batch, before the algorithm sees it: ``running`` updates
    the return moments and scales the rewards; ``popart`` turns the actors' bootstrap values
    (the head's normalised outputs) into return units. Returns ``(state, batch)``."""
    if return_norm == "running":
        moments = update_moments(state.return_stats, batch["discounted_return"])
        state = state.replace(return_stats=moments)
        batch = {**batch, "rewards": scale_rewards(batch["rewards"], moments)}
    elif return_norm == "popart":
        value = state.return_stats.denormalize(batch["truncation_value"])
        batch = {**batch, "truncation_value": value}
    return state, batch


def _popart_step(state: TrainState, value_targets: jax.Array, beta: float) -> TrainState:
    """PopArt's statistics moved towards ``value_targets`` ``[T, N]`` and the value head
    rescaled to keep its outputs in return units: what ``prepare`` computed at these params
    stays true."""
    old = state.return_stats
    new = update_popart(old, value_targets, beta)
    params = map_value_head(state.params, lambda w, b: preserve_outputs(w, b, old, new))
    return state.replace(params=params, return_stats=new)


def _return_metrics(state: TrainState, return_norm: str) -> dict:
    """The return statistics' metrics: ``return_std`` (and PopArt's ``return_mean``)."""
    if return_norm == "running":
        return {"return_std": jnp.sqrt(state.return_stats.var)}
    if return_norm == "popart":
        return {"return_std": state.return_stats.std, "return_mean": state.return_stats.mean}
    return {}


def make_update(
    policy: Policy,
    optimizer: optax.GradientTransformation,
    config: Config,
    mesh: Mesh,
    algorithm: Algorithm | None = None,
):
    """Builds ``update(state, batch, key) -> (state, metrics)``, jitted and sharded.

    Args:
      policy, optimizer, config, mesh: what the update computes with and on.
      algorithm: the loss and its passes; default `make_algorithm` of ``learner.algo``.

    Returns:
      ``(update, put_batch, replicated)``: the jitted update (``state`` is donated), a function
      moving a host batch onto the mesh (columns sharded over ``"data"``; with several
      processes, this process's columns of the global batch), and the replicated sharding
      for the state and the key.
    """
    lc = config.learner
    algorithm = algorithm or make_algorithm(policy, lc)
    num_processes = len({d.process_index for d in mesh.devices.flat})
    sizes = derived_sizes(config, mesh.size, num_processes)
    num_mb = algorithm.minibatches
    mb_size = sizes["minibatch_size"]

    grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)
    minibatch_columns = NamedSharding(mesh, P(None, None, "data"))

    popart = lc.return_norm == "popart"

    def popart_stats(state: TrainState) -> PopArt | None:
        return state.return_stats if popart else None

    def sgd_step(state: TrainState, mb):
        (loss, metrics), grads = grad_fn(state.params, state.obs_stats, mb, popart_stats(state))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)  # non-finite iff some gradient is
        # What the update's guard looks at: the loss and the gradients, not the diagnostics.
        metrics["step_finite"] = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
        return state.replace(params=params, opt_state=opt_state), metrics

    def update(state: TrainState, batch: dict, key: jax.Array):
        old_state = state  # what a non-finite update falls back to
        if policy.obs_norm:
            # Columns first: flattening [N, T+1] keeps the sharded axis major, so the moments
            # reduce in place (an all-reduce) instead of all-gathering the observations.
            obs_nt = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch["obs"])
            state = state.replace(obs_stats=update_obs_stats(state.obs_stats, obs_nt))
        state, batch = _normalize_returns(state, batch, lc.return_norm)
        weight = teacher_weight(lc, state.step, sizes["total_updates"])
        data = _algorithm_data(batch, *prepare_rewards(batch, lc), weight)
        if config.network.burn_in:
            data = burn_in(policy, state.params, state.obs_stats, data, config.network.burn_in)
        data = algorithm.prepare(state.params, state.obs_stats, data, popart_stats(state))
        if popart:
            state = _popart_step(state, data["value_targets"], lc.popart_beta)

        def epoch(state, key):
            minibatches = split_minibatches(data, key, num_mb, mb_size, minibatch_columns)
            return jax.lax.scan(sgd_step, state, minibatches)

        state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, algorithm.epochs))
        steps_finite = jnp.all(metrics.pop("step_finite"))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["reward_mean"] = jnp.mean(batch["rewards"])  # as trained on (scaled by
        # return_norm, before reward_scale)
        metrics.update(_return_metrics(state, lc.return_norm))
        # A non-finite loss, gradient or new state leaves the state as it was (the step count
        # still advances); the trainer counts these and stops after too many in a row. The
        # diagnostics (rho_max, kl_behaviour, ...) are not looked at: an inf among them says
        # nothing against an update whose loss and gradients are finite.
        leaves = jax.tree.leaves(state)
        finite = steps_finite & jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        # One conditional rather than a select per leaf, which XLA compiles much slower.
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

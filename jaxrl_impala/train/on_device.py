"""The on-device mode (``train.mode=on_device``): the envs step on the learner's devices.

For an env whose step is pure JAX (DrivingEnv), T steps of every env with the current
policy run as one compiled ``lax.scan`` on the learner's devices (the actors' fused unroll,
`actor.rollout.fused_unroll_fn`), the envs sharded over the mesh's ``data`` axis, and the
batch it yields goes straight into the compiled update: parameters never leave the device,
and only the finished episodes' returns cross to the host, for the logs. This is Anakin in
the Podracer paper (Hessel et al., 2021, arXiv:2104.06272). Everything else (the loop, the
logs, checkpoints, evaluation, resume, SIGTERM) is the actors mode's.

Each batch is acted by the params of the update before it: the data are on-policy (policy
lag 0) and a run is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_impala import unroll
from jaxrl_impala.actor.envs import make_vector_env
from jaxrl_impala.actor.rollout import fused_unroll_fn, initial_carry, restart_seed
from jaxrl_impala.config import ConfigError
from jaxrl_impala.learner.batches import Staged, episode_summary
from jaxrl_impala.train.setup import Setup


class OnDeviceBatches:
    """The loop's batch source in on-device mode (see the module docstring).

    Args:
      s: the run's setup; the envs are ``s.sizes["batch_size"]`` (``learner.batch_unrolls *
        env.num_envs``), so one rollout is one batch.
      params: returns the current ``(params, obs_stats)`` (device arrays).
      incarnation: 0 for a new run; a resumed run passes its env steps, for fresh scenarios.

    Raises:
      ConfigError: the env has no pure JAX step.
    """

    def __init__(self, s: Setup, params: Callable[[], tuple[Any, Any]], incarnation: int = 0):
        config = s.config
        self.s, self._params, self.dropped = s, params, 0
        self.rejected: dict[str, int] = {}  # nothing crosses a transport: nothing rejected
        n = s.sizes["batch_size"]
        env = make_vector_env(config, n)
        if not hasattr(env, "pure_step"):
            env.close()
            raise ConfigError(
                f"train.mode=on_device needs an env whose step is pure JAX (DrivingEnv, without "
                f"env.frame_stack); env.id={config.env.id!r} has none: use train.mode=actors"
            )
        seed = config.train.seed * 100_003
        if incarnation:
            seed = restart_seed(config.train.seed, 0, incarnation)
        obs, _ = env.reset(seed=seed)
        rows = NamedSharding(s.mesh, P("data"))  # [N, ...]: the envs over the devices
        columns = NamedSharding(s.mesh, P(None, "data"))  # [T(+1), N, ...]
        carry = initial_carry(env.packed_state, obs, n, len(s.term_names), s.policy.core_size)
        self._carry = jax.device_put(carry, rows)
        key = jax.random.PRNGKey(config.train.seed * 7919 + 104729)
        if incarnation:
            key = jax.random.fold_in(key, incarnation % 2**31)
        self._key = jax.device_put(np.asarray(key), s.replicated)
        unroll_fn = fused_unroll_fn(
            s.policy,
            env.pure_step(),
            config.rollout.length,
            s.action_space,
            config.learner.gamma,
            env.pure_scripted() if config.learner.taught else None,
        )
        env.close()

        def collect(params, stats, carry, key):
            key, carry, out = unroll_fn(params, stats, carry, key)
            obs = jax.tree.map(lambda r, last: jnp.concatenate([r, last[None]]), out.obs, carry[1])
            batch = unroll.batch_from_frame(unroll.to_frame(out._replace(obs=obs)))
            return key, carry, batch, (out.episode_return, out.episode_terms)

        self._collect = jax.jit(
            collect,
            in_shardings=(s.replicated, s.replicated, rows, s.replicated),
            out_shardings=(s.replicated, rows, columns, columns),
            donate_argnums=(2,),
        )

    def next(self, version: int, keep_going: Callable[[], bool]) -> Staged | None:
        """The batch for the update after ``version``, acted with the current params."""
        if not keep_going():
            return None
        params, stats = self._params()
        self._key, self._carry, batch, episodes = self._collect(
            params, stats, self._carry, self._key
        )
        ep_return, ep_terms = jax.device_get(episodes)
        returns, terms = episode_summary(ep_return, ep_terms, self.s.term_names)
        k = self.s.sizes["local_batch_unrolls"]
        return Staged(batch, [version] * k, returns, terms)

    def close(self) -> None:
        pass


class NoActors:
    """The actors of an on-device run: none to start, check or restart."""

    restarts = 0

    def start_all(self) -> None:
        pass

    def check(self) -> None:
        pass

    def set_address(self, address: dict) -> None:
        pass

    def stop(self) -> None:
        pass


class NoQueue:
    """The trajectory queue of an on-device run: always empty, nothing counted."""

    stats: dict[str, int] = {}

    def qsize(self) -> int:
        return 0

    def close(self) -> None:
        pass

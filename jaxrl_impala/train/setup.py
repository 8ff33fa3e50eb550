"""One setup function: policy, optimiser, state and update from a config.

`setup` serves the trainer, ``evaluate``, the benchmarks and the tests, so nothing builds
those pieces by hand::

    s = setup(load_config("configs/cartpole.yaml"))
    state = s.init_state(jax.random.PRNGKey(0))
    state, metrics = s.update(state, s.put_batch(batch), key)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from jaxrl_impala import unroll
from jaxrl_impala.actor.envs import env_spaces
from jaxrl_impala.algorithms import Algorithm
from jaxrl_impala.config import Config, derived_sizes
from jaxrl_impala.learner import (
    TrainState,
    init_train_state,
    make_mesh,
    make_optimizer,
    make_update,
    train_state_shapes,
)
from jaxrl_impala.networks import Policy, make_policy, sample_obs
from jaxrl_impala.transport import FrameSpec, encoded_size

# Slack for a frame's header: meta integers grow digits as the run goes on.
_HEADER_SLACK = 4096


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every entry point builds from a config.

    Attributes:
      config: the run's config.
      obs_space, action_space: one env's spaces.
      term_names: the reward terms the env reports (DrivingEnv), else empty.
      mesh: the learner's devices.
      sizes: `config.derived_sizes` for this mesh and process count.
      policy, optimizer: the network and its optimiser.
      update: the jitted ``update(state, batch, key) -> (state, metrics)`` (state donated).
      put_batch: host batch -> device batch sharded over the mesh.
      replicated: the sharding of the state and the key.
    """

    config: Config
    obs_space: gym.Space
    action_space: gym.Space
    term_names: tuple[str, ...]
    mesh: Mesh
    sizes: dict[str, int]
    policy: Policy
    optimizer: optax.GradientTransformation
    update: Callable
    put_batch: Callable
    replicated: NamedSharding

    @property
    def steps_per_update(self) -> int:
        return self.sizes["env_steps_per_update"]

    def init_state(self, key: jax.Array) -> TrainState:
        """Fresh params, optimiser state and obs statistics (on the host's default device)."""
        rn = self.config.learner.return_norm
        return init_train_state(self.policy, self.obs_space, self.optimizer, key, rn)

    def state_shapes(self) -> TrainState:
        """The TrainState's shapes, placed replicated: enough to compile the update."""
        rn = self.config.learner.return_norm
        return train_state_shapes(self.policy, self.obs_space, self.optimizer, self.replicated, rn)

    def example_unroll(self) -> unroll.Unroll:
        """A zero :class:`~jaxrl_impala.unroll.Unroll` of one actor's send."""
        return self._example

    @functools.cached_property
    def _example(self) -> unroll.Unroll:
        # Traced once per setup (the frame spec and the compile-ahead both ask for it).
        T, B = self.config.rollout.length, self.config.env.num_envs

        def action_and_dist_params():
            params = self.policy.init(jax.random.PRNGKey(0), self.obs_space)
            obs, core = sample_obs(self.obs_space, (B,)), self.policy.initial_core(B)
            dist, _, dist_params, _ = self.policy.step(params, None, obs, core)
            return dist.sample(jax.random.PRNGKey(0)), dist_params

        # Shapes and dtypes only: nothing is computed (or compiled).
        action, dist_params = jax.eval_shape(action_and_dist_params)
        obs_row = jax.eval_shape(lambda: sample_obs(self.obs_space, (B,)))
        return unroll.example(
            T,
            B,
            obs_row,
            action,
            dist_params.shape[-1],
            len(self.term_names),
            self.policy.core_size,
            teacher=self.config.learner.taught,
        )

    def frame_spec(self) -> tuple[FrameSpec, int]:
        """The spec every unroll frame must match (`unroll.frame_spec`: layout, metadata,
        values), and the largest frame's size in bytes."""
        example = self.example_unroll()
        fields = unroll.to_frame(example)
        meta = dict.fromkeys(unroll.META_FIELDS, 0)
        spec = unroll.frame_spec(example, _action_bounds(self.action_space))
        return spec, encoded_size(fields, meta) + _HEADER_SLACK

    def example_batch(self) -> dict[str, Any]:
        """A zero batch of this process's share, on the mesh (compiles the update ahead)."""
        fields = unroll.to_frame(self.example_unroll())
        k = self.sizes["local_batch_unrolls"]
        return self.put_batch(unroll.batch_from_frame(unroll.concat([fields] * k)))


def _action_bounds(space: gym.Space) -> tuple[Any, Any] | None:
    """Inclusive bounds of a discrete space's actions (None for a Box)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start), int(space.start + space.n - 1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        low = np.ravel(np.broadcast_to(getattr(space, "start", 0), space.nvec.shape))
        high = low + np.ravel(space.nvec) - 1
        return tuple(int(x) for x in low), tuple(int(x) for x in high)
    return None


def setup(config: Config, *, num_processes: int = 1, algorithm: Algorithm | None = None) -> Setup:
    """Builds the :class:`Setup` of ``config``.

    Args:
      config: a validated config (`config.load_config`).
      num_processes: learner processes (``jax.distributed``); the mesh spans them all.
      algorithm: overrides the algorithm ``learner.algo`` names (tests wrap its loss).

    Raises:
      ConfigError: a bad env id or options, or batch sizes that do not divide.
    """
    obs_space, action_space, term_names = env_spaces(config)
    mesh = make_mesh(config.learner.num_devices)
    sizes = derived_sizes(config, mesh.size, num_processes)
    policy = make_policy(obs_space, action_space, config.network, config.learner.obs_norm)
    optimizer = make_optimizer(config, sizes["total_updates"])
    update, put_batch, replicated = make_update(policy, optimizer, config, mesh, algorithm)
    return Setup(
        config=config,
        obs_space=obs_space,
        action_space=action_space,
        term_names=term_names,
        mesh=mesh,
        sizes=sizes,
        policy=policy,
        optimizer=optimizer,
        update=update,
        put_batch=put_batch,
        replicated=replicated,
    )


class CompiledAhead:
    """The jitted update, compiled on a background thread from the state's shapes (XLA
    releases the GIL) while the params init compiles and the actors start. The first call
    waits for that compile, which leaves the executable in JAX's cache, so no call compiles
    again. Should the compile fail, the first call compiles as usual and reports the error.
    """

    def __init__(self, s: Setup, key: jax.Array, then: Callable[[TrainState], None] | None = None):
        self._jitted = s.update

        def compile_it() -> None:
            try:
                shapes = s.state_shapes()
                s.update.lower(shapes, s.example_batch(), key).compile()
                if then is not None:  # more compiling (given the shapes), while updates run
                    then(shapes)
            except Exception:  # noqa: BLE001 - the first real call reports it
                pass

        # Not a daemon: should the run fail before its first update (a refused Redis
        # password, say), the interpreter waits for the compile to end instead of tearing
        # the thread down inside XLA, which aborts the process.
        self._thread: threading.Thread | None = threading.Thread(
            target=compile_it, name="compile-update", daemon=False
        )
        self._thread.start()

    def __call__(self, *args):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self._jitted(*args)

"""Gymnasium wrappers around the pure driving step: ``DrivingEnv`` and ``DrivingVectorEnv``.

Both classes run the same jitted functions of :mod:`jaxrl_impala.envs.dynamics` (``DrivingEnv`` is
a batch of one without autoreset), so env ``i`` of ``DrivingVectorEnv(num_envs, seed=...)`` and a
``DrivingEnv`` reset with the same seed produce the same transitions, episode after episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from jaxrl_impala.envs import dynamics
from jaxrl_impala.envs.config import (
    ACTION_MODES,
    OBS_MODES,
    REWARD_TERMS,
    DrivingConfig,
    make_config,
)
from jaxrl_impala.envs.render import labels_to_rgb

_RENDER_SIZE = 384
_RENDER_SCALE = 0.25  # metres per pixel


def _check_modes(obs_mode: str, action_mode: str, render_mode: str | None) -> None:
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode={obs_mode!r} is not one of {OBS_MODES}")
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode={action_mode!r} is not one of {ACTION_MODES}")
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode={render_mode!r}: only None or 'rgb_array' is supported")


def make_spaces(cfg: DrivingConfig, obs_mode: str, action_mode: str):
    """The single-env observation and action spaces."""
    vec = gym.spaces.Box(-1.0, 1.0, (cfg.vector_obs_size,), np.float32)
    pix = gym.spaces.Box(0, 255, (cfg.pixels_size, cfg.pixels_size, 3), np.uint8)
    obs_space = {
        "vector": vec,
        "pixels": pix,
        "dict": gym.spaces.Dict({"vector": vec, "pixels": pix}),
    }[obs_mode]
    if action_mode == "continuous":
        act_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    else:
        act_space = gym.spaces.Discrete(cfg.num_discrete_actions)
    return obs_space, act_space


def discrete_table(cfg: DrivingConfig) -> np.ndarray:
    """Continuous controls of each discrete action. float32 [num_discrete_actions, 3].

    Action ``i`` is steer ``discrete_steer[i // A]`` with acceleration ``discrete_accel[i % A]``
    (``A = len(discrete_accel)``); a positive acceleration is throttle, a negative one brake.
    """
    rows = []
    for st in cfg.discrete_steer:
        for acc in cfg.discrete_accel:
            rows.append((st, max(acc, 0.0), max(-acc, 0.0)))
    return np.asarray(rows, np.float32)


def nearest_discrete(cfg: DrivingConfig, controls: np.ndarray) -> np.ndarray:
    """Nearest grid action of continuous controls [B, 3] (steer and throttle - brake). int [B]
    (numpy, or jax for a jax array: it runs inside jitted code too)."""
    xp = jnp if isinstance(controls, jax.Array) else np
    steer = xp.asarray(cfg.discrete_steer, np.float32)
    acc = xp.asarray(cfg.discrete_accel, np.float32)
    i = xp.argmin(xp.abs(controls[:, :1] - steer[None]), axis=1)
    j = xp.argmin(xp.abs((controls[:, 1:2] - controls[:, 2:3]) - acc[None]), axis=1)
    return (i * len(acc) + j).astype(np.int64 if xp is np else jnp.int32)


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _seed_keys(seeds: Sequence[int]) -> np.ndarray:
    """``jax.random.PRNGKey(seed)`` for each seed, built in one numpy op. uint32 [B, 2].

    Same as PRNGKey with 32-bit JAX: the key is ``[0, seed mod 2**32]``.
    """
    lo = np.asarray([int(s) % 2**32 for s in seeds], np.uint64).astype(np.uint32)
    return np.stack([np.zeros_like(lo), lo], axis=1)


class _ControlsMixin:
    cfg: DrivingConfig
    action_mode: str
    _table: np.ndarray

    def _controls(self, actions: Any, batch: int) -> np.ndarray:
        if self.action_mode == "continuous":
            a = np.asarray(actions, np.float32).reshape(batch, 3)
        else:
            a = self._table[np.asarray(actions, np.int64).reshape(batch)]
        return a


class DrivingEnv(_ControlsMixin, gym.Env):
    """Procedural driving with traffic and pedestrians (see ``docs/driving_env.md``).

    Args:
        obs_mode: ``"vector"`` (LiDAR + ego features, float32 [D]), ``"pixels"`` (top-down
            occupancy, uint8 [H, W, 3]) or ``"dict"`` (both, keys ``vector`` and ``pixels``).
        action_mode: ``"continuous"`` (Box(-1, 1, (3,)) = steer, throttle, brake) or
            ``"discrete"`` (a steer x acceleration grid, see :func:`discrete_table`).
        render_mode: ``None`` or ``"rgb_array"``.
        config: a base :class:`DrivingConfig`; ``**overrides`` replace its fields.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs_mode: str = "vector",
        action_mode: str = "continuous",
        render_mode: str | None = None,
        config: DrivingConfig | None = None,
        **overrides: Any,
    ) -> None:
        _check_modes(obs_mode, action_mode, render_mode)
        self.cfg = make_config(config, **overrides)
        self.obs_mode, self.action_mode, self.render_mode = obs_mode, action_mode, render_mode
        self.observation_space, self.action_space = make_spaces(self.cfg, obs_mode, action_mode)
        self._table = discrete_table(self.cfg)
        self._state: jax.Array | None = None  # packed uint32 [1, F]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode. A seed restarts the env's RNG stream; without one the episode is
        drawn from the continuing stream (as the vector env's autoreset does)."""
        super().reset(seed=seed)
        if seed is not None or self._state is None:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            keys = _seed_keys([seed])
        else:
            keys = self._state[:, :2]  # the key (first leaf): continue the stream, like autoreset
        self._state, obs = dynamics.batch_reset(self.cfg, self.obs_mode, keys)
        return self._unbatch_obs(obs), {"route_completion": 0.0}

    def step(self, action: Any):
        if self._state is None:
            raise RuntimeError("DrivingEnv.step() called before reset()")
        controls = self._controls(action, 1)
        self._state, obs, _, scalars = dynamics.batch_step(
            self.cfg, self.obs_mode, False, self._state, controls
        )
        rew, term, trunc, info = dynamics.unpack_scalars(scalars)
        out = {k: v[0].item() for k, v in info.items() if k != "reward_terms"}
        out["reward_terms"] = {k: float(v[0]) for k, v in info["reward_terms"].items()}
        return (self._unbatch_obs(obs), float(rew[0]), bool(term[0]), bool(trunc[0]), out)

    @property
    def state(self) -> dynamics.EnvState:
        """The env state as a batch of one (a pytree of jax arrays with leading axis 1)."""
        if self._state is None:
            raise RuntimeError("DrivingEnv: call reset() first")
        return dynamics.batch_unpack(self.cfg, self._state)

    def _unbatch_obs(self, obs: Any) -> Any:
        return jax.tree.map(lambda a: np.asarray(a[0]), obs)

    def scripted_action(self) -> np.ndarray | int:
        """The scripted controller's action for the current state (in this env's action mode)."""
        if self._state is None:
            raise RuntimeError("DrivingEnv: call reset() first")
        controls = np.asarray(dynamics.batch_scripted(self.cfg, self._state))
        if self.action_mode == "discrete":
            return int(nearest_discrete(self.cfg, controls)[0])
        return controls[0]

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        labels = dynamics.render_one(self.cfg, self._state[:1], _RENDER_SIZE, _RENDER_SCALE)
        return labels_to_rgb(np.asarray(labels), self.state, self.cfg)


class DrivingVectorEnv(_ControlsMixin, VectorEnv):
    """``num_envs`` driving envs stepped together as arrays by one jitted call per step.

    Autoreset: ``AutoresetMode.SAME_STEP``. When env ``i`` terminates or truncates, the returned
    ``obs[i]`` is already the first observation of its next episode; the observation the step
    reached is ``infos["final_obs"][i]`` (a dense array for all envs; ``infos["_final_obs"]`` marks
    the envs that ended). ``rewards``, ``terminations``, ``truncations`` and the other infos
    describe the step that was taken. The next episode is drawn from the env's own RNG stream,
    exactly as :meth:`DrivingEnv.reset` without a seed does.

    Args:
        num_envs: B, envs in the batch.
        obs_mode, action_mode, render_mode, config, **overrides: as :class:`DrivingEnv`.
        seed: optional seed for the first reset (env i gets ``seed + i``).
    """

    metadata = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["rgb_array"],
        "render_fps": 10,
    }

    def __init__(
        self,
        num_envs: int,
        obs_mode: str = "vector",
        action_mode: str = "continuous",
        render_mode: str | None = None,
        config: DrivingConfig | None = None,
        seed: int | None = None,
        **overrides: Any,
    ) -> None:
        _check_modes(obs_mode, action_mode, render_mode)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.cfg = make_config(config, **overrides)
        self.num_envs = int(num_envs)
        self.obs_mode, self.action_mode, self.render_mode = obs_mode, action_mode, render_mode
        self.single_observation_space, self.single_action_space = make_spaces(
            self.cfg, obs_mode, action_mode
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._table = discrete_table(self.cfg)
        self._seed = seed
        self._state: jax.Array | None = None  # packed uint32 [B, F]

    @property
    def state(self) -> dynamics.EnvState:
        """The batched env state (a pytree of jax arrays with leading axis B)."""
        return dynamics.batch_unpack(self.cfg, self._packed())

    def _packed(self) -> jax.Array:
        if self._state is None:
            raise RuntimeError("DrivingVectorEnv: call reset() first")
        return self._state

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset every env. ``seed``: an int (env i gets seed + i), a list of B ints, or None
        (the constructor's seed, else seeds drawn from OS entropy)."""
        if seed is None:
            seed = self._seed
        if seed is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(self.num_envs)]
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        self._seed = None  # later resets without a seed draw fresh seeds
        self._state, obs = dynamics.batch_reset(self.cfg, self.obs_mode, _seed_keys(seeds))
        return _to_numpy(obs), {}

    def step(self, actions: Any):
        controls = self._controls(actions, self.num_envs)
        self._state, obs, final_obs, scalars = dynamics.batch_step(
            self.cfg, self.obs_mode, True, self._packed(), controls
        )
        rew, term, trunc, infos = dynamics.unpack_scalars(scalars)
        infos["final_obs"] = _to_numpy(final_obs)
        infos["_final_obs"] = term | trunc
        return _to_numpy(obs), rew, term, trunc, infos

    # ---------------------------------------------------------------- the pure step
    # For callers that step the env inside their own jitted code (the actor fuses the policy
    # and T env steps into one ``lax.scan``): the packed state in and out, no host round trip.
    @property
    def packed_state(self) -> jax.Array:
        """The batched state as one uint32 [B, F] array (what :meth:`pure_step` steps)."""
        return self._packed()

    @packed_state.setter
    def packed_state(self, packed: jax.Array) -> None:
        if self._state is not None and packed.shape != self._state.shape:
            raise ValueError(f"packed state of shape {packed.shape}, expected {self._state.shape}")
        self._state = packed

    def pure_step(self) -> Callable:
        """A pure, jittable version of :meth:`step` on the packed state.

        ``step(packed uint32 [B, F], actions) -> (packed, obs, final_obs, reward [B],
        terminated [B], truncated [B], reward_terms [B, len(REWARD_TERMS)])``, with ``actions``
        float32 [B, 3] or int [B] as :meth:`step` takes them, the same SAME_STEP autoreset, and
        ``reward_terms`` in :data:`REWARD_TERMS` order. ``step(self.packed_state, a)`` gives
        the transition ``self.step(a)`` would.
        """
        cfg, obs_mode = self.cfg, self.obs_mode
        table = jnp.asarray(self._table) if self.action_mode == "discrete" else None
        col = {k: i for i, k in enumerate(dynamics.SCALARS)}
        term_cols = jnp.asarray([col[f"reward_terms/{k}"] for k in REWARD_TERMS])

        def step(packed, actions):
            if table is None:
                controls = jnp.asarray(actions, jnp.float32).reshape(-1, 3)
            else:
                controls = table[jnp.asarray(actions).reshape(-1)]
            packed, obs, final_obs, scalars = dynamics.batch_step(
                cfg, obs_mode, True, packed, controls
            )
            return (
                packed,
                obs,
                final_obs,
                scalars[:, col["reward"]],
                scalars[:, col["terminated"]] > 0.5,
                scalars[:, col["truncated"]] > 0.5,
                scalars[:, term_cols],
            )

        return step

    def scripted_actions(self) -> np.ndarray:
        """The scripted controller's action for every env, in this env's action mode.

        Returns:
            float32 [B, 3] (continuous) or int64 [B] (discrete: the nearest grid action).
        """
        controls = np.asarray(dynamics.batch_scripted(self.cfg, self._packed()))
        if self.action_mode == "discrete":
            return nearest_discrete(self.cfg, controls)
        return controls

    def pure_scripted(self) -> Callable:
        """A pure, jittable :meth:`scripted_actions` on the packed state:
        ``scripted(packed uint32 [B, F]) -> float32 [B, 3]`` (continuous) or ``int32 [B]``
        (discrete). ``scripted(self.packed_state)`` is ``self.scripted_actions()``."""
        cfg, discrete = self.cfg, self.action_mode == "discrete"

        def scripted(packed):
            controls = dynamics.batch_scripted(cfg, packed)
            return nearest_discrete(cfg, controls) if discrete else controls

        return scripted

    def render(self) -> np.ndarray | None:
        """A top-down frame of env 0, uint8 [H, W, 3] (with ``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        labels = dynamics.render_one(self.cfg, self._state[:1], _RENDER_SIZE, _RENDER_SCALE)
        return labels_to_rgb(np.asarray(labels), self.state, self.cfg)


def reference_returns(
    num_episodes: int = 50,
    seed: int = 0,
    max_steps: int | None = None,
    **env_kwargs: Any,
) -> dict[str, float]:
    """Mean episode returns of the scripted controller and of a uniform random policy.

    Runs ``num_episodes`` envs side by side in one :class:`DrivingVectorEnv` (env i seeded
    ``seed + i``), one episode each, for each policy.

    Args:
        num_episodes: episodes (= envs) per policy.
        seed: base seed.
        max_steps: safety cap on vector steps (default: the config's max_episode_steps).
        **env_kwargs: DrivingVectorEnv options (obs_mode, action_mode, config fields).

    Returns:
        ``{"scripted": mean return, "random": mean return, "scripted_completion": fraction of
        routes finished, "scripted_collision": fraction with a collision, "random_completion"...}``.
    """
    env_kwargs.setdefault("obs_mode", "vector")
    env = DrivingVectorEnv(num_episodes, **env_kwargs)
    steps = max_steps or env.cfg.max_episode_steps
    out: dict[str, float] = {}
    for policy in ("scripted", "random"):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        ret = np.zeros(num_episodes)
        done = np.zeros(num_episodes, bool)
        completed = np.zeros(num_episodes, bool)
        collided = np.zeros(num_episodes, bool)
        for _ in range(steps):
            a = env.scripted_actions() if policy == "scripted" else env.action_space.sample()
            _, r, term, trunc, info = env.step(a)
            live = ~done
            ret += np.where(live, r, 0.0)
            completed |= live & (info["route_completion"] >= 1.0)
            collided |= live & info["collision"]
            done |= term | trunc
            if done.all():
                break
        out[policy] = float(ret.mean())
        out[f"{policy}_completion"] = float(completed.mean())
        out[f"{policy}_collision"] = float(collided.mean())
    env.close()
    return out

"""Vector-env helpers and wrappers the actors apply by config."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import jax
import numpy as np
from gymnasium.vector.utils import batch_space


def final_observations(info: dict, obs: Any, mask: np.ndarray) -> Any:
    """The final observation of every env whose episode just ended (``obs`` elsewhere)."""
    final = info.get("final_obs")
    if final is None:
        return obs
    if isinstance(final, np.ndarray) and final.dtype == object:
        rows = [final[i] if mask[i] else None for i in range(len(mask))]
        if isinstance(obs, dict):
            return {
                k: np.stack([r[k] if r is not None else obs[k][i] for i, r in enumerate(rows)])
                for k in obs
            }
        return np.stack([r if r is not None else obs[i] for i, r in enumerate(rows)])
    return jax.tree.map(
        lambda f, o: np.where(mask.reshape((-1,) + (1,) * (o.ndim - 1)), f, o), final, obs
    )


class _KeepsScripted:
    """For wrappers that change observations only: the inner env's scripted controller
    (``scripted_actions()`` and ``pure_scripted()``), when it has one, is the wrapper's (an
    AttributeError otherwise, so ``hasattr`` tells)."""

    env: Any

    @property
    def scripted_actions(self):
        return self.env.scripted_actions

    @property
    def pure_scripted(self):
        return self.env.pure_scripted


class FrameStack(_KeepsScripted, gym.vector.VectorWrapper):
    """The last ``k`` observations of every env, concatenated along the last axis (oldest
    first): ``[D]`` becomes ``[k * D]``, an image ``[H, W, C]`` becomes ``[H, W, k * C]``.

    Single frames carry no velocities; a short stack lets an MLP see how the LiDAR returns
    move. Built for same-step autoreset (what the trainer uses): an env whose episode just
    ended starts its new stack from the reset observation repeated ``k`` times, and
    ``info["final_obs"]`` (with ``info["_final_obs"]``) holds the stacked final observation
    of every env that ended, for bootstrapping at a time limit.
    """

    def __init__(self, env: gym.vector.VectorEnv, k: int):
        super().__init__(env)
        space = env.single_observation_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"frame stacking needs Box observations, got {space}")
        if k < 1:
            raise ValueError(f"frame stack size must be >= 1, got {k}")
        self.k = k
        self.single_observation_space = gym.spaces.Box(
            np.concatenate([space.low] * k, axis=-1),
            np.concatenate([space.high] * k, axis=-1),
            dtype=space.dtype,
        )
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)
        self._frames: np.ndarray | None = None  # [B, k, *obs_shape]

    def _stacked(self, frames: np.ndarray) -> np.ndarray:
        return np.concatenate([frames[:, i] for i in range(self.k)], axis=-1)

    def reset(self, *, seed: Any = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        obs = np.asarray(obs)
        self._frames = np.repeat(obs[:, None], self.k, axis=1)
        return self._stacked(self._frames), info

    def step(self, actions):
        if self._frames is None:
            raise RuntimeError("FrameStack: call reset() first")
        obs, reward, term, trunc, info = self.env.step(actions)
        obs = np.asarray(obs)
        done = np.asarray(term, bool) | np.asarray(trunc, bool)
        frames = np.concatenate([self._frames[:, 1:], obs[:, None]], axis=1)
        if done.any():
            final = np.asarray(final_observations(info, obs, done))
            ended = np.concatenate([self._frames[:, 1:], final[:, None]], axis=1)
            info = dict(info)
            info["final_obs"] = self._stacked(ended)
            info["_final_obs"] = done
            frames[done] = np.repeat(obs[done][:, None], self.k, axis=1)
        self._frames = frames
        return self._stacked(frames), reward, term, trunc, info


class ObsIndices(_KeepsScripted, gym.vector.VectorWrapper):
    """Keeps entries ``indices`` (in that order) of a flat Box observation: ``[D]`` becomes
    ``[len(indices)]``. A partially observed variant of any Box env (CartPole's positions
    without their velocities: ``[0, 2]``), for memory tests. ``info["final_obs"]`` is cut the
    same way. An env with a pure JAX step (``pure_step()``, ``packed_state``) keeps one.
    """

    def __init__(self, env: gym.vector.VectorEnv, indices: tuple[int, ...]):
        super().__init__(env)
        space = env.single_observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"observation indices need a flat Box observation, got {space}")
        bad = [i for i in indices if not 0 <= i < space.shape[0]]
        if bad or not indices:
            raise ValueError(
                f"indices {list(indices)} out of range for observations of size {space.shape[0]}"
            )
        self.indices = np.asarray(indices, np.int64)
        self.single_observation_space = gym.spaces.Box(
            space.low[self.indices], space.high[self.indices], dtype=space.dtype
        )
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def _cut(self, obs: Any) -> Any:
        return obs[..., self.indices]

    def reset(self, *, seed: Any = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._cut(np.asarray(obs)), info

    def step(self, actions):
        obs, reward, term, trunc, info = self.env.step(actions)
        final = info.get("final_obs")
        if final is not None:
            done = np.asarray(term, bool) | np.asarray(trunc, bool)
            info = dict(info)
            info["final_obs"] = self._cut(np.asarray(final_observations(info, obs, done)))
        return self._cut(np.asarray(obs)), reward, term, trunc, info

    @property
    def pure_step(self):
        """The inner env's ``pure_step`` with its observations cut (AttributeError when the
        inner env has none, so ``hasattr(env, "pure_step")`` tells)."""
        inner = self.env.pure_step
        indices = self.indices

        def make():
            step = inner()

            def cut_step(packed, actions):
                packed, obs, final_obs, *rest = step(packed, actions)
                return (packed, obs[..., indices], final_obs[..., indices], *rest)

            return cut_step

        return make

    @property
    def packed_state(self):
        return self.env.packed_state

    @packed_state.setter
    def packed_state(self, packed) -> None:
        self.env.packed_state = packed

"""The actor's env factory: a vector env of ``config.env``, and what the learner needs of it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from jaxrl_impala.config import Config, ConfigError
from jaxrl_impala.envs import ENV_ID, REWARD_TERMS


def make_vector_env(config: Config, num_envs: int, **extra: Any) -> gym.vector.VectorEnv:
    """The vector env of ``config.env`` with same-step autoreset (observations cut to
    ``env.obs_indices`` when given, and frame stacking when ``env.frame_stack > 1``);
    ``extra`` adds constructor options (e.g. ``render_mode``).

    ``DrivingVectorEnv`` steps all envs as arrays; any other gymnasium id runs in a
    ``SyncVectorEnv``. A bad id is a one-line error naming it.
    """
    env = _make_vector_env(config, num_envs, **extra)
    if config.env.obs_indices:
        from jaxrl_impala.envs.wrappers import ObsIndices

        try:
            env = ObsIndices(env, config.env.obs_indices)
        except ValueError as e:
            env.close()
            raise ConfigError(f"env.obs_indices={list(config.env.obs_indices)}: {e}") from None
    if config.env.frame_stack > 1:
        from jaxrl_impala.envs.wrappers import FrameStack

        try:
            env = FrameStack(env, config.env.frame_stack)
        except ValueError as e:
            env.close()
            raise ConfigError(f"env.frame_stack={config.env.frame_stack}: {e}") from None
    return env


def env_kwargs(config: Config) -> dict[str, Any]:
    """The env constructor options of ``config.env`` (its kwargs plus the time limit)."""
    kwargs = dict(config.env.kwargs)
    if config.env.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.env.max_episode_steps
    return kwargs


def _make_vector_env(config: Config, num_envs: int, **extra: Any) -> gym.vector.VectorEnv:
    ec = config.env
    kwargs = {**env_kwargs(config), **extra}
    if ec.id == ENV_ID:
        from jaxrl_impala.envs import DrivingVectorEnv

        try:
            return DrivingVectorEnv(num_envs, **kwargs)
        except TypeError as e:
            raise ConfigError(f"env.kwargs: {e}") from None
    try:
        return gym.make_vec(
            ec.id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **kwargs,
        )
    except gym.error.Error as e:
        raise ConfigError(f"env.id={ec.id!r}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"env.kwargs for {ec.id!r}: {e}") from None


def reward_term_names(config: Config) -> tuple[str, ...]:
    """Names of the per-term rewards the env reports in ``info["reward_terms"]``."""
    if config.env.id == ENV_ID:
        return tuple(REWARD_TERMS)
    return ()


def check_teacher(config: Config, env: gym.vector.VectorEnv) -> None:
    """``learner.teacher_coef > 0`` needs an env with a scripted controller
    (``scripted_actions()``, as DrivingEnv has), and ``teacher_loss: mse`` Box actions.

    Raises:
      ConfigError: it has none.
    """
    lc = config.learner
    if not lc.taught:
        return
    if not hasattr(env, "scripted_actions"):
        raise ConfigError(
            f"learner.teacher_coef={lc.teacher_coef} distils the env's scripted "
            f"controller, and env.id={config.env.id!r} has none (DrivingEnv has one); "
            f"set learner.teacher_coef=0"
        )
    if lc.teacher_loss == "mse" and not isinstance(env.single_action_space, gym.spaces.Box):
        raise ConfigError(
            f"learner.teacher_loss=mse needs Box actions, and the env's are "
            f"{env.single_action_space}; use learner.teacher_loss=nll"
        )


def env_spaces(config: Config) -> tuple[gym.Space, gym.Space, tuple[str, ...]]:
    """(single observation space, single action space, reward-term names) of the env.

    Raises:
      ConfigError: a bad env (see :func:`make_vector_env`), or one without the scripted
        controller ``learner.teacher_coef`` asks for.
    """
    env = make_vector_env(config, 1)
    try:
        check_teacher(config, env)
        return env.single_observation_space, env.single_action_space, reward_term_names(config)
    finally:
        env.close()

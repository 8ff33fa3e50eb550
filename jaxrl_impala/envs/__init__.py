"""The built-in driving task: ``DrivingEnv``, ``DrivingVectorEnv`` and their config.

Importing this package registers the gymnasium id ``jaxrl_impala/Driving-v0``::

    env = gymnasium.make("jaxrl_impala/Driving-v0", obs_mode="vector", action_mode="continuous")
"""

import gymnasium as gym

from jaxrl_impala.envs.config import REWARD_TERMS, DrivingConfig
from jaxrl_impala.envs.driving import (
    DrivingEnv,
    DrivingVectorEnv,
    discrete_table,
    reference_returns,
)

ENV_ID = "jaxrl_impala/Driving-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="jaxrl_impala.envs.driving:DrivingEnv",
        # the env truncates itself at config.max_episode_steps (reported in info), so no
        # TimeLimit wrapper is added on top
        max_episode_steps=None,
    )


def __getattr__(name: str):
    # the GIF helpers load lazily so `python -m jaxrl_impala.envs.gif` runs its module once
    if name in ("write_gif", "record_episode"):
        from jaxrl_impala.envs import gif

        return getattr(gif, name)
    raise AttributeError(f"module 'jaxrl_impala.envs' has no attribute {name!r}")


__all__ = [
    "ENV_ID",
    "REWARD_TERMS",
    "DrivingConfig",
    "DrivingEnv",
    "DrivingVectorEnv",
    "discrete_table",
    "record_episode",
    "reference_returns",
    "write_gif",
]

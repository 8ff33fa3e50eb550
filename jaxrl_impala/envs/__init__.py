"""The built-in driving task: ``DrivingEnv``, ``DrivingVectorEnv`` and their config.

Importing ``jaxrl_impala`` registers the gymnasium id ``jaxrl_impala/Driving-v0``::

    env = gymnasium.make("jaxrl_impala/Driving-v0", obs_mode="vector", action_mode="continuous")
"""

from jaxrl_impala.config import DRIVING_ENV_ID as ENV_ID
from jaxrl_impala.envs.config import REWARD_TERMS, DrivingConfig
from jaxrl_impala.envs.driving import (
    DrivingEnv,
    DrivingVectorEnv,
    discrete_table,
    reference_returns,
)

# Importing the package root (always done first) registered ENV_ID with gymnasium.


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

"""jaxrl_impala: IMPALA / APPO / PPO actor-learner training in JAX.

The public API is what ``__all__`` lists; everything else is an implementation detail.
The math is imported lazily (PEP 562), so processes that only need the transport or the
config (actors attach, tests start helpers) don't pay for importing JAX. Importing the
package registers the gymnasium id ``jaxrl_impala/Driving-v0``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_CORE = (
    "Categorical",
    "DiagGaussian",
    "GAEReturns",
    "MultiCategorical",
    "VTraceReturns",
    "appo_loss",
    "distribution_for_space",
    "entropy_loss",
    "explained_variance",
    "gae",
    "impala_pg_loss",
    "lambda_returns",
    "ppo_loss",
    "ppo_policy_loss",
    "standardize",
    "value_loss",
    "vtrace",
)
_ENVS = ("DrivingEnv", "DrivingVectorEnv")

__all__ = [*_CORE, *_ENVS]


def __getattr__(name: str) -> Any:
    if name in _CORE:
        return getattr(importlib.import_module("jaxrl_impala.core"), name)
    if name in _ENVS:
        return getattr(importlib.import_module("jaxrl_impala.envs"), name)
    raise AttributeError(f"module 'jaxrl_impala' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def _register_envs() -> None:
    import gymnasium as gym

    from jaxrl_impala.config import DRIVING_ENV_ID

    if DRIVING_ENV_ID not in gym.registry:
        gym.register(
            id=DRIVING_ENV_ID,
            entry_point="jaxrl_impala.envs.driving:DrivingEnv",
            max_episode_steps=None,  # the env truncates itself at its max_episode_steps
        )


_register_envs()

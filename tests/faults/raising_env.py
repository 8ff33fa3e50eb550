"""A CartPole that raises after a set number of steps: the "env that crashes" fault.

Actors find it through gymnasium's ``module:EnvId`` syntax (``raising_env:RaisingCartPole-v0``)
with ``tests/faults`` on ``PYTHONPATH``.
"""

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class RaisingCartPole(CartPoleEnv):
    def __init__(self, raise_after: int = 50, **kwargs):
        super().__init__(**kwargs)
        self.raise_after = raise_after
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > self.raise_after:
            raise RuntimeError(f"injected env fault after {self.raise_after} steps")
        return super().step(action)


if "RaisingCartPole-v0" not in gym.registry:
    gym.register("RaisingCartPole-v0", entry_point=RaisingCartPole, max_episode_steps=500)

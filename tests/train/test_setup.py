"""The one setup function: the unroll frame spec it builds from the env's spaces."""

import gymnasium as gym

from jaxrl_impala import unroll
from jaxrl_impala.config import load_config
from jaxrl_impala.train.setup import _action_bounds, setup


def test_the_setup_bounds_discrete_actions_by_the_space():
    assert _action_bounds(gym.spaces.Discrete(4, start=2)) == (2, 5)
    assert _action_bounds(gym.spaces.MultiDiscrete([3, 5])) == ((0, 0), (2, 4))
    assert _action_bounds(gym.spaces.Box(-1, 1, (2,))) is None
    spec, _ = setup(load_config(None, ["env.id=CartPole-v1"])).frame_spec()
    assert spec.ranges == {"actions": (0, 1)} and set(spec.meta) == set(unroll.META_FIELDS)

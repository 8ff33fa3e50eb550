"""The one setup function: the unroll frame spec it builds from the env's spaces."""

import gymnasium as gym
import pytest

from jaxrl_impala import unroll
from jaxrl_impala.config import ConfigError, load_config
from jaxrl_impala.train.setup import _action_bounds, setup


def test_the_setup_bounds_discrete_actions_by_the_space():
    assert _action_bounds(gym.spaces.Discrete(4, start=2)) == (2, 5)
    assert _action_bounds(gym.spaces.MultiDiscrete([3, 5])) == ((0, 0), (2, 4))
    assert _action_bounds(gym.spaces.Box(-1, 1, (2,))) is None
    spec, _ = setup(load_config(None, ["env.id=CartPole-v1"])).frame_spec()
    assert spec.ranges == {"actions": (0, 1)} and set(spec.meta) == set(unroll.META_FIELDS)


def test_a_teacher_needs_an_env_with_a_scripted_controller_and_travels_in_the_frames():
    with pytest.raises(ConfigError, match="has none .DrivingEnv has one.; set learner.teach"):
        setup(load_config(None, ["env.id=CartPole-v1", "learner.teacher_coef=0.1"]))
    discrete = [
        "env.num_envs=4",
        "env.kwargs.action_mode=discrete",
        "network.hidden=[8]",
        "learner.teacher_coef=0.1",
        "learner.teacher_loss=nll",  # the preset's mse needs Box actions
    ]
    s = setup(load_config("configs/driving.yaml", discrete))
    spec, _ = s.frame_spec()
    # the teacher's actions: the actions' shape and dtype, within the same bounds
    assert spec.fields["teacher_actions"] == spec.fields["actions"]
    assert spec.ranges["teacher_actions"] == spec.ranges["actions"] == (0, s.action_space.n - 1)
    assert "teacher_actions" in s.example_batch()
    with pytest.raises(ConfigError, match="teacher_loss=mse needs Box actions"):
        setup(load_config("configs/driving.yaml", [*discrete, "learner.teacher_loss=mse"]))
    with pytest.raises(ConfigError, match="teacher_loss: 'kl' is not one of nll, mse"):
        load_config(None, ["learner.teacher_loss=kl"])

"""``python -m jaxrl_impala.evaluate RUN --set env.*``: the env a run is scored in."""

from pathlib import Path

import pytest

from jaxrl_impala.config import ConfigError
from jaxrl_impala.evaluate import env_overridden, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "configs/driving.yaml").read_text())
    return path


def test_env_keys_change_the_evaluation_env_only(run_config):
    run, scored = env_overridden(run_config, ["env.kwargs.reward_collision=-30"])
    assert scored.env.kwargs["reward_collision"] == -30
    assert "reward_collision" not in run.env.kwargs
    assert scored.learner == run.learner and scored.network == run.network
    assert scored.env.kwargs["pedestrian_tracks"] is True  # the rest of the run's env stays
    same, also = env_overridden(run_config, [])
    assert same == also == run


@pytest.mark.parametrize(
    "override, message",
    [
        ("learner.gamma=0.9", "env.* keys only"),
        ("env.kwargs.lidar_beams=30", "changes the env's spaces"),
        ("env.kwargs.pedestrian_tracks=false", "changes the env's spaces"),
    ],
)
def test_a_key_the_policy_cannot_take_is_refused(run_config, override, message):
    with pytest.raises(ConfigError, match=message):
        env_overridden(run_config, [override])


def test_the_command_reports_a_refused_key_in_one_line(run_config, capsys):
    assert main([str(run_config.parent), "--set", "learner.gamma=0.9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "env.* keys only" in err

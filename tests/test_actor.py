"""The actor's rollout: seeding of restarted actors."""

import jax
import numpy as np

from jaxrl_impala.actor import Rollout, flatten_params, restart_seed
from jaxrl_impala.config import load_config


def _first_unroll(incarnation: int) -> dict:
    config = load_config("configs/debug.yaml")
    rollout = Rollout(config, actor_id=1, incarnation=incarnation)
    zeros = jax.tree.map(
        lambda t: np.zeros(t.shape, t.dtype), (rollout.params_template, rollout.stats_template)
    )
    rollout.set_params(flatten_params(*zeros))
    arrays, _ = rollout.unroll(policy_version=0)
    rollout.env.close()
    return arrays


def test_a_restarted_actor_plays_fresh_scenarios_and_a_first_start_is_reproducible():
    first, again, restarted = _first_unroll(0), _first_unroll(0), _first_unroll(1)
    np.testing.assert_array_equal(first["obs"], again["obs"])
    np.testing.assert_array_equal(first["actions"], again["actions"])
    # A restart must not replay its first life's initial states or its action noise.
    assert not np.allclose(first["obs"][0], restarted["obs"][0])
    assert not np.array_equal(first["actions"], restarted["actions"])


def test_restart_seeds_are_distinct_and_clear_of_training_and_evaluation_seeds():
    seeds = {restart_seed(s, a, k) for s in range(3) for a in range(4) for k in range(1, 200)}
    assert len(seeds) == 3 * 4 * 199
    # First-life training seeds stay below 1,000,000 for small train.seed; evaluation uses
    # 1,000,000 + 1000 * seed and 2,000,000 (evaluate CLI) upwards, a few thousand wide.
    assert min(seeds) >= 2**30 and max(seeds) + 1024 < 2**31

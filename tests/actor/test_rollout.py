"""The actor's rollout: seeding of restarted actors, the fused unroll against the step by step
one (the scripted controller's actions, for ``learner.teacher_coef``, included)."""

import jax
import numpy as np
import pytest

from jaxrl_impala.actor.envs import make_vector_env
from jaxrl_impala.actor.rollout import Rollout, restart_seed
from jaxrl_impala.config import load_config
from jaxrl_impala.networks import clip_to_space
from jaxrl_impala.transport.codec import FrameError
from jaxrl_impala.unroll import params_to_frame


def _first_unroll(incarnation: int) -> dict:
    config = load_config("configs/debug.yaml")
    rollout = Rollout(config, actor_id=1, incarnation=incarnation)
    zeros = jax.tree.map(
        lambda t: np.zeros(t.shape, t.dtype), (rollout.params_template, rollout.stats_template)
    )
    rollout.set_params(params_to_frame(*zeros))
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


def _random_params(rollout: Rollout, seed: int) -> dict:
    """Random (not zero) weights, so the policy's actions differ from env to env."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda t: rng.normal(0.0, 1.0, t.shape).astype(t.dtype), rollout.params_template
    )
    stats = jax.tree.map(lambda t: np.zeros(t.shape, t.dtype), rollout.stats_template)
    return params_to_frame(params, stats)


# (weights seeded so that some episodes crash before the time limit)
@pytest.mark.parametrize(
    "action_mode,core,seed",
    [("continuous", "none", 3), ("discrete", "none", 3), ("continuous", "lstm", 7)],
)
def test_fused_unroll_matches_the_step_by_step_unroll(action_mode, core, seed):
    # Episodes of at most 20 steps, 4 unrolls of 8, wild random weights: terminations,
    # truncations (with their bootstrap values), episode returns and autoresets all happen
    # inside the fused scan.
    config = load_config(
        "configs/driving.yaml",
        [
            "env.num_envs=16",
            "env.max_episode_steps=20",
            f"env.kwargs.action_mode={action_mode}",
            "rollout.length=8",
            "network.hidden=[16]",
            f"network.core={core}",
            "network.core_size=8",
            "learner.teacher_coef=0.1",  # the scripted controller's actions ride along
            "learner.teacher_loss=nll",  # (the preset's mse needs Box actions)
        ],
    )
    fused = Rollout(config, actor_id=0, fused=True)
    stepwise = Rollout(config, actor_id=0, fused=False)
    assert fused._fused is not None and stepwise._fused is None
    arrays = _random_params(fused, seed=seed)
    fused.set_params(arrays)
    stepwise.set_params(arrays)
    ended = np.zeros(2, int)
    discounted = np.zeros(16)  # gymnasium's NormalizeReward accumulator, step by step
    # The same envs replayed with the unrolls' actions: row t of teacher_actions is the
    # controller's action in the state obs[t] shows, autoresets included.
    replay = make_vector_env(config, 16)
    replay.reset(seed=0)  # the first-life seed of train.seed 0, actor 0
    for i in range(4):
        a, meta_a = fused.unroll(policy_version=i)
        b, meta_b = stepwise.unroll(policy_version=i)
        assert b["teacher_actions"].shape == b["actions"].shape
        for t in range(8):
            np.testing.assert_array_equal(b["teacher_actions"][t], replay.scripted_actions())
            replay.step(clip_to_space(b["actions"][t], replay.single_action_space))
        for t in range(8):
            discounted = discounted * config.learner.gamma + b["rewards"][t]
            np.testing.assert_allclose(b["discounted_return"][t], discounted, rtol=1e-4, atol=1e-6)
            discounted[b["terminated"][t] | b["truncated"][t]] = 0.0
        assert meta_a == meta_b
        assert sorted(a) == sorted(b)
        ended += b["terminated"].sum(), (b["truncated"] & ~b["terminated"]).sum()
        for name in b:
            assert a[name].shape == b[name].shape, name
            assert a[name].dtype == b[name].dtype, name
            if b[name].dtype == bool or np.issubdtype(b[name].dtype, np.integer):
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            else:
                np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert ended.min() > 0, f"terminated, truncated: {ended}"
    replay.close()
    fused.env.close()
    stepwise.env.close()


def _cache_sizes(rollout: Rollout) -> list[int]:
    if rollout._fused is not None:
        return [rollout._fused._cache_size()]
    return [rollout._step._cache_size(), rollout._value._cache_size()]


@pytest.mark.parametrize("fused", [True, False])
def test_warm_up_compiles_what_the_unrolls_call_and_changes_nothing(fused):
    # Episodes of at most 12 steps and 2 unrolls of 8: truncations happen, so the step by
    # step path calls its value function too.
    config = load_config(
        "configs/driving.yaml",
        ["env.num_envs=4", "env.max_episode_steps=12", "rollout.length=8", "network.hidden=[8]"],
    )
    warm, cold = Rollout(config, 0, fused=fused), Rollout(config, 0, fused=fused)
    assert _cache_sizes(warm) == [0] * len(_cache_sizes(warm))
    warm.warm_up()
    compiled = _cache_sizes(warm)
    assert compiled == [1] * len(compiled)
    arrays = _random_params(warm, seed=5)
    truncated = 0
    for r in (warm, cold):
        r.set_params(arrays)
    for i in range(2):
        a, _ = warm.unroll(policy_version=i)
        b, _ = cold.unroll(policy_version=i)
        truncated += int((b["truncated"] & ~b["terminated"]).sum())
        for name in b:  # the warm-up left the keys, the env and the carry alone
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert truncated > 0
    assert _cache_sizes(warm) == compiled, "an unroll compiled again after the warm-up"
    warm.env.close()
    cold.env.close()


def test_set_params_refuses_frames_that_do_not_fit_the_templates_and_keeps_its_own():
    config = load_config("configs/debug.yaml")
    rollout = Rollout(config, actor_id=0)
    zeros = jax.tree.map(
        lambda t: np.zeros(t.shape, t.dtype), (rollout.params_template, rollout.stats_template)
    )
    good = params_to_frame(*zeros)
    rollout.set_params(good)
    before = rollout.params
    first = sorted(n for n in good if n.startswith("p"))[0]
    bad = {
        "spec": [
            {**good, first: np.zeros((*good[first].shape, 2), np.float32)},  # a wrong shape
            {**good, first: good[first].astype(np.float64)},  # a wrong dtype
            {k: v for k, v in good.items() if k != first},  # a field missing
            {**good, "p9999": np.zeros(3, np.float32)},  # a field too many
        ],
        "values": [{**good, first: np.full_like(good[first], np.nan)}],  # NaN
    }
    for reason, frames in bad.items():
        for arrays in frames:
            with pytest.raises(FrameError) as info:
                rollout.set_params(arrays)
            assert info.value.reason == reason
    assert rollout.params is before  # still acting with the params it had
    rollout.env.close()

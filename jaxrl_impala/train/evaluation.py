"""Greedy evaluation on held-out env seeds, and the evaluation GIF."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_impala.actor.envs import make_vector_env
from jaxrl_impala.config import DRIVING_ENV_ID, Config
from jaxrl_impala.networks import clip_to_space, policy_step_fn, sample_obs


def evaluate(
    config: Config, policy, params, stats, episodes: int, seed: int, ends: dict | None = None
) -> np.ndarray:
    """Greedy returns of ``episodes`` episodes on env seeds disjoint from training.

    ``ends``, when given, is filled (DrivingEnv) with how many episodes ended in a
    ``collision``, ``offroad``, at the ``route_end`` or at the ``time_limit``."""
    env = make_vector_env(config, episodes)
    step = _greedy_actor(policy)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        done = np.zeros(episodes, bool)
        space = env.single_action_space
        limit = config.env.max_episode_steps or 100_000
        for _ in range(limit + 1):
            obs, reward, term, trunc, info = env.step(step(params, stats, obs, space))
            term = np.asarray(term, bool)
            returns += np.where(done, 0.0, reward)
            ending = ~done & (term | np.asarray(trunc, bool))
            if ends is not None and "collision" in info:
                collision = np.asarray(info["collision"], bool)
                offroad = np.asarray(info["offroad"], bool) & ~collision
                route_end = term & ~collision & ~offroad
                for name, hit in (
                    ("collision", collision),
                    ("offroad", offroad),
                    ("route_end", route_end),
                    ("time_limit", ~term),
                ):
                    ends[name] = ends.get(name, 0) + int((ending & hit).sum())  # fmt: skip
            done |= ending
            if done.all():
                break
        return returns
    finally:
        env.close()


def eval_references(config: Config) -> dict[str, float]:
    """What the hand-written drivers score on the trainer's evaluation seeds (DrivingEnv):
    ``{"eval_scripted_return": ..., "eval_random_return": ...}``, the reference lines of a
    run's learning curve and TensorBoard (a few seconds; the loop asks once per run); ``{}``
    for any other env."""
    if config.env.id != DRIVING_ENV_ID:
        return {}
    from jaxrl_impala.actor.envs import env_kwargs
    from jaxrl_impala.envs import reference_returns

    ref = reference_returns(config.eval.episodes, seed=eval_seed(config), **env_kwargs(config))
    return {
        "eval_scripted_return": float(ref["scripted"]),
        "eval_random_return": float(ref["random"]),
    }


_GREEDY_CACHE: dict[int, Any] = {}
_NO_KEY = np.zeros(2, np.uint32)  # the greedy policy draws nothing


def greedy_step(policy):
    """The jitted greedy ``step(params, stats, obs, key)``, one per policy."""
    key = id(policy)
    if key not in _GREEDY_CACHE:
        _GREEDY_CACHE[key] = jax.jit(policy_step_fn(policy, greedy=True))
    return _GREEDY_CACHE[key]


def _greedy_actor(policy):
    """``act(params, stats, obs, space) -> action`` as the env takes it."""
    step = greedy_step(policy)
    return lambda params, stats, obs, space: clip_to_space(
        np.asarray(step(params, stats, obs, _NO_KEY)[0]), space
    )


def eval_seed(config: Config) -> int:
    """First env seed of the trainer's evaluations: clear of the training seeds."""
    return 1_000_000 + 1000 * config.train.seed


def compile_eval_step(policy, obs_space, shapes, episodes: int) -> None:
    """Compiles `evaluate`'s greedy step ahead, for a state of these shapes (see
    `learner.train_state_shapes`) and ``episodes`` envs, so the first evaluation does not
    (half a second on a small CPU machine, in the middle of training)."""
    host = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    key = jax.ShapeDtypeStruct((2,), np.uint32)  # jax.random.PRNGKey(0)
    obs = jax.eval_shape(lambda: sample_obs(obs_space, (episodes,)))
    greedy_step(policy).lower(host(shapes.params), host(shapes.obs_stats), obs, key).compile()


def write_eval_gif(config: Config, policy, params, stats, path: Path, seed: int) -> bool:
    """A GIF of one greedy DrivingEnv episode; False when the env is not DrivingEnv."""
    if config.env.id != DRIVING_ENV_ID:
        return False
    from jaxrl_impala.envs import write_gif

    step = _greedy_actor(policy)
    frames = []
    env = make_vector_env(config, 1, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=seed)
        space = env.single_action_space
        while True:
            frames.append(env.render())
            obs, _, term, trunc, _ = env.step(step(params, stats, obs, space))
            if term[0] or trunc[0]:
                frames.append(env.render())
                break
    except Exception as e:  # noqa: BLE001 - a GIF is a nicety; never fail the run for it
        print(f"evaluation GIF skipped: {e}", file=sys.stderr)
        return False
    finally:
        env.close()
    write_gif(str(path), frames[::2], fps=10)
    return True

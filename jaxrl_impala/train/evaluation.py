"""Greedy evaluation on held-out env seeds, and the evaluation GIF."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_impala.actor.envs import make_vector_env
from jaxrl_impala.actor.rollout import reset_core
from jaxrl_impala.config import DRIVING_ENV_ID, Config
from jaxrl_impala.networks import clip_to_space, policy_step_fn, sample_obs


def evaluate(
    config: Config, policy, params, stats, episodes: int, seed: int, ends: dict | None = None
) -> np.ndarray:
    """Greedy returns of ``episodes`` episodes on env seeds disjoint from training.

    ``ends``, when given, is filled (DrivingEnv) with how many episodes ended in a
    ``collision``, ``offroad``, at the ``route_end`` or at the ``time_limit``."""
    env = make_vector_env(config, episodes)
    act = GreedyActor(policy, env.single_action_space, episodes)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        done = np.zeros(episodes, bool)
        limit = config.env.max_episode_steps or 100_000
        for _ in range(limit + 1):
            obs, reward, term, trunc, info = env.step(act(params, stats, obs))
            term = np.asarray(term, bool)
            act.episodes_ended(term | np.asarray(trunc, bool))
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
    """The jitted greedy ``step(params, stats, obs, core, key)``, one per policy."""
    key = id(policy)
    if key not in _GREEDY_CACHE:
        _GREEDY_CACHE[key] = jax.jit(policy_step_fn(policy, greedy=True))
    return _GREEDY_CACHE[key]


class GreedyActor:
    """``act(params, stats, obs) -> action`` as the env takes it, for ``num_envs`` envs; a
    recurrent policy's state is carried from step to step, as the actors carry it, and
    zeroed by :meth:`episodes_ended` (call it after every env step)."""

    def __init__(self, policy, space, num_envs: int):
        self.step, self.space = greedy_step(policy), space
        core = policy.initial_core(num_envs)
        self.core = None if core is None else np.asarray(core)

    def __call__(self, params, stats, obs):
        action, *_, core = self.step(params, stats, obs, self.core, _NO_KEY)
        self.core = None if core is None else np.asarray(core)
        return clip_to_space(np.asarray(action), self.space)

    def episodes_ended(self, done: np.ndarray) -> None:
        self.core = reset_core(self.core, np.asarray(done, bool))


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
    core = jax.eval_shape(lambda: policy.initial_core(episodes))
    step = greedy_step(policy)
    step.lower(host(shapes.params), host(shapes.obs_stats), obs, core, key).compile()


def write_eval_gif(config: Config, policy, params, stats, path: Path, seed: int) -> bool:
    """A GIF of one greedy DrivingEnv episode; False when the env is not DrivingEnv."""
    if config.env.id != DRIVING_ENV_ID:
        return False
    from jaxrl_impala.envs import write_gif

    frames = []
    env = make_vector_env(config, 1, render_mode="rgb_array")
    act = GreedyActor(policy, env.single_action_space, 1)
    try:
        obs, _ = env.reset(seed=seed)
        while True:
            frames.append(env.render())
            obs, _, term, trunc, _ = env.step(act(params, stats, obs))
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

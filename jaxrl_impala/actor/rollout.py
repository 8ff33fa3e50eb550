"""The rollout: steps a vector env with the policy and assembles `Unroll`s.

An env that offers a pure JAX step (``pure_step()``, as ``DrivingVectorEnv`` does) is
stepped by :func:`fused_unroll_fn`: the policy, T env steps and the bookkeeping in one
jitted ``lax.scan``. Any other env is stepped one ``env.step`` at a time. Both give the same
unroll from the same state and key.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_impala import unroll as unroll_lib
from jaxrl_impala.actor.envs import check_teacher, make_vector_env, reward_term_names
from jaxrl_impala.config import Config
from jaxrl_impala.core.normalization import accumulate_return
from jaxrl_impala.envs.wrappers import final_observations
from jaxrl_impala.networks import (
    clip_to_space,
    make_policy,
    params_template,
    policy_step_fn,
    value_fn,
)
from jaxrl_impala.transport.codec import FrameSpec
from jaxrl_impala.unroll import Unroll


def restart_seed(seed: int, actor_id: int, incarnation: int) -> int:
    """First env seed of a restarted (or resumed) actor: fresh scenarios, not a replay of its
    first life's. In [2**30, 2**30 + 2**29), clear of the first-life training seeds
    (``seed * 100_003 + actor_id * B``) and of the evaluation seeds (1,000,000 and up)."""
    state = np.random.SeedSequence([seed, actor_id, incarnation]).generate_state(1)[0]
    return (1 << 30) + int(state) % (1 << 29)


def initial_carry(
    packed: Any, obs: Any, num_envs: int, num_terms: int, core_size: int = 0
) -> tuple:
    """The carry of :func:`fused_unroll_fn` at the start of a run: the env's packed state and
    first observation, every episode sum at zero, and a recurrent policy's zero state
    ``[B, C]`` (None for a feed-forward one)."""
    B = num_envs
    ep_sums = (np.zeros(B, np.float32), np.zeros(B, np.int32), np.zeros((B, num_terms), np.float32))
    core = np.zeros((B, core_size), np.float32) if core_size else None
    return (packed, obs, *ep_sums, np.zeros(B, np.float32), core)


def fused_unroll_fn(
    policy: Any,
    env_step: Any,
    T: int,
    action_space: gym.Space,
    gamma: float,
    teacher: Any = None,
):
    """One jittable function for a whole unroll of an env written in JAX.

    ``unroll(params, stats, carry, key) -> (key, carry, out)`` where ``carry`` is
    ``(packed, obs, ep_return [B], ep_length [B], ep_terms [B, K], discounted [B], core)``
    (:func:`initial_carry`) and ``env_step`` is a pure step such as
    :meth:`DrivingVectorEnv.pure_step`. ``out`` is an :class:`Unroll` whose ``obs`` lacks the
    last row (the returned ``carry[1]``). Step t samples with ``split(key, T + 1)[t + 1]``
    and the returned key is ``[0]``, as the stepwise path does. ``gamma`` discounts the
    ``discounted_return`` field (``learner.gamma``). A recurrent policy's state is the
    carry's ``core``: ``out.initial_core`` is its value before step 0, it is zeroed after
    every step that ends an episode, and a time-limit end's value is that of the final
    observation from the state the episode reached. ``teacher`` (such as
    :meth:`DrivingVectorEnv.pure_scripted`: packed state -> actions) fills
    ``out.teacher_actions`` with its action for each step's observation; None leaves it out.
    """
    act = policy_step_fn(policy)
    value = value_fn(policy)

    def unroll(params, stats, carry, key):
        keys = jax.random.split(key, T + 1)

        def body(carry, k):
            packed, obs, ep_return, ep_length, ep_terms, discounted, core = carry
            action, logp, dist, _, core = act(params, stats, obs, core, k)
            to_env = clip_to_space(action, action_space)
            if teacher is not None:  # the controller's action in the state ``obs`` shows
                teacher_row = teacher(packed).astype(action.dtype)
            packed, next_obs, final_obs, reward, term, trunc, terms = env_step(packed, to_env)
            cut = trunc & ~term
            trunc_value = jax.lax.cond(  # the value net only on steps where an episode was cut
                cut.any(),
                lambda: jnp.where(cut, value(params, stats, final_obs, core), 0.0),
                lambda: jnp.zeros(cut.shape, jnp.float32),
            )
            ep_return = ep_return + reward
            ep_length = ep_length + 1
            ep_terms = ep_terms + terms
            done = term | trunc
            so_far, discounted = accumulate_return(discounted, reward, done, gamma)
            row = Unroll(
                obs=obs,
                actions=action,
                behaviour_logp=logp,
                behaviour_dist=dist,
                rewards=reward,
                terminated=term,
                truncated=trunc,
                truncation_value=trunc_value,
                discounted_return=so_far,
                episode_return=jnp.where(done, ep_return, jnp.nan),
                episode_length=jnp.where(done, ep_length, 0),
                episode_terms=jnp.where(done[:, None], ep_terms, 0.0),
                teacher_actions=None if teacher is None else teacher_row,
            )
            ep_return = jnp.where(done, 0.0, ep_return)
            ep_length = jnp.where(done, 0, ep_length)
            ep_terms = jnp.where(done[:, None], 0.0, ep_terms)
            core = reset_core(core, done)
            carry = (packed, next_obs, ep_return, ep_length, ep_terms, discounted, core)
            return carry, unroll_lib.cast(row)

        core0 = carry[-1]
        carry, out = jax.lax.scan(body, carry, keys[1:])
        if core0 is not None:
            out = out._replace(initial_core=core0[None])
        return keys[0], carry, out

    return unroll


def reset_core(core: Any, done: Any) -> Any:
    """A recurrent state ``[B, C]`` zeroed where ``done [B]`` (numpy or jax; None stays)."""
    if core is None:
        return None
    xp = np if isinstance(core, np.ndarray) else jnp
    return xp.where(done[:, None], 0.0, core).astype(np.float32)


def params_frame_spec(params_template: Any, stats_template: Any) -> FrameSpec:
    """What a parameter frame must be to be acted with: `unroll.params_to_frame`'s fields of
    the templates (``jax.ShapeDtypeStruct`` trees), their dtypes and shapes, and finite
    values in every float field."""
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), (params_template, stats_template))
    example = unroll_lib.params_to_frame(*zeros)
    floats = [name for name, a in example.items() if a.dtype.kind == "f"]
    return FrameSpec.from_arrays(example, finite=floats)


class Rollout:
    """Steps a vector env with a policy and assembles ``[T+1, B]`` unrolls (numpy).

    ``fused=None`` takes the fused path when the env has ``pure_step()``; ``False`` forces
    the step-by-step path.
    """

    def __init__(
        self,
        config: Config,
        actor_id: int,
        env: gym.vector.VectorEnv | None = None,
        incarnation: int = 0,
        fused: bool | None = None,
    ):
        self.config = config
        self.actor_id = actor_id
        self.T = config.rollout.length
        self.B = config.env.num_envs
        self.gamma = config.learner.gamma
        self.env = env if env is not None else make_vector_env(config, self.B)
        check_teacher(config, self.env)
        self.teacher = config.learner.taught
        self.term_names = reward_term_names(config)
        obs_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space
        self.policy = make_policy(
            obs_space, self.action_space, config.network, config.learner.obs_norm
        )
        # Shapes only: enough to unpack the params the learner sends, and to check them.
        self.params_template, self.stats_template = params_template(self.policy, obs_space)
        self.params_spec = params_frame_spec(self.params_template, self.stats_template)
        self.key = jax.random.PRNGKey(config.train.seed * 7919 + 104729 * (actor_id + 1))
        seed = config.train.seed * 100_003 + actor_id * self.B
        if incarnation:
            self.key = jax.random.fold_in(self.key, incarnation % 2**31)
            seed = restart_seed(config.train.seed, actor_id, incarnation)
        obs, _ = self.env.reset(seed=seed)
        self.action_space.seed(seed)
        self.unroll_index = 0
        if fused is None:
            fused = hasattr(self.env, "pure_step")
        self._fused = None
        if fused:  # the env state, observation and episode sums live in the scan's carry
            self._fused = jax.jit(
                fused_unroll_fn(
                    self.policy,
                    self.env.pure_step(),
                    self.T,
                    self.action_space,
                    self.gamma,
                    self.env.pure_scripted() if self.teacher else None,
                )
            )
            carry = initial_carry(
                self.env.packed_state, obs, self.B, len(self.term_names), self.policy.core_size
            )
            self._carry = jax.tree.map(jnp.asarray, carry)
        else:
            self._step = jax.jit(policy_step_fn(self.policy))
            self._value = jax.jit(value_fn(self.policy))
            self.obs = obs
            self.ep_return = np.zeros(self.B, np.float64)
            self.ep_length = np.zeros(self.B, np.int64)
            self.ep_terms = np.zeros((self.B, len(self.term_names)), np.float64)
            self.discounted = np.zeros(self.B, np.float32)
            core = self.policy.initial_core(self.B)
            self.core = None if core is None else np.asarray(core)

    def warm_up(self) -> None:
        """Compiles the jitted policy calls now, on zero params, so that the first unroll
        does not wait for XLA. The rollout's state, keys and env are untouched."""
        zeros = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731
        params, stats = jax.device_put(
            jax.tree.map(zeros, (self.params_template, self.stats_template))
        )
        if self._fused is not None:
            jax.block_until_ready(self._fused(params, stats, self._carry, self.key))
        else:  # called with a numpy row of the unroll's split keys
            jax.block_until_ready(jax.random.split(self.key, self.T + 1))
            key = np.asarray(self.key)
            jax.block_until_ready(self._step(params, stats, self.obs, self.core, key))
            jax.block_until_ready(self._value(params, stats, self.obs, self.core))

    def set_params(self, arrays: dict[str, np.ndarray]) -> None:
        """Acts with `arrays` (`unroll.params_to_frame`'s fields) from now on.

        Raises:
          FrameError: they do not meet `params_spec`; the rollout keeps the params it has.
        """
        self.params_spec.check({name: (a.dtype, a.shape) for name, a in arrays.items()})
        self.params_spec.check_values(arrays)
        # on the device once per version, not converted again by every jitted call
        self.params, self.stats = jax.device_put(
            unroll_lib.params_from_frame(arrays, self.params_template, self.stats_template)
        )

    def unroll(self, policy_version: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Acts T steps; returns (frame fields, meta) of one :class:`Unroll`."""
        out = self._unroll_fused() if self._fused is not None else self._unroll_stepwise()
        if not self.term_names:
            out = out._replace(episode_terms=None)
        meta = {
            "policy_version": int(policy_version),
            "actor_id": self.actor_id,
            "unroll_index": self.unroll_index,
        }
        self.unroll_index += 1
        return unroll_lib.to_frame(out), meta

    def _unroll_fused(self) -> Unroll:
        self.key, self._carry, out = self._fused(self.params, self.stats, self._carry, self.key)
        self.env.packed_state = self._carry[0]  # the env object stays in step with the unroll
        out, last_obs = jax.device_get((out, self._carry[1]))
        obs = jax.tree.map(lambda rows, last: np.concatenate([rows, last[None]]), out.obs, last_obs)
        return out._replace(obs=obs)

    def _unroll_stepwise(self) -> Unroll:
        T, B = self.T, self.B
        obs_rows, act_rows, logp_rows, dist_rows, teacher_rows = [], [], [], [], []
        # the Unroll's [T, B] fields, filled row by row
        cols = {
            "rewards": np.zeros((T, B), np.float32),
            "terminated": np.zeros((T, B), bool),
            "truncated": np.zeros((T, B), bool),
            "truncation_value": np.zeros((T, B), np.float32),
            "discounted_return": np.zeros((T, B), np.float32),
            "episode_return": np.full((T, B), np.nan, np.float32),
            "episode_length": np.zeros((T, B), np.int32),
            "episode_terms": np.zeros((T, B, len(self.term_names)), np.float32),
        }
        # One split per unroll instead of one per step: a dispatch saved on every env step.
        keys = np.asarray(jax.random.split(self.key, T + 1))
        self.key = keys[0]
        initial_core = self.core
        for t in range(T):
            obs_rows.append(self.obs)
            action, logp, dist, _, core = jax.device_get(
                self._step(self.params, self.stats, self.obs, self.core, keys[t + 1])
            )
            act_rows.append(action)
            if self.teacher:
                teacher_rows.append(np.asarray(self.env.scripted_actions(), action.dtype))
            logp_rows.append(logp)
            dist_rows.append(dist)
            obs, reward, term, trunc, info = self.env.step(clip_to_space(action, self.action_space))
            term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
            cols["rewards"][t], cols["terminated"][t], cols["truncated"][t] = reward, term, trunc
            cut = trunc & ~term
            if cut.any():
                final = final_observations(info, obs, cut)
                values = np.asarray(self._value(self.params, self.stats, final, core))
                cols["truncation_value"][t] = np.where(cut, values, 0.0)
            self.ep_return += reward
            self.ep_length += 1
            if self.term_names and "reward_terms" in info:
                terms = info["reward_terms"]
                self.ep_terms += np.stack([np.asarray(terms[k]) for k in self.term_names], -1)
            done = term | trunc
            self.core = reset_core(core, done)
            cols["discounted_return"][t] = self.gamma * self.discounted + reward
            self.discounted = np.where(done, 0.0, cols["discounted_return"][t])
            if done.any():
                cols["episode_return"][t] = np.where(done, self.ep_return, np.nan)
                cols["episode_length"][t] = np.where(done, self.ep_length, 0)
                cols["episode_terms"][t] = np.where(done[:, None], self.ep_terms, 0.0)
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
                self.ep_terms[done] = 0.0
            self.obs = obs
        obs_rows.append(self.obs)
        out = Unroll(
            obs=jax.tree.map(lambda *xs: np.stack(xs), *obs_rows),
            actions=np.stack(act_rows),
            behaviour_logp=np.stack(logp_rows),
            behaviour_dist=np.stack(dist_rows),
            **cols,
            initial_core=None if initial_core is None else initial_core[None],
            teacher_actions=np.stack(teacher_rows) if self.teacher else None,
        )
        return unroll_lib.cast(out)

"""Actor process: steps a vector env on the CPU, acts with the latest params, ships unrolls.

Started by the trainer as ``python -m jaxrl_impala.actor --config-json ... --actor-id I
--address -`` (never forked from a JAX process; ``JAX_PLATFORMS=cpu`` is set before JAX is
imported). It starts before the learner's transport exists: it builds its envs and
compiles its policy, then reads the transport's address as one JSON line on stdin. Or by
hand on any host to join a running learner over Redis: ``python -m jaxrl_impala.actor
--config C --set transport.kind=redis transport.url=URL --actor-id N`` (the address comes
from ``transport.url`` / ``transport.prefix``). Everything it receives on its command line
and stdin is plain text (JSON), and everything it sends is a codec frame: no pickle
crosses the process boundary.

An Unroll (one ``put``) holds, time-major, for B = ``env.num_envs`` columns:
  obs [T+1, B, ...] (``obs__<key>`` per key for dict observations), actions [T, B, ...],
  behaviour_logp [T, B], behaviour_dist [T, B, P], rewards [T, B], terminated [T, B],
  truncated [T, B], truncation_value [T, B] (``V_mu`` of the final observation where an
  episode was truncated; the next ``obs`` row already belongs to the new episode),
  episode_return / episode_length [T, B] (set where an episode ended) and, for envs that
  report ``reward_terms``, episode_terms [T, B, K];
  meta: policy_version, actor_id, unroll_index.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from jaxrl_impala.cpus import (  # no JAX in there
    ACTOR_OWN_CPU_ENV,
    LEARNER_PID_ENV,
    pin_actor_from_env,
)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the learner) dies, so no actor is orphaned."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


if __name__ == "__main__":  # before JAX is imported anywhere in this process
    os.environ["JAX_PLATFORMS"] = "cpu"
    pin_actor_from_env()
    if os.environ.get(LEARNER_PID_ENV):
        # Started by a trainer, which decides when we stop: Ctrl-C in the terminal reaches
        # the whole process group, and it must not kill us mid-import.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Ask for the parent-death signal first thing (importing JAX takes seconds), then
        # check the learner did not die before we asked: it would never be sent.
        _die_with_parent()
        if os.getppid() != int(os.environ[LEARNER_PID_ENV]):
            sys.exit(0)

import gymnasium as gym  # noqa: E402  (after the parent-death set-up above)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl_impala.config import Config, ConfigError, from_dict, load_config  # noqa: E402

DRIVING_ID = "jaxrl_impala/Driving-v0"


# --------------------------------------------------------------------------- environments
def make_vector_env(config: Config, num_envs: int, **extra: Any) -> gym.vector.VectorEnv:
    """The vector env of ``config.env`` with same-step autoreset (and frame stacking when
    ``env.frame_stack > 1``); ``extra`` adds constructor options (e.g. ``render_mode``).

    ``DrivingVectorEnv`` steps all envs as arrays; any other gymnasium id runs in a
    ``SyncVectorEnv``. A bad id is a one-line error naming it.
    """
    env = _make_vector_env(config, num_envs, **extra)
    if config.env.frame_stack > 1:
        from jaxrl_impala.wrappers import FrameStack

        try:
            env = FrameStack(env, config.env.frame_stack)
        except ValueError as e:
            env.close()
            raise ConfigError(f"env.frame_stack={config.env.frame_stack}: {e}") from None
    return env


def env_kwargs(config: Config) -> dict[str, Any]:
    """The env constructor options of ``config.env`` (its kwargs plus the time limit)."""
    kwargs = dict(config.env.kwargs)
    if config.env.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.env.max_episode_steps
    return kwargs


def _make_vector_env(config: Config, num_envs: int, **extra: Any) -> gym.vector.VectorEnv:
    ec = config.env
    kwargs = {**env_kwargs(config), **extra}
    if ec.id == DRIVING_ID:
        from jaxrl_impala.envs import DrivingVectorEnv

        try:
            return DrivingVectorEnv(num_envs, **kwargs)
        except TypeError as e:
            raise ConfigError(f"env.kwargs: {e}") from None
    import jaxrl_impala.envs  # noqa: F401  (registers the built-in ids)

    try:
        return gym.make_vec(
            ec.id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **kwargs,
        )
    except gym.error.Error as e:
        raise ConfigError(f"env.id={ec.id!r}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"env.kwargs for {ec.id!r}: {e}") from None


def reward_term_names(config: Config) -> tuple[str, ...]:
    """Names of the per-term rewards the env reports in ``info["reward_terms"]``."""
    if config.env.id == DRIVING_ID:
        from jaxrl_impala.envs import REWARD_TERMS

        return tuple(REWARD_TERMS)
    return ()


def env_spaces(config: Config) -> tuple[gym.Space, gym.Space, tuple[str, ...]]:
    """(single observation space, single action space, reward-term names) of the env."""
    env = make_vector_env(config, 1)
    try:
        return env.single_observation_space, env.single_action_space, reward_term_names(config)
    finally:
        env.close()


def final_observations(info: dict, obs: Any, mask: np.ndarray) -> Any:
    """The final observation of every env whose episode just ended (``obs`` elsewhere)."""
    final = info.get("final_obs")
    if final is None:
        return obs
    if isinstance(final, np.ndarray) and final.dtype == object:
        rows = [final[i] if mask[i] else None for i in range(len(mask))]
        if isinstance(obs, dict):
            return {
                k: np.stack([r[k] if r is not None else obs[k][i] for i, r in enumerate(rows)])
                for k in obs
            }
        return np.stack([r if r is not None else obs[i] for i, r in enumerate(rows)])
    return jax.tree.map(
        lambda f, o: np.where(mask.reshape((-1,) + (1,) * (o.ndim - 1)), f, o), final, obs
    )


def obs_fields(obs: Any) -> dict[str, Any]:
    """Frame field names of an observation pytree: ``obs`` or ``obs__<key>``."""
    if isinstance(obs, dict):
        return {f"obs__{k}": v for k, v in obs.items()}
    return {"obs": obs}


def obs_from_fields(fields: dict[str, Any]) -> Any:
    if "obs" in fields:
        return fields["obs"]
    return {k[len("obs__") :]: v for k, v in fields.items() if k.startswith("obs__")}


# --------------------------------------------------------------------------- params on the wire
def flatten_params(params: Any, stats: Any) -> dict[str, np.ndarray]:
    """Params and obs-normaliser stats as codec fields ``p000...``, ``s000...``."""
    out = {f"p{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
    out.update({f"s{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(stats))})
    return out


def unflatten_params(arrays: dict[str, np.ndarray], params_template: Any, stats_template: Any):
    p_leaves, p_def = jax.tree.flatten(params_template)
    s_leaves, s_def = jax.tree.flatten(stats_template)
    params = jax.tree.unflatten(p_def, [arrays[f"p{i:04d}"] for i in range(len(p_leaves))])
    stats = jax.tree.unflatten(s_def, [arrays[f"s{i:04d}"] for i in range(len(s_leaves))])
    return params, stats


# --------------------------------------------------------------------------- the rollout
def restart_seed(seed: int, actor_id: int, incarnation: int) -> int:
    """First env seed of a restarted (or resumed) actor: fresh scenarios, not a replay of its
    first life's. In [2**30, 2**30 + 2**29), clear of the first-life training seeds
    (``seed * 100_003 + actor_id * B``) and of the evaluation seeds (1,000,000 and up)."""
    state = np.random.SeedSequence([seed, actor_id, incarnation]).generate_state(1)[0]
    return (1 << 30) + int(state) % (1 << 29)


def fused_unroll_fn(policy: Any, env_step: Any, T: int, action_space: gym.Space):
    """One jittable function for a whole unroll of an env written in JAX: the policy, T env
    steps and the unroll's bookkeeping in one ``lax.scan``, with no host round trip per step.

    ``unroll(params, stats, carry, key) -> (key, carry, out)`` where ``carry`` is
    ``(packed, obs, ep_return [B], ep_length [B], ep_terms [B, K])`` and ``env_step`` is a
    pure step such as :meth:`DrivingVectorEnv.pure_step`. ``out`` holds the Unroll's arrays
    except the last observation row (the returned ``carry[1]``). Step t samples with
    ``split(key, T + 1)[t + 1]`` and the returned key is ``[0]``, as :meth:`Rollout.unroll`
    does step by step, so both give the same unroll from the same state.
    """
    import jax.numpy as jnp

    from jaxrl_impala.learner import policy_step_fn, value_fn

    act = policy_step_fn(policy)
    value = value_fn(policy)
    box = isinstance(action_space, gym.spaces.Box)

    def unroll(params, stats, carry, key):
        keys = jax.random.split(key, T + 1)

        def body(carry, k):
            packed, obs, ep_return, ep_length, ep_terms = carry
            action, logp, dist, _ = act(params, stats, obs, k)
            if box:
                to_env = jnp.clip(action, action_space.low, action_space.high)
                to_env = to_env.astype(action_space.dtype)
            else:
                to_env = action
            packed, next_obs, final_obs, reward, term, trunc, terms = env_step(packed, to_env)
            cut = trunc & ~term
            trunc_value = jax.lax.cond(  # the value net only on steps where an episode was cut
                cut.any(),
                lambda: jnp.where(cut, value(params, stats, final_obs), 0.0),
                lambda: jnp.zeros(cut.shape, jnp.float32),
            )
            ep_return = ep_return + reward
            ep_length = ep_length + 1
            ep_terms = ep_terms + terms
            done = term | trunc
            out = {
                "obs": obs,
                "actions": action,
                "behaviour_logp": logp.astype(jnp.float32),
                "behaviour_dist": dist.astype(jnp.float32),
                "rewards": reward.astype(jnp.float32),
                "terminated": term,
                "truncated": trunc,
                "truncation_value": trunc_value.astype(jnp.float32),
                "episode_return": jnp.where(done, ep_return, jnp.nan),
                "episode_length": jnp.where(done, ep_length, 0),
                "episode_terms": jnp.where(done[:, None], ep_terms, 0.0),
            }
            ep_return = jnp.where(done, 0.0, ep_return)
            ep_length = jnp.where(done, 0, ep_length)
            ep_terms = jnp.where(done[:, None], 0.0, ep_terms)
            return (packed, next_obs, ep_return, ep_length, ep_terms), out

        carry, out = jax.lax.scan(body, carry, keys[1:])
        return keys[0], carry, out

    return unroll


class Rollout:
    """Steps a vector env with a policy and assembles ``[T+1, B]`` unrolls (numpy).

    An env that offers a pure JAX step (``pure_step()``, as DrivingVectorEnv does) is stepped
    by :func:`fused_unroll_fn`, one jitted call per unroll (``fused=False`` forces the step
    by step path); any other env one ``env.step`` per step.
    """

    def __init__(
        self,
        config: Config,
        actor_id: int,
        env: gym.vector.VectorEnv | None = None,
        incarnation: int = 0,
        fused: bool | None = None,
    ):
        from jaxrl_impala.learner import policy_step_fn, value_fn
        from jaxrl_impala.networks import init_obs_stats, make_policy, sample_obs

        self.config = config
        self.actor_id = actor_id
        self.T = config.rollout.length
        self.B = config.env.num_envs
        self.env = env if env is not None else make_vector_env(config, self.B)
        self.term_names = reward_term_names(config)
        obs_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space
        self.policy = make_policy(
            obs_space, self.action_space, config.network, config.learner.obs_norm
        )
        # Only the tree structure is needed to unpack the params the learner sends: shapes,
        # not values (running flax's init here would compile op by op for seconds).
        self.params_template = jax.eval_shape(
            self.policy.net.init, jax.random.PRNGKey(0), sample_obs(obs_space)
        )
        self.stats_template = jax.eval_shape(lambda: init_obs_stats(obs_space))
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
            import jax.numpy as jnp

            self._fused = jax.jit(
                fused_unroll_fn(self.policy, self.env.pure_step(), self.T, self.action_space)
            )
            self._carry = (
                self.env.packed_state,
                jax.tree.map(jnp.asarray, obs),
                jnp.zeros(self.B, jnp.float32),
                jnp.zeros(self.B, jnp.int32),
                jnp.zeros((self.B, len(self.term_names)), jnp.float32),
            )
        else:
            self._step = jax.jit(policy_step_fn(self.policy))
            self._value = jax.jit(value_fn(self.policy))
            self.obs = obs
            self.ep_return = np.zeros(self.B, np.float64)
            self.ep_length = np.zeros(self.B, np.int64)
            self.ep_terms = np.zeros((self.B, len(self.term_names)), np.float64)

    def warm_up(self) -> None:
        """Compiles the jitted policy calls now, on zero params, so that the first unroll
        does not wait for XLA. The outputs are discarded: the rollout's state, keys and env
        are untouched."""
        zeros = lambda s: np.zeros(s.shape, s.dtype)  # noqa: E731
        params, stats = jax.device_put(
            jax.tree.map(zeros, (self.params_template, self.stats_template))
        )
        if self._fused is not None:
            jax.block_until_ready(self._fused(params, stats, self._carry, self.key))
        else:  # called with a numpy row of the unroll's split keys
            jax.block_until_ready(jax.random.split(self.key, self.T + 1))
            key = np.asarray(self.key)
            jax.block_until_ready(self._step(params, stats, self.obs, key))
            jax.block_until_ready(self._value(params, stats, self.obs))

    def set_params(self, arrays: dict[str, np.ndarray]) -> None:
        # on the device once per version, not converted again by every jitted call
        self.params, self.stats = jax.device_put(
            unflatten_params(arrays, self.params_template, self.stats_template)
        )

    def _to_env(self, action: np.ndarray) -> np.ndarray:
        if isinstance(self.action_space, gym.spaces.Box):
            return np.clip(action, self.action_space.low, self.action_space.high).astype(
                self.action_space.dtype
            )
        return action

    def unroll(self, policy_version: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Acts T steps; returns (arrays, meta) of one Unroll."""
        arrays = self._unroll_fused() if self._fused is not None else self._unroll_stepwise()
        meta = {
            "policy_version": int(policy_version),
            "actor_id": self.actor_id,
            "unroll_index": self.unroll_index,
        }
        self.unroll_index += 1
        return arrays, meta

    def _unroll_fused(self) -> dict[str, np.ndarray]:
        self.key, self._carry, out = self._fused(self.params, self.stats, self._carry, self.key)
        self.env.packed_state = self._carry[0]  # the env object stays in step with the unroll
        out, last_obs = jax.device_get((out, self._carry[1]))
        obs = jax.tree.map(lambda rows, last: np.concatenate([rows, last[None]]), out.pop("obs"),
                           last_obs)  # fmt: skip
        if not self.term_names:
            del out["episode_terms"]
        return {**obs_fields(obs), **out}

    def _unroll_stepwise(self) -> dict[str, np.ndarray]:
        T, B = self.T, self.B
        obs_rows, act_rows, logp_rows, dist_rows = [], [], [], []
        rewards = np.zeros((T, B), np.float32)
        terminated = np.zeros((T, B), bool)
        truncated = np.zeros((T, B), bool)
        trunc_value = np.zeros((T, B), np.float32)
        ep_return = np.full((T, B), np.nan, np.float32)
        ep_length = np.zeros((T, B), np.int32)
        ep_terms = np.zeros((T, B, len(self.term_names)), np.float32)
        # One split per unroll instead of one per step: a dispatch saved on every env step.
        keys = np.asarray(jax.random.split(self.key, T + 1))
        self.key = keys[0]
        for t in range(T):
            obs_rows.append(self.obs)
            action, logp, dist, _ = jax.device_get(
                self._step(self.params, self.stats, self.obs, keys[t + 1])
            )
            act_rows.append(action)
            logp_rows.append(logp)
            dist_rows.append(dist)
            obs, reward, term, trunc, info = self.env.step(self._to_env(action))
            term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            cut = trunc & ~term
            if cut.any():
                final = final_observations(info, obs, cut)
                values = np.asarray(self._value(self.params, self.stats, final))
                trunc_value[t] = np.where(cut, values, 0.0)
            self.ep_return += reward
            self.ep_length += 1
            if self.term_names and "reward_terms" in info:
                terms = info["reward_terms"]
                self.ep_terms += np.stack([np.asarray(terms[k]) for k in self.term_names], -1)
            done = term | trunc
            if done.any():
                ep_return[t] = np.where(done, self.ep_return, np.nan)
                ep_length[t] = np.where(done, self.ep_length, 0)
                ep_terms[t] = np.where(done[:, None], self.ep_terms, 0.0)
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
                self.ep_terms[done] = 0.0
            self.obs = obs
        obs_rows.append(self.obs)
        stacked_obs = jax.tree.map(lambda *xs: np.stack(xs), *obs_rows)
        arrays = {
            **obs_fields(stacked_obs),
            "actions": np.stack(act_rows),
            "behaviour_logp": np.stack(logp_rows).astype(np.float32),
            "behaviour_dist": np.stack(dist_rows).astype(np.float32),
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
            "truncation_value": trunc_value,
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        if self.term_names:
            arrays["episode_terms"] = ep_terms
        return arrays


# --------------------------------------------------------------------------- process entry
def run(
    config: Config,
    actor_id: int,
    address: dict | Callable[[], dict | None],
    incarnation: int = 0,
) -> int:
    """The actor loop; returns 0 when the learner closes the queue or goes away.

    ``address`` may be a function that waits for it (a trainer starts its actors before its
    transport exists): it is called once the env is built and the policy compiled, so that
    work overlaps the learner's own start-up. It returns None if the learner went away.
    """
    from jaxrl_impala.compile_cache import in_turn, use_compile_cache

    use_compile_cache(config.train.compile_cache)
    learner_pid = int(os.environ.get(LEARNER_PID_ENV) or 0)
    # Actors sharing a CPU (or unpinned, where each compile takes every CPU) take turns: the
    # first compiles, the others load. With a CPU each they compile side by side.
    turns = not os.environ.get(ACTOR_OWN_CPU_ENV)
    with in_turn(config.train.compile_cache if turns else ""):
        rollout = Rollout(config, actor_id, incarnation=incarnation)
        rollout.warm_up()
    if callable(address):
        address = address()
        if address is None:
            return 0
    queue, store = _connect(address, actor_id, learner_pid)

    def learner_gone() -> bool:
        # Started by a trainer: orphaned once our parent is not the learner any more (either
        # transport). A standalone actor (another host) has only the learner's heartbeat.
        orphaned = bool(learner_pid) and os.getppid() != learner_pid
        if address.get("kind") == "shm":
            # A dead learner is caught by its pid (and PR_SET_PDEATHSIG); the heartbeat only
            # catches a wedged one, so give it a long window: a learner starved of CPU while
            # it compiles must not look dead (that would restart actors and break lock-step).
            return queue.closed or orphaned or not queue.owner_alive(stale_after=60.0)
        return queue.closed or orphaned or not queue.owner_alive()

    deterministic = config.train.deterministic
    per_version = max(1, config.learner.batch_unrolls // config.actors.num)
    version = -1
    try:
        while True:
            want = rollout.unroll_index // per_version if deterministic else 0
            # Wait for params: always for the first ones; in lock-step mode, for the
            # version this unroll must be acted with.
            while True:
                got = store.fetch(newer_than=version)
                if got is not None:
                    version, arrays = got
                    rollout.set_params(arrays)
                if version >= want:
                    break
                if learner_gone():
                    return 0
                time.sleep(0.001)
            arrays, meta = rollout.unroll(version)
            while not queue.put(arrays, meta, timeout=1.0):
                if learner_gone():
                    return 0
    finally:
        queue.close()
        store.close()


def _connect(address: dict, actor_id: int, learner_pid: int):
    """`connect_actor`; an actor its trainer started retries a Redis that refuses (backoff
    50 ms to 2 s, for as long as actors wait for a silent learner), while that learner lives.
    The learner has just reached this server, so a refusal is an outage such as a restart,
    which connected actors ride out the same way. A standalone actor fails at once: its URL
    may simply be wrong."""
    from jaxrl_impala.transport import RedisTransportError, connect_actor
    from jaxrl_impala.transport.redis import BACKOFF_MAX, BACKOFF_MIN, DEFAULT_STALE_AFTER

    delay, deadline = BACKOFF_MIN, time.monotonic() + DEFAULT_STALE_AFTER
    while True:
        try:
            return connect_actor(address, actor_id)
        except RedisTransportError as e:
            if not learner_pid or os.getppid() != learner_pid or time.monotonic() > deadline:
                raise
            if delay == BACKOFF_MIN:
                print(
                    f"actor {actor_id}: {e}; retrying (the learner reached it)",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(delay)
            delay = min(2 * delay, BACKOFF_MAX)


def _address_from_stdin() -> dict | None:
    """The transport address the trainer writes to our stdin; None at end of input (the
    trainer stopped before it had one)."""
    line = sys.stdin.readline()
    if not line.strip():
        return None
    address = json.loads(line)
    if not isinstance(address, dict):
        raise ValueError(f"the address on stdin is not a JSON object: {line[:200]!r}")
    return address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jaxrl_impala actor process")
    parser.add_argument("--config-json", help="the resolved config as JSON (set by the trainer)")
    parser.add_argument("--config", help="a YAML config file")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--actor-id", type=int, required=True)
    parser.add_argument(
        "--incarnation",
        type=int,
        default=0,
        help="which start of this actor in the run (set by the trainer); a restarted or "
        "resumed actor draws fresh env seeds and action noise",
    )
    parser.add_argument(
        "--address",
        help="transport address as JSON, or '-' to read it as one JSON line from stdin once "
        "the actor is ready (set by the trainer); without it (a standalone actor, e.g. on "
        "another host) the Redis transport.url and transport.prefix of the config",
    )
    args = parser.parse_args(argv)
    if args.address is not None:  # started by the trainer: the learner decides when we stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
    from jaxrl_impala.transport import RedisTransportError, redis_address

    try:
        if args.config_json:
            config = from_dict(json.loads(args.config_json))
        else:
            config = load_config(args.config, args.set)
        if args.address is None and config.transport.kind != "redis":
            raise ConfigError(
                "a standalone actor (no --address) needs transport.kind=redis and transport.url"
            )
    except ConfigError as e:
        print(f"actor {args.actor_id}: config error: {e}", file=sys.stderr)
        return 2
    address: dict | Callable[[], dict | None]
    if args.address == "-":
        address = _address_from_stdin
    elif args.address is not None:
        address = json.loads(args.address)
    else:
        address = redis_address(config.transport.url, config.transport.prefix)
    try:
        return run(config, args.actor_id, address, args.incarnation)
    except RedisTransportError as e:
        print(f"actor {args.actor_id}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

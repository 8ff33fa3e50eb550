"""The Unroll: what an actor sends and the learner trains on, defined once.

An unroll is one actor's T steps of its B envs, time-major. Its fields, their dtypes and
their time extent are written here and nowhere else: the actors (fused and stepwise), the
frame spec the transports check, the batcher, the learner, the tests and the benchmarks all
take them from :class:`Unroll`. Adding a field means adding it to :class:`Unroll`, to
:data:`DTYPES` and to the actors that fill it.

On the wire an unroll is a flat ``dict[str, np.ndarray]`` (a codec frame): a dict
observation becomes one ``obs__<key>`` field per key, and an absent field (``None``) is left
out. Parameters travel the same way, as ``p0000...`` and ``s0000...`` fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxrl_impala.transport.codec import FrameSpec


class Unroll(NamedTuple):
    """One actor's send, ``[T(+1), B, ...]`` for its B envs.

    Attributes:
      obs: [T+1, B, *obs_shape] (a dict of such for dict observations); row T is the
        bootstrap observation.
      actions: [T, B, *action_shape] as the policy drew them (before clipping to the space).
      behaviour_logp: float32 [T, B] ``log mu(a_t|x_t)`` of the action taken.
      behaviour_dist: float32 [T, B, P] the behaviour distribution's parameters.
      rewards: float32 [T, B].
      terminated: bool [T, B] the episode ended in a terminal state.
      truncated: bool [T, B] the episode hit its time limit.
      truncation_value: float32 [T, B] ``V_mu(final obs)`` where an episode was truncated
        (else 0): the value to bootstrap from, since ``obs[t+1]`` then already belongs to
        the next episode.
      discounted_return: float32 [T, B] the episode's discounted return up to and including
        step t, ``r_t + gamma * r_{t-1} + ...`` with ``gamma = learner.gamma`` (what
        ``learner.return_norm: running`` keeps statistics of, as gymnasium's
        ``NormalizeReward`` does; 0 before an episode's first step).
      episode_return: float32 [T, B] the return of the episode that ended at t (NaN where
        none ended).
      episode_length: int32 [T, B] its length (0 where none ended).
      episode_terms: float32 [T, B, K] per reward term, the episode's sum (envs reporting
        ``reward_terms``; None otherwise).
      initial_core: float32 [1, B, C] a recurrent policy's state before step 0 (already
        zeroed where step 0 starts an episode), from which the learner re-runs the core;
        None for a feed-forward policy. Its time extent is 1 so that, as every field, its
        columns are axis 1.
      teacher_actions: [T, B, *action_shape] in the actions' dtype: the env's scripted
        controller's action for ``obs[t]`` (``learner.teacher_coef > 0``, whose distillation
        term trains the policy towards it); None otherwise.
    """

    obs: Any
    actions: Any
    behaviour_logp: Any
    behaviour_dist: Any
    rewards: Any
    terminated: Any
    truncated: Any
    truncation_value: Any
    discounted_return: Any
    episode_return: Any
    episode_length: Any
    episode_terms: Any = None
    initial_core: Any = None
    teacher_actions: Any = None


# Fixed dtypes; ``obs`` and ``actions`` take the spaces' dtypes.
DTYPES: dict[str, Any] = {
    "behaviour_logp": np.float32,
    "behaviour_dist": np.float32,
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "truncation_value": np.float32,
    "discounted_return": np.float32,
    "episode_return": np.float32,
    "episode_length": np.int32,
    "episode_terms": np.float32,
    "initial_core": np.float32,
}

# The fields the update reads (and ``initial_core`` and ``teacher_actions`` when present);
# the episode statistics are for logging only.
BATCH_FIELDS = (
    "obs",
    "actions",
    "behaviour_logp",
    "behaviour_dist",
    "rewards",
    "terminated",
    "truncated",
    "truncation_value",
    "discounted_return",
)

# Integer metadata every unroll frame carries beside its arrays.
META_FIELDS = ("policy_version", "actor_id", "unroll_index")
# The ids a learner accepts. Standalone actors on other hosts choose their own (so no bound
# comes from ``actors.num``); an id ends up in int32 seeds and sort keys, so it fits one.
MAX_ACTOR_ID = 2**31 - 1
# Each meta field's accepted range (inclusive); the batcher also rejects a policy version
# newer than the learner's.
META_RANGES: dict[str, tuple[int, int]] = {
    "policy_version": (0, 2**63 - 1),
    "actor_id": (0, MAX_ACTOR_ID),
    "unroll_index": (0, 2**63 - 1),
}
# The float fields whose values the update reads; any non-finite one poisons the update
# (``episode_return`` is NaN by design where no episode ended, and is only logged).
FINITE_FIELDS = (
    "obs",
    "actions",
    "behaviour_logp",
    "behaviour_dist",
    "rewards",
    "truncation_value",
    "discounted_return",
    "initial_core",
    "teacher_actions",
)
# The optional fields the update reads when an unroll carries them.
OPTIONAL_BATCH_FIELDS = ("initial_core", "teacher_actions")


def cast(unroll: Unroll) -> Unroll:
    """``unroll`` with every fixed-dtype field in its :data:`DTYPES` dtype (jax or numpy)."""
    return unroll._replace(
        **{
            name: value.astype(DTYPES[name])
            for name, value in unroll._asdict().items()
            if name in DTYPES and value is not None
        }
    )


def example(
    T: int,
    B: int,
    obs_row: Any,
    action_row: Any,
    dist_size: int,
    num_terms: int,
    core_size: int = 0,
    teacher: bool = False,
) -> Unroll:
    """A zero unroll of the right shapes and dtypes (for frame specs and compiling ahead).

    Args:
      T, B: unroll length and envs.
      obs_row: one observation batch ``[B, ...]`` (a pytree; shapes and dtypes are read).
      action_row: one action batch ``[B, ...]`` (shape and dtype are read).
      dist_size: P, the behaviour distribution's parameter count.
      num_terms: K, reward terms the env reports (0: no ``episode_terms``).
      core_size: C, a recurrent policy's state width (0: no ``initial_core``).
      teacher: with ``teacher_actions`` (shaped as the actions).
    """
    zeros = lambda shape, dtype: np.zeros(shape, dtype)  # noqa: E731
    obs = jax.tree.map(lambda x: zeros((T + 1, *x.shape), x.dtype), obs_row)
    actions = zeros((T, *action_row.shape), action_row.dtype)
    return Unroll(
        obs=obs,
        actions=actions,
        behaviour_logp=zeros((T, B), DTYPES["behaviour_logp"]),
        behaviour_dist=zeros((T, B, dist_size), DTYPES["behaviour_dist"]),
        rewards=zeros((T, B), DTYPES["rewards"]),
        terminated=zeros((T, B), DTYPES["terminated"]),
        truncated=zeros((T, B), DTYPES["truncated"]),
        truncation_value=zeros((T, B), DTYPES["truncation_value"]),
        discounted_return=zeros((T, B), DTYPES["discounted_return"]),
        episode_return=zeros((T, B), DTYPES["episode_return"]),
        episode_length=zeros((T, B), DTYPES["episode_length"]),
        episode_terms=zeros((T, B, num_terms), DTYPES["episode_terms"]) if num_terms else None,
        initial_core=zeros((1, B, core_size), DTYPES["initial_core"]) if core_size else None,
        teacher_actions=actions.copy() if teacher else None,
    )


# --------------------------------------------------------------------------- frames
def obs_fields(obs: Any) -> dict[str, Any]:
    """Frame field names of an observation pytree: ``obs`` or ``obs__<key>``."""
    if isinstance(obs, dict):
        return {f"obs__{k}": v for k, v in obs.items()}
    return {"obs": obs}


def obs_from_fields(fields: dict[str, Any]) -> Any:
    """The observation pytree of frame fields (inverse of :func:`obs_fields`)."""
    if "obs" in fields:
        return fields["obs"]
    return {k[len("obs__") :]: v for k, v in fields.items() if k.startswith("obs__")}


def to_frame(unroll: Unroll) -> dict[str, Any]:
    """The unroll as frame fields (absent fields left out)."""
    fields = unroll._asdict()
    out = obs_fields(fields.pop("obs"))
    out.update({name: value for name, value in fields.items() if value is not None})
    return out


def batch_from_frame(arrays: dict[str, Any]) -> dict[str, Any]:
    """Frame fields (one unroll, or several concatenated) -> the update's batch: the
    :data:`BATCH_FIELDS` and the :data:`OPTIONAL_BATCH_FIELDS` present, ``obs`` a pytree
    for dict observations."""
    batch = {name: arrays[name] for name in BATCH_FIELDS if name != "obs"}
    batch["obs"] = obs_from_fields(arrays)
    batch.update({name: arrays[name] for name in OPTIONAL_BATCH_FIELDS if name in arrays})
    return batch


def concat(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Unrolls' frame fields (``[T(+1), B, ...]`` each) side by side: ``[T(+1), N, ...]``."""
    return {n: np.concatenate([f[n] for f in frames], axis=1) for n in frames[0]}


def frame_spec(example: Unroll, action_bounds: tuple[Any, Any] | None = None) -> FrameSpec:
    """The spec every unroll frame like ``example`` must match: its fields, dtypes and shapes,
    the :data:`META_RANGES`, finite values in the float :data:`FINITE_FIELDS`, and (given
    ``action_bounds``, inclusive) integer actions within them. Bool fields hold only 0 and 1
    (the codec checks that of every frame).

    Args:
      example: an unroll of the sender's shapes and dtypes (:func:`example`).
      action_bounds: ``(low, high)`` of integer actions, each an int or one per action
        component (a MultiDiscrete's ``nvec - 1``); None: no bound.
    """
    fields = to_frame(example)
    roots = {name: "obs" if name.startswith("obs__") else name for name in fields}
    finite = [
        name
        for name, value in fields.items()
        if roots[name] in FINITE_FIELDS and np.dtype(value.dtype).kind == "f"
    ]
    ranges = {}
    if action_bounds is not None and np.dtype(fields["actions"].dtype).kind in "iu":
        ranges["actions"] = action_bounds
        if "teacher_actions" in fields:
            ranges["teacher_actions"] = action_bounds
    return FrameSpec.from_arrays(fields, meta=META_RANGES, finite=finite, ranges=ranges)


def params_to_frame(params: Any, stats: Any) -> dict[str, np.ndarray]:
    """Params and obs-normaliser stats as frame fields ``p0000...``, ``s0000...``."""
    out = {f"p{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
    out.update({f"s{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(stats))})
    return out


def params_from_frame(arrays: dict[str, np.ndarray], params_template: Any, stats_template: Any):
    """``(params, stats)`` shaped like the templates, from :func:`params_to_frame`'s fields."""
    p_leaves, p_def = jax.tree.flatten(params_template)
    s_leaves, s_def = jax.tree.flatten(stats_template)
    params = jax.tree.unflatten(p_def, [arrays[f"p{i:04d}"] for i in range(len(p_leaves))])
    stats = jax.tree.unflatten(s_def, [arrays[f"s{i:04d}"] for i in range(len(s_leaves))])
    return params, stats

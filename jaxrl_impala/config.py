"""Trainer configuration: frozen dataclasses (the schema), YAML presets, ``--set`` overrides.

Every field has a one-line doc in its section's docstring. ``load_config`` reads a YAML file,
applies ``KEY=VALUE`` overrides (values parsed as YAML scalars), checks every key and value,
and derives the batch sizes in one place (:func:`derived_sizes`), failing loudly on sizes
that don't divide instead of adjusting them.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

# The gymnasium id of the built-in DrivingEnv (registered when the package is imported).
DRIVING_ENV_ID = "jaxrl_impala/Driving-v0"
# ``actors.num: auto``: the trainer picks the count from its CPU layout (`resolve_auto_actors`).
AUTO = "auto"


class ConfigError(ValueError):
    """A bad config key or value; the message is one line naming the key and the fix."""


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The environment each actor steps.

    id: gymnasium id; the built-in driving simulator is ``jaxrl_impala/Driving-v0``.
    num_envs: environments per actor process, stepped as one vector env.
    kwargs: keyword arguments for the env constructor (e.g. ``obs_mode``, ``action_mode``).
    max_episode_steps: time limit (truncation); ``null`` keeps the env's own.
    frame_stack: observations of the last this many steps, concatenated along the last axis
      (Box observations; 1: off).
    obs_indices: keep only these entries of a flat Box observation, in this order (``[]``:
      all): a partially observed variant of any Box env, e.g. CartPole's positions without
      its velocities, ``[0, 2]``. Applied before ``frame_stack``.
    """

    id: str = DRIVING_ENV_ID
    num_envs: int = 16
    kwargs: dict = dataclasses.field(default_factory=dict)
    max_episode_steps: int | None = None
    frame_stack: int = 1
    obs_indices: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ActorsConfig:
    """Actor processes (CPU only).

    num: number of actor processes, or ``auto``: one per CPU the learner does not keep
      (``train.pin_cpus``), at least 1; e.g. 14 on 16 CPUs beside a GPU learner, 8 beside a
      CPU one. Not with ``train.deterministic`` or several learner processes.
    restart_backoff_s: first delay before restarting a crashed actor (doubles per crash).
    crash_loop_restarts: this many restarts of one actor ...
    crash_loop_window_s: ... within this many seconds stop the run with the actor's error.
    """

    num: int | Literal["auto"] = 2
    restart_backoff_s: float = 0.5
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Unrolls.

    length: T, environment steps per unroll (the unroll holds T+1 observations).
    """

    length: int = 32


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor-critic network.

    hidden: widths of the MLP torso (after the pixel encoder for image observations).
    activation: ``tanh`` or ``relu``.
    shared_torso: one torso for policy and value, or a separate one each.
    squash: bound Box actions with tanh instead of clipping.
    log_std_init: initial log standard deviation of Gaussian policies.
    core: ``none`` (feed-forward), ``lstm`` or ``gru``: a recurrent core after each torso and
      before its head. Actors carry its state across steps and unrolls (zeroed after an
      episode ends), each unroll carries the state at its first step, and the learner re-runs
      the core from there (docs/recurrent.md).
    core_size: the recurrent core's hidden units (with ``core`` not ``none``).
    burn_in: the first steps of every unroll only warm up the recurrent state (with the
      params the batch arrives at, no gradient) and are not trained on; 0: off. Must be less
      than ``rollout.length``.
    layer_norm: layer-normalise every torso layer's pre-activations (Ba et al., 2016).
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False
    squash: bool = False
    log_std_init: float = -0.5
    core: str = "none"
    core_size: int = 64
    burn_in: int = 0
    layer_norm: bool = False


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The compiled update.

    algo: ``appo`` (PPO clip on V-trace), ``impala`` (V-trace policy gradient) or ``ppo``.
    num_devices: local devices the batch is sharded over; 0 means all.
    batch_unrolls: unrolls per update (the batch is ``batch_unrolls * env.num_envs`` columns).
    lr: Adam learning rate.
    lr_schedule: ``constant`` or ``linear`` (decays to 0 at ``train.total_env_steps``).
    adam_eps: Adam epsilon.
    max_grad_norm: global gradient-norm clip.
    gamma: discount factor.
    lambda_: V-trace lambda (appo, impala) or GAE lambda (ppo).
    clip_rho_threshold: V-trace rho bar (``null``: no clipping).
    clip_c_threshold: V-trace c bar (``null``: no clipping).
    clip_pg_rho_threshold: V-trace policy-gradient rho bar (``null``: no clipping).
    clip_eps: PPO ratio clipping range (appo, ppo).
    value_clip_eps: PPO value clipping range (ppo); ``null`` for the plain value loss.
    value_coef: value-loss weight.
    entropy_coef: entropy-bonus weight.
    epochs: passes over each batch (appo, ppo).
    minibatches: minibatches per epoch (appo, ppo), split along the batch axis.
    normalize_advantages: standardise advantages per minibatch.
    publish_every: publish params to the actors every this many updates.
    max_policy_lag: drop unrolls acted with params more than this many versions old (0: keep all).
    overlap: keep the learner's host work off the update's path (one process, not
        ``train.deterministic``): the next batch is gathered on a thread while an update runs,
        and update v+1 is dispatched before update v's metrics are read. Faster, at the cost of
        more policy lag (docs/benchmarks.md).
    obs_norm: running observation normalisation (stats shipped to actors with the params).
    reward_scale: multiply rewards by this before the update.
    reward_clip: clip scaled rewards to [-reward_clip, reward_clip] (``null``: no clip).
    return_norm: ``none``; ``running``: rewards divided by the running std of the
        discounted return (gymnasium's ``NormalizeReward``), before ``reward_scale`` and
        ``reward_clip``; or ``popart``: the value head learns values normalised by the mean
        and std of the value targets, and its last layer is rescaled when they change, so
        that its outputs are preserved (PopArt, van Hasselt et al., 2016). Either's
        statistics live in the train state and its checkpoints.
    popart_beta: ``popart``'s step size: each batch moves the targets' moments by
        ``max(popart_beta, 1 / k)`` at the k-th batch (an average, then an EMA).
    teacher_coef: weight of a distillation term towards the env's scripted controller
        (kickstarting, Schmitt et al., 2018, arXiv:1803.03835): ``teacher_loss`` averaged
        over the batch, against ``a_teacher``, the controller's action in the state the
        actor saw (DrivingEnv's ``scripted_actions()``). 0: off. The policy acts and is
        evaluated on its observations alone; the teacher only shapes its training. The
        actors send ``a_teacher`` only when it is above 0, so actors started on their own
        (other hosts) need the learner's value: frames of another layout are rejected.
    teacher_schedule: ``constant`` or ``linear`` (the weight decays to 0 at
        ``train.total_env_steps``).
    teacher_loss: the distillation term per step: ``nll``, ``-log pi(a_teacher|x)`` (any
        action space); ``mse``, the squared distance of the greedy action from
        ``a_teacher`` (Box actions), which leaves the policy's spread to the RL loss.
    """

    algo: str = "appo"
    num_devices: int = 0
    batch_unrolls: int = 2
    lr: float = 3e-4
    lr_schedule: str = "constant"
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    lambda_: float = 0.95
    clip_rho_threshold: float | None = 1.0
    clip_c_threshold: float | None = 1.0
    clip_pg_rho_threshold: float | None = 1.0
    clip_eps: float = 0.2
    value_clip_eps: float | None = None
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    epochs: int = 4
    minibatches: int = 4
    normalize_advantages: bool = True
    publish_every: int = 1
    max_policy_lag: int = 0
    overlap: bool = True
    obs_norm: bool = True
    reward_scale: float = 1.0
    reward_clip: float | None = None
    return_norm: str = "none"
    popart_beta: float = 0.01
    teacher_coef: float = 0.0
    teacher_schedule: str = "constant"
    teacher_loss: str = "nll"

    @property
    def taught(self) -> bool:
        """Whether the unrolls carry the scripted controller's actions (``teacher_coef >
        0``): the one test the actors' frames and the learner's frame spec both follow."""
        return self.teacher_coef > 0


@dataclasses.dataclass(frozen=True)
class TransportConfig:
    """How unrolls and params move between processes.

    kind: ``shm`` (shared memory, the default) or ``redis``.
    url: Redis URL (``redis://[user[:password]@]host:port/db`` or ``rediss://``), for
      ``redis``. A password in it is masked (``***``) in ``config.yaml``, ``--print-config``,
      logs and the actors' command lines; better give it by ``REDIS_PASSWORD`` or
      ``password_file``, which also serve a ``--resume``.
    prefix: key prefix for Redis (``{prefix}:unrolls``, ``{prefix}:params``).
    password_file: a file whose first line is the Redis password, readable by its owner only
      (mode 0600 or 0400; a file open to group or others is refused, as ssh refuses such a
      key). Used when ``url`` holds no password; ``REDIS_PASSWORD`` in the environment is the
      other way to give it. ``~`` is expanded; ``""``: none. Keeps the password out of
      ``config.yaml``, command lines and logs (docs/transports.md#security).
    slots_per_actor: unrolls each actor may have in flight (queue bound).
    overflow: ``block`` (actors wait for room) or ``drop_oldest``.
    """

    kind: str = "shm"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "jaxrl_impala"
    password_file: str = ""
    slots_per_actor: int = 4
    overflow: str = "block"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run.

    mode: ``actors`` (CPU actor processes feed the learner through the transport) or
      ``on_device`` (envs with a pure JAX step, such as DrivingEnv, step on the learner's
      devices, compiled with the policy; the batch never leaves the device).
    total_env_steps: budget of environment steps (all actors together).
    seed: seed of params, actors and environments.
    deterministic: lock-step schedule: same seed, same metrics, run after run.
    log_every_s: seconds between metrics lines (and progress updates).
    checkpoint_every_s: seconds between checkpoints (one is always written at the end).
    stop_at_eval_return: stop early once an evaluation mean return reaches this (``null``: never).
    max_nonfinite_in_row: an update whose loss, gradients or new params are not finite is
      skipped (counted in ``updates_skipped_nonfinite``); this many in a row stop the run.
    compile_cache: directory of JAX's persistent compilation cache (``~`` expanded), used by
      the learner and the actors: a later run of the same shapes loads its compiled update
      and policy steps instead of compiling them again. ``""`` turns it off.
    pin_cpus: split the CPUs this process may use between the learner and its actors, by
      where the learner's update runs: on CPU the learner keeps the first half (rounded up),
      where XLA's threads run the update, and its own threads (dispatch, batch prefetch,
      publishing, evaluation) may use every CPU; on an accelerator (GPU, TPU) it keeps the
      first CPU (two from 8 CPUs) for those threads, and stays there. Actor ``i`` runs on one
      of the other CPUs (``i`` mod their number). Why: XLA gives every process a thread pool
      as wide as the machine, and the small ops of an actor and of the learner then wait on
      each other's preempted threads (docs/benchmarks.md). The backend is read before JAX
      starts: ``JAX_PLATFORMS`` when set, else whether a GPU or TPU plugin and its device are
      present. Off with fewer than 2 CPUs and with several learner processes
      (``distributed.num_processes > 1``).
    """

    mode: str = "actors"
    total_env_steps: int = 1_000_000
    seed: int = 0
    deterministic: bool = False
    log_every_s: float = 2.0
    checkpoint_every_s: float = 300.0
    stop_at_eval_return: float | None = None
    max_nonfinite_in_row: int = 10
    compile_cache: str = "~/.cache/jaxrl_impala/xla"
    pin_cpus: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic greedy evaluation on env seeds disjoint from training.

    every_env_steps: evaluate after this many env steps (0: only at the end).
    episodes: episodes per evaluation.
    gif: write a GIF of the first evaluation episode when the env can render.
    """

    every_env_steps: int = 50_000
    episodes: int = 10
    gif: bool = True


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Outputs.

    dir: run directory (``runs/<name>`` when empty).
    name: run name (a timestamp when empty).
    """

    dir: str = ""
    name: str = ""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Several learner processes (one per host) training one model with ``jax.distributed``.

    Every process runs the same jitted update on a global mesh over all processes' devices
    (each pulls its share of unrolls from the shared Redis queue, so ``transport.kind`` must be
    ``redis``); process 0 publishes params and writes metrics, checkpoints and evaluations.

    coordinator: ``host:port`` of the coordinator service, which process 0 hosts; ``""``: one
      process (off); ``auto``: let ``jax.distributed.initialize()`` detect the cluster (SLURM,
      Open MPI, Kubernetes, or the ``JAX_COORDINATOR_ADDRESS`` environment variable, with
      ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` honoured by JAX's detectors).
    num_processes: learner processes in the run (with ``auto``: leave at 1 to detect it).
    process_id: this process's id in ``0 .. num_processes-1`` (with ``auto``: detected).
    init_timeout_s: seconds to wait for every process to join before failing.
    """

    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    init_timeout_s: int = 300


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration."""

    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    actors: ActorsConfig = dataclasses.field(default_factory=ActorsConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    learner: LearnerConfig = dataclasses.field(default_factory=LearnerConfig)
    transport: TransportConfig = dataclasses.field(default_factory=TransportConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "learner.algo": ("appo", "impala", "ppo"),
    "learner.lr_schedule": ("constant", "linear"),
    "learner.return_norm": ("none", "running", "popart"),
    "learner.teacher_schedule": ("constant", "linear"),
    "learner.teacher_loss": ("nll", "mse"),
    "network.activation": ("tanh", "relu"),
    "network.core": ("none", "lstm", "gru"),
    "transport.kind": ("shm", "redis"),
    "transport.overflow": ("block", "drop_oldest"),
    "train.mode": ("actors", "on_device"),
}

POSITIVE = {
    "env.num_envs",
    "env.frame_stack",
    "network.core_size",
    "actors.num",
    "rollout.length",
    "learner.batch_unrolls",
    "learner.lr",
    "learner.epochs",
    "learner.minibatches",
    "learner.publish_every",
    "train.max_nonfinite_in_row",
    "learner.gamma",
    "learner.popart_beta",
    "transport.slots_per_actor",
    "train.total_env_steps",
    "train.log_every_s",
    "train.checkpoint_every_s",
    "eval.episodes",
    "distributed.num_processes",
    "distributed.init_timeout_s",
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


# Types a value must already have, and how an error names them.
_PLAIN = {bool: "true or false", int: "an integer", str: "a string", dict: "a mapping"}


def _expected(tp: Any) -> str:
    """How an error names what ``tp`` accepts."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    return _PLAIN.get(tp) or {float: "a number"}.get(tp) or _type_name(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns it converted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for arg in options:
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(map(_expected, options))}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_expected(tp)}, got {value!r}")
        return value
    if origin is tuple:
        (elem, _) = typing.get_args(tp)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list like [64, 64], got {value!r}")
        return tuple(_coerce(key, v, elem) for v in value)
    if tp in _PLAIN:
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            if tp is int and isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected {_PLAIN[tp]}, got {value!r}")
        return dict(value) if tp is dict else value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key {full!r}; valid keys"
                f"{' in ' + prefix[:-1] if prefix else ''}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"'{full}' is a section; set its keys, e.g. {full}.{key}=...")
            kwargs[key] = _build(tp, value, f"{full}.")
            continue
        value = _coerce(full, value, tp)
        if full in CHOICES and value not in CHOICES[full]:
            raise ConfigError(f"{full}: {value!r} is not one of {', '.join(CHOICES[full])}")
        if full in POSITIVE and not isinstance(value, str) and value <= 0:
            raise ConfigError(f"{full}: must be > 0, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        # env.kwargs too: `--set env.kwargs.num_vehicles=4` keeps the file's obs_mode
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. learner.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def to_dict(config: Config) -> dict:
    """The config as plain YAML-able data (tuples as lists)."""

    def convert(x):
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [convert(v) for v in x]
        return x

    return convert(dataclasses.asdict(config))


def from_dict(data: dict) -> Config:
    """Builds and validates a :class:`Config` from nested plain data."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    config = _build(Config, data, "")
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Loads a YAML preset (or the defaults when ``path`` is None) and applies overrides.

    Args:
      path: a YAML file of sections (``env:``, ``learner:`` ...); unknown keys are errors.
      overrides: ``"section.key=value"`` strings; values are parsed as YAML scalars.

    Raises:
      ConfigError: one line naming the bad key or value and the valid choices.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        data = _merge(data, _parse_override(item))
    return from_dict(data)


def update_passes(lc: LearnerConfig) -> tuple[int, int]:
    """``(epochs, minibatches)`` of one update: IMPALA takes one gradient step per batch."""
    if lc.algo == "impala":
        return 1, 1
    return lc.epochs, lc.minibatches


def derived_sizes(config: Config, num_devices: int, num_processes: int = 1) -> dict[str, int]:
    """Batch sizes of the update, checked for divisibility.

    Args:
      config: the run's config.
      num_devices: devices the batch is sharded over, all processes together.
      num_processes: learner processes; each gathers an equal share of the unrolls.

    Returns:
      ``batch_size`` (columns per update, all processes together), ``minibatch_size``
      (columns per minibatch), ``env_steps_per_update`` (all processes together) and
      ``local_batch_unrolls`` (unrolls each process gathers per update) and
      ``total_updates`` (the updates in ``train.total_env_steps``, at least 1: what the
      linear schedules decay over).

    Raises:
      ConfigError: when the batch does not split into minibatches, over the devices, or over
        the processes.
    """
    lc = config.learner
    if lc.batch_unrolls % num_processes:
        raise ConfigError(
            f"learner.batch_unrolls={lc.batch_unrolls} does not split over {num_processes} "
            f"learner processes (distributed.num_processes); make it a multiple"
        )
    batch = lc.batch_unrolls * config.env.num_envs
    _, minibatches = update_passes(lc)
    if batch % minibatches:
        raise ConfigError(
            f"learner.minibatches={minibatches} does not divide the batch of {batch} columns "
            f"(learner.batch_unrolls * env.num_envs)"
        )
    minibatch = batch // minibatches
    steps = batch * config.rollout.length  # env steps per update
    if minibatch % num_devices:
        raise ConfigError(
            f"the minibatch of {minibatch} columns (learner.batch_unrolls * env.num_envs / "
            f"learner.minibatches) does not split over {num_devices} devices; change "
            f"env.num_envs, learner.batch_unrolls or learner.minibatches, "
            f"or set learner.num_devices"
        )
    return {
        "batch_size": batch,
        "minibatch_size": minibatch,
        "env_steps_per_update": steps,
        "local_batch_unrolls": lc.batch_unrolls // num_processes,
        "total_updates": max(1, config.train.total_env_steps // steps),
    }


def validate(config: Config) -> None:
    """Cross-field checks that don't need JAX."""
    if config.train.deterministic and config.actors.num == AUTO:
        raise ConfigError(
            "actors.num=auto: train.deterministic needs a fixed actor count (its schedule "
            "splits learner.batch_unrolls among the actors); set actors.num to a number"
        )
    if config.train.deterministic and config.learner.batch_unrolls % config.actors.num:
        raise ConfigError(
            f"train.deterministic needs learner.batch_unrolls ({config.learner.batch_unrolls}) "
            f"to be a multiple of actors.num ({config.actors.num})"
        )
    nc = config.network
    if nc.burn_in < 0 or (nc.burn_in and nc.burn_in >= config.rollout.length):
        raise ConfigError(
            f"network.burn_in={nc.burn_in}: must be in 0..rollout.length-1 "
            f"({config.rollout.length - 1}); the steps after it are the ones trained on"
        )
    if nc.burn_in and nc.core == "none":
        raise ConfigError("network.burn_in warms up a recurrent state: set network.core too")
    if len(set(config.env.obs_indices)) != len(config.env.obs_indices):
        raise ConfigError(f"env.obs_indices={list(config.env.obs_indices)}: an index repeats")
    if any(i < 0 for i in config.env.obs_indices):
        raise ConfigError(f"env.obs_indices={list(config.env.obs_indices)}: must be >= 0")
    if config.learner.popart_beta > 1:
        raise ConfigError(f"learner.popart_beta={config.learner.popart_beta}: must be <= 1")
    if config.learner.teacher_coef < 0:
        raise ConfigError(f"learner.teacher_coef={config.learner.teacher_coef}: must be >= 0")
    if config.learner.num_devices < 0:
        raise ConfigError("learner.num_devices: must be >= 0 (0 means all local devices)")
    dc = config.distributed
    if not 0 <= dc.process_id < dc.num_processes:
        raise ConfigError(
            f"distributed.process_id={dc.process_id} must be in 0..{dc.num_processes - 1} "
            f"(distributed.num_processes={dc.num_processes})"
        )
    if dc.num_processes > 1 and not dc.coordinator:
        raise ConfigError(
            f"distributed.num_processes={dc.num_processes} needs distributed.coordinator "
            f"(host:port of process 0, or auto on a cluster scheduler)"
        )
    check_multiprocess(config, dc.num_processes)
    derived_sizes(config, 1, dc.num_processes)


def check_multiprocess(config: Config, num_processes: int) -> None:
    """What a run with several learner processes needs (also called once the process count
    is known, e.g. after ``distributed.coordinator=auto`` detected it)."""
    if num_processes <= 1:
        return
    if config.actors.num == AUTO:
        # Each process numbers its actors from process_id * actors.num: the counts must agree.
        raise ConfigError(
            f"actors.num=auto: {num_processes} learner processes need the same actor count on "
            f"every host; set actors.num to a number"
        )
    if config.transport.kind != "redis":
        raise ConfigError(
            f"{num_processes} learner processes (distributed) need transport.kind=redis and "
            f"transport.url: every process pulls its share of unrolls from the shared queue"
        )
    if config.train.deterministic:
        raise ConfigError(
            "train.deterministic runs one learner process; set distributed.num_processes=1"
        )


def resolve_auto_actors(config: Config, num: int) -> Config:
    """``config`` with ``actors.num: auto`` replaced by ``num`` (the count the trainer chose
    from its CPU layout); any other config unchanged. Whatever reads ``actors.num`` later
    (supervisor, transport bounds, the actors' own config, ``config.yaml``) sees a number."""
    if config.actors.num != AUTO:
        return config
    return dataclasses.replace(config, actors=dataclasses.replace(config.actors, num=num))


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text, its secrets masked (`public_dict`): what
    ``config.yaml`` and ``--print-config`` show."""
    return yaml.safe_dump(public_dict(config), sort_keys=False)


def public_dict(config: Config) -> dict:
    """`to_dict` with the Redis password in ``transport.url`` masked: the config as it may go
    into files, command lines and logs. A run resumed from it gets the password back from
    ``REDIS_PASSWORD`` or ``transport.password_file``."""
    data = to_dict(config)
    data["transport"]["url"] = mask_url(data["transport"]["url"])
    return data


MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def mask_url(url: str) -> str:
    """`url` with its password replaced by ``***`` (in the user info and in ``?password=``).

    A URL that does not parse (``redis://:pw@h:port``), or has an ``@`` or a ``password``
    where no user info can be (``redis:/u:pw@h``, ``u:pw@h``), keeps at most its scheme
    (``redis://***``): no guess at where the password is.
    """
    text = str(url)
    scheme = _SCHEME.match(text)
    everything = (scheme.group(0) if scheme else "") + MASK
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        return everything
    if not scheme or "@" in parts.path + parts.query + parts.fragment:
        # No scheme://, or an @ where no user info can be: the password could be anywhere.
        return everything if "@" in text or "password" in text.lower() else text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        text = text.replace(netloc, f"{userinfo}@{host}", 1)
    return re.sub(r"(?i)(password=)[^&#]*", r"\g<1>" + MASK, text)

"""Flax actor-critic networks for vector, image and dict observations.

Pure: the module maps (normalised) observations to the action distribution's parameters and
a value. Observation normalisation statistics live outside the params (the learner keeps
them and ships them to the actors with the params): see :func:`normalize_obs`.

With ``network.core: lstm | gru`` a recurrent core sits after each torso and before its
head. Its state is one float32 array ``[B, C]`` per env (:attr:`Policy.core_size`; an
LSTM's ``(c, h)`` side by side), and every call takes a sequence ``[S, B, ...]`` with
``resets [S, B]``: where ``resets[s]`` is true the state is zeroed before step ``s`` (the
first step of an episode). An actor calls it with ``S = 1``; the learner with the whole
unroll, ``S = T + 1``, from the state the unroll carries (docs/recurrent.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_impala.config import NetworkConfig
from jaxrl_impala.core.distributions import distribution_for_space

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}
_OBS_CLIP = 10.0


def _dense(features: int, scale: float) -> nn.Dense:
    # Orthogonal init with per-layer gains, as in the PPO implementation details
    # (Huang et al., 2022, https://iclr-blog-track.github.io/2022/03/25/ppo-implementation-details/).
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale))


class PixelEncoder(nn.Module):
    """Small conv encoder for uint8 images [..., H, W, C] (scaled to [0, 1])."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-3]
        x = x.reshape((-1, *x.shape[-3:])).astype(jnp.float32) / 255.0
        init = nn.initializers.orthogonal(np.sqrt(2))
        x = nn.relu(nn.Conv(16, (5, 5), strides=(2, 2), kernel_init=init)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), kernel_init=init)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), kernel_init=init)(x))
        return x.reshape((*lead, -1))


class Torso(nn.Module):
    """Encodes an observation pytree, then an MLP (each layer's pre-activations
    layer-normalised with ``layer_norm``)."""

    hidden: tuple[int, ...]
    activation: str
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: Any) -> jax.Array:
        leaves = obs.items() if isinstance(obs, dict) else [("obs", obs)]
        features = []
        for _, x in sorted(leaves, key=lambda kv: kv[0]):
            if x.ndim >= 3 and x.dtype == jnp.uint8:
                features.append(PixelEncoder()(x))
            else:
                features.append(x.astype(jnp.float32))
        x = jnp.concatenate(features, axis=-1)
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = _dense(width, np.sqrt(2))(x)
            x = act(nn.LayerNorm()(x) if self.layer_norm else x)
        return x


_CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


def core_width(core: str, size: int) -> int:
    """Width of one core's flat state: an LSTM's ``(c, h)`` is ``2 * size``, a GRU's ``h``
    is ``size``; 0 without a core."""
    return {"none": 0, "lstm": 2 * size, "gru": size}[core]


class ResetCell(nn.Module):
    """One step of a flax LSTM or GRU cell on a flat state ``[B, C]``, zeroed first where
    ``reset [B]`` is true (the step starts an episode)."""

    kind: str
    size: int

    @nn.compact
    def __call__(self, state: jax.Array, inputs: tuple[jax.Array, jax.Array]):
        x, reset = inputs
        state = jnp.where(reset[:, None], 0.0, state)
        cell = _CELLS[self.kind](self.size, name="cell")
        if self.kind == "lstm":
            (c, h), y = cell((state[:, : self.size], state[:, self.size :]), x)
            return jnp.concatenate([c, h], -1), y
        h, y = cell(state, x)
        return h, y


# The cell scanned over the time axis of ``(x [S, B, F], reset [S, B])``, params shared.
ScannedCell = nn.scan(
    ResetCell, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0
)


class ActorCritic(nn.Module):
    """Policy and value heads over one shared torso or two separate ones.

    Attributes:
      param_size: size of the action distribution's flat parameters.
      gaussian_dim: action dimensions of a Box space (0 otherwise): the head then emits
        the mean and a state-independent, learned log-std is appended.
      core, core_size: the recurrent core (``none``, ``lstm``, ``gru``) after each torso.
    """

    param_size: int
    gaussian_dim: int
    hidden: tuple[int, ...]
    activation: str
    shared_torso: bool
    log_std_init: float
    core: str = "none"
    core_size: int = 0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: Any, core: jax.Array | None = None, resets: jax.Array | None = None):
        """``(dist_params [..., P], value [...], core)`` of obs ``[..., *obs_shape]``.

        With a core, obs is a sequence ``[S, B, ...]``, ``core [B, C]`` the state before its
        first step and ``resets [S, B]`` where to zero it; the returned core is the state
        after the last step. Without one, ``core`` and ``resets`` are ignored (None back).
        """
        torso = functools.partial(Torso, self.hidden, self.activation, self.layer_norm)
        pi_h = torso(name="torso_pi")(obs)
        v_h = pi_h if self.shared_torso else torso(name="torso_v")(obs)
        new_core = None
        if self.core != "none":
            w = core_width(self.core, self.core_size)
            pi_core, pi_h = ScannedCell(self.core, self.core_size, name="core_pi")(
                core[:, :w], (pi_h, resets)
            )
            if self.shared_torso:
                v_h, new_core = pi_h, pi_core
            else:
                v_core, v_h = ScannedCell(self.core, self.core_size, name="core_v")(
                    core[:, w:], (v_h, resets)
                )
                new_core = jnp.concatenate([pi_core, v_core], -1)
        value = _dense(1, 1.0)(v_h)[..., 0]
        if self.gaussian_dim:
            mean = _dense(self.gaussian_dim, 0.01)(pi_h)
            log_std = self.param(
                "log_std", nn.initializers.constant(self.log_std_init), (self.gaussian_dim,)
            )
            dist_params = jnp.concatenate([mean, jnp.broadcast_to(log_std, mean.shape)], -1)
        else:
            dist_params = _dense(self.param_size, 0.01)(pi_h)
        return dist_params, value, new_core


# The value head in the params: flax names an unnamed submodule by its class and order, and
# the value head is ActorCritic's first Dense (the name the checkpoints already written
# hold; tests/test_networks.py checks that it is the value's).
VALUE_HEAD = "Dense_0"


def map_value_head(params, fn):
    """``params`` with the value head's ``(kernel, bias)`` replaced by ``fn(kernel, bias)``
    (``learner.return_norm: popart`` rescales it this way)."""
    head = params["params"][VALUE_HEAD]
    kernel, bias = fn(head["kernel"], head["bias"])
    return {**params, "params": {**params["params"], VALUE_HEAD: {"kernel": kernel, "bias": bias}}}


@flax.struct.dataclass
class ObsStats:
    """Running mean/variance of float observation leaves (Chan et al. parallel update).

    Attributes:
      mean, var: pytrees shaped like one observation (uint8 leaves hold an empty array).
      count: float scalar, observations seen.
    """

    mean: Any
    var: Any
    count: jax.Array


def init_obs_stats(obs_space: gym.Space) -> ObsStats:
    def zeros(space, fill):
        if isinstance(space, gym.spaces.Dict):
            return {k: zeros(s, fill) for k, s in space.spaces.items()}
        if space.dtype == np.uint8:
            return jnp.zeros((0,), jnp.float32)
        return jnp.full(space.shape, fill, jnp.float32)

    return ObsStats(zeros(obs_space, 0.0), zeros(obs_space, 1.0), jnp.asarray(1e-4, jnp.float32))


def update_obs_stats(stats: ObsStats, obs: Any) -> ObsStats:
    """Folds a batch of observations [T, B, ...] into the running statistics."""

    def batch_moments(x, mean):
        if mean.shape == (0,):
            return mean, mean, 0.0
        lead = x.shape[: x.ndim - mean.ndim]
        x = x.astype(jnp.float32).reshape((-1, *mean.shape))
        return x.mean(0), x.var(0), float(np.prod(lead))

    leaves_x = jax.tree.leaves(obs)
    leaves_m, treedef = jax.tree.flatten(stats.mean)
    leaves_v = jax.tree.leaves(stats.var)
    new_m, new_v, n = [], [], 0.0
    for x, m, v in zip(leaves_x, leaves_m, leaves_v, strict=True):
        bm, bv, n_b = batch_moments(x, m)
        if n_b == 0:
            new_m.append(m)
            new_v.append(v)
            continue
        n = n_b
        total = stats.count + n_b
        delta = bm - m
        new_m.append(m + delta * n_b / total)
        m2 = v * stats.count + bv * n_b + jnp.square(delta) * stats.count * n_b / total
        new_v.append(m2 / total)
    return ObsStats(
        jax.tree.unflatten(treedef, new_m),
        jax.tree.unflatten(treedef, new_v),
        stats.count + n,
    )


def normalize_obs(stats: ObsStats | None, obs: Any) -> Any:
    """Standardises float observation leaves with ``stats`` and clips to +-10; uint8 pass."""
    if stats is None:
        return obs

    def norm(x, m, v):
        if m.shape == (0,):
            return x
        return jnp.clip((x - m) / jnp.sqrt(v + 1e-8), -_OBS_CLIP, _OBS_CLIP)

    return jax.tree.map(norm, obs, stats.mean, stats.var)


@flax.struct.dataclass
class Policy:
    """The network, its distribution and how to call them, bound to the spaces."""

    net: ActorCritic = flax.struct.field(pytree_node=False)
    make_dist: Callable = flax.struct.field(pytree_node=False)
    obs_norm: bool = flax.struct.field(pytree_node=False)

    @property
    def core_size(self) -> int:
        """C, the width of one env's recurrent state (0: feed-forward)."""
        per_torso = core_width(self.net.core, self.net.core_size)
        return per_torso * (1 if self.net.shared_torso else 2)

    @property
    def recurrent(self) -> bool:
        return self.core_size > 0

    def initial_core(self, num_envs: int) -> jax.Array | None:
        """The state of ``num_envs`` fresh episodes, zeros ``[B, C]`` (None: no core)."""
        return jnp.zeros((num_envs, self.core_size), jnp.float32) if self.recurrent else None

    def init(self, key: jax.Array, obs_space: gym.Space) -> Any:
        """Fresh params."""
        if not self.recurrent:
            return self.net.init(key, sample_obs(obs_space))
        resets = jnp.zeros((1, 1), bool)
        return self.net.init(key, sample_obs(obs_space, (1, 1)), self.initial_core(1), resets)

    def apply(self, params, stats, obs, core=None, resets=None):
        """``(dist, value [...], dist_params)`` for obs ``[..., *obs_shape]`` (a feed-forward
        policy, or a recurrent one over a sequence: see :meth:`apply_core`)."""
        return self.apply_core(params, stats, obs, core, resets)[:3]

    def apply_core(self, params, stats, obs, core=None, resets=None):
        """``(dist, value, dist_params, core)``. A recurrent policy takes obs ``[S, B, ...]``,
        the state ``core [B, C]`` before step 0 and ``resets [S, B]`` (true: zero the state
        before that step), and returns the state after step ``S - 1``."""
        dist_params, value, core = self.net.apply(
            params, normalize_obs(stats if self.obs_norm else None, obs), core, resets
        )
        return self.make_dist(dist_params), value, dist_params, core

    def step(self, params, stats, obs, core):
        """One step of ``B`` envs, obs ``[B, ...]`` and state ``core [B, C]`` (None without a
        core): ``(dist, value [B], dist_params [B, P], core after the step)``."""
        if not self.recurrent:
            return self.apply_core(params, stats, obs)
        seq = jax.tree.map(lambda x: x[None], obs)
        no_reset = jnp.zeros((1, core.shape[0]), bool)  # the caller zeroes after an episode
        _, value, dist_params, core = self.apply_core(params, stats, seq, core, no_reset)
        return self.make_dist(dist_params[0]), value[0], dist_params[0], core


def make_policy(
    obs_space: gym.Space, action_space: gym.Space, config: NetworkConfig, obs_norm: bool
) -> Policy:
    """Builds the actor-critic for a pair of gymnasium spaces."""
    param_size, make_dist = distribution_for_space(action_space, squash=config.squash)
    gaussian_dim = action_space.shape[0] if isinstance(action_space, gym.spaces.Box) else 0
    net = ActorCritic(
        param_size=param_size,
        gaussian_dim=gaussian_dim,
        hidden=tuple(config.hidden),
        activation=config.activation,
        shared_torso=config.shared_torso,
        log_std_init=config.log_std_init,
        core=config.core,
        core_size=config.core_size if config.core != "none" else 0,
        layer_norm=config.layer_norm,
    )
    return Policy(net, make_dist, obs_norm)


def sample_obs(obs_space: gym.Space, lead: tuple[int, ...] = (1,)) -> Any:
    """A zero observation batch [*lead, ...] for initialisation."""
    if isinstance(obs_space, gym.spaces.Dict):
        return {k: sample_obs(s, lead) for k, s in obs_space.spaces.items()}
    return jnp.zeros((*lead, *obs_space.shape), obs_space.dtype)


# --------------------------------------------------------------------------- inference
def policy_step_fn(policy: Policy, greedy: bool = False):
    """``step(params, stats, obs [B, ...], core [B, C], key) -> (action, logp, dist_params,
    value, core)``: what actors and evaluation call (greedy: the distribution's mode instead
    of a sample). ``core`` is the recurrent state before the step and the one after it
    (None for a feed-forward policy); the caller zeroes it where an episode ended."""

    def step(params, stats, obs, core, key):
        dist, value, dist_params, core = policy.step(params, stats, obs, core)
        action = dist.mode() if greedy else dist.sample(key)
        return action, dist.log_prob(action), dist_params, value, core

    return step


def value_fn(policy: Policy):
    """``value(params, stats, obs [B, ...], core [B, C]) -> [B]``: the value of an
    observation reached from the state ``core`` (a time-limit end's final observation, from
    the state after the episode's last step)."""

    def value(params, stats, obs, core):
        return policy.step(params, stats, obs, core)[1]

    return value


def params_template(policy: Policy, obs_space: gym.Space) -> tuple[Any, ObsStats]:
    """The params and obs stats as ``jax.ShapeDtypeStruct`` trees, from tracing alone: the
    structure a receiver of published params unpacks them into."""
    params = jax.eval_shape(lambda: policy.init(jax.random.PRNGKey(0), obs_space))
    return params, jax.eval_shape(lambda: init_obs_stats(obs_space))


def clip_to_space(action: Any, space: gym.Space) -> Any:
    """An action as the env takes it: clipped to a Box space's bounds in its dtype (numpy or
    jax), unchanged otherwise."""
    if not isinstance(space, gym.spaces.Box):
        return action
    xp = np if isinstance(action, np.ndarray) else jnp
    return xp.clip(action, space.low, space.high).astype(space.dtype)

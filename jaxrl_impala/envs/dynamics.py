"""The driving MDP as pure JAX functions over arrays.

Everything here is written for ONE env and batched with ``jax.vmap``; the batched, jitted entry
points are :func:`batch_reset` and :func:`batch_step`. No function here holds state: an episode is
an :class:`EnvState` pytree, and a step is ``state, controls -> state, obs, reward, terminated,
truncated, info``.

Geometry. The route centreline is a chain of ``S`` constant-curvature segments (arcs or
straights). Segment ``j`` starts at arc length ``s0[j]`` with pose ``(x0, y0, psi0)``, has
curvature ``kappa[j]`` (positive = left turn) and length ``length[j]``. In a segment's local frame
(origin at its start, x along the tangent, y to the left) the curve at lateral offset ``d`` is the
zero set of ``f(p) = kappa * |p|^2 - 2 p_y + 2 d - kappa d^2`` (a circle about ``(0, 1/kappa)``,
written so that ``kappa -> 0`` gives the straight line ``p_y = d``). LiDAR beams against the road
edges are solved in closed form from this quadratic, segment by segment, so the road-edge ray cast
is exact for the piecewise-arc road and costs a few flops per beam and segment.

Randomness: every env owns a ``jax.random`` key. A step splits it once (``key, k_step``); starting
an episode splits it once (``key, k_episode``). :class:`DrivingEnv` and :class:`DrivingVectorEnv`
consume the stream the same way, so env ``i`` of a vector env seeded with ``s_i`` replays a
``DrivingEnv`` seeded with ``s_i`` step for step, across episode boundaries.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_impala.envs.config import REWARD_TERMS, DrivingConfig

G = 9.81
_FAR = 1.0e4  # where inactive pedestrians are parked (far outside any sensor range)
_PED_RADIUS = 0.35


class EnvState(NamedTuple):
    """State of one env (add a leading batch axis ``[B]`` for a vector env).

    Shapes below are for one env: ``S`` = segments, ``N`` = vehicles, ``P`` = pedestrians.
    """

    key: jax.Array  # uint32 [2]
    # road: [S] each, route_length []
    seg_kappa: jax.Array
    seg_length: jax.Array
    seg_s0: jax.Array
    seg_x0: jax.Array
    seg_y0: jax.Array
    seg_psi0: jax.Array
    route_length: jax.Array
    # conditions []
    mu: jax.Array
    slope: jax.Array
    speed_limit: jax.Array
    # ego []
    x: jax.Array
    y: jax.Array
    psi: jax.Array
    v: jax.Array
    accel: jax.Array  # last longitudinal acceleration (for jerk)
    grip_use: jax.Array  # last |a| / (mu g), 1 = at the grip limit
    seg: jax.Array  # int32 segment index of the ego
    s: jax.Array  # arc length of the ego's projection on the centreline
    d: jax.Array  # lateral offset of the ego from the centreline (left positive)
    heading_error: jax.Array  # ego heading minus road heading, wrapped to [-pi, pi)
    prev_action: jax.Array  # [3] steer, throttle, brake of the last step
    t: jax.Array  # int32 steps taken in this episode
    episode_return: jax.Array
    # traffic [N]
    veh_s: jax.Array
    veh_d: jax.Array
    veh_v: jax.Array
    veh_v0: jax.Array  # desired speed
    veh_target_d: jax.Array  # lateral offset of the lane it is heading for
    veh_dd: jax.Array  # lateral speed of the last step (for its heading)
    veh_dir: jax.Array  # +1 with the ego, -1 oncoming
    # pedestrians [P]
    ped_s: jax.Array
    ped_d: jax.Array
    ped_vd: jax.Array  # lateral walking speed
    ped_active: jax.Array  # bool, crossing now
    ped_timer: jax.Array  # seconds until the next crossing starts
    # world poses of traffic and pedestrians, derived from the Frenet state by `_with_poses`
    # and kept so the sensors and collision checks do not recompute them
    veh_x: jax.Array  # [N]
    veh_y: jax.Array
    veh_psi: jax.Array
    ped_x: jax.Array  # [P]
    ped_y: jax.Array


# ------------------------------------------------------------------------------------------------
# randomness
# ------------------------------------------------------------------------------------------------
def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


class _Draws:
    """Counter-based uniforms from one ``jax.random`` key: draw ``i`` hashes ``(key, i)``.

    Threefry (``jax.random.uniform``) costs ~20 rounds per number and dominated the step on the
    CPU; a simulator's lane-change dice need no cryptographic strength, so the key (split with
    ``jax.random`` once per step / episode) only seeds a cheap integer hash. Draws are made in a
    fixed (static) order, so results are reproducible and identical under ``vmap``.
    """

    def __init__(self, key: jax.Array) -> None:
        self._k0, self._k1 = key[0], _fmix32(key[1] ^ jnp.uint32(0x9E3779B9))
        self._next = 0

    def uniform(self, shape=(), lo: float | jax.Array = 0.0, hi: float | jax.Array = 1.0):
        size = math.prod(shape)
        i = jnp.arange(self._next, self._next + size, dtype=jnp.uint32).reshape(shape)
        self._next += size
        h = _fmix32(self._k0 ^ _fmix32(self._k1 + i * jnp.uint32(0x9E3779B9)))
        u = (h >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))
        return lo + (hi - lo) * u

    def bernoulli(self, p: float | jax.Array, shape=()) -> jax.Array:
        return self.uniform(shape) < p

    def randint(self, lo: int, hi: int | jax.Array, shape=()) -> jax.Array:
        u = self.uniform(shape)
        return jnp.minimum(lo + jnp.floor(u * (hi - lo)).astype(jnp.int32), hi - 1)

    def normal(self, shape=()) -> jax.Array:
        u1, u2 = self.uniform(shape), self.uniform(shape)
        return jnp.sqrt(-2.0 * jnp.log1p(-u1)) * jnp.cos(2.0 * jnp.pi * u2)


# ------------------------------------------------------------------------------------------------
# road geometry
# ------------------------------------------------------------------------------------------------
def _arc_offsets(kappa: jax.Array, ds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Local (x, y) after ``ds`` metres along an arc of curvature ``kappa`` (stable at 0)."""
    ang = kappa * ds
    lx = ds * jnp.sinc(ang / jnp.pi)  # sin(k ds) / k
    ly = ds * jnp.sin(0.5 * ang) * jnp.sinc(ang / (2.0 * jnp.pi))  # (1 - cos(k ds)) / k
    return lx, ly


def _lane_centres(cfg: DrivingConfig) -> jax.Array:
    """Lateral offsets of the lane centres, lane 0 rightmost. float32 [num_lanes]."""
    i = jnp.arange(cfg.num_lanes, dtype=jnp.float32)
    return -cfg.road_half_width + (i + 0.5) * cfg.lane_width


def segment_index(state: EnvState, s: jax.Array) -> jax.Array:
    """Index of the segment containing arc length ``s`` (any shape), clamped to the road."""
    idx = jnp.sum(s[..., None] >= state.seg_s0, axis=-1) - 1
    return jnp.clip(idx, 0, state.seg_s0.shape[-1] - 1)


def pose_at(state: EnvState, s: jax.Array, d: jax.Array):
    """World pose of the point at arc length ``s`` and lateral offset ``d`` (any shape).

    Returns:
        ``(x, y, psi, kappa)``: position, road heading and road curvature there.
    """
    j = segment_index(state, s)
    kappa = state.seg_kappa[j]
    ds = s - state.seg_s0[j]
    lx, ly = _arc_offsets(kappa, ds)
    psi0 = state.seg_psi0[j]
    c, sn = jnp.cos(psi0), jnp.sin(psi0)
    psi = psi0 + kappa * ds
    x = state.seg_x0[j] + c * lx - sn * ly - jnp.sin(psi) * d
    y = state.seg_y0[j] + sn * lx + c * ly + jnp.cos(psi) * d
    return x, y, psi, kappa


def _to_segment_frame(state: EnvState, j: jax.Array, px: jax.Array, py: jax.Array):
    """World point(s) into the local frame of segment(s) ``j`` (broadcasting)."""
    psi0 = state.seg_psi0[j]
    c, sn = jnp.cos(psi0), jnp.sin(psi0)
    dx, dy = px - state.seg_x0[j], py - state.seg_y0[j]
    return c * dx + sn * dy, -sn * dx + c * dy


def _local_frenet(kappa: jax.Array, lx: jax.Array, ly: jax.Array):
    """Arc length along and signed offset from a segment, for a point in its local frame."""
    small = jnp.abs(kappa) < 1e-9
    k_safe = jnp.where(small, 1.0, kappa)
    s_loc = jnp.where(small, lx, jnp.arctan2(kappa * lx, 1.0 - kappa * ly) / k_safe)
    q = 1.0 - 2.0 * kappa * ly + kappa * kappa * (lx * lx + ly * ly)
    d = (2.0 * ly - kappa * (lx * lx + ly * ly)) / (1.0 + jnp.sqrt(jnp.maximum(q, 0.0)))
    return s_loc, d


def _project(state: EnvState, seg: jax.Array, px: jax.Array, py: jax.Array):
    """Frenet coordinates of a point near segment ``seg`` (looks one segment either way).

    Returns:
        ``(seg, s, d, road_psi)`` for the segment whose span contains the point.
    """
    n_seg = state.seg_s0.shape[-1]
    cands = jnp.clip(seg + jnp.array([0, 1, -1]), 0, n_seg - 1)
    lx, ly = _to_segment_frame(state, cands, px, py)
    kappa = state.seg_kappa[cands]
    s_loc, d = _local_frenet(kappa, lx, ly)
    inside = ((s_loc >= 0.0) | (cands == 0)) & (
        (s_loc < state.seg_length[cands]) | (cands == n_seg - 1)
    )
    pick = jnp.argmax(inside)  # first candidate containing it, current segment preferred
    pick = jnp.where(jnp.any(inside), pick, 0)
    j = cands[pick]
    return j, state.seg_s0[j] + s_loc[pick], d[pick], state.seg_psi0[j] + kappa[pick] * s_loc[pick]


def _wrap(a: jax.Array) -> jax.Array:
    return (a + jnp.pi) % (2.0 * jnp.pi) - jnp.pi


# ------------------------------------------------------------------------------------------------
# episode generation
# ------------------------------------------------------------------------------------------------
def _generate_road(cfg: DrivingConfig, rnd: _Draws):
    n_seg = cfg.num_segments
    length = rnd.uniform((n_seg,), cfg.segment_length_min, cfg.segment_length_max)
    inv_r = rnd.uniform((n_seg,), 1.0 / cfg.max_radius, 1.0 / cfg.min_radius)
    sign = jnp.where(rnd.bernoulli(0.5, (n_seg,)), 1.0, -1.0)
    straight = rnd.bernoulli(cfg.straight_prob, (n_seg,))
    straight = straight.at[0].set(True)  # start on a straight
    kappa = jnp.where(straight, 0.0, sign * inv_r)
    # keep every arc under 90 degrees so the wedge test of the edge ray cast stays valid
    length = jnp.minimum(length, 0.5 * jnp.pi / jnp.maximum(jnp.abs(kappa), 1e-6))
    turn = kappa * length
    psi0 = jnp.concatenate([jnp.zeros(1), jnp.cumsum(turn)[:-1]])
    lx, ly = _arc_offsets(kappa, length)
    dx = jnp.cos(psi0) * lx - jnp.sin(psi0) * ly
    dy = jnp.sin(psi0) * lx + jnp.cos(psi0) * ly
    x0 = jnp.concatenate([jnp.zeros(1), jnp.cumsum(dx)[:-1]])
    y0 = jnp.concatenate([jnp.zeros(1), jnp.cumsum(dy)[:-1]])
    s0 = jnp.concatenate([jnp.zeros(1), jnp.cumsum(length)[:-1]])
    total = s0[-1] + length[-1]
    route = rnd.uniform((), cfg.route_length_min, cfg.route_length_max)
    route = jnp.minimum(route, total - cfg.runoff_length)
    return kappa, length, s0, x0, y0, psi0, route


def reset_from_key(cfg: DrivingConfig, key: jax.Array) -> EnvState:
    """Start a new episode for one env from its RNG stream.

    Args:
        cfg: the static config.
        key: uint32 [2], the env's current key; it is split once, so the returned state carries
            the advanced stream.

    Returns:
        The first state of the episode.
    """
    key, k_ep = jax.random.split(key)
    rnd = _Draws(k_ep)
    kappa, length, s0, x0, y0, psi0, route = _generate_road(cfg, rnd)
    surface = jnp.sum(rnd.uniform() >= jnp.cumsum(jnp.asarray(cfg.surface_probs))[:-1])
    mu = jnp.asarray(cfg.surface_mu, jnp.float32)[surface]
    slope = rnd.uniform((), -cfg.max_slope, cfg.max_slope)
    limits = jnp.asarray(cfg.speed_limits, jnp.float32)
    speed_limit = limits[rnd.randint(0, len(cfg.speed_limits))]

    lanes = _lane_centres(cfg)
    n_fwd_lanes = cfg.num_forward_lanes
    ego_lane = rnd.randint(0, n_fwd_lanes)
    ego_s = jnp.float32(5.0)
    ego_d = lanes[ego_lane]
    proto = EnvState(*([jnp.zeros(())] * len(EnvState._fields)))._replace(
        seg_kappa=kappa, seg_length=length, seg_s0=s0, seg_x0=x0, seg_y0=y0, seg_psi0=psi0
    )
    ex, ey, epsi, _ = pose_at(proto, ego_s, ego_d)
    # a safe start speed for the surface (below the speed limit)
    ego_v = jnp.minimum(0.5 * speed_limit, 10.0) * jnp.minimum(1.0, mu / 0.6)

    n, n_onc = cfg.num_vehicles, cfg.num_oncoming
    n_fwd = n - n_onc
    i_f = jnp.arange(n_fwd, dtype=jnp.float32)
    fwd_s = ego_s + 25.0 + 40.0 * i_f + rnd.uniform((n_fwd,), 0.0, 15.0)
    fwd_lane = rnd.randint(0, n_fwd_lanes, (n_fwd,))
    i_o = jnp.arange(n_onc, dtype=jnp.float32)
    onc_s = ego_s + 60.0 + 70.0 * i_o + rnd.uniform((n_onc,), 0.0, 30.0)
    onc_lane = n_fwd_lanes + rnd.randint(0, max(cfg.num_oncoming_lanes, 1), (n_onc,))
    veh_s = jnp.concatenate([fwd_s, onc_s])
    veh_d = lanes[jnp.concatenate([fwd_lane, onc_lane])]
    veh_v0 = speed_limit * rnd.uniform((n,), 0.6, 1.0)
    veh_v0 = jnp.minimum(veh_v0, jnp.sqrt(0.5 * mu * G * cfg.min_radius))
    veh_dir = jnp.concatenate([jnp.ones(n_fwd), -jnp.ones(n_onc)])

    p = cfg.num_pedestrians
    lo, hi = cfg.pedestrian_wait
    ped_timer = rnd.uniform((p,), 0.0, hi)
    f32 = jnp.float32
    return _with_poses(
        EnvState(
            key=key,
            seg_kappa=kappa.astype(f32),
            seg_length=length.astype(f32),
            seg_s0=s0.astype(f32),
            seg_x0=x0.astype(f32),
            seg_y0=y0.astype(f32),
            seg_psi0=psi0.astype(f32),
            route_length=route.astype(f32),
            mu=mu,
            slope=slope.astype(f32),
            speed_limit=speed_limit,
            x=ex,
            y=ey,
            psi=epsi,
            v=ego_v,
            accel=jnp.zeros((), f32),
            grip_use=jnp.zeros((), f32),
            seg=jnp.zeros((), jnp.int32),
            s=ego_s,
            d=ego_d,
            heading_error=jnp.zeros((), f32),
            prev_action=jnp.zeros((3,), f32),
            t=jnp.zeros((), jnp.int32),
            episode_return=jnp.zeros((), f32),
            veh_s=veh_s,
            veh_d=veh_d,
            veh_v=0.8 * veh_v0,
            veh_v0=veh_v0,
            veh_target_d=veh_d,
            veh_dd=jnp.zeros((n,), f32),
            veh_dir=veh_dir,
            ped_s=jnp.full((p,), -_FAR, f32),
            ped_d=jnp.zeros((p,), f32),
            ped_vd=jnp.zeros((p,), f32),
            ped_active=jnp.zeros((p,), bool),
            ped_timer=ped_timer,
            veh_x=jnp.zeros((n,), f32),
            veh_y=jnp.zeros((n,), f32),
            veh_psi=jnp.zeros((n,), f32),
            ped_x=jnp.zeros((p,), f32),
            ped_y=jnp.zeros((p,), f32),
        )
    )


# ------------------------------------------------------------------------------------------------
# world-frame objects, collisions, sensors
# ------------------------------------------------------------------------------------------------
def _with_poses(state: EnvState) -> EnvState:
    """Refresh the cached world poses of the traffic and pedestrians."""
    x, y, psi, _ = pose_at(state, state.veh_s, state.veh_d)
    slip = jnp.arctan2(state.veh_dd, jnp.maximum(state.veh_v, 1.0))
    heading = jnp.where(state.veh_dir > 0, psi + slip, psi + jnp.pi)
    qx, qy, _, _ = pose_at(state, state.ped_s, state.ped_d)
    return state._replace(
        veh_x=x,
        veh_y=y,
        veh_psi=heading,
        ped_x=jnp.where(state.ped_active, qx, _FAR),
        ped_y=jnp.where(state.ped_active, qy, _FAR),
    )


def vehicle_poses(state: EnvState):
    """World ``(x, y, heading)`` of the traffic, each float32 [N]."""
    return state.veh_x, state.veh_y, state.veh_psi


def pedestrian_positions(state: EnvState):
    """World ``(x, y)`` of the pedestrians, float32 [P] (inactive ones are parked far away)."""
    return state.ped_x, state.ped_y


def _boxes_overlap(cfg, ax, ay, apsi, bx, by, bpsi) -> jax.Array:
    """Separating-axis test of equal car-sized rectangles (broadcasting)."""
    hl, hw = 0.5 * cfg.car_length, 0.5 * cfg.car_width
    tx, ty = bx - ax, by - ay
    axes_a = (jnp.cos(apsi), jnp.sin(apsi))
    axes_b = (jnp.cos(bpsi), jnp.sin(bpsi))
    sep = jnp.zeros(jnp.broadcast_shapes(jnp.shape(tx), jnp.shape(bpsi)), bool)
    for ux, uy in (axes_a, axes_b):
        for px, py in ((ux, uy), (-uy, ux)):
            ra = hl * jnp.abs(axes_a[0] * px + axes_a[1] * py) + hw * jnp.abs(
                -axes_a[1] * px + axes_a[0] * py
            )
            rb = hl * jnp.abs(axes_b[0] * px + axes_b[1] * py) + hw * jnp.abs(
                -axes_b[1] * px + axes_b[0] * py
            )
            sep = sep | (jnp.abs(tx * px + ty * py) > ra + rb)
    return ~sep


def _ego_hits_pedestrian(cfg, state: EnvState, px, py) -> jax.Array:
    c, sn = jnp.cos(state.psi), jnp.sin(state.psi)
    dx, dy = px - state.x, py - state.y
    lx, ly = c * dx + sn * dy, -sn * dx + c * dy
    qx = lx - jnp.clip(lx, -0.5 * cfg.car_length, 0.5 * cfg.car_length)
    qy = ly - jnp.clip(ly, -0.5 * cfg.car_width, 0.5 * cfg.car_width)
    return qx * qx + qy * qy < _PED_RADIUS**2


def beam_angles(cfg: DrivingConfig) -> jax.Array:
    """Beam directions relative to the ego heading, float32 [lidar_beams]."""
    return jnp.arange(cfg.lidar_beams, dtype=jnp.float32) * (2.0 * jnp.pi / cfg.lidar_beams)


def _vehicle_beams(cfg: DrivingConfig, state: EnvState, ux: jax.Array, uy: jax.Array):
    """Per beam (world directions ``ux, uy`` [K]): the distance to the nearest vehicle
    (``lidar_range`` when none) and whether one is hit, each [K], and the hits [K, N]."""
    rng = cfg.lidar_range
    # slab test against each oriented box, in the box frame. [K, N]
    vx, vy, vpsi = vehicle_poses(state)
    c, sn = jnp.cos(vpsi)[None], jnp.sin(vpsi)[None]
    ox, oy = state.x - vx[None], state.y - vy[None]
    o_x, o_y = c * ox + sn * oy, -sn * ox + c * oy
    u_x, u_y = c * ux[:, None] + sn * uy[:, None], -sn * ux[:, None] + c * uy[:, None]

    def slab(o, u, h):
        inv = 1.0 / jnp.where(jnp.abs(u) < 1e-9, 1e-9, u)
        t1, t2 = (-h - o) * inv, (h - o) * inv
        return jnp.minimum(t1, t2), jnp.maximum(t1, t2)

    tx0, tx1 = slab(o_x, u_x, 0.5 * cfg.car_length)
    ty0, ty1 = slab(o_y, u_y, 0.5 * cfg.car_width)
    t_near, t_far = jnp.maximum(tx0, ty0), jnp.minimum(tx1, ty1)
    hit = (t_far >= jnp.maximum(t_near, 0.0)) & (t_near < rng)
    r_veh = jnp.min(jnp.where(hit, jnp.maximum(t_near, 0.0), rng), axis=1)
    return r_veh, hit & (jnp.maximum(t_near, 0.0) <= r_veh[:, None])


def _scan(cfg: DrivingConfig, state: EnvState) -> tuple[jax.Array, jax.Array]:
    """One LiDAR sweep: ``(lidar ranges [3, K], closing speeds [K])``, see `lidar` and
    `closing_speeds` (under jit, what a caller does not use is not computed)."""
    rng = cfg.lidar_range
    ang = state.psi + beam_angles(cfg)
    ux, uy = jnp.cos(ang), jnp.sin(ang)  # [K]
    r_veh, nearest = _vehicle_beams(cfg, state, ux, uy)  # [K], [K, N]

    # closing speed of the vehicle each beam hits: (ego velocity - its velocity) . beam
    j = jnp.argmax(nearest, axis=1)
    vx, vy = state.veh_v * jnp.cos(state.veh_psi), state.veh_v * jnp.sin(state.veh_psi)  # [N]
    rel_x = state.v * jnp.cos(state.psi) - vx[j]
    rel_y = state.v * jnp.sin(state.psi) - vy[j]
    closing = jnp.where(jnp.any(nearest, axis=1), rel_x * ux + rel_y * uy, 0.0)

    # pedestrians: ray-circle. [K, P]
    px, py = pedestrian_positions(state)
    wx, wy = px[None] - state.x, py[None] - state.y
    along = wx * ux[:, None] + wy * uy[:, None]
    perp2 = wx * wx + wy * wy - along * along
    half = jnp.sqrt(jnp.maximum(_PED_RADIUS**2 - perp2, 0.0))
    t_ped = along - half
    hit = (perp2 <= _PED_RADIUS**2) & (along + half >= 0.0) & (t_ped < rng)
    r_ped = jnp.min(jnp.where(hit, jnp.maximum(t_ped, 0.0), rng), axis=1)

    r_edge = _edge_ranges(cfg, state, ux, uy)
    return jnp.stack([r_veh, r_ped, r_edge]), closing


def lidar(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """Distances (metres, capped at ``lidar_range``) along each beam. float32 [3, beams].

    Rows: vehicles, pedestrians, road edges.
    """
    return _scan(cfg, state)[0]


def closing_speeds(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """How fast the vehicle each LiDAR beam hits approaches the ego along the beam (m/s,
    positive when the gap shrinks; 0 when the beam hits no vehicle). float32 [beams].

    What a radar's Doppler channel measures: the ego's velocity minus the vehicle's,
    projected on the beam. A range alone does not tell a parked car from one driving away.
    """
    return _scan(cfg, state)[1]


def _window(cfg: DrivingConfig, ahead: float, behind: float) -> tuple[int, ...]:
    """Segment offsets (relative to the ego's) that can hold points within the given reach."""
    back = int(math.ceil(behind / cfg.segment_length_min))
    fwd = int(math.ceil(ahead / cfg.segment_length_min))
    return tuple(range(-back, fwd + 1))


def _edge_ranges(cfg: DrivingConfig, state: EnvState, ux: jax.Array, uy: jax.Array) -> jax.Array:
    """Distance along each beam to the first road edge (capped at the range). float32 [K].

    For every beam k and nearby segment j the beam ``o + t u`` (in j's frame) meets the edge at
    offset ``e`` where ``kappa t^2 + b t + c = 0`` with ``b = 2 kappa (o.u) - 2 u_y`` and
    ``c = kappa |o|^2 - 2 o_y + 2 e - kappa e^2``; a root counts if it lies inside j's span
    (between the normals at its two ends). Roots use the cancellation-free pair ``q / kappa``,
    ``c / q`` with ``q = -(b + sign(b) sqrt(disc)) / 2``, which stays exact as ``kappa -> 0``.
    """
    rng = cfg.lidar_range
    n_seg = state.seg_s0.shape[-1]
    js = jnp.clip(state.seg + jnp.asarray(_window(cfg, rng, rng)), 0, n_seg - 1)  # [W]
    kap, length = state.seg_kappa[js], state.seg_length[js]
    psi0 = state.seg_psi0[js]
    cj, sj = jnp.cos(psi0), jnp.sin(psi0)
    dx, dy = state.x - state.seg_x0[js], state.y - state.seg_y0[js]
    lox, loy = cj * dx + sj * dy, -sj * dx + cj * dy  # ego in the segment frames [W]
    ex, ey = _arc_offsets(kap, length)  # segment end in its own frame [W]
    ec, es = jnp.cos(kap * length), jnp.sin(kap * length)
    first, last = js == 0, js == n_seg - 1  # the road extends beyond its first / last segment
    # [K, W] from here on
    lux = cj * ux[:, None] + sj * uy[:, None]
    luy = -sj * ux[:, None] + cj * uy[:, None]
    b = 2.0 * kap * (lox * lux + loy * luy) - 2.0 * luy
    c_base = kap * (lox * lox + loy * loy) - 2.0 * loy
    best = jnp.full(lux.shape, rng, jnp.float32)
    for e in (cfg.road_half_width, -cfg.road_half_width):
        c = c_base + (2.0 * e - kap * e * e)
        disc = b * b - 4.0 * kap * c
        sq = jnp.sqrt(jnp.maximum(disc, 0.0))
        q = -0.5 * (b + jnp.where(b >= 0.0, sq, -sq))
        for t in (q / kap, c / q):  # inf / nan where degenerate: fails the range test below
            hx, hy = lox + t * lux, loy + t * luy
            ok = (disc >= 0.0) & (t > 1e-4) & (t < best)
            ok = ok & ((hx >= 0.0) | first) & (((hx - ex) * ec + (hy - ey) * es <= 0.0) | last)
            best = jnp.where(ok, t, best)
    return jnp.min(best, axis=1)


def _ego_frenet_features(cfg: DrivingConfig, state: EnvState):
    """Lateral offset from the road centre and heading error of the ego."""
    return state.d, state.heading_error


def curvature_at(state: EnvState, s: jax.Array) -> jax.Array:
    """Road curvature at arc length(s) ``s``."""
    return state.seg_kappa[segment_index(state, s)]


def vector_obs(cfg: DrivingConfig, state: EnvState, key: jax.Array) -> jax.Array:
    """The ``vector`` observation of one env. float32 [cfg.vector_obs_size], values in [-1, 1].

    Layout: LiDAR vehicles [K], pedestrians [K], road edges [K] (range / lidar_range, 1 = nothing
    within range); curvature preview [len(curvature_preview)] (kappa * min_radius); speed / max,
    speed limit / max, heading error / pi, offset from the lane centre / lane width, offset from
    the road centre / half width, previous steer, throttle, brake, friction mu, slope / 0.1,
    route completion, grip use (|a| / mu g); with ``pedestrian_tracks``, [P, 4] more ([P, 6]
    with ``pedestrian_forecast``; see `pedestrian_tracks`); with ``lidar_closing_speed``, [K]
    more (`closing_speeds` / max_speed).
    """
    ranges, closing = _scan(cfg, state)
    ranges = ranges / cfg.lidar_range
    if cfg.lidar_noise_std > 0.0 or cfg.lidar_dropout > 0.0:
        rnd = _Draws(key)
        ranges = ranges + cfg.lidar_noise_std * rnd.normal(ranges.shape)
        drop = rnd.bernoulli(cfg.lidar_dropout, ranges.shape)
        ranges = jnp.where(drop, 1.0, ranges)
    ranges = jnp.clip(ranges, 0.0, 1.0).reshape(-1)
    d, head_err = _ego_frenet_features(cfg, state)
    kap = curvature_at(state, state.s + jnp.asarray(cfg.curvature_preview))
    lanes = _lane_centres(cfg)
    lane_off = d - lanes[jnp.argmin(jnp.abs(lanes - d))]
    extras = jnp.stack(
        [
            state.v / cfg.max_speed,
            state.speed_limit / cfg.max_speed,
            head_err / jnp.pi,
            lane_off / cfg.lane_width,
            d / cfg.road_half_width,
            state.prev_action[0],
            state.prev_action[1],
            state.prev_action[2],
            state.mu,
            state.slope / 0.1,
            state.s / state.route_length,
            state.grip_use,
        ]
    )
    feats = jnp.concatenate([kap * cfg.min_radius, extras])
    if cfg.pedestrian_tracks:
        feats = jnp.concatenate([feats, pedestrian_tracks(cfg, state).reshape(-1)])
    if cfg.lidar_closing_speed:
        feats = jnp.concatenate([feats, closing / cfg.max_speed])
    return jnp.concatenate([ranges, jnp.clip(feats, -1.0, 1.0)]).astype(jnp.float32)


_FORECAST_HORIZON = 4.0  # seconds a pedestrian's walk is extrapolated


def pedestrian_forecast(state: EnvState) -> tuple[jax.Array, jax.Array]:
    """When the ego reaches each pedestrian and where the pedestrian is then. [P] each.

    ``t = (s_ped - s) / max(v, 1 m/s)`` clipped to [0, 4] s, and the pedestrian's lateral
    road coordinate ``d_ped + v_d t`` walking on at its speed: the prediction the scripted
    controller brakes by, and the forecast columns of `pedestrian_tracks`.
    """
    t = jnp.clip((state.ped_s - state.s) / jnp.maximum(state.v, 1.0), 0.0, _FORECAST_HORIZON)
    return t, state.ped_d + state.ped_vd * t


def pedestrian_tracks(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """One row per pedestrian, nearest first. float32 [P, 4] ([P, 6] with the forecast).

    Row: ``[1, (s_ped - s) / lidar_range, (d_ped - d) / (2 * road half width), v_d / 2 m/s]``
    for a pedestrian crossing within ``lidar_range`` of the ego's arc length ``s`` (ahead or
    behind), ``[0, 0, 0, 0]`` for the others (waiting, or out of range), which sort last.
    With ``pedestrian_forecast``, two more: ``t / 4 s``, where ``t = (s_ped - s) / max(v, 1
    m/s)`` clipped to [0, 4] s is when the ego reaches the pedestrian at its current speed,
    and ``(d_ped + v_d t - d) / (2 * road half width)``, the pedestrian's lateral offset from
    the ego by then (`pedestrian_forecast`, the scripted controller's prediction).
    """
    ahead = state.ped_s - state.s
    seen = state.ped_active & (jnp.abs(ahead) <= cfg.lidar_range)
    width = 2.0 * cfg.road_half_width
    cols = [
        jnp.ones_like(ahead),
        ahead / cfg.lidar_range,
        (state.ped_d - state.d) / width,
        state.ped_vd / 2.0,
    ]
    if cfg.pedestrian_forecast:
        t, d_pred = pedestrian_forecast(state)
        cols += [t / _FORECAST_HORIZON, (d_pred - state.d) / width]
    rows = jnp.stack(cols, axis=-1)
    rows = jnp.where(seen[:, None], rows, 0.0)
    order = jnp.argsort(jnp.where(seen, jnp.abs(ahead), jnp.inf))
    return rows[order]


# ------------------------------------------------------------------------------------------------
# top-down occupancy (observation and renderer)
# ------------------------------------------------------------------------------------------------
def _road_fields(cfg: DrivingConfig, state: EnvState, px: jax.Array, py: jax.Array, window):
    """Lateral offset and arc length of world points relative to the road (nearest segment).

    Returns ``(on_any, d, s)``; ``d`` is +inf-ish where no nearby segment spans the point.
    """
    n_seg = state.seg_s0.shape[-1]
    js = jnp.clip(state.seg + jnp.asarray(window), 0, n_seg - 1)
    shape = px.shape
    pxf, pyf = px.reshape(-1, 1), py.reshape(-1, 1)
    lx, ly = _to_segment_frame(state, js[None], pxf, pyf)
    kap = state.seg_kappa[js][None]
    s_loc, d = _local_frenet(kap, lx, ly)
    inside = ((s_loc >= 0.0) | (js == 0)[None]) & (
        (s_loc < state.seg_length[js][None]) | (js == n_seg - 1)[None]
    )
    dist = jnp.where(inside, jnp.abs(d), jnp.inf)
    pick = jnp.argmin(dist, axis=1)
    d_best = jnp.take_along_axis(d, pick[:, None], axis=1)[:, 0]
    d_best = jnp.where(jnp.isfinite(jnp.min(dist, axis=1)), d_best, 1e3)
    s_best = jnp.take_along_axis(s_loc, pick[:, None], axis=1)[:, 0] + state.seg_s0[js][pick]
    return d_best.reshape(shape), s_best.reshape(shape)


def _grid(size: int, scale: float, cx, cy, heading, forward_frac: float):
    """World coordinates of the pixel centres of a view centred ahead of ``(cx, cy)``.

    Row 0 is the far end (ahead when ``heading`` points up). Returns ``(px, py)`` [size, size].
    """
    idx = jnp.arange(size, dtype=jnp.float32) + 0.5
    ahead = (size * forward_frac - idx) * scale  # rows: metres ahead of the centre
    left = (0.5 * size - idx) * scale  # columns: metres to the left
    a, l_ = ahead[:, None], left[None, :]
    c, s = jnp.cos(heading), jnp.sin(heading)
    return cx + c * a - s * l_, cy + s * a + c * l_


def occupancy(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """The ``pixels`` observation: ego-centred, heading-up, uint8 [size, size, 3].

    Channels: 0 road (255 drivable, 128 lane boundary, 0 off-road); 1 vehicles (255, the ego
    128); 2 pedestrians (255). The ego sits at column size/2, row 3/4 of the image.
    """
    size, scale = cfg.pixels_size, cfg.pixels_scale
    px, py = _grid(size, scale, state.x, state.y, state.psi, 0.75)
    reach = size * scale
    window = _window(cfg, math.hypot(0.75, 0.5) * reach, math.hypot(0.25, 0.5) * reach)
    d, _ = _road_fields(cfg, state, px, py, window)
    road = jnp.abs(d) <= cfg.road_half_width
    bounds = -cfg.road_half_width + cfg.lane_width * jnp.arange(1, cfg.num_lanes)
    near_line = jnp.min(jnp.abs(d[..., None] - bounds), axis=-1) < 0.5 * scale
    ch_road = jnp.where(road, jnp.where(near_line, 128, 255), 0)
    veh = _cars_mask(cfg, state, px, py, scale)
    ego = _in_box(cfg, px, py, state.x, state.y, state.psi, 0.5 * scale)
    ch_veh = jnp.where(veh, 255, jnp.where(ego, 128, 0))
    ch_ped = jnp.where(_peds_mask(state, px, py, scale), 255, 0)
    return jnp.stack([ch_road, ch_veh, ch_ped], axis=-1).astype(jnp.uint8)


def _in_box(cfg, px, py, bx, by, bpsi, pad):
    c, s = jnp.cos(bpsi), jnp.sin(bpsi)
    dx, dy = px - bx, py - by
    return (jnp.abs(c * dx + s * dy) <= 0.5 * cfg.car_length + pad) & (
        jnp.abs(-s * dx + c * dy) <= 0.5 * cfg.car_width + pad
    )


def _cars_mask(cfg, state, px, py, scale):
    vx, vy, vpsi = vehicle_poses(state)
    inside = _in_box(cfg, px[..., None], py[..., None], vx, vy, vpsi, 0.3 * scale)
    return jnp.any(inside, axis=-1)


def _peds_mask(state, px, py, scale):
    qx, qy = pedestrian_positions(state)
    r = jnp.maximum(_PED_RADIUS, 0.75 * scale)
    d2 = (px[..., None] - qx) ** 2 + (py[..., None] - qy) ** 2
    return jnp.any(d2 <= r * r, axis=-1)


# render labels (see render.PALETTE)
GRASS, ROAD, LANE_LINE, EDGE_LINE, CENTRE_LINE, FINISH, BEAM, CAR, EGO, PED, HIT = range(11)


def render_labels(cfg: DrivingConfig, state: EnvState, size: int, scale: float) -> jax.Array:
    """Per-pixel class labels of a heading-up top-down frame. uint8 [size, size]."""
    px, py = _grid(size, scale, state.x, state.y, state.psi, 0.7)
    reach = size * scale
    window = _window(cfg, math.hypot(0.7, 0.5) * reach, math.hypot(0.3, 0.5) * reach)
    d, s = _road_fields(cfg, state, px, py, window)
    hw = cfg.road_half_width
    lab = jnp.where(jnp.abs(d) <= hw, ROAD, GRASS)
    line_w = max(0.15, 1.2 * scale)
    bounds = -hw + cfg.lane_width * jnp.arange(1, cfg.num_lanes)
    dash = (s % 9.0) < 4.5
    for i in range(cfg.num_lanes - 1):
        on = jnp.abs(d - bounds[i]) < 0.5 * line_w
        if i == cfg.num_forward_lanes - 1:  # between directions: solid centre line
            lab = jnp.where(on, CENTRE_LINE, lab)
        else:
            lab = jnp.where(on & dash, LANE_LINE, lab)
    edge = jnp.abs(jnp.abs(d) - (hw - 0.3)) < 0.5 * line_w
    lab = jnp.where(edge, EDGE_LINE, lab)
    finish = (jnp.abs(s - state.route_length) < 0.8) & (jnp.abs(d) <= hw)
    lab = jnp.where(finish, FINISH, lab)
    # LiDAR beams up to their first hit
    hits = jnp.min(lidar(cfg, state), axis=0)  # [K]
    dx, dy = px - state.x, py - state.y
    rel = _wrap(jnp.arctan2(dy, dx) - state.psi)
    step = 2.0 * jnp.pi / cfg.lidar_beams
    k = jnp.round(rel / step).astype(jnp.int32) % cfg.lidar_beams
    r = jnp.sqrt(dx * dx + dy * dy)
    off = r * jnp.abs(jnp.sin(rel - k * step))
    on_beam = (off < 0.7 * scale) & (r < hits[k])
    lab = jnp.where(on_beam, BEAM, lab)
    at_hit = on_beam & (r > hits[k] - 1.5 * scale) & (hits[k] < cfg.lidar_range)
    lab = jnp.where(at_hit, HIT, lab)
    lab = jnp.where(_cars_mask(cfg, state, px, py, 0.0), CAR, lab)
    lab = jnp.where(_in_box(cfg, px, py, state.x, state.y, state.psi, 0.0), EGO, lab)
    lab = jnp.where(_peds_mask(state, px, py, 0.5 * scale), PED, lab)
    return lab.astype(jnp.uint8)


# ------------------------------------------------------------------------------------------------
# the step
# ------------------------------------------------------------------------------------------------
def _idm(v, v0, gap, dv, a_max=2.0, b=3.0, s0=2.0, headway=1.5):
    """Intelligent Driver Model acceleration (Treiber et al. 2000)."""
    s_star = s0 + jnp.maximum(0.0, v * headway + v * dv / (2.0 * jnp.sqrt(a_max * b)))
    return a_max * (1.0 - (v / jnp.maximum(v0, 0.1)) ** 4 - (s_star / jnp.maximum(gap, 0.1)) ** 2)


def _leaders(cfg: DrivingConfig, state: EnvState, ego_d: jax.Array):
    """Gap to and speed of the leader of every vehicle (others and the ego). [N] each."""
    s_all = jnp.concatenate([state.veh_s, state.s[None]])
    d_all = jnp.concatenate([state.veh_d, ego_d[None]])
    # signed speed along +s
    v_all = jnp.concatenate([state.veh_v * state.veh_dir, state.v[None]])
    n = cfg.num_vehicles
    ahead = (s_all[None, :] - state.veh_s[:, None]) * state.veh_dir[:, None]  # [N, N+1]
    same_lane = jnp.abs(d_all[None, :] - state.veh_d[:, None]) < 0.6 * cfg.lane_width
    not_self = jnp.arange(n + 1)[None, :] != jnp.arange(n)[:, None]
    cand = (ahead > 0.0) & same_lane & not_self
    gap = jnp.where(cand, ahead - cfg.car_length, 1e4)
    j = jnp.argmin(gap, axis=1)
    lead_gap = jnp.take_along_axis(gap, j[:, None], axis=1)[:, 0]
    lead_v = v_all[j] * state.veh_dir  # leader speed in my driving direction
    return lead_gap, jnp.where(lead_gap < 1e4, lead_v, state.veh_v0)


def _step_traffic(cfg: DrivingConfig, state: EnvState, ego_d: jax.Array, rnd: _Draws):
    dt = cfg.dt
    n, n_onc = cfg.num_vehicles, cfg.num_oncoming
    gap, lead_v = _leaders(cfg, state, ego_d)
    acc = _idm(state.veh_v, state.veh_v0, gap, state.veh_v - lead_v)
    acc = jnp.clip(acc, -state.mu * G, jnp.minimum(2.0, state.mu * G))
    v = jnp.maximum(state.veh_v + acc * dt, 0.0)
    s = state.veh_s + state.veh_dir * v * dt

    # lane changes among the forward lanes, only into a free gap
    lanes = _lane_centres(cfg)
    fwd = state.veh_dir > 0
    settled = jnp.abs(state.veh_d - state.veh_target_d) < 0.05
    slow_leader = (gap < 40.0) & (lead_v < state.veh_v0 - 2.0)
    p_try = jnp.where(slow_leader, 10.0 * cfg.lane_change_prob, cfg.lane_change_prob)
    want = fwd & settled & rnd.bernoulli(p_try, (n,))
    side = jnp.where(rnd.bernoulli(0.5, (n,)), 1.0, -1.0)
    target = state.veh_target_d + side * cfg.lane_width
    in_fwd = (target > lanes[0] - 0.1) & (target < lanes[cfg.num_forward_lanes - 1] + 0.1)
    s_all = jnp.concatenate([state.veh_s, state.s[None]])
    d_all = jnp.concatenate([state.veh_d, ego_d[None]])
    occupied = (jnp.abs(s_all[None, :] - state.veh_s[:, None]) < 15.0) & (
        jnp.abs(d_all[None, :] - target[:, None]) < 0.8 * cfg.lane_width
    )
    free = ~jnp.any(occupied, axis=1)
    target = jnp.where(want & in_fwd & free, target, state.veh_target_d)
    dd = jnp.clip((target - state.veh_d) / dt, -1.0, 1.0)
    d = state.veh_d + dd * dt

    # respawn what the ego has left behind (or that ran away) ahead of it
    rel = s - state.s
    behind = jnp.where(fwd, rel < -60.0, rel < -40.0)
    gone = behind | (rel > 300.0)
    new_rel = jnp.where(
        fwd,
        rnd.uniform((n,), 120.0, 200.0),
        rnd.uniform((n,), 150.0, 250.0),
    )
    n_fwd_l = cfg.num_forward_lanes
    lane_f = rnd.randint(0, n_fwd_l, (n,))
    lane_o = n_fwd_l + rnd.randint(0, max(cfg.num_oncoming_lanes, 1), (n,))
    new_d = lanes[jnp.where(fwd, lane_f, lane_o)]
    new_v0 = state.speed_limit * rnd.uniform((n,), 0.6, 1.0)
    new_v0 = jnp.minimum(new_v0, jnp.sqrt(0.5 * state.mu * G * cfg.min_radius))
    del n_onc
    state = state._replace(
        veh_s=jnp.where(gone, state.s + new_rel, s),
        veh_d=jnp.where(gone, new_d, d),
        veh_target_d=jnp.where(gone, new_d, target),
        veh_dd=jnp.where(gone, 0.0, dd),
        veh_v=jnp.where(gone, 0.8 * new_v0, v),
        veh_v0=jnp.where(gone, new_v0, state.veh_v0),
    )
    return _with_poses(_step_pedestrians(cfg, state, rnd))


def _step_pedestrians(cfg: DrivingConfig, state: EnvState, rnd: _Draws) -> EnvState:
    dt, p = cfg.dt, cfg.num_pedestrians
    hw = cfg.road_half_width
    d = state.ped_d + state.ped_vd * dt
    across = (jnp.abs(d) > hw + 1.5) & (d * state.ped_vd > 0.0)
    passed = state.ped_s < state.s - 30.0
    finished = state.ped_active & (across | passed)
    wait = rnd.uniform((p,), cfg.pedestrian_wait[0], cfg.pedestrian_wait[1])
    timer = jnp.where(finished, wait, state.ped_timer - jnp.where(state.ped_active, 0.0, dt))
    start = ~state.ped_active & (timer <= 0.0)
    lead = jnp.maximum(40.0, 3.0 * state.speed_limit)
    new_s = state.s + lead + rnd.uniform((p,), 0.0, 100.0)
    side = jnp.where(rnd.bernoulli(0.5, (p,)), 1.0, -1.0)
    speed = rnd.uniform((p,), 0.8, 1.6)
    active = (state.ped_active & ~finished) | start
    return state._replace(
        ped_s=jnp.where(start, new_s, jnp.where(active, state.ped_s, -_FAR)),
        ped_d=jnp.where(start, side * (hw + 1.0), jnp.where(active, d, 0.0)),
        ped_vd=jnp.where(start, -side * speed, jnp.where(active, state.ped_vd, 0.0)),
        ped_active=active,
        ped_timer=jnp.where(start, 0.0, timer),
    )


def _ego_motion(cfg: DrivingConfig, state: EnvState, steer, throttle, brake):
    """The ego's kinematic bicycle step with a friction circle.

    Returns:
        ``(x, y, psi, v_new, a_real, demand, grip, skid)``: the new pose and speed, the
        realised acceleration, the tyre force demanded and available, and whether it skids.
    """
    dt = cfg.dt
    v = state.v
    delta = steer * cfg.max_steer
    kappa_cmd = jnp.tan(delta) / cfg.wheelbase
    a_lat = v * v * kappa_cmd
    a_drive = throttle * cfg.max_accel - brake * cfg.max_brake * (v > 0.0)
    a_lon = a_drive - cfg.drag * v * v
    grip = state.mu * G
    demand = jnp.sqrt(a_lat * a_lat + a_drive * a_drive)
    # beyond the grip limit both tyre forces saturate: the car understeers and brakes/accelerates
    # less; on top, a skid lets the heading slip (the yaw response lags what was commanded)
    skid = demand > grip
    scale = jnp.where(skid, grip / jnp.maximum(demand, 1e-6), 1.0)
    kappa_eff = kappa_cmd * scale
    a_lon = a_drive * scale - cfg.drag * v * v - G * jnp.sin(state.slope)
    v_new = jnp.clip(v + a_lon * dt, 0.0, cfg.max_speed)
    v_mid = 0.5 * (v + v_new)
    yaw = v_mid * kappa_eff * jnp.where(skid, 0.7, 1.0)
    psi = state.psi + yaw * dt
    heading_mid = state.psi + 0.5 * yaw * dt
    # in a skid the car also drifts toward the outside of the commanded turn
    drift = jnp.where(skid, -jnp.sign(kappa_cmd) * (1.0 - scale) * v_mid * 0.3, 0.0)
    x = state.x + (v_mid * jnp.cos(heading_mid) - drift * jnp.sin(heading_mid)) * dt
    y = state.y + (v_mid * jnp.sin(heading_mid) + drift * jnp.cos(heading_mid)) * dt
    a_real = (v_new - v) / dt
    return x, y, psi, v_new, a_real, demand, grip, skid


def step(cfg: DrivingConfig, state: EnvState, action: jax.Array):
    """One transition of one env.

    Args:
        cfg: the static config.
        state: the env state.
        action: float32 [3], continuous controls (steer, throttle, brake) in [-1, 1]; throttle and
            brake act on their positive part.

    Returns:
        ``(state, reward, terminated, truncated, info, obs_key)``; ``info`` holds
        ``reward_terms`` (dict of float32 []), ``collision``, ``offroad``, ``skid`` (bool []),
        ``route_completion`` (float32 []), ``episode_return`` and ``episode_length``.
    """
    dt = cfg.dt
    key, k_step = jax.random.split(state.key)
    k_obs = k_step ^ jnp.uint32(0x5BD1E995)  # a different stream for observation noise
    action = jnp.clip(action.astype(jnp.float32), -1.0, 1.0)
    steer, throttle, brake = action[0], jnp.maximum(action[1], 0.0), jnp.maximum(action[2], 0.0)

    x, y, psi, v_new, a_real, demand, grip, skid = _ego_motion(cfg, state, steer, throttle, brake)
    seg, s_new, d, road_psi = _project(state, state.seg, x, y)

    new = state._replace(
        key=key,
        x=x,
        y=y,
        psi=_wrap(psi),
        v=v_new,
        accel=a_real,
        grip_use=jnp.minimum(demand / grip, 1.0),
        seg=seg,
        s=s_new,
        d=d,
        heading_error=_wrap(psi - road_psi),
        prev_action=action,
        t=state.t + 1,
    )
    new = _step_traffic(cfg, new, d, _Draws(k_step))

    # ---- events ----------------------------------------------------------------------------------
    vx, vy, vpsi = vehicle_poses(new)
    hit_car = jnp.any(_boxes_overlap(cfg, x, y, new.psi, vx, vy, vpsi))
    qx, qy = pedestrian_positions(new)
    hit_ped = jnp.any(_ego_hits_pedestrian(cfg, new, qx, qy))
    collision = hit_car | hit_ped
    offroad = jnp.abs(d) > cfg.road_half_width
    finished = s_new >= new.route_length
    terminated = collision | offroad | finished
    truncated = (new.t >= cfg.max_episode_steps) & ~terminated

    # ---- reward --------------------------------------------------------------------------------
    boundary = cfg.road_half_width - cfg.num_oncoming_lanes * cfg.lane_width
    wrong_lane = (d > boundary) & (cfg.num_oncoming_lanes > 0)
    jerk = (a_real - state.accel) / dt
    unstable = (steer - state.prev_action[0]) ** 2 + (jerk / 50.0) ** 2 + skid
    raw = {
        "progress": jnp.minimum(s_new, new.route_length) - jnp.minimum(state.s, new.route_length),
        "collision": collision.astype(jnp.float32),
        "offroad": offroad.astype(jnp.float32),
        "speeding": jnp.maximum(v_new / new.speed_limit - 1.0, 0.0),
        "wrong_lane": wrong_lane.astype(jnp.float32),
        "unstable": unstable.astype(jnp.float32),
        "time": jnp.ones((), jnp.float32),
    }
    terms = {k: getattr(cfg, f"reward_{k}") * raw[k] for k in REWARD_TERMS}
    reward = functools.reduce(jnp.add, [terms[k] for k in REWARD_TERMS]).astype(jnp.float32)
    new = new._replace(episode_return=state.episode_return + reward)
    info = {
        "reward_terms": terms,
        "collision": collision,
        "offroad": offroad,
        "skid": skid,
        "route_completion": jnp.clip(s_new / new.route_length, 0.0, 1.0),
        "episode_return": new.episode_return,
        "episode_length": new.t,
    }
    return new, reward, terminated, truncated, info, k_obs


# ------------------------------------------------------------------------------------------------
# scripted controller
# ------------------------------------------------------------------------------------------------
def scripted_action(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """Pure-pursuit steering on the current lane's centre + IDM speed control. float32 [3].

    The desired speed is the speed limit, lowered ahead of curves to keep v^2 kappa well inside
    the grip limit (with room to brake comfortably); the IDM leader is the nearest vehicle in the
    ego's lane or a pedestrian predicted to be in it when the ego arrives.
    """
    d, _ = _ego_frenet_features(cfg, state)
    lanes = _lane_centres(cfg)
    fwd_lanes = lanes[: cfg.num_forward_lanes]
    lane_d = fwd_lanes[jnp.argmin(jnp.abs(fwd_lanes - d))]
    v = state.v
    look = jnp.maximum(6.0, 0.9 * v)
    tx, ty, _, _ = pose_at(state, state.s + look, lane_d)
    c, sn = jnp.cos(state.psi), jnp.sin(state.psi)
    lx = c * (tx - state.x) + sn * (ty - state.y)
    ly = -sn * (tx - state.x) + c * (ty - state.y)
    kappa = 2.0 * ly / jnp.maximum(lx * lx + ly * ly, 1e-3)
    steer = jnp.clip(jnp.arctan(kappa * cfg.wheelbase) / cfg.max_steer, -1.0, 1.0)

    grip = state.mu * G
    b_comf = jnp.minimum(3.0, 0.4 * grip)
    dist = jnp.arange(0.0, 121.0, 5.0)
    kap = curvature_at(state, state.s + dist)
    v_curve = jnp.sqrt(0.55 * grip / jnp.maximum(jnp.abs(kap), 1e-4))
    v_ok = jnp.sqrt(v_curve**2 + 2.0 * b_comf * jnp.maximum(dist - 5.0, 0.0))
    v_des = jnp.minimum(0.95 * state.speed_limit, jnp.min(v_ok))

    rel = state.veh_s - state.s
    in_lane = jnp.abs(state.veh_d - lane_d) < 0.75 * cfg.lane_width
    ahead = (rel > 0.0) & in_lane
    veh_gap = jnp.where(ahead, rel - cfg.car_length, 1e4)
    j = jnp.argmin(veh_gap)
    gap, lead_v = veh_gap[j], state.veh_v[j] * state.veh_dir[j]
    prel = state.ped_s - state.s
    _, d_pred = pedestrian_forecast(state)
    danger = (
        state.ped_active
        & (prel > -1.0)
        & ((jnp.abs(d_pred - lane_d) < 3.0) | (jnp.abs(state.ped_d - lane_d) < 3.0))
    )
    ped_gap = jnp.where(danger, prel - 0.5 * cfg.car_length - 3.0, 1e4)
    use_ped = jnp.min(ped_gap) < gap
    gap = jnp.where(use_ped, jnp.min(ped_gap), gap)
    lead_v = jnp.where(use_ped, 0.0, jnp.where(gap < 1e4, lead_v, v_des))
    a = _idm(v, v_des, gap, v - lead_v, a_max=min(2.0, cfg.max_accel), b=2.0)
    a = jnp.clip(a, -0.9 * grip, 0.5 * grip)
    throttle = jnp.clip(a / cfg.max_accel, 0.0, 1.0)
    brake = jnp.clip(-a / cfg.max_brake, 0.0, 1.0)
    return jnp.stack([steer, throttle, brake]).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# batched, jitted entry points
# ------------------------------------------------------------------------------------------------
def _obs(cfg: DrivingConfig, obs_mode: str, state: EnvState, key: jax.Array):
    if obs_mode == "vector":
        return vector_obs(cfg, state, key)
    if obs_mode == "pixels":
        return occupancy(cfg, state)
    return {"vector": vector_obs(cfg, state, key), "pixels": occupancy(cfg, state)}


def _reset_one(cfg: DrivingConfig, obs_mode: str, key: jax.Array):
    state = reset_from_key(cfg, key)
    # the first observation's noise comes from the new episode's stream
    k_ep_obs = jax.random.split(key)[1] ^ jnp.uint32(0x5BD1E995)  # k_episode's noise stream
    return state, _obs(cfg, obs_mode, state, k_ep_obs)


# The jit boundary carries few arrays: dispatch costs a few microseconds per array, and the state
# has ~45 leaves. So the batched state crosses it as ONE uint32 [B, F] array (every leaf is 32-bit
# and is bit-cast, not converted), and the per-step scalars as one float32 [B, len(SCALARS)].
SCALARS = (
    "reward",
    "terminated",
    "truncated",
    "collision",
    "offroad",
    "skid",
    "route_completion",
    "episode_return",
    "episode_length",
) + tuple(f"reward_terms/{k}" for k in REWARD_TERMS)


@functools.cache
def _layout(cfg: DrivingConfig):
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    shapes = jax.eval_shape(lambda k: reset_from_key(cfg, k), key)
    return [(leaf.shape, leaf.dtype, math.prod(leaf.shape)) for leaf in shapes]


def pack_state(cfg: DrivingConfig, state: EnvState) -> jax.Array:
    """Batched state -> uint32 [B, F] (bit-cast; bools become 0/1)."""
    cols = []
    for leaf in state:
        b = leaf.shape[0]
        flat = leaf.reshape(b, -1)
        if flat.dtype == jnp.bool_:
            flat = flat.astype(jnp.uint32)
        cols.append(jax.lax.bitcast_convert_type(flat, jnp.uint32))
    return jnp.concatenate(cols, axis=1)


def unpack_state(cfg: DrivingConfig, packed: jax.Array) -> EnvState:
    """uint32 [B, F] -> batched :class:`EnvState`."""
    leaves, start = [], 0
    b = packed.shape[0]
    for shape, dtype, size in _layout(cfg):
        col = packed[:, start : start + size]
        start += size
        if dtype == jnp.bool_:
            leaf = col != 0
        else:
            leaf = jax.lax.bitcast_convert_type(col, dtype)
        leaves.append(leaf.reshape((b,) + tuple(shape)))
    return EnvState(*leaves)


def _pack_scalars(reward, terminated, truncated, info) -> jax.Array:
    vals = {"reward": reward, "terminated": terminated, "truncated": truncated}
    vals.update({k: v for k, v in info.items() if k != "reward_terms"})
    vals.update({f"reward_terms/{k}": v for k, v in info["reward_terms"].items()})
    return jnp.stack([vals[k].astype(jnp.float32) for k in SCALARS], axis=1)


def unpack_scalars(scalars) -> dict:
    """Host side: float32 [B, len(SCALARS)] -> ``(reward, terminated, truncated, info)``.

    ``info`` maps ``reward_terms`` to a dict of float32 [B], ``collision`` / ``offroad`` /
    ``skid`` to bool [B], ``route_completion`` / ``episode_return`` to float32 [B] and
    ``episode_length`` to int32 [B] (numpy views of ``scalars``).
    """
    import numpy as np

    arr = np.asarray(scalars)
    col = {k: arr[:, i] for i, k in enumerate(SCALARS)}
    info = {
        "reward_terms": {k: col[f"reward_terms/{k}"] for k in REWARD_TERMS},
        "collision": col["collision"] > 0.5,
        "offroad": col["offroad"] > 0.5,
        "skid": col["skid"] > 0.5,
        "route_completion": col["route_completion"],
        "episode_return": col["episode_return"],
        "episode_length": col["episode_length"].astype(np.int32),
    }
    return col["reward"], col["terminated"] > 0.5, col["truncated"] > 0.5, info


@functools.partial(jax.jit, static_argnames=("cfg", "obs_mode"))
def batch_reset(cfg: DrivingConfig, obs_mode: str, keys: jax.Array):
    """Start an episode in every env from its key.

    Args:
        keys: uint32 [B, 2], one ``jax.random`` key per env.

    Returns:
        ``(packed_state uint32 [B, F], obs [B, ...])``.
    """
    state, obs = jax.vmap(lambda k: _reset_one(cfg, obs_mode, k))(keys)
    return pack_state(cfg, state), obs


@functools.partial(jax.jit, static_argnames=("cfg", "obs_mode", "autoreset"))
def batch_step(
    cfg: DrivingConfig, obs_mode: str, autoreset: bool, packed: jax.Array, actions: jax.Array
):
    """Step every env; with ``autoreset`` start a new episode where one ended (same step).

    Args:
        cfg, obs_mode: static.
        autoreset: static; True for the vector env (SAME_STEP autoreset).
        packed: uint32 [B, F], the packed batched state.
        actions: float32 [B, 3] continuous controls.

    Returns:
        ``(packed_state, obs, final_obs, scalars)``: ``obs`` is the next episode's first
        observation where an env ended (with ``autoreset``), ``final_obs`` the observation the
        step reached (equal to ``obs`` elsewhere); ``scalars`` float32 [B, len(SCALARS)] (see
        :func:`unpack_scalars`).
    """
    state = unpack_state(cfg, packed)
    new, reward, terminated, truncated, info, k_obs = jax.vmap(lambda s, a: step(cfg, s, a))(
        state, actions
    )
    obs = jax.vmap(lambda s, k: _obs(cfg, obs_mode, s, k))(new, k_obs)
    scalars = _pack_scalars(reward, terminated, truncated, info)
    if not autoreset:
        return pack_state(cfg, new), obs, obs, scalars
    done = terminated | truncated
    batch = done.shape[0]
    few = max(1, batch // 16)

    def reset_some(carry):
        # reset (up to) the first `few` ended envs still waiting; padding indices are out of
        # range and dropped. One copy of the reset code serves any number of ended envs.
        st, ob, waiting = carry
        idx = jnp.nonzero(waiting, size=few, fill_value=batch)[0]
        keys = new.key[jnp.minimum(idx, batch - 1)]
        fresh, fresh_obs = jax.vmap(lambda k: _reset_one(cfg, obs_mode, k))(keys)

        def put(a, f):
            return a.at[idx].set(f, mode="drop")

        waiting = waiting.at[idx].set(False, mode="drop")
        return jax.tree.map(put, st, fresh), jax.tree.map(put, ob, fresh_obs), waiting

    state_out, obs_out, _ = jax.lax.while_loop(
        lambda c: jnp.any(c[2]), reset_some, (new, obs, done)
    )
    return pack_state(cfg, state_out), obs_out, obs, scalars


@functools.partial(jax.jit, static_argnames=("cfg",))
def batch_unpack(cfg: DrivingConfig, packed: jax.Array) -> EnvState:
    """Packed uint32 [B, F] -> batched :class:`EnvState` (for inspection)."""
    return unpack_state(cfg, packed)


@functools.partial(jax.jit, static_argnames=("cfg",))
def batch_scripted(cfg: DrivingConfig, packed: jax.Array) -> jax.Array:
    """Scripted controls for every env of a packed state. float32 [B, 3]."""
    return jax.vmap(lambda s: scripted_action(cfg, s))(unpack_state(cfg, packed))


@functools.partial(jax.jit, static_argnames=("cfg", "size", "scale"))
def render_one(cfg: DrivingConfig, packed: jax.Array, size: int, scale: float) -> jax.Array:
    """Render labels of env 0 of a packed state. uint8 [size, size]."""
    one = jax.tree.map(lambda a: a[0], unpack_state(cfg, packed[:1]))
    return render_labels(cfg, one, size, scale)

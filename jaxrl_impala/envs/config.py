"""Configuration of the built-in driving task.

Every field of :class:`DrivingConfig` is also a keyword argument of
``gymnasium.make("jaxrl_impala/Driving-v0", ...)``, :class:`~jaxrl_impala.envs.DrivingEnv` and
:class:`~jaxrl_impala.envs.DrivingVectorEnv`. The config is frozen and hashable: it is a static
argument of the jitted step, so two envs with equal configs share one compiled function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

OBS_MODES = ("vector", "pixels", "dict")
ACTION_MODES = ("continuous", "discrete")
REWARD_TERMS = (
    "progress",
    "collision",
    "offroad",
    "speeding",
    "wrong_lane",
    "unstable",
    "time",
)


@dataclasses.dataclass(frozen=True)
class DrivingConfig:
    """Parameters of the driving MDP (units: metres, seconds, radians, m/s)."""

    # --- episode -------------------------------------------------------------------------------
    max_episode_steps: int = 1000
    """Truncation horizon in steps (dt each)."""
    dt: float = 0.1
    """Simulation step in seconds."""
    route_length_min: float = 300.0
    """Shortest route (metres along the centreline); each episode draws U(min, max)."""
    route_length_max: float = 1000.0
    """Longest route (metres); also fixes the padded number of road segments."""

    # --- road ----------------------------------------------------------------------------------
    num_lanes: int = 3
    """Lanes across the carriageway (>= 2), numbered from the right."""
    num_oncoming_lanes: int = 1
    """How many of the leftmost lanes carry oncoming traffic (driving there is a violation)."""
    lane_width: float = 3.5
    """Lane width in metres."""
    segment_length_min: float = 50.0
    """Shortest constant-curvature segment of the centreline."""
    segment_length_max: float = 150.0
    """Longest constant-curvature segment of the centreline."""
    min_radius: float = 60.0
    """Tightest curve radius (metres)."""
    max_radius: float = 600.0
    """Gentlest curve radius of a non-straight segment (metres)."""
    straight_prob: float = 0.3
    """Probability that a segment is straight."""

    # --- per-episode conditions ---------------------------------------------------------------
    surface_probs: tuple[float, float, float] = (0.6, 0.3, 0.1)
    """Probabilities of a dry, wet and icy surface."""
    surface_mu: tuple[float, float, float] = (0.9, 0.6, 0.25)
    """Tyre-road friction coefficient of dry, wet and icy surfaces."""
    max_slope: float = 0.05
    """Road grade drawn U(-max, max) radians per episode (positive = uphill)."""
    speed_limits: tuple[float, ...] = (8.33, 13.89, 19.44, 25.0)
    """Speed limits (m/s: 30, 50, 70, 90 km/h); one is drawn uniformly per episode."""

    # --- ego vehicle (kinematic bicycle) --------------------------------------------------------
    wheelbase: float = 2.7
    """Axle distance of the bicycle model."""
    car_length: float = 4.5
    """Length of every car (ego and traffic)."""
    car_width: float = 1.9
    """Width of every car."""
    max_steer: float = 0.5
    """Front-wheel angle at steer = +-1 (radians)."""
    max_accel: float = 4.0
    """Acceleration at throttle = 1 (m/s^2), before the grip limit."""
    max_brake: float = 8.0
    """Deceleration at brake = 1 (m/s^2), before the grip limit."""
    drag: float = 0.005
    """Quadratic drag coefficient (1/m): a_drag = -drag * v^2."""
    max_speed: float = 40.0
    """Hard cap on ego speed (m/s); also the speed normaliser of the observation."""

    # --- traffic -------------------------------------------------------------------------------
    num_vehicles: int = 8
    """Other vehicles per env (fixed, so shapes are static)."""
    num_oncoming_vehicles: int = 3
    """How many of them drive the oncoming lanes (ignored when there are none)."""
    lane_change_prob: float = 0.01
    """Per-step probability that a vehicle tries a lane change (taken only if the gap is safe)."""
    num_pedestrians: int = 2
    """Pedestrians per env; each crosses the road at a random place ahead, at random times."""
    pedestrian_wait: tuple[float, float] = (2.0, 15.0)
    """Seconds a pedestrian waits (uniform) before its next crossing."""

    # --- sensors -------------------------------------------------------------------------------
    lidar_beams: int = 20
    """LiDAR beams, evenly spread over 360 degrees starting straight ahead."""
    lidar_range: float = 50.0
    """LiDAR range in metres (a beam that hits nothing reads 1.0)."""
    lidar_noise_std: float = 0.0
    """Std of Gaussian noise added to normalised LiDAR ranges (0 = off)."""
    lidar_dropout: float = 0.0
    """Probability that a beam returns nothing (reads 1.0) on a step (0 = off)."""
    pedestrian_tracks: bool = False
    """Append a track per pedestrian to the ``vector`` observation (what a perception stack
    hands a planner): crossing and within ``lidar_range`` of the ego along the road, its arc
    length ahead, lateral offset from the ego and walking speed; nearest first. Thin LiDAR
    beams see a crossing pedestrian on one beam for a few steps at a time."""
    pedestrian_forecast: bool = False
    """Two more columns per pedestrian track (needs ``pedestrian_tracks``), what a prediction
    stage hands a planner: the seconds until the ego reaches the pedestrian at its current
    speed (over 4 s), and the pedestrian's lateral offset from the ego by then, walking on at
    its speed (the same rule the scripted controller brakes by)."""
    lidar_closing_speed: bool = False
    """Append, per LiDAR beam, how fast the vehicle it hits closes in (m/s along the beam,
    over ``max_speed``; 0 when it hits none) to the ``vector`` observation: a radar's
    Doppler channel. One range reading does not tell a slower car ahead from a faster one."""
    curvature_preview: tuple[float, ...] = (0.0, 10.0, 20.0, 35.0, 50.0)
    """Distances ahead (metres) at which the road curvature is observed."""
    pixels_size: int = 64
    """Side of the square top-down occupancy image (pixels)."""
    pixels_scale: float = 1.0
    """Metres per pixel of the occupancy image."""

    # --- reward weights (term = weight * raw quantity, reward = sum of terms) -------------------
    reward_progress: float = 0.1
    """Per metre advanced along the route."""
    reward_collision: float = -10.0
    """Once, on hitting a vehicle or pedestrian."""
    reward_offroad: float = -10.0
    """Once, on leaving the road."""
    reward_speeding: float = -1.0
    """Per step, times the relative excess speed max(0, v / limit - 1)."""
    reward_wrong_lane: float = -0.1
    """Per step with the ego's centre in an oncoming lane."""
    reward_unstable: float = -0.05
    """Per step, times steer_change^2 + (jerk / 50 m/s^3)^2 + skidding (0/1)."""
    reward_time: float = -0.01
    """Per step."""

    # --- discrete action grid -----------------------------------------------------------------
    discrete_steer: tuple[float, ...] = (-0.5, -0.1, 0.0, 0.1, 0.5)
    """Steer values of the discrete grid (same units as the continuous steer)."""
    discrete_accel: tuple[float, ...] = (-0.5, 0.0, 0.5)
    """Acceleration values of the discrete grid: < 0 brakes, > 0 throttles."""

    def __post_init__(self) -> None:
        def fail(name: str, msg: str) -> None:
            raise ValueError(f"DrivingConfig.{name}: {msg}")

        if self.num_lanes < 2:
            fail("num_lanes", f"must be >= 2, got {self.num_lanes}")
        if not 0 <= self.num_oncoming_lanes < self.num_lanes:
            fail("num_oncoming_lanes", f"must be in [0, num_lanes), got {self.num_oncoming_lanes}")
        if not 0 < self.route_length_min <= self.route_length_max:
            fail("route_length_min", "need 0 < route_length_min <= route_length_max")
        if not 0 < self.segment_length_min <= self.segment_length_max:
            fail("segment_length_min", "need 0 < segment_length_min <= segment_length_max")
        if self.min_radius < 4 * self.road_half_width:
            fail("min_radius", f"must be >= 4 * road half width ({4 * self.road_half_width} m)")
        if self.max_episode_steps < 1:
            fail("max_episode_steps", "must be >= 1")
        if self.num_vehicles < 1 or self.num_pedestrians < 1 or self.lidar_beams < 1:
            fail("num_vehicles", "num_vehicles, num_pedestrians and lidar_beams must be >= 1")
        if self.num_oncoming_lanes > 0 and not 0 <= self.num_oncoming_vehicles < self.num_vehicles:
            fail("num_oncoming_vehicles", "must be in [0, num_vehicles)")
        if abs(sum(self.surface_probs) - 1.0) > 1e-6:
            fail("surface_probs", "must sum to 1")
        if not 0.0 <= self.lidar_dropout < 1.0 or self.lidar_noise_std < 0:
            fail("lidar_dropout", "lidar_dropout must be in [0, 1), lidar_noise_std >= 0")
        if self.pedestrian_forecast and not self.pedestrian_tracks:
            fail("pedestrian_forecast", "extends the tracks: needs pedestrian_tracks=True")

    # --- derived sizes (static) -----------------------------------------------------------------
    @property
    def road_half_width(self) -> float:
        return 0.5 * self.num_lanes * self.lane_width

    @property
    def num_forward_lanes(self) -> int:
        return self.num_lanes - self.num_oncoming_lanes

    @property
    def num_oncoming(self) -> int:
        """Oncoming vehicles actually simulated (0 without oncoming lanes)."""
        return self.num_oncoming_vehicles if self.num_oncoming_lanes > 0 else 0

    @property
    def runoff_length(self) -> float:
        """Road generated past the route end, so sensors and traffic see a road there."""
        return self.lidar_range + 150.0

    @property
    def num_segments(self) -> int:
        """Padded segment count: enough for the longest route plus the run-off."""
        total = self.route_length_max + self.runoff_length
        return int(total // self.segment_length_min) + 2

    @property
    def vector_obs_size(self) -> int:
        width = 6 if self.pedestrian_forecast else 4
        tracks = width * self.num_pedestrians if self.pedestrian_tracks else 0
        rates = self.lidar_beams if self.lidar_closing_speed else 0
        return 3 * self.lidar_beams + len(self.curvature_preview) + 12 + tracks + rates

    @property
    def num_discrete_actions(self) -> int:
        return len(self.discrete_steer) * len(self.discrete_accel)


def make_config(config: DrivingConfig | None = None, **overrides: Any) -> DrivingConfig:
    """Build a config from an optional base and keyword overrides, failing on unknown names."""
    base = config if config is not None else DrivingConfig()
    names = {f.name for f in dataclasses.fields(DrivingConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown DrivingEnv option(s) {unknown}; valid options: {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **fixed)

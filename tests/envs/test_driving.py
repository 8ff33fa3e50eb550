"""Tests of the built-in driving env: gymnasium API, vector == single, scripted >> random."""

from __future__ import annotations

import gymnasium as gym
import jax
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import jaxrl_impala.envs as envs
from jaxrl_impala.envs import DrivingEnv, DrivingVectorEnv
from jaxrl_impala.envs.gif import write_gif

# One config and one batch size for (almost) every test: each distinct (config, obs_mode, batch)
# costs a ~10 s XLA compile on this machine. Moderate routes, so the scripted controller finishes
# them within the horizon, and random-action episodes end (and autoreset) every ~75 steps.
SHORT = dict(max_episode_steps=300, route_length_min=100.0, route_length_max=200.0)
NUM_ENVS = 50


@pytest.fixture(scope="module")
def vec_env() -> DrivingVectorEnv:
    env = DrivingVectorEnv(NUM_ENVS, obs_mode="vector", **SHORT)
    yield env
    env.close()


def test_registered_and_made_with_kwargs():
    env = gym.make(envs.ENV_ID, obs_mode="vector", action_mode="discrete", num_vehicles=6)
    assert isinstance(env.unwrapped, DrivingEnv)
    assert env.unwrapped.cfg.num_vehicles == 6
    assert env.action_space == gym.spaces.Discrete(15)
    with pytest.raises(TypeError, match="unknown DrivingEnv option"):
        DrivingEnv(num_vehicle=6)
    with pytest.raises(ValueError, match="obs_mode"):
        DrivingEnv(obs_mode="rgb")


@pytest.mark.parametrize(
    "obs_mode,action_mode",
    [
        ("vector", "continuous"),
        ("vector", "discrete"),
        ("pixels", "continuous"),
        ("dict", "discrete"),
    ],
)
def test_check_env(obs_mode, action_mode):
    render = "rgb_array" if obs_mode == "vector" and action_mode == "continuous" else None
    env = gym.make(
        envs.ENV_ID, obs_mode=obs_mode, action_mode=action_mode, render_mode=render, **SHORT
    )
    check_env(env.unwrapped, skip_render_check=render is None)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert set(info["reward_terms"]) == set(envs.REWARD_TERMS)
    assert r == pytest.approx(sum(info["reward_terms"].values()), abs=1e-5)
    assert isinstance(info["collision"], bool) and isinstance(info["offroad"], bool)
    assert 0.0 <= info["route_completion"] <= 1.0
    if render:
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 5  # road, cars, beams, ...


def test_vector_env_api(vec_env):
    assert vec_env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert vec_env.observation_space.shape == (NUM_ENVS,) + vec_env.single_observation_space.shape
    obs, _ = vec_env.reset(seed=0)
    assert vec_env.observation_space.contains(obs)
    obs, r, term, trunc, info = vec_env.step(vec_env.action_space.sample())
    assert r.shape == term.shape == trunc.shape == (NUM_ENVS,) and r.dtype == np.float32
    assert info["collision"].dtype == bool and info["final_obs"].shape == obs.shape


def test_vector_matches_single_across_autoresets(vec_env):
    """Env i of the vector env, seeded s + i, replays DrivingEnv seeded s + i, episode after
    episode (DrivingEnv.reset() without a seed continues the same RNG stream). Compared on
    the first n envs of the batch; a few envs brake to a halt so truncations happen too."""
    n, steps, seed = 3, 330, 7
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, NUM_ENVS, 3)).astype(np.float32)
    actions[:, 0, 1] = np.abs(actions[:, 0, 1])  # env 0 keeps moving: terminations
    actions[:, 1, :] = (0.0, 0.0, 1.0)  # env 1 brakes and stands: truncation at 300
    obs, _ = vec_env.reset(seed=seed)
    singles = [DrivingEnv(**SHORT) for _ in range(n)]
    s_obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    np.testing.assert_array_equal(obs[:n], np.stack(s_obs))
    ends, truncs = 0, 0
    for t in range(steps):
        obs, r, term, trunc, info = vec_env.step(actions[t])
        for i, e in enumerate(singles):
            o, ri, te, tr, inf = e.step(actions[t, i])
            np.testing.assert_allclose(info["final_obs"][i], o, atol=1e-6, err_msg=f"t={t} i={i}")
            assert r[i] == pytest.approx(ri, abs=1e-6)
            assert (term[i], trunc[i]) == (te, tr)
            assert info["route_completion"][i] == pytest.approx(inf["route_completion"], abs=1e-6)
            if te or tr:
                ends, truncs = ends + 1, truncs + tr
                o, _ = e.reset()
            np.testing.assert_allclose(obs[i], o, atol=1e-6)
    assert ends >= 5 and truncs >= 1, (ends, truncs)  # autoresets after both kinds of end


def test_final_obs_and_episode_stats(vec_env):
    vec_env.reset(seed=3)
    ret = np.zeros(NUM_ENVS)
    for _ in range(300):
        obs, r, term, trunc, info = vec_env.step(vec_env.scripted_actions())
        ret += r
        done = term | trunc
        if done.any():
            i = int(np.argmax(done))
            assert info["_final_obs"][i]
            assert info["episode_return"][i] == pytest.approx(ret[i], abs=1e-3)
            assert not np.array_equal(info["final_obs"][i], obs[i])  # obs is the new episode's
            ret[done] = 0.0
            return
    pytest.fail("no episode ended within the 300-step limit")


def test_lidar_edges_match_geometry(vec_env):
    """Every route starts on a straight: beams square to the road hit the edges at exactly the
    lateral distances, and the beam straight ahead sees no edge."""
    obs, _ = vec_env.reset(seed=11)
    cfg = vec_env.cfg
    k = cfg.lidar_beams
    d = np.asarray(vec_env.state.d)
    edges = obs[:, 2 * k : 3 * k] * cfg.lidar_range  # [B, K] metres
    np.testing.assert_allclose(edges[:, k // 4], cfg.road_half_width - d, atol=1e-3)  # left
    np.testing.assert_allclose(edges[:, 3 * k // 4], cfg.road_half_width + d, atol=1e-3)
    np.testing.assert_allclose(edges[:, 0], cfg.lidar_range)
    # a beam at 45 degrees to the left: hypotenuse of the lateral distance
    if k % 8 == 0:
        np.testing.assert_allclose(edges[:, k // 8], (cfg.road_half_width - d) * 2**0.5, atol=1e-3)


def test_sensor_noise_and_dropout_are_seeded():
    kw = dict(SHORT, lidar_noise_std=0.05, lidar_dropout=0.2)
    a = DrivingEnv(**kw).reset(seed=5)[0]
    b = DrivingEnv(**kw).reset(seed=5)[0]
    clean = DrivingEnv(**SHORT).reset(seed=5)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, clean)
    assert np.abs(a - clean).max() < 1.0 and np.all((a >= -1) & (a <= 1))


def test_scripted_beats_random_over_50_episodes():
    out = envs.reference_returns(num_episodes=NUM_ENVS, seed=0, **SHORT)  # = vec_env's compile
    # most routes completed without collision, and a wide margin over random
    assert out["scripted_completion"] >= 0.7, out
    assert out["scripted_collision"] <= 0.2, out
    assert out["scripted"] > out["random"] + 15.0, out


def test_discrete_scripted_and_gif(tmp_path):
    # same config and batch as the fixture: reuses its compiled step
    env = DrivingVectorEnv(NUM_ENVS, action_mode="discrete", render_mode="rgb_array", **SHORT)
    env.reset(seed=0)
    a = env.scripted_actions()
    assert a.shape == (NUM_ENVS,) and env.action_space.contains(a)
    frames = [env.render()]
    for _ in range(3):
        env.step(env.scripted_actions())
        frames.append(env.render())
    path = tmp_path / "x.gif"
    write_gif(str(path), frames, fps=10)
    data = path.read_bytes()
    assert data[:6] == b"GIF89a" and data[-1:] == b";" and len(data) > 1000


def _tracks_reference(cfg, s, d, v, ped_s, ped_d, ped_vd, ped_active) -> np.ndarray:
    """pedestrian_tracks of one env, the slow way: a loop, then a sort by distance."""
    rows, width = [], 2 * cfg.road_half_width
    for p in range(len(ped_s)):
        ahead = float(ped_s[p]) - float(s)
        if ped_active[p] and abs(ahead) <= cfg.lidar_range:
            row = [1.0, ahead / cfg.lidar_range, (float(ped_d[p]) - float(d)) / width,
                   float(ped_vd[p]) / 2.0]  # fmt: skip
            if cfg.pedestrian_forecast:  # when the ego gets there, and where the walker is then
                t = min(max(ahead / max(float(v), 1.0), 0.0), 4.0)
                row += [t / 4.0, (float(ped_d[p]) + float(ped_vd[p]) * t - float(d)) / width]
            rows.append((abs(ahead), row))
    rows.sort(key=lambda r: r[0])
    cols = 6 if cfg.pedestrian_forecast else 4
    out = [r[1] for r in rows] + [[0.0] * cols] * (len(ped_s) - len(rows))
    return np.clip(np.asarray(out, np.float32), -1.0, 1.0)


@pytest.mark.parametrize("forecast", [False, True], ids=["tracks", "forecast"])
def test_pedestrian_tracks_match_a_loop_over_pedestrians(forecast):
    env = DrivingVectorEnv(NUM_ENVS, pedestrian_tracks=True, pedestrian_forecast=forecast, **SHORT)
    cfg, k = env.cfg, env.cfg.lidar_beams
    p, cols = cfg.num_pedestrians, 6 if forecast else 4
    want_size = 3 * k + len(cfg.curvature_preview) + 12 + cols * p
    assert env.single_observation_space.shape == (want_size,)
    env.reset(seed=2)
    seen = both = 0
    for t in range(120):
        obs, *_ = env.step(env.scripted_actions())
        if t % 10:
            continue
        st = env.state
        got = obs[:, -cols * p :].reshape(NUM_ENVS, p, cols)
        for i in range(NUM_ENVS):
            want = _tracks_reference(cfg, st.s[i], st.d[i], st.v[i], st.ped_s[i], st.ped_d[i],
                                     st.ped_vd[i], st.ped_active[i])  # fmt: skip
            np.testing.assert_allclose(got[i], want, atol=1e-5, err_msg=f"t={t} env={i}")
            seen += int(want[:, 0].sum())
            both += int(want[:, 0].sum() == p)
    # pedestrians were in range often enough, and together, for the sort to be tested
    assert seen >= 20 and both >= 3, (seen, both)
    env.close()


def test_pedestrian_forecast_needs_the_tracks():
    with pytest.raises(ValueError, match="pedestrian_forecast.*pedestrian_tracks"):
        DrivingVectorEnv(2, pedestrian_forecast=True, **SHORT)


def _closing_speed_reference(cfg, st, i, k, r):
    """Closing speed on beam k of env i, whose vehicle range is r metres, the slow way: the
    point just past r along the beam lies inside the hit car's box; None when not exactly one."""
    ang = float(st.psi[i]) + 2 * np.pi * k / cfg.lidar_beams
    u = np.array([np.cos(ang), np.sin(ang)])
    px, py = np.array([float(st.x[i]), float(st.y[i])]) + (r + 0.02) * u
    inside = []
    for n in range(cfg.num_vehicles):
        c, s = np.cos(float(st.veh_psi[i][n])), np.sin(float(st.veh_psi[i][n]))
        dx, dy = px - float(st.veh_x[i][n]), py - float(st.veh_y[i][n])
        lon, lat = c * dx + s * dy, -s * dx + c * dy
        if abs(lon) <= cfg.car_length / 2 and abs(lat) <= cfg.car_width / 2:
            inside.append(n)
    if len(inside) != 1:
        return None
    n = inside[0]
    ego = float(st.v[i]) * np.array([np.cos(float(st.psi[i])), np.sin(float(st.psi[i]))])
    car = float(st.veh_v[i][n]) * np.array([np.cos(float(st.veh_psi[i][n])),
                                             np.sin(float(st.veh_psi[i][n]))])  # fmt: skip
    return float((ego - car) @ u)


def test_closing_speeds_match_the_car_each_beam_hits():
    env = DrivingVectorEnv(NUM_ENVS, lidar_closing_speed=True, **SHORT)
    cfg, k = env.cfg, env.cfg.lidar_beams
    assert env.single_observation_space.shape == (3 * k + len(cfg.curvature_preview) + 12 + k,)
    env.reset(seed=3)
    checked = moving = 0
    for t in range(100):
        obs, *_ = env.step(env.scripted_actions())
        if t % 5:
            continue
        st = env.state
        rates = obs[:, -k:] * cfg.max_speed
        for i in range(NUM_ENVS):
            for b in range(k):
                r = float(obs[i, b]) * cfg.lidar_range
                if r >= cfg.lidar_range - 1e-3:  # no car on this beam: no closing speed
                    assert rates[i, b] == 0.0
                    continue
                want = _closing_speed_reference(cfg, st, i, b, r)
                if want is None:
                    continue
                np.testing.assert_allclose(rates[i, b], np.clip(want, -40, 40), atol=2e-3 * 40)
                checked += 1
                moving += abs(want) > 1.0
    assert checked >= 30 and moving >= 10, (checked, moving)
    env.close()


def test_evaluation_counts_how_each_episode_ended(vec_env):
    from jaxrl_impala.actor.envs import env_spaces
    from jaxrl_impala.config import load_config
    from jaxrl_impala.networks import make_policy
    from jaxrl_impala.train.evaluation import evaluate, greedy_step

    kwargs = ",".join(f"{k}: {v}" for k, v in SHORT.items())
    config = load_config(None, [f"env.kwargs={{{kwargs}}}", "network.hidden=[8]"])
    obs_space, action_space, _ = env_spaces(config)
    policy = make_policy(obs_space, action_space, config.network, obs_norm=False)
    params = policy.init(jax.random.PRNGKey(3), obs_space)
    ends: dict = {}
    # the fixture's config and batch: the env step is already compiled
    returns = evaluate(config, policy, params, None, NUM_ENVS, seed=0, ends=ends)
    assert set(ends) == {"collision", "offroad", "route_end", "time_limit"}
    assert sum(ends.values()) == NUM_ENVS, ends  # each episode counted once, autoresets not
    # the same greedy rollout by hand, each env's first episode classified by route completion
    step = greedy_step(policy)
    obs, _ = vec_env.reset(seed=0)
    want = dict.fromkeys(ends, 0)
    ret, done = np.zeros(NUM_ENVS), np.zeros(NUM_ENVS, bool)
    while not done.all():
        action = np.clip(np.asarray(step(params, None, obs, None, jax.random.PRNGKey(0))[0]), -1, 1)
        obs, r, term, trunc, info = vec_env.step(action)
        for i in np.flatnonzero(~done & (term | trunc)):
            kind = (
                "collision"
                if info["collision"][i]
                else "offroad"
                if info["offroad"][i]
                else "route_end"
                if info["route_completion"][i] >= 1.0
                else "time_limit"
            )
            want[kind] += 1  # fmt: skip
        ret += np.where(done, 0.0, r)
        done |= term | trunc
    assert ends == want
    np.testing.assert_allclose(returns, ret, rtol=1e-5, atol=1e-4)
    assert min(want.values()) > 0, want  # an untrained policy ends episodes every way

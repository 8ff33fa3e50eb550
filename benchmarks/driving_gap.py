"""Where a DrivingEnv run loses to the scripted controller: both drive the same held-out
seeds, and the gap is split into the agent's collision episodes and the rest, reward term by
reward term, with what each collision hit.

    python benchmarks/driving_gap.py RUN_DIR [--episodes 100] [--seed 2000000]
        [--set env.kwargs.reward_collision=-10] [--json PATH]

The seeds and ``--set`` are those of ``python -m jaxrl_impala.evaluate`` (the same agent
return). Prints the mean return of each, the gap in the agent's collision episodes and
elsewhere, the per-episode mean of every reward term for both drivers, and one line per
collision (step, ego speed against the limit, route completion, what was hit and where).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jaxrl_impala.config import ConfigError
from jaxrl_impala.errors import TrainError
from jaxrl_impala.evaluate import EVAL_SEED, load_run


def drive(env, base, act, seed: int, episodes: int, limit: int):
    """One episode per env from ``seed`` with ``act(obs) -> action`` (None: the scripted
    controller). Returns per-episode returns [E], reward terms {name: [E]} and, for each
    episode that ended in a collision, the state just before it."""
    import jax

    obs, _ = env.reset(seed=seed)
    done = np.zeros(episodes, bool)
    returns, terms, hits = np.zeros(episodes), {}, []
    for t in range(limit + 1):
        before = jax.tree.map(np.asarray, base.state)
        action = base.scripted_actions() if act is None else act(obs)
        obs, reward, term, trunc, info = env.step(action)
        live = ~done
        returns += np.where(live, reward, 0.0)
        for name, value in info["reward_terms"].items():
            terms.setdefault(name, np.zeros(episodes))
            terms[name] += np.where(live, np.asarray(value), 0.0)
        for i in np.where(live & np.asarray(info["collision"], bool))[0]:
            hits.append(collision_row(before, int(i), t))
        ended = np.asarray(term, bool) | np.asarray(trunc, bool)
        if act is not None:
            act.episodes_ended(ended)
        done |= ended
        if done.all():
            break
    return returns, terms, hits


def collision_row(st, i: int, t: int) -> dict:
    """The collision of episode ``i`` at step ``t``, from the state before it: the ego and
    the nearest vehicle and pedestrian (in the road frame: s along, d left of centre)."""
    veh = np.hypot(st.veh_s[i] - st.s[i], st.veh_d[i] - st.d[i])
    ped = np.where(st.ped_active[i], np.hypot(st.ped_s[i] - st.s[i], st.ped_d[i] - st.d[i]), 1e9)
    j, k = int(np.argmin(veh)), int(np.argmin(ped))
    row = {
        "episode": i,
        "step": t,
        "ego_speed": round(float(st.v[i]), 1),
        "speed_limit": round(float(st.speed_limit[i]), 1),
        "ego_d": round(float(st.d[i]), 1),
        "completion": round(float(st.s[i] / st.route_length[i]), 2),
    }
    if ped[k] < veh[j]:
        row.update(hit="pedestrian", ahead=round(float(st.ped_s[i][k] - st.s[i]), 1),
                   other_d=round(float(st.ped_d[i][k]), 1),
                   other_speed=round(float(st.ped_vd[i][k]), 1))  # fmt: skip
    else:
        kind = "oncoming car" if st.veh_dir[i][j] < 0 else "car"
        row.update(hit=kind, ahead=round(float(st.veh_s[i][j] - st.s[i]), 1),
                   other_d=round(float(st.veh_d[i][j]), 1),
                   other_speed=round(float(st.veh_v[i][j]), 1))  # fmt: skip
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="env.* only")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from jaxrl_impala.actor.envs import make_vector_env
    from jaxrl_impala.train.evaluation import GreedyActor

    try:
        config, s, state, *_ = load_run(args.run_dir, args.set)
    except (ConfigError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    env = make_vector_env(config, args.episodes)
    base = env
    while hasattr(base, "env"):  # the DrivingVectorEnv under any wrappers
        base = base.env
    if not hasattr(base, "scripted_actions"):
        print("error: not a DrivingEnv run", file=sys.stderr)
        return 1
    greedy = GreedyActor(s.policy, env.single_action_space, args.episodes)

    class Agent:
        def __call__(self, obs):
            return greedy(state.params, state.obs_stats, obs)

        def episodes_ended(self, ended):
            greedy.episodes_ended(ended)

    limit = base.cfg.max_episode_steps
    agent, agent_terms, hits = drive(env, base, Agent(), args.seed, args.episodes, limit)
    scripted, scripted_terms, _ = drive(base, base, None, args.seed, args.episodes, limit)
    env.close()

    n = args.episodes
    crashed = np.zeros(n, bool)
    crashed[[h["episode"] for h in hits]] = True
    gap = agent - scripted
    out = {
        "run_dir": str(args.run_dir),
        "episodes": n,
        "seed": args.seed,
        "overrides": args.set,
        "agent": float(agent.mean()),
        "scripted": float(scripted.mean()),
        "gap": float(gap.mean()),
        "gap_in_collision_episodes": float(gap[crashed].sum() / n),
        "gap_elsewhere": float(gap[~crashed].sum() / n),
        "episodes_agent_ahead": int((gap > 0).sum()),
        "terms_elsewhere": {
            k: {
                "agent": float(agent_terms[k][~crashed].sum() / n),
                "scripted": float(scripted_terms[k][~crashed].sum() / n),
            }  # fmt: skip
            for k in agent_terms
        },
        "collisions": hits,
    }
    print(f"{n} episodes from seed {args.seed}: agent {out['agent']:.2f}, scripted "
          f"{out['scripted']:.2f} ({out['agent'] / out['scripted']:.0%}); the agent is ahead "
          f"in {out['episodes_agent_ahead']} of {n}")  # fmt: skip
    print(
        f"gap {out['gap']:+.2f} per episode: {out['gap_in_collision_episodes']:+.2f} in the "
        f"{len(hits)} collision episodes, {out['gap_elsewhere']:+.2f} in the others"
    )
    print("reward terms in the agent's other episodes (sum / all episodes):")
    for k, v in out["terms_elsewhere"].items():
        print(f"  {k:11s} agent {v['agent']:8.2f}  scripted {v['scripted']:8.2f}  "
              f"{v['agent'] - v['scripted']:+.2f}")  # fmt: skip
    for h in hits:
        print(
            f"  collision: episode {h['episode']} step {h['step']}, {h['ego_speed']} m/s "
            f"(limit {h['speed_limit']}), {h['completion']:.0%} of the route; hit: "
            f"{h['hit']} {h['ahead']} m ahead at d={h['other_d']} (ego d={h['ego_d']})"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

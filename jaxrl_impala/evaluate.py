"""Evaluate a run's newest checkpoint: greedy returns on held-out env seeds, beside the
scripted controller and random actions on the same seeds (DrivingEnv).

    python -m jaxrl_impala.evaluate RUN_DIR [--episodes 100] [--seed 2000000]
        [--set env.kwargs.reward_collision=-10 ...]

The seeds default to a range disjoint from training and from the trainer's periodic
evaluation. Prints one line per policy and the ratio to the scripted controller. ``--set``
evaluates under other env settings than the run trained on (``env.*`` keys only): a run
trained on a shaped reward scored by the default one, or a policy under sensor noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxrl_impala.cli import add_run_dir, command_parser
from jaxrl_impala.config import DRIVING_ENV_ID, Config, ConfigError, load_config
from jaxrl_impala.errors import TrainError
from jaxrl_impala.io.checkpoints import Checkpointer

EVAL_SEED = 2_000_000
"""First env seed of `evaluate`: disjoint from training and from the trainer's evaluations."""


def env_overridden(config_path: Path, overrides: Sequence[str]) -> tuple[Config, Config]:
    """``(the run's config, that config with the env.* overrides)``, for an evaluation under
    other env settings than training's. Raises ConfigError for another section's key, or for
    a change of the observation or action space (the policy could not read or drive it)."""
    run_config = load_config(config_path)
    if not overrides:
        return run_config, run_config
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("env.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: evaluate takes env.* keys only")
    from jaxrl_impala.actor.envs import env_spaces

    config = load_config(config_path, overrides)
    before, after = env_spaces(run_config)[:2], env_spaces(config)[:2]
    if before != after:
        raise ConfigError(
            f"--set {' '.join(overrides)}: changes the env's spaces from {before} to {after}; "
            "the run's policy cannot act in it"
        )
    return run_config, config


def load_run(run_dir: Path, overrides: Sequence[str] = ()):
    """``(config, setup, state, meta, path)``: the config to evaluate in (the run's, with the
    ``env.*`` overrides), the run's `setup`, and its newest checkpoint's train state, meta
    and path. Raises ConfigError (see `env_overridden`) or TrainError (no checkpoint)."""
    import jax

    from jaxrl_impala.train.setup import setup

    run_config, config = env_overridden(run_dir / "config.yaml", overrides)
    s = setup(run_config)
    restored = Checkpointer(run_dir).restore(s.init_state(jax.random.PRNGKey(0)))
    if restored is None:
        raise TrainError(f"{run_dir}: no readable checkpoint")
    return (config, s, *restored)


def evaluate_run(run_dir: Path, episodes: int, seed: int, overrides: Sequence[str] = ()) -> dict:
    """The newest checkpoint of ``run_dir`` against the scripted and random drivers, in the
    run's env or, with ``overrides`` (``env.*`` keys), in that env changed."""
    from jaxrl_impala.actor.envs import env_kwargs
    from jaxrl_impala.train.evaluation import evaluate

    config, s, state, meta, path = load_run(run_dir, overrides)
    ends: dict[str, int] = {}
    returns = evaluate(config, s.policy, state.params, state.obs_stats, episodes, seed, ends)
    out = {
        "checkpoint": str(path),
        "env_steps": meta["env_steps"],
        "episodes": episodes,
        "seed": seed,
        "overrides": list(overrides),
        "agent": float(returns.mean()),
        "agent_std": float(returns.std()),
        "agent_sem": float(returns.std() / max(1, episodes - 1) ** 0.5),
    }
    if config.env.id == DRIVING_ENV_ID:
        from jaxrl_impala.envs import reference_returns

        ref = reference_returns(episodes, seed=seed, **env_kwargs(config))
        out.update(scripted=ref["scripted"], random=ref["random"], agent_ends=ends)
        out["scripted_route_end"] = round(ref["scripted_completion"] * episodes)
        out["scripted_collision"] = round(ref["scripted_collision"] * episodes)
        out["fraction_of_scripted"] = out["agent"] / ref["scripted"]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "evaluate",
        "Evaluate a run's newest checkpoint: greedy returns on held-out env seeds, "
        "beside the scripted controller and random actions on the same seeds (DrivingEnv). "
        "Prints one line per policy and the ratio to the scripted controller. Exit status 2: "
        "RUN_DIR is not a run directory; 1: its config or checkpoint cannot be read.",
    )
    add_run_dir(p, "config.yaml")
    p.add_argument(
        "--episodes",
        type=int,
        default=100,
        metavar="N",
        help="episodes, one env seed each (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_SEED,
        help="first env seed, disjoint from training and from the trainer's evaluations "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="evaluate under other env settings than the run's (env.* keys only; the "
        "observation and action spaces must stay the run's), e.g. "
        "env.kwargs.reward_collision=-10 (default: none)",
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the figures to this JSON file (default: none)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    if not (args.run_dir / "config.yaml").is_file():
        print(f"error: {args.run_dir}: not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    try:
        out = evaluate_run(args.run_dir, args.episodes, args.seed, args.set)
    except (ConfigError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{out['checkpoint']} ({out['env_steps']} env steps), {out['episodes']} episodes "
          f"from seed {out['seed']}" + (f", with {' '.join(args.set)}" if args.set else "")
          + ":")  # fmt: skip
    print(f"  agent (greedy) {out['agent']:8.2f} +- {out['agent_sem']:.2f} (s.e.)")
    if "scripted" in out:
        print(f"  scripted       {out['scripted']:8.2f}")
        print(f"  random         {out['random']:8.2f}")
        print(f"  agent / scripted = {out['fraction_of_scripted']:.0%}")
        e = out["agent_ends"]
        print(
            f"  agent episodes: {e['collision']} collision, {e['offroad']} off road, "
            f"{e['route_end']} route end, {e['time_limit']} time limit; scripted: "
            f"{out['scripted_collision']} collision, {out['scripted_route_end']} route end"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

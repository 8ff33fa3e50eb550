"""Write frames as an animated GIF or a PNG (Pillow), and record an episode as one.

python -m jaxrl_impala.envs.gif --out /tmp/drive.gif --policy scripted --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from PIL import Image


def write_gif(path: str, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """Write RGB frames (uint8 [H, W, 3], all the same size) as a looping animated GIF."""
    if not len(frames):
        raise ValueError("write_gif: no frames")
    # One adaptive palette for the whole clip (the frames share a handful of colours).
    first = Image.fromarray(np.asarray(frames[0], np.uint8)).quantize(colors=255)
    images = [first] + [
        Image.fromarray(np.asarray(f, np.uint8)).quantize(palette=first) for f in frames[1:]
    ]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(20, int(round(1000.0 / fps))),
        loop=0,
        optimize=False,
    )


def write_png(path: str, frame: np.ndarray) -> None:
    """Write one RGB frame (uint8 [H, W, 3]) as a PNG."""
    Image.fromarray(np.asarray(frame, np.uint8)).save(path)


def record_episode(
    policy: str = "scripted",
    seed: int = 0,
    max_steps: int | None = None,
    every: int = 1,
    **env_kwargs,
) -> tuple[list[np.ndarray], float, dict]:
    """Run one episode of ``DrivingEnv`` with ``policy`` ("scripted" or "random").

    Returns:
        ``(frames, episode_return, last_info)``; frames every ``every`` steps.
    """
    from jaxrl_impala.envs.driving import DrivingEnv

    env = DrivingEnv(render_mode="rgb_array", **env_kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    frames, ret, info = [env.render()], 0.0, {}
    steps = max_steps or env.cfg.max_episode_steps
    for t in range(steps):
        a = env.scripted_action() if policy == "scripted" else env.action_space.sample()
        _, r, term, trunc, info = env.step(a)
        ret += r
        if (t + 1) % every == 0 or term or trunc:
            frames.append(env.render())
        if term or trunc:
            break
    return frames, ret, info


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a GIF of one DrivingEnv episode.")
    p.add_argument("--out", required=True, help="output .gif path")
    p.add_argument("--policy", choices=("scripted", "random"), default="scripted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--every", type=int, default=2, help="keep every n-th frame")
    p.add_argument("--fps", type=float, default=None, help="default: 10 / every (real time)")
    args = p.parse_args(argv)
    frames, ret, info = record_episode(args.policy, args.seed, args.max_steps, args.every)
    write_gif(args.out, frames, args.fps or 10.0 / args.every)
    print(
        f"wrote {args.out}: {len(frames)} frames, return {ret:.2f}, "
        f"route completion {info.get('route_completion', 0.0):.2f}, "
        f"collision {info.get('collision')}, offroad {info.get('offroad')}"
    )


if __name__ == "__main__":
    main()

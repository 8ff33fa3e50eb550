"""The live progress line."""

from __future__ import annotations

import sys
import time


class Progress:
    """A live line on a terminal (tqdm), plain lines otherwise (nothing when quiet)."""

    def __init__(self, total: int, initial: int, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.total = total
        self.start = time.monotonic()
        self.initial = initial
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, env_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)

    def show(self, record: dict, last_eval: dict | None) -> None:
        if self.quiet:
            return
        ret = record.get("episode_return_mean")
        fields = {
            "sps": f"{record['sps']:.0f}",
            "ret": "-" if ret is None else f"{ret:.1f}",
            "eval": "-" if last_eval is None else f"{last_eval['eval_return_mean']:.1f}",
            "lag": f"{record['policy_lag_mean']:.1f}/{record['policy_lag_max']}",
            "q": str(record["queue_depth"]),
        }
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=True)
            return
        done = record["env_steps"] - self.initial
        elapsed = time.monotonic() - self.start
        remaining = max(0, self.total - record["env_steps"])
        eta = remaining * elapsed / done if done > 0 else float("nan")
        line = "  ".join(f"{k} {v}" for k, v in fields.items())
        print(f"steps {record['env_steps']}/{self.total}  {line}  eta {eta:.0f}s", flush=True)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Actor processes: start, restart with backoff, stop; a crash loop stops the run."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from jaxrl_impala.config import Config, public_dict
from jaxrl_impala.errors import TrainError
from jaxrl_impala.runtime.cpus import ACTOR_CPU_ENV, ACTOR_OWN_CPU_ENV, LEARNER_PID_ENV


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the learner) dies, so no actor is orphaned."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class ActorSupervisor:
    """Starts actor processes, restarts crashed ones with backoff, detects crash loops.

    The actors may start before the transport exists: each builds its env and compiles its
    policy, then waits for the address on its stdin (``--address -``), which
    :meth:`set_address` writes (or ``_start``, once the address is known).
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        address: dict | None = None,
        first_id: int = 0,
        first_incarnation: int = 0,
        actor_cpus: list[int] | None = None,
    ):
        self.config = config
        self.actor_cpus = actor_cpus  # actor i runs on actor_cpus[i % len]; None: anywhere
        self.first_id = first_id  # several learner processes: each starts its own actor ids
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.procs: list[subprocess.Popen | None] = [None] * config.actors.num
        self.restart_at: list[float | None] = [None] * config.actors.num
        self.crashes: list[deque] = [deque() for _ in range(config.actors.num)]
        self.restarts = 0
        # Each start of an actor gets a new incarnation number, so a restarted actor (or one
        # of a resumed run, which starts counting at its env_steps) plays fresh scenarios.
        self.incarnations = [first_incarnation] * config.actors.num

    def actor_env(self, i: int) -> dict[str, str]:
        """The environment actor ``i`` starts with."""
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        env[LEARNER_PID_ENV] = str(os.getpid())
        for name in ("XLA_FLAGS", ACTOR_CPU_ENV, ACTOR_OWN_CPU_ENV):
            env.pop(name, None)
        if self.actor_cpus:
            env[ACTOR_CPU_ENV] = str(self.actor_cpus[i % len(self.actor_cpus)])
            if len(self.actor_cpus) >= len(self.procs):
                env[ACTOR_OWN_CPU_ENV] = "1"
        return env

    def _start(self, i: int) -> None:
        env = self.actor_env(i)
        # The command line is world-readable (/proc/PID/cmdline, ps): the config goes there
        # with the Redis password masked, and the real URL travels on stdin, in the address.
        cmd = [
            sys.executable,
            "-m",
            "jaxrl_impala.actor",
            "--config-json",
            json.dumps(public_dict(self.config)),
            "--actor-id",
            str(self.first_id + i),
            "--address",
            "-",
            "--incarnation",
            str(self.incarnations[i]),
        ]
        self.incarnations[i] += 1
        log = open(self.log_dir / f"actor_{self.first_id + i}.log", "ab")
        # A session of its own: Ctrl-C in the terminal reaches the learner only, which stops
        # its actors itself (a dead learner's actors get SIGTERM from PR_SET_PDEATHSIG).
        self.procs[i] = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        if self.address is not None:
            self._send_address(self.procs[i])

    def _send_address(self, proc: subprocess.Popen) -> None:
        try:
            proc.stdin.write(json.dumps(self.address).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died already: check() restarts it
            pass

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self._start(i)

    def set_address(self, address: dict) -> None:
        """Hands the transport's address to the running actors (and to later restarts)."""
        self.address = address
        for proc in self.procs:
            if proc is not None and not proc.stdin.closed:
                self._send_address(proc)

    def log_tail(self, i: int, lines: int = 12) -> str:
        try:
            text = (self.log_dir / f"actor_{self.first_id + i}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def check(self) -> None:
        """Restarts dead actors; raises TrainError on a crash loop."""
        now = time.monotonic()
        ac = self.config.actors
        for i, proc in enumerate(self.procs):
            if self.restart_at[i] is not None:
                if now >= self.restart_at[i]:
                    self.restart_at[i] = None
                    self._start(i)
                    self.restarts += 1
                continue
            if proc is None or proc.poll() is None:
                continue
            crashes = self.crashes[i]
            crashes.append(now)
            while crashes and now - crashes[0] > ac.crash_loop_window_s:
                crashes.popleft()
            tail = self.log_tail(i)
            if len(crashes) > ac.crash_loop_restarts:
                raise TrainError(
                    f"actor {self.first_id + i} crashed {len(crashes)} times in "
                    f"{ac.crash_loop_window_s:.0f}s "
                    f"(exit {proc.returncode}); its last output:\n{tail}"
                )
            delay = ac.restart_backoff_s * 2 ** (len(crashes) - 1)
            print(
                f"actor {self.first_id + i} exited with code {proc.returncode}; "
                f"restarting in {delay:.1f}s"
                + (f"\n{tail}" if proc.returncode not in (0, -9, -15) and tail else ""),
                file=sys.stderr,
            )
            self.restart_at[i] = now + delay

    def stop(self, timeout: float = 5.0) -> None:
        for proc in self.procs:
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            if not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

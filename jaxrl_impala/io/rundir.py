"""The run directory, and the clock ``wall_time_s`` counts from."""

from __future__ import annotations

import os
import time
from pathlib import Path

from jaxrl_impala.config import Config
from jaxrl_impala.errors import TrainError


def process_start_time() -> float:
    """When this process started (Unix time): ``wall_time_s`` counts from there, so it
    includes the interpreter's start-up and imports. Linux reads it from ``/proc``; elsewhere
    it is the time this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError, IndexError):
        return time.time()
    return time.time() - age if 0.0 <= age < 600.0 else time.time()


START_TIME = process_start_time()


def make_run_dir(config: Config) -> Path:
    if config.run.dir:
        return Path(config.run.dir)
    name = config.run.name or time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / name


def check_writable(run_dir: Path) -> None:
    """Fails fast (one line) when the run dir cannot be created or written."""
    probe = run_dir / f".write_probe_{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"run dir {run_dir} is not writable: {e.strerror or e}") from None

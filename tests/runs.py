"""Helpers for tests that run ``python -m jaxrl_impala.train`` as a real process."""

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("jri_*")}


def leaked(names: set[str]) -> set[str]:
    """Segments whose creator (``jri_<pid>_...``) has exited: nobody will unlink them."""
    return {n for n in names if not psutil.pid_exists(int(n.split("_")[1]))}


def assert_no_leaks(before: set[str]) -> None:
    # Other test sessions may hold live segments meanwhile; a leak is one left by a dead owner.
    time.sleep(0.2)
    assert leaked(shm_segments() - before) == set(), "shared-memory segments leaked"


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxrl_impala.train", *args]


def run_train(*args: str, timeout: float = 180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl; while the run writes, its last line may be cut."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return out


def actor_pids(proc: psutil.Process) -> list[int]:
    return [
        c.pid
        for c in proc.children(recursive=True)
        if "jaxrl_impala.actor" in " ".join(c.cmdline())
    ]


def still_running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (an exited, unreaped process does not count)."""
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        time.sleep(0.2)
    assert path.exists(), f"{path} did not appear within {timeout}s"


def final_record(run_dir: Path) -> dict:
    rows = [r for r in read_metrics(run_dir) if r.get("final")]
    assert rows, "the run wrote no final record"
    return rows[-1]

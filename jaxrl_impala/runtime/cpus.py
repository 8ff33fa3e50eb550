"""Which CPUs the learner and the actors run on (``train.pin_cpus``). No JAX here: the
actor pins itself before it imports JAX, so XLA's threads start on its one CPU.

XLA gives every process a thread pool as wide as the CPUs it may use. With the learner and
the actors all free to use every CPU, their small ops wait on each other's preempted
threads; split, each keeps its own CPUs busy.
"""

from __future__ import annotations

import os
import sys

# Set by the trainer for each actor it starts: the one CPU that actor runs on.
ACTOR_CPU_ENV = "JAXRL_IMPALA_ACTOR_CPU"
# Set by the trainer when every actor has a CPU to itself: their start-ups then compile side
# by side instead of taking turns (`compile_cache.in_turn`).
ACTOR_OWN_CPU_ENV = "JAXRL_IMPALA_ACTOR_OWN_CPU"
# Also set by the trainer: its pid, the learner the actor dies with. Here rather than in
# actor.py so that the trainer can start its actors before it imports JAX.
LEARNER_PID_ENV = "JAXRL_IMPALA_LEARNER_PID"


def split_cpus() -> tuple[list[int], list[int]] | None:
    """(learner CPUs, actor CPUs): the first half (rounded up) of the CPUs this process may
    use, and the rest. None where there is nothing to split (one CPU, or not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = (len(cpus) + 1) // 2
    return cpus[:half], cpus[half:]


def pin_process(cpus: list[int] | set[int]) -> None:
    """Runs every thread of this process, and the threads they start later, on ``cpus``."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that has just ended
            pass


def pin_actor_from_env() -> None:
    """In an actor process: run on the CPU the trainer chose (``ACTOR_CPU_ENV``), if any."""
    cpu = os.environ.get(ACTOR_CPU_ENV)
    if not cpu or not hasattr(os, "sched_setaffinity"):
        return
    try:
        pin_process({int(cpu)})
    except ValueError as e:
        print(f"actor: cannot pin to CPU {cpu!r} ({e}); running unpinned", file=sys.stderr)

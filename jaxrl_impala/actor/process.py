"""The actor process's loop: wait for params, act an unroll, push it; stop with the learner.

Everything the actor receives on its command line and stdin is plain text (JSON), and
everything it sends is a codec frame: no pickle crosses the process boundary.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from jaxrl_impala.actor.rollout import Rollout
from jaxrl_impala.config import Config
from jaxrl_impala.runtime.compile_cache import in_turn, use_compile_cache
from jaxrl_impala.runtime.cpus import ACTOR_OWN_CPU_ENV, LEARNER_PID_ENV
from jaxrl_impala.transport import RedisTransportError, connect_actor
from jaxrl_impala.transport.redis import BACKOFF_MAX, BACKOFF_MIN, DEFAULT_STALE_AFTER


def run(
    config: Config,
    actor_id: int,
    address: dict | Callable[[], dict | None],
    incarnation: int = 0,
) -> int:
    """The actor loop; returns 0 when the learner closes the queue or goes away.

    ``address`` may be a function that waits for it (a trainer starts its actors before its
    transport exists): it is called once the env is built and the policy compiled, so that
    work overlaps the learner's own start-up. It returns None if the learner went away.
    """
    use_compile_cache(config.train.compile_cache)
    learner_pid = int(os.environ.get(LEARNER_PID_ENV) or 0)
    # Actors sharing a CPU (or unpinned, where each compile takes every CPU) take turns: the
    # first compiles, the others load. With a CPU each they compile side by side.
    turns = not os.environ.get(ACTOR_OWN_CPU_ENV)
    with in_turn(config.train.compile_cache if turns else ""):
        rollout = Rollout(config, actor_id, incarnation=incarnation)
        rollout.warm_up()
    if callable(address):
        address = address()
        if address is None:
            return 0
    queue, store = _connect(address, actor_id, learner_pid)

    def learner_gone() -> bool:
        # Started by a trainer: orphaned once our parent is not the learner any more (either
        # transport). A standalone actor (another host) has only the learner's heartbeat.
        orphaned = bool(learner_pid) and os.getppid() != learner_pid
        if address.get("kind") == "shm":
            # A dead learner is caught by its pid (and PR_SET_PDEATHSIG); the heartbeat only
            # catches a wedged one, so give it a long window: a learner starved of CPU while
            # it compiles must not look dead (that would restart actors and break lock-step).
            return queue.closed or orphaned or not queue.owner_alive(stale_after=60.0)
        return queue.closed or orphaned or not queue.owner_alive()

    deterministic = config.train.deterministic
    # Lock-step only (a standalone actor's config may say actors.num: auto, never with it).
    per_version = max(1, config.learner.batch_unrolls // config.actors.num) if deterministic else 1
    version = -1
    try:
        while True:
            want = rollout.unroll_index // per_version if deterministic else 0
            # Wait for params: always for the first ones; in lock-step mode, for the
            # version this unroll must be acted with.
            while True:
                got = store.fetch(newer_than=version)
                if got is not None:
                    version, arrays = got
                    rollout.set_params(arrays)
                if version >= want:
                    break
                if learner_gone():
                    return 0
                time.sleep(0.001)
            arrays, meta = rollout.unroll(version)
            while not queue.put(arrays, meta, timeout=1.0):
                if learner_gone():
                    return 0
    finally:
        queue.close()
        store.close()


def _connect(address: dict, actor_id: int, learner_pid: int):
    """`connect_actor`; an actor its trainer started retries a Redis that refuses (backoff
    50 ms to 2 s, for as long as actors wait for a silent learner), while that learner lives.
    The learner has just reached this server, so a refusal is an outage such as a restart,
    which connected actors ride out the same way. A standalone actor fails at once: its URL
    may simply be wrong."""
    delay, deadline = BACKOFF_MIN, time.monotonic() + DEFAULT_STALE_AFTER
    while True:
        try:
            return connect_actor(address, actor_id)
        except RedisTransportError as e:
            if not learner_pid or os.getppid() != learner_pid or time.monotonic() > deadline:
                raise
            if delay == BACKOFF_MIN:
                print(
                    f"actor {actor_id}: {e}; retrying (the learner reached it)",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(delay)
            delay = min(2 * delay, BACKOFF_MAX)


def address_from_stdin() -> dict | None:
    """The transport address the trainer writes to our stdin; None at end of input (the
    trainer stopped before it had one)."""
    line = sys.stdin.readline()
    if not line.strip():
        return None
    address = json.loads(line)
    if not isinstance(address, dict):
        raise ValueError(f"the address on stdin is not a JSON object: {line[:200]!r}")
    return address

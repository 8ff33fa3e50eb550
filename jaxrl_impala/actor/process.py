"""The actor process's loop: wait for params, act an unroll, push it; stop with the learner.

Everything the actor receives on its command line and stdin is plain text (JSON), and
everything it sends is a codec frame: no pickle crosses the process boundary. A parameter
frame is acted with only if it meets the spec of the actor's own templates (fields, dtypes,
shapes, finite values); any other is counted, said once in the actor's log, and the actor
acts on with the params it has.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from jaxrl_impala.actor.rollout import Rollout
from jaxrl_impala.config import Config
from jaxrl_impala.runtime.compile_cache import in_turn, use_compile_cache
from jaxrl_impala.runtime.cpus import ACTOR_OWN_CPU_ENV, LEARNER_PID_ENV
from jaxrl_impala.transport import FrameError, RedisTransportError, connect_actor
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
    params = _Params(actor_id)
    _exit_on_sigterm()
    try:
        while True:
            want = rollout.unroll_index // per_version if deterministic else 0
            # Wait for params: always for the first ones; in lock-step mode, for the
            # version this unroll must be acted with.
            while True:
                params.refresh(store, rollout)
                if params.version >= want:
                    break
                if learner_gone():
                    return 0
                time.sleep(0.001)
            arrays, meta = rollout.unroll(params.version)
            while not queue.put(arrays, meta, timeout=1.0):
                if learner_gone():
                    return 0
    finally:
        if params.rejected:
            _say(f"actor {actor_id}: params_rejected={params.rejected}")
        queue.close()
        store.close()


def _exit_on_sigterm() -> None:
    """From here on, SIGTERM (a trainer stopping its actors) runs the loop's ``finally``,
    which closes the transport and reports the count of rejected parameter frames. Not
    before: while starting up (imports, compiles) the default action ends us at once."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Params:
    """The version of the params the actor acts with, and the parameter frames it refused."""

    def __init__(self, actor_id: int):
        self.actor_id = actor_id
        self.version = -1
        self.rejected = 0

    def refresh(self, store, rollout: Rollout) -> None:
        """Take the store's newest params if it has news. The version may go down: a new
        run's versions start over, and the learner writes its own back over a forged one.
        A frame that fails the rollout's `params_spec` (garbage, other fields or shapes,
        NaN) is counted and said once; the rollout keeps the params it has."""
        try:
            got = store.fetch(newer_than=self.version, spec=rollout.params_spec)
            if got is not None:
                rollout.set_params(got[1])
                self.version = got[0]
        except FrameError as e:
            self.rejected += 1
            if self.rejected == 1:
                keep = (
                    f"acting on with the params of version {self.version}"
                    if self.version >= 0
                    else "waiting for valid params"
                )
                _say(
                    f"actor {self.actor_id}: a parameter frame was rejected ({e}); {keep} "
                    "(said once; the count is in params_rejected at exit)"
                )


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

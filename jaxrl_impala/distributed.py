"""Several learner processes (one per host) training one model with ``jax.distributed``.

Every process runs the same jitted update on a global mesh over all processes' devices:
each gathers ``learner.batch_unrolls / num_processes`` unrolls from the shared Redis queue,
`jax.make_array_from_process_local_data` assembles them into one global batch (process p's
columns on process p's devices), and XLA's all-reduce over the global mesh (gloo on CPU,
NCCL on GPU) makes the replicated params identical everywhere. Process 0 owns the Redis keys,
publishes params and writes the run's outputs; the others only consume.

Collectives deadlock unless every process runs the same number of updates, so the loop asks
`agree_stop` (a one-flag all-gather) before each update: a stop wanted by any process
(budget reached, Ctrl-C, evaluation target) stops all of them at the same update.

Impure and thin by design: config -> `jax.distributed.initialize`, plus small helpers the
trainer calls. Must run before anything else touches JAX.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any

import numpy as np

from jaxrl_impala.config import DistributedConfig


class DistributedError(RuntimeError):
    """The learner processes could not join (one line naming the config keys)."""


def initialize(dc: DistributedConfig) -> tuple[int, int]:
    """Joins the run's learner processes; call before any other JAX use.

    ``coordinator=""`` is a single-process run (nothing is initialised). ``auto`` passes no
    address so JAX detects the cluster (SLURM, Open MPI, Kubernetes, ``JAX_COORDINATOR_ADDRESS``);
    explicit ``num_processes`` / ``process_id`` are passed when ``num_processes > 1``.

    Returns:
      ``(process_id, num_processes)`` as JAX sees them.
    """
    if not dc.coordinator:
        return 0, 1
    import jax

    # CPU devices need a collectives backend to all-reduce across processes (verified with
    # JAX 0.10.2 on localhost); GPUs use NCCL and ignore this flag.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": int(dc.init_timeout_s)}
    if dc.coordinator != "auto":
        kwargs["coordinator_address"] = dc.coordinator
    if dc.coordinator != "auto" or dc.num_processes > 1:
        kwargs.update(num_processes=dc.num_processes, process_id=dc.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to join is one line for the user
        text = " ".join(str(e).split())[:300]
        raise DistributedError(
            f"jax.distributed.initialize failed (distributed.coordinator={dc.coordinator!r}, "
            f"num_processes={dc.num_processes}, process_id={dc.process_id}): {text}"
        ) from None
    return jax.process_index(), jax.process_count()


def shutdown() -> None:
    """Leaves the run cleanly (a barrier with the other processes); no-op when not joined."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def is_multiprocess() -> bool:
    import jax

    return jax.process_count() > 1


def agree_stop(local_stop: bool) -> bool:
    """True on every process if any process wants to stop (one tiny all-gather)."""
    import jax

    if jax.process_count() == 1:
        return bool(local_stop)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([bool(local_stop)]))
    return bool(np.any(flags))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name``."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
    """numpy copies of a tree of (replicated) arrays, also when they span other processes'
    devices: a replicated array is read from this process's first copy."""
    import jax

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def start_host_copy(tree: Any) -> None:
    """Starts the device-to-host copies of ``tree`` without waiting for them."""
    import jax

    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            x = x if x.is_fully_addressable else x.addressable_data(0)
            x.copy_to_host_async()


class SharedRedisConsumer:
    """Another learner process's end of the Redis unroll queue that process 0 owns.

    Process 0's `RedisQueue` claims ``{prefix}:*``, runs the heartbeat actors check and counts
    drops; the other processes only pop (``LPOP`` up to `batch` per round trip, else a short
    ``BLPOP``) and validate every frame against the same `FrameSpec`, counting rejects.
    Never closes the queue: the owner does. Reconnects are left to the owner's semantics: a
    lost server makes `get` return None until it is back.
    """

    def __init__(self, url: str, prefix: str, spec, batch: int = 4):
        from jaxrl_impala.transport.redis import connect

        self._client = connect(url, client_name=f"jaxrl_impala-learner-{os.getpid()}")
        self._key = f"{prefix}:unrolls"
        self.spec = spec
        self.batch = max(1, batch)
        self._buffer: deque[bytes] = deque()
        self._got = self._rejected = 0
        self._retry_at = 0.0

    @property
    def stats(self) -> dict[str, int]:
        # The queue's put/dropped counters are global: process 0 reports them.
        return {"got": self._got, "frames_rejected": self._rejected}

    def qsize(self) -> int:
        try:
            return int(self._client.llen(self._key))
        except Exception:  # noqa: BLE001 - a depth gauge, never fatal
            return 0

    def get(self, timeout: float | None = None):
        from jaxrl_impala.transport.codec import decode

        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            while self._buffer:
                try:
                    frame = decode(self._buffer.popleft(), spec=self.spec)
                except Exception:  # noqa: BLE001 - a hostile frame is counted, never raised
                    self._rejected += 1
                    continue
                self._got += 1
                return frame
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if now < self._retry_at:
                time.sleep(min(self._retry_at - now, 0.05))
                continue
            try:
                items = self._client.lpop(self._key, self.batch)
                if items:
                    self._buffer.extend(items)
                    continue
                wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if wait >= 0.002:
                    got = self._client.blpop([self._key], min(wait, 1.0))
                    if got:
                        self._buffer.append(got[1])
            except Exception as e:  # noqa: BLE001 - server down: back off, like the owner
                print(f"redis consumer: {' '.join(str(e).split())}", file=sys.stderr)
                self._retry_at = time.monotonic() + 0.5

    def release(self, frame) -> None:
        """Nothing to hand back: every frame owns its buffer."""

    def close(self) -> None:
        self._client.close()

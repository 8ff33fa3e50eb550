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

"""Moving unrolls (actors -> learner) and parameters (learner -> actors) between processes.

The shared-memory transport is primary::

    queue = ShmQueue.create(num_producers, slots_per_producer, slot_bytes, name_prefix=p)
    params = ShmParamStore.create(param_bytes, name_prefix=p)
    # in an actor process, given only the names (plain strings) and its id:
    producer = ShmQueue.attach(queue.name, actor_id)
    reader = ShmParamStore.attach(params.name)

`create_transport` / `connect_actor` wrap that behind a plain-data ``address`` dict, so a
trainer can start actors with ``subprocess.Popen`` and the same code can later use Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jaxrl_impala.transport.base import (
    ParamStore,
    TrajectoryConsumer,
    TrajectoryProducer,
    TrajectoryQueue,
)
from jaxrl_impala.transport.codec import (
    Frame,
    FrameError,
    FrameSpec,
    FrameTooLargeError,
    decode,
    encode,
    encode_into,
    encoded_size,
)
from jaxrl_impala.transport.shm import (
    ShmParamStore,
    ShmQueue,
    ShmQueueProducer,
    cleanup_stale,
    install_cleanup_signal_handlers,
    make_prefix,
)

__all__ = [
    "TRANSPORT_KINDS",
    "Frame",
    "FrameError",
    "FrameSpec",
    "FrameTooLargeError",
    "ParamStore",
    "ShmParamStore",
    "ShmQueue",
    "ShmQueueProducer",
    "TrajectoryConsumer",
    "TrajectoryProducer",
    "TrajectoryQueue",
    "Transport",
    "cleanup_stale",
    "connect_actor",
    "create_transport",
    "decode",
    "encode",
    "encode_into",
    "encoded_size",
    "install_cleanup_signal_handlers",
    "make_prefix",
]

TRANSPORT_KINDS = ("shm",)


@dataclass
class Transport:
    """The learner's handles plus the plain-data address actors attach with.

    Attributes:
      queue: the learner's end of the unroll queue.
      params: the parameter store (the learner publishes).
      address: JSON-able ``{"kind": ..., ...}``; pass it to `connect_actor` in each actor.
    """

    queue: TrajectoryConsumer
    params: ParamStore
    address: dict[str, str | int]

    def close(self) -> None:
        """Close both; for shm this unlinks the segments. Idempotent."""
        try:
            self.queue.close()
        finally:
            self.params.close()


def _check_kind(kind: str) -> None:
    if kind not in TRANSPORT_KINDS:
        raise ValueError(
            f"transport.kind {kind!r} is not available; choose one of {list(TRANSPORT_KINDS)}"
        )


def create_transport(
    kind: str = "shm",
    *,
    num_producers: int,
    slots_per_producer: int,
    slot_bytes: int,
    param_bytes: int,
    overflow: str = "block",
    prefix: str | None = None,
    spec: FrameSpec | None = None,
) -> Transport:
    """Create a queue + parameter store owned by the calling (learner) process.

    Args:
      kind: ``"shm"``.
      num_producers: actor processes (ids 0..n-1).
      slots_per_producer: unread unrolls buffered per actor.
      slot_bytes: largest encoded unroll (`encoded_size` of an example unroll).
      param_bytes: largest encoded parameter frame.
      overflow: ``"block"`` or ``"drop_oldest"``.
      prefix: run-specific name prefix (default `make_prefix()`).
      spec: optional exact layout every unroll must match.
    """
    _check_kind(kind)
    prefix = prefix or make_prefix()
    queue = ShmQueue.create(
        num_producers,
        slots_per_producer,
        slot_bytes,
        name_prefix=prefix,
        overflow=overflow,
        spec=spec,
    )  # type: ignore[arg-type]
    try:
        params = ShmParamStore.create(param_bytes, name_prefix=prefix)
    except BaseException:
        queue.close()
        raise
    address = {"kind": kind, "queue": queue.name, "params": params.name}
    return Transport(queue=queue, params=params, address=address)


def connect_actor(
    address: Mapping[str, str | int], producer_id: int
) -> tuple[TrajectoryProducer, ParamStore]:
    """Attach an actor process to a transport by its `Transport.address`."""
    kind = str(address.get("kind", ""))
    _check_kind(kind)
    producer = ShmQueue.attach(str(address["queue"]), producer_id)
    try:
        reader = ShmParamStore.attach(str(address["params"]))
    except BaseException:
        producer.close()
        raise
    return producer, reader

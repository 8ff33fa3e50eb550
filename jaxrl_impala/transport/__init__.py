"""Moving unrolls (actors -> learner) and parameters (learner -> actors) between processes.

The shared-memory transport is primary::

    queue = ShmQueue.create(num_producers, slots_per_producer, slot_bytes, name_prefix=p)
    params = ShmParamStore.create(param_bytes, name_prefix=p)
    # in an actor process, given only the names (plain strings) and its id:
    producer = ShmQueue.attach(queue.name, actor_id)
    reader = ShmParamStore.attach(params.name)

`create_transport` / `connect_actor` wrap that behind a plain-data ``address`` dict, so a
trainer can start actors with ``subprocess.Popen``. ``kind="redis"`` (`redis.py`) puts the
same queue and store on a Redis server (``url``, key ``prefix``), so actors on other hosts
can join: `redis_address(url, prefix)` is all such an actor needs (`resolve_url` first adds
the password from ``REDIS_PASSWORD`` or ``transport.password_file`` when the URL has none).
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
from jaxrl_impala.transport.redis import (
    DEFAULT_PREFIX as DEFAULT_REDIS_PREFIX,
)
from jaxrl_impala.transport.redis import (
    RedisParamStore,
    RedisProducer,
    RedisQueue,
    RedisTransportError,
    mask_url,
    resolve_url,
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
    "RedisParamStore",
    "RedisProducer",
    "RedisQueue",
    "RedisTransportError",
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
    "mask_url",
    "redis_address",
    "resolve_url",
]

TRANSPORT_KINDS = ("shm", "redis")


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
    url: str | None = None,
) -> Transport:
    """Create a queue + parameter store owned by the calling (learner) process.

    Args:
      kind: ``"shm"`` or ``"redis"``.
      num_producers: actor processes (shm: ids 0..n-1; redis: any ids, see below).
      slots_per_producer: unread unrolls buffered per actor. Redis bounds the whole list at
        ``num_producers * slots_per_producer``.
      slot_bytes: largest encoded unroll (`encoded_size` of an example unroll).
      param_bytes: largest encoded parameter frame.
      overflow: ``"block"`` or ``"drop_oldest"``.
      prefix: shm: run-specific segment name prefix (default `make_prefix()`); redis: the key
        prefix (default ``"jaxrl_impala"``), which remote actors must share.
      spec: optional exact layout every unroll must match.
      url: redis only: the server's URL (``redis://[user:password@]host:port/db``).

    Raises:
      RedisTransportError: (redis) bad URL, unreachable server, bad credentials, or the
        prefix is in use by another live learner; one line, password masked.
    """
    _check_kind(kind)
    if kind == "redis":
        return _create_redis(
            url, prefix, num_producers * slots_per_producer, slot_bytes, param_bytes, overflow, spec
        )
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


def _create_redis(url, prefix, bound, slot_bytes, param_bytes, overflow, spec) -> Transport:
    if not url:
        raise ValueError("transport.kind=redis needs transport.url (redis://host:port/db)")
    prefix = prefix or DEFAULT_REDIS_PREFIX
    queue = RedisQueue.create(
        url, prefix, bound=bound, max_frame_bytes=slot_bytes, overflow=overflow, spec=spec
    )
    try:
        params = RedisParamStore.create(url, prefix, capacity=param_bytes)
    except BaseException:
        queue.close()
        raise
    address = {**redis_address(url, prefix), "max_frame_bytes": slot_bytes}
    return Transport(queue=queue, params=params, address=address)


def redis_address(url: str, prefix: str = DEFAULT_REDIS_PREFIX) -> dict[str, str | int]:
    """The address of a Redis transport, for an actor that knows only the URL and prefix
    (e.g. one started by hand on another host)."""
    return {"kind": "redis", "url": url, "prefix": prefix}


def connect_actor(
    address: Mapping[str, str | int], producer_id: int
) -> tuple[TrajectoryProducer, ParamStore]:
    """Attach an actor process to a transport by its `Transport.address` (or, for Redis,
    `redis_address`)."""
    kind = str(address.get("kind", ""))
    _check_kind(kind)
    if kind == "redis":
        url, prefix = str(address["url"]), str(address.get("prefix") or DEFAULT_REDIS_PREFIX)
        max_bytes = address.get("max_frame_bytes")
        producer = RedisProducer.connect(
            url,
            prefix,
            producer_id,
            max_frame_bytes=None if max_bytes is None else int(max_bytes),
        )
        try:
            reader = RedisParamStore.connect(url, prefix)
        except BaseException:
            producer.close()
            raise
        return producer, reader
    producer = ShmQueue.attach(str(address["queue"]), producer_id)
    try:
        reader = ShmParamStore.attach(str(address["params"]))
    except BaseException:
        producer.close()
        raise
    return producer, reader

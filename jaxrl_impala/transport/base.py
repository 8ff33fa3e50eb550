"""What every transport provides: a bounded unroll queue (many actors -> one learner) and a
latest-parameters store (one learner -> many actors).

Implementations: `shm.py` (embedded default, one host), `redis.py` (actors on other
hosts) and `memory.py` (one process); shm and Redis pass `tests/transport/test_contract.py`.
Everything that crosses the transport is a `codec` frame: never pickle. Handles a child
process needs are plain strings and ints, so actors can be started with `subprocess.Popen`
and attach by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from jaxrl_impala.transport.codec import REJECT_REASONS, Frame, FrameSpec

__all__ = [
    "Closing",
    "ParamStore",
    "TrajectoryConsumer",
    "TrajectoryProducer",
    "TrajectoryQueue",
    "rejection_stats",
]


def rejection_stats(total: int, by_reason: Mapping[str, int]) -> dict[str, int]:
    """A consumer's ``stats`` entries for its rejected frames: ``frames_rejected`` (all of
    them) and ``frames_rejected_<reason>`` for every `codec.REJECT_REASONS` (and any other
    reason in ``by_reason``). A rejection counted in ``total`` without a reason (a broken
    ring slot, a Redis key that is not a list) is ``malformed``."""
    out = {f"frames_rejected_{r}": 0 for r in REJECT_REASONS}
    out.update({f"frames_rejected_{r}": int(n) for r, n in by_reason.items()})
    given = sum(int(n) for r, n in by_reason.items() if r != "malformed")
    out["frames_rejected_malformed"] = int(total) - given
    return {"frames_rejected": int(total), **out}


class Closing:
    """``with handle: ...`` closes the handle on the way out (every transport handle)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@runtime_checkable
class TrajectoryProducer(Protocol):
    """The actor's end of the unroll queue."""

    def put(
        self, arrays: dict[str, np.ndarray], meta: dict[str, int], timeout: float | None = None
    ) -> bool:
        """Enqueue one unroll. False on timeout (queue full under the `block` policy) or when
        the queue is closed / its owner is gone; never pickles; raises only on caller errors
        (an unframeable dtype, or an unroll larger than a slot)."""
        ...

    def close(self) -> None:
        """Detach. Never destroys the queue."""
        ...

    @property
    def stats(self) -> dict[str, int]:
        """Counters since attach, e.g. ``put``, ``unrolls_dropped``."""
        ...


@runtime_checkable
class TrajectoryConsumer(Protocol):
    """The learner's end of the unroll queue."""

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next validated unroll, or None on timeout (or once closed).

        The frame's arrays may be views into transport memory: they stay valid until the next
        `get` or `release(frame)` call on this queue, so copy what you keep. Corrupt frames
        are dropped and counted in ``stats["frames_rejected"]`` and, by the
        `codec.FrameError` reason, ``stats["frames_rejected_<reason>"]``; never raised.
        """
        ...

    def release(self, frame: Frame) -> None:
        """Hand the frame's memory back early (optional; the next `get` does it anyway)."""
        ...

    def qsize(self) -> int:
        """Unroll frames waiting (a snapshot; approximate while producers run)."""
        ...

    def close(self) -> None:
        """Close the queue: producers' `put` returns False from now on; owned resources
        (segments, keys) are removed. Idempotent."""
        ...

    @property
    def stats(self) -> dict[str, int]:
        """At least ``got``, ``frames_rejected`` (with its `rejection_stats` per reason)
        and ``unrolls_dropped``."""
        ...


@runtime_checkable
class TrajectoryQueue(TrajectoryProducer, TrajectoryConsumer, Protocol):
    """A transport whose single handle is both ends (e.g. a Redis list)."""


@runtime_checkable
class ParamStore(Protocol):
    """Latest policy parameters plus their version. One writer (the learner), many readers."""

    def publish(self, version: int, arrays: dict[str, np.ndarray]) -> None:
        """Replace the stored parameters (learner only). Versions should increase."""
        ...

    def fetch(
        self, newer_than: int = -1, *, spec: FrameSpec | None = None
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(version, arrays)`` if the stored version is > `newer_than`, else None.

        Never blocks on the writer and never returns a torn mix of two versions: if a
        consistent read cannot be had quickly it returns None and the caller tries later.
        The arrays are private copies. A store that outlives its learner (Redis) also
        returns, once a reader has taken a frame, any other frame: a new run's (its versions
        start over) or a version lower than the last, written back over a forged one; the
        caller takes the version it gets.

        Raises:
          FrameError: the stored frame fails the codec's checks or `spec`'s (fields, dtypes,
            shapes, finite values). It is counted in ``stats["frames_rejected"]``; the caller
            keeps the params it has, and the same frame is not reported again at once.
        """
        ...

    def close(self) -> None:
        """Detach; the owner also removes the store. Idempotent."""
        ...

"""An in-process transport: a bounded queue and a parameter store in one process's memory.

For driving the training loop in-process (tests, notebooks) with actors stepped in the same
process. Frames still go through the codec, so what the learner receives is validated
exactly as it is off shared memory or Redis.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from jaxrl_impala.transport.base import Closing, rejection_stats
from jaxrl_impala.transport.codec import Frame, FrameError, FrameSpec, decode, encode


class MemoryQueue(Closing):
    """A bounded FIFO of encoded unroll frames; both ends in one process.

    ``put`` returns False when the queue is full or closed (it never waits: the producer is
    the same thread as the consumer).
    """

    def __init__(self, bound: int, spec: FrameSpec | None = None):
        self.bound = bound
        self.spec = spec
        self._frames: collections.deque[bytes] = collections.deque()
        self._closed = False
        self._counts = {"put": 0, "got": 0, "unrolls_dropped": 0}
        self._rejected: collections.Counter[str] = collections.Counter()  # per reason

    def put(
        self, arrays: dict[str, np.ndarray], meta: dict[str, int], timeout: float | None = None
    ) -> bool:
        if self._closed or len(self._frames) >= self.bound:
            return False
        self._frames.append(encode(arrays, meta))
        self._counts["put"] += 1
        return True

    def get(self, timeout: float | None = None) -> Frame | None:
        while self._frames:
            try:
                frame = decode(self._frames.popleft(), spec=self.spec)
            except FrameError as e:  # counted, never raised, as every transport does
                self._rejected[e.reason] += 1
                continue
            self._counts["got"] += 1
            return frame
        return None

    def release(self, frame: Frame) -> None:
        """Nothing to hand back: every frame owns its buffer."""

    def qsize(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        self._closed = True
        self._frames.clear()

    @property
    def stats(self) -> dict[str, int]:
        return {**self._counts, **rejection_stats(self._rejected.total(), self._rejected)}


class MemoryParamStore(Closing):
    """The latest parameters and their version (one process)."""

    def __init__(self) -> None:
        self._latest: tuple[int, dict[str, np.ndarray]] | None = None

    def publish(self, version: int, arrays: dict[str, Any]) -> None:
        self._latest = (int(version), {k: np.array(v) for k, v in arrays.items()})

    def fetch(
        self, newer_than: int = -1, *, spec: FrameSpec | None = None
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        if self._latest is None or self._latest[0] <= newer_than:
            return None
        version, arrays = self._latest
        if spec is not None:  # the checks a decoded frame gets (raises FrameError)
            spec.check({k: (v.dtype, v.shape) for k, v in arrays.items()})
            spec.check_values(arrays)
        return version, {k: v.copy() for k, v in arrays.items()}

    def close(self) -> None:
        self._latest = None

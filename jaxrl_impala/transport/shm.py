"""The embedded default transport: lock-free rings and a seqlock in POSIX shared memory.

Processes are started with ``subprocess.Popen``, not multiprocessing, so nothing is shared but
segment names: there are no locks or semaphores. Synchronisation is single-writer counters:

* `ShmQueue` (owned by the learner) is one segment holding a header and one single-producer /
  single-consumer ring per actor. The actor alone writes its ring's ``head`` and the slot
  contents; the learner alone writes ``tail``. Both are monotonically increasing int64s, so
  ``head - tail`` is the fill level and there is no wrap-around ambiguity.
* `ShmParamStore` is one segment holding the latest encoded parameter frame under a seqlock
  (an int64 sequence, odd while the single writer is mid-write).

Memory ordering. Counters are naturally aligned int64 numpy elements, so each load and store
is a single 8-byte ``mov`` (atomic on x86-64). We rely on x86-64 TSO: stores become visible in
program order and loads are not reordered with older loads. Each numpy/Python operation is a
separate opaque C call, so the compiler cannot reorder them either. Writers therefore write
data first and publish by bumping a counter last; readers load the counter first and the data
after. On weaker memory models (ARM) this is not guaranteed, which is why readers never trust
a slot: every frame is re-validated by the codec (structure + crc32), and a frame that fails is
read again (up to three times: a late frame, not a bad one), then dropped and counted
(``frames_rejected``), never raised into the learner.

Overflow policies of the queue (per ring, chosen at create):

* ``"block"``: a full ring makes `put` wait (sleep-poll, 50 us doubling to 2 ms) until the
  learner frees a slot; `put` returns False on timeout, when the queue is closed, or when the
  owner is gone. `get` returns zero-copy views into the slot; the slot stays owned by the
  learner until `release(frame)` or the next `get`.
* ``"drop_oldest"``: `put` never waits. When the ring is full the producer overwrites the slot
  of the oldest unread unroll. Each slot carries a sequence word, ``2*i + 1`` while unroll number
  ``i`` is being written and ``2*i + 2`` once complete (a per-slot seqlock). The learner expects
  ``2*tail + 2`` in slot ``tail % N``; anything newer means the unroll was overwritten, and it
  skips ahead and counts ``unrolls_dropped`` (exactly: delivered + dropped + rejected ==
  unrolls put). Because a slot can be overwritten at any moment, `get` copies the frame out and
  re-checks the sequence word after the copy, so the frame it returns is private.

Cleanup: the owner unlinks its segments in `close()`, from a `weakref.finalize` hook (run at
garbage collection and at interpreter exit), from SIGTERM/SIGINT via
`install_cleanup_signal_handlers`, and, if the owner is SIGKILLed, Python's resource tracker
(which `SharedMemory(create=True)` registers with) unlinks them when the owner dies. Attaching
processes never unlink and unregister from their resource tracker. `cleanup_stale(prefix)`
removes leftovers by name prefix. Producers see the ``closed`` flag, the owner's pid and a
heartbeat, so actors stop by themselves when the learner is gone (`owner_alive`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from multiprocessing import resource_tracker, shared_memory
from typing import Any, Literal

import numpy as np

from jaxrl_impala.transport.base import Closing, rejection_stats
from jaxrl_impala.transport.codec import Frame, FrameError, FrameSpec, decode, encode_into

# A malformed frame in a slot is read this many more times before it is rejected (`ShmQueue`).
_REREADS = 3

__all__ = [
    "ShmParamStore",
    "ShmQueue",
    "ShmQueueProducer",
    "cleanup_stale",
    "install_cleanup_signal_handlers",
    "make_prefix",
]

SHM_DIR = "/dev/shm"
LAYOUT_VERSION = 1
_HEADER_BYTES = 128  # 16 int64 words
_CTRL_BYTES = 128  # per producer: head on one 64-byte cache line, tail on the next
_SLOT_META_BYTES = 16  # per slot: sequence word, frame length
_MIN_BACKOFF, _MAX_BACKOFF = 50e-6, 2e-3
_LIVENESS_EVERY = 0.25  # seconds between owner-liveness checks of a blocked producer
DEFAULT_STALE_AFTER = 10.0  # a heartbeat older than this means the owner is gone

_QUEUE_MAGIC = int.from_bytes(b"JRISHMQ1", "little")
_PARAMS_MAGIC = int.from_bytes(b"JRISHMP1", "little")

# Queue header words.
_H_MAGIC, _H_LAYOUT, _H_NPROD, _H_NSLOTS, _H_SLOT_BYTES, _H_STRIDE = 0, 1, 2, 3, 4, 5
_H_OVERFLOW, _H_CLOSED, _H_OWNER_PID, _H_HEARTBEAT = 6, 7, 8, 9
# Per-producer control words (head side written by the producer, tail side by the consumer).
_C_HEAD, _C_OVERWRITES, _C_PID, _C_TAIL = 0, 1, 2, 8
# Param-store header words.
_P_MAGIC, _P_LAYOUT, _P_CAPACITY, _P_SEQ, _P_VERSION, _P_LENGTH = 0, 1, 2, 3, 4, 5
_P_OWNER_PID, _P_CLOSED = 6, 7

_OVERFLOW_CODES = {"block": 0, "drop_oldest": 1}
Overflow = Literal["block", "drop_oldest"]

_MAX_PRODUCERS = 4096
_MAX_SLOTS = 1 << 16
_MAX_SEGMENT_BYTES = 1 << 40


_CREATED_HERE: set[str] = set()  # segment names this process created (and must unlink)


def make_prefix(base: str = "jri") -> str:
    """A run-specific segment name prefix: ``jri_<pid>_<random hex>``."""
    return f"{base}_{os.getpid()}_{secrets.token_hex(4)}"


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _i64(buf, offset: int, count: int) -> np.ndarray:
    return np.ndarray((count,), dtype="<i8", buffer=buf, offset=offset)


def _create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    # create=True registers the name with this process's resource tracker: if the owner is
    # SIGKILLed, the tracker unlinks the segment when it sees the owner die.
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    _CREATED_HERE.add(shm.name)
    return shm


@contextlib.contextmanager
def _attached(name: str) -> Iterator[shared_memory.SharedMemory]:
    """The segment ``name``, mapped, and unmapped again if the block raises."""
    shm = _attach_segment(name)
    try:
        yield shm
    except BaseException:
        _unmap(shm)
        raise


def _attach_segment(name: str) -> shared_memory.SharedMemory:
    """Open an existing segment without taking responsibility for unlinking it."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"shared-memory segment name {name!r} is not a plain name")
    try:
        if sys.version_info >= (3, 13):
            return shared_memory.SharedMemory(name=name, track=False)
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shared-memory segment {name!r} does not exist (the learner closed it or never "
            "created it)"
        ) from None
    # Python 3.10-3.12 register every attach with the attaching process's resource tracker,
    # which would unlink the owner's segment (and warn about a "leak") when this process exits.
    # The tracker keeps a set per process, so if this process owns the segment the attach was
    # a no-op and unregistering would cancel the owner's own registration.
    if name not in _CREATED_HERE:
        resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def _unmap(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        # A caller still holds arrays viewing the segment (e.g. a Frame). Forget our handles;
        # the mapping is released when the last view is garbage-collected. The name is
        # unlinked regardless, so nothing outlives the process.
        shm._buf = None
        shm._mmap = None
        if getattr(shm, "_fd", -1) >= 0:  # the mapping does not need the descriptor
            os.close(shm._fd)
            shm._fd = -1


def _unlink(shm: shared_memory.SharedMemory) -> None:
    _CREATED_HERE.discard(shm.name)
    try:
        shm.unlink()
    except FileNotFoundError:  # already removed (e.g. by cleanup_stale); stop tracking it
        try:
            resource_tracker.unregister(shm._name, "shared_memory")
        except Exception:  # best effort during shutdown
            pass


def _finalize_segment(
    shm,
    owner: bool,
    closed_offset: int,
    stop: threading.Event | None,
    thread: threading.Thread | None,
) -> None:
    """Close (and, for the owner, mark closed and unlink) a segment. Holds no ref to the handle
    object, so it can run from `weakref.finalize` at GC or interpreter exit."""
    if stop is not None:
        stop.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=1.0)
    if owner:
        try:
            if shm.buf is not None:
                struct.pack_into("<q", shm.buf, closed_offset, 1)
        except (TypeError, ValueError):
            pass
    _unmap(shm)
    if owner:
        _unlink(shm)


def _heartbeat(shm, offset: int, stop: threading.Event, interval: float) -> None:
    # CLOCK_MONOTONIC (time.monotonic_ns) is one system-wide clock on Linux, so producers can
    # compare it with their own reading; unlike wall time it never jumps.
    while True:
        try:
            struct.pack_into("<q", shm.buf, offset, time.monotonic_ns())
        except (TypeError, ValueError):
            return
        if stop.wait(interval):
            return


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:  # a killed but not yet reaped owner is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _sleep_backoff(backoff: float, deadline: float | None) -> float:
    pause = backoff
    if deadline is not None:
        pause = max(0.0, min(pause, deadline - time.monotonic()))
    time.sleep(pause)
    return min(backoff * 2, _MAX_BACKOFF)


class _Segment(Closing):
    """A handle on a shared-memory segment (``self._shm``), named by it."""

    @property
    def name(self) -> str:
        return self._shm.name


class _QueueLayout:
    """Offsets of one queue segment, computed identically by owner and producers."""

    def __init__(self, num_producers: int, slots_per_producer: int, slot_bytes: int):
        self.num_producers = num_producers
        self.slots = slots_per_producer
        self.slot_bytes = slot_bytes
        self.stride = _align(_SLOT_META_BYTES + slot_bytes, 64)
        self.ctrl_offset = _HEADER_BYTES
        self.slots_offset = _HEADER_BYTES + num_producers * _CTRL_BYTES
        self.ring_bytes = slots_per_producer * self.stride
        self.total = self.slots_offset + num_producers * self.ring_bytes

    def ring(self, buf, producer: int) -> np.ndarray:
        """int64 view [slots, stride // 8] of one producer's ring (word 0 seq, word 1 len)."""
        return np.ndarray(
            (self.slots, self.stride // 8),
            dtype="<i8",
            buffer=buf,
            offset=self.slots_offset + producer * self.ring_bytes,
        )

    def frame_offset(self, producer: int, slot: int) -> int:
        return (
            self.slots_offset + producer * self.ring_bytes + slot * self.stride + _SLOT_META_BYTES
        )


class ShmQueue(_Segment):
    """The learner's end of the shared-memory unroll queue (it owns the segment).

    Create with `ShmQueue.create`; actors attach with `ShmQueue.attach(name, producer_id)`.
    Use from one thread.
    """

    def __init__(
        self,
        shm,
        layout: _QueueLayout,
        overflow: Overflow,
        spec: FrameSpec | None,
        heartbeat_interval: float,
    ):
        self._shm = shm
        self._layout = layout
        self._drop = overflow == "drop_oldest"
        self.overflow = overflow
        self.spec = spec
        self._hdr = _i64(shm.buf, 0, _HEADER_BYTES // 8)
        self._ctrl = np.ndarray(
            (layout.num_producers, _CTRL_BYTES // 8),
            dtype="<i8",
            buffer=shm.buf,
            offset=layout.ctrl_offset,
        )
        self._rings = [layout.ring(shm.buf, p) for p in range(layout.num_producers)]
        self._tails = [0] * layout.num_producers  # consumer-owned, mirrored into the segment
        self._next = 0  # round-robin cursor
        self._pending: tuple[int, int, Frame] | None = None  # (producer, new tail, frame)
        self._got = self._rejected = self._dropped = self._put_seen = self._reread = 0
        self._rejected_by: dict[str, int] = {}  # the decode failures' reasons
        self._closed = False
        stop = threading.Event()
        thread = threading.Thread(
            target=_heartbeat,
            args=(shm, _H_HEARTBEAT * 8, stop, heartbeat_interval),
            name=f"shm-heartbeat-{shm.name}",
            daemon=True,
        )
        thread.start()
        self._finalizer = weakref.finalize(
            self, _finalize_segment, shm, True, _H_CLOSED * 8, stop, thread
        )

    @classmethod
    def create(
        cls,
        num_producers: int,
        slots_per_producer: int,
        slot_bytes: int,
        *,
        name_prefix: str | None = None,
        overflow: Overflow = "block",
        spec: FrameSpec | None = None,
        heartbeat_interval: float = 0.25,
    ) -> ShmQueue:
        """Create the queue segment ``<name_prefix>_q``.

        Args:
          num_producers: actor processes; each gets its own ring (producer ids 0..n-1).
          slots_per_producer: ring capacity in unrolls (the bound on unread unrolls per actor).
          slot_bytes: the largest encoded unroll a slot holds (see `codec.encoded_size`).
          name_prefix: run-specific prefix, default `make_prefix()`.
          overflow: ``"block"`` (actors wait) or ``"drop_oldest"`` (see the module docstring).
          spec: if given, every frame must match it exactly or it is rejected.
          heartbeat_interval: seconds between owner heartbeats (see `owner_alive`).
        """
        if overflow not in _OVERFLOW_CODES:
            raise ValueError(f"overflow {overflow!r} is not one of {sorted(_OVERFLOW_CODES)}")
        for what, value, hi in (
            ("num_producers", num_producers, _MAX_PRODUCERS),
            ("slots_per_producer", slots_per_producer, _MAX_SLOTS),
            ("slot_bytes", slot_bytes, _MAX_SEGMENT_BYTES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ValueError(f"{what} must be an int in [1, {hi}], got {value!r}")
        layout = _QueueLayout(num_producers, slots_per_producer, slot_bytes)
        if layout.total > _MAX_SEGMENT_BYTES:
            raise ValueError(f"queue of {layout.total} bytes is too large")
        shm = _create_segment(f"{name_prefix or make_prefix()}_q", layout.total)
        hdr = _i64(shm.buf, 0, _HEADER_BYTES // 8)
        hdr[:] = 0
        hdr[_H_LAYOUT] = LAYOUT_VERSION
        hdr[_H_NPROD], hdr[_H_NSLOTS] = num_producers, slots_per_producer
        hdr[_H_SLOT_BYTES], hdr[_H_STRIDE] = slot_bytes, layout.stride
        hdr[_H_OVERFLOW] = _OVERFLOW_CODES[overflow]
        hdr[_H_OWNER_PID] = os.getpid()
        hdr[_H_HEARTBEAT] = time.monotonic_ns()
        hdr[_H_MAGIC] = _QUEUE_MAGIC  # last: a producer racing create sees "not ready"
        del hdr
        return cls(shm, layout, overflow, spec, heartbeat_interval)

    @staticmethod
    def attach(name: str, producer_id: int) -> ShmQueueProducer:
        """Attach an actor process to the queue segment `name` as producer `producer_id`."""
        return ShmQueueProducer.attach(name, producer_id)

    @property
    def capacity(self) -> int:
        """Unread unrolls the queue can hold: producers x slots per producer."""
        return self._layout.num_producers * self._layout.slots

    @property
    def stats(self) -> dict[str, int]:
        if not self._closed:
            self._put_seen = int(self._ctrl[:, _C_HEAD].sum())
        put = self._put_seen
        return {
            "put": put,
            "got": self._got,
            "unrolls_dropped": self._dropped,
            "frames_reread": self._reread,
            **rejection_stats(self._rejected, self._rejected_by),
        }

    def qsize(self) -> int:
        if self._closed:
            return 0
        n = self._layout.slots
        heads = self._ctrl[:, _C_HEAD]
        return sum(min(max(int(h) - t, 0), n) for h, t in zip(heads, self._tails, strict=True))

    def release(self, frame: Frame | None = None) -> None:
        """Return the slot behind `frame` (default: the last frame from `get`) to its actor."""
        pending = self._pending
        if pending is None or (frame is not None and frame is not pending[2]):
            return
        self._pending = None
        producer, tail, _ = pending
        self._ctrl[producer, _C_TAIL] = tail

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next valid unroll, round-robin over actors; None on timeout or once closed.

        Releases the previous frame first (see the module docstring for frame lifetime).
        """
        if self._closed:
            return None
        self.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = _MIN_BACKOFF
        n = self._layout.num_producers
        while True:
            for k in range(n):
                producer = (self._next + k) % n
                try:
                    frame = self._poll(producer)
                except (TypeError, IndexError):
                    if self._closed:  # closed under us (e.g. by a signal handler)
                        return None
                    raise
                if frame is not None:
                    self._next = (producer + 1) % n
                    self._got += 1
                    return frame
            if self._closed or (deadline is not None and time.monotonic() >= deadline):
                return None
            backoff = _sleep_backoff(backoff, deadline)

    def _advance(self, producer: int, tail: int) -> None:
        self._tails[producer] = tail
        self._ctrl[producer, _C_TAIL] = tail

    def _poll(self, p: int) -> Frame | None:
        """Try to take one frame from producer `p`'s ring; skips (and counts) bad ones."""
        layout, ring = self._layout, self._rings[p]
        n = layout.slots
        tail = self._tails[p]
        while True:
            head = int(self._ctrl[p, _C_HEAD])  # load the counter before the slot (see top)
            avail = head - tail
            if avail <= 0:
                return None
            if avail > n:
                # drop_oldest: those unrolls were overwritten. block: the producer broke the
                # protocol (or its counter is garbage); either way resynchronise.
                if self._drop:
                    self._dropped += avail - n
                else:
                    self._rejected += 1
                tail = head - n
                self._advance(p, tail)
                continue
            slot = tail % n
            expected = 2 * tail + 2
            seq = int(ring[slot, 0])
            if seq != expected:
                if self._drop and seq > expected:
                    self._dropped += 1  # overwritten by a newer unroll
                else:
                    self._rejected += 1
                tail += 1
                self._advance(p, tail)
                continue
            length = int(ring[slot, 1])
            if not 0 < length <= layout.slot_bytes:
                self._rejected += 1
                tail += 1
                self._advance(p, tail)
                continue
            frame, reason = self._read(layout.frame_offset(p, slot), length)
            if self._drop and int(ring[slot, 0]) != seq:
                # Overwritten while we copied: whatever we read may be torn.
                self._dropped += 1
                frame = None
            elif frame is None:
                self._rejected += 1
                self._rejected_by[reason] = self._rejected_by.get(reason, 0) + 1
            tail += 1
            if frame is None or self._drop:
                self._advance(p, tail)
                if frame is None:
                    continue
            else:
                # Zero-copy: the slot stays ours until release() / the next get().
                self._tails[p] = tail
                self._pending = (p, tail, frame)
            return frame

    def _read(self, start: int, length: int) -> tuple[Frame | None, str]:
        """``(frame, None)``, or ``(None, reason)`` for a frame that fails the codec. A
        malformed one (a crc32 mismatch, say) is read again, up to :data:`_REREADS` times:
        on a weakly ordered CPU (ARM) the bytes may become visible after the sequence word
        that published them, and such a frame is late, not bad."""
        for attempt in range(_REREADS + 1):
            try:
                frame = decode(
                    self._shm.buf[start : start + length], spec=self.spec, copy=self._drop
                )
                return frame, ""
            except FrameError as e:
                if e.reason != "malformed" or attempt == _REREADS:
                    return None, e.reason
                self._reread += 1
                time.sleep(0)  # let the writer's stores land
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Set the closed flag (producers' `put` returns False), unmap and unlink. Idempotent."""
        if self._closed:
            return
        self._put_seen = int(self._ctrl[:, _C_HEAD].sum())  # final counters survive close
        self._closed = True
        self._pending = None
        self._hdr = self._ctrl = None
        self._rings = []
        self._finalizer()


class ShmQueueProducer(_Segment):
    """An actor's end of a `ShmQueue` (attached by name; never unlinks). Use from one thread."""

    def __init__(self, shm, layout: _QueueLayout, producer_id: int, overflow: Overflow):
        self._shm = shm
        self._layout = layout
        self.producer_id = producer_id
        self.overflow = overflow
        self._drop = overflow == "drop_oldest"
        self._hdr = _i64(shm.buf, 0, _HEADER_BYTES // 8)
        self._ctrl = _i64(shm.buf, layout.ctrl_offset + producer_id * _CTRL_BYTES, _CTRL_BYTES // 8)
        self._ring = layout.ring(shm.buf, producer_id)
        self._slot_views = [
            shm.buf[
                layout.frame_offset(producer_id, s) : layout.frame_offset(producer_id, s)
                + layout.slot_bytes
            ]
            for s in range(layout.slots)
        ]
        # Resume where a previous incarnation of this actor stopped (actor restarts).
        self._head = int(self._ctrl[_C_HEAD])
        self._ctrl[_C_PID] = os.getpid()
        self._put = self._overwrites = 0
        self._next_liveness = 0.0
        self._closed = False
        self._finalizer = weakref.finalize(self, _finalize_segment, shm, False, 0, None, None)

    @classmethod
    def attach(cls, name: str, producer_id: int) -> ShmQueueProducer:
        """Attach to the queue segment `name` as producer `producer_id` (0-based)."""
        with _attached(name) as shm:
            hdr = [int(x) for x in _i64(shm.buf, 0, _HEADER_BYTES // 8)]
            if hdr[_H_MAGIC] != _QUEUE_MAGIC or hdr[_H_LAYOUT] != LAYOUT_VERSION:
                raise ValueError(
                    f"segment {name!r} is not a jaxrl_impala queue (layout "
                    f"{LAYOUT_VERSION}); check transport.prefix"
                )
            num_producers, slots, slot_bytes = hdr[_H_NPROD], hdr[_H_NSLOTS], hdr[_H_SLOT_BYTES]
            if not (
                1 <= num_producers <= _MAX_PRODUCERS
                and 1 <= slots <= _MAX_SLOTS
                and 1 <= slot_bytes <= _MAX_SEGMENT_BYTES
            ):
                raise ValueError(f"segment {name!r} has a corrupt header")
            layout = _QueueLayout(num_producers, slots, slot_bytes)
            if layout.stride != hdr[_H_STRIDE] or layout.total > shm.size:
                raise ValueError(f"segment {name!r} has a corrupt header")
            overflow = {v: k for k, v in _OVERFLOW_CODES.items()}.get(hdr[_H_OVERFLOW])
            if overflow is None:
                raise ValueError(f"segment {name!r} has an unknown overflow policy")
            if (
                isinstance(producer_id, bool)
                or not isinstance(producer_id, int)
                or not (0 <= producer_id < num_producers)
            ):
                raise ValueError(f"producer_id {producer_id!r} is outside [0, {num_producers})")
            return cls(shm, layout, producer_id, overflow)

    @property
    def closed(self) -> bool:
        """True once this handle or the owner closed the queue."""
        return self._closed or bool(self._hdr[_H_CLOSED])

    @property
    def stats(self) -> dict[str, int]:
        return {"put": self._put, "unrolls_dropped": self._overwrites}

    def owner_alive(self, stale_after: float = DEFAULT_STALE_AFTER) -> bool:
        """False if the queue is closed, the owner's pid is gone (or a zombie), or its
        heartbeat is older than `stale_after` seconds (e.g. the learner is wedged)."""
        if self.closed:
            return False
        if not _pid_alive(int(self._hdr[_H_OWNER_PID])):
            return False
        age_ns = time.monotonic_ns() - int(self._hdr[_H_HEARTBEAT])
        return age_ns <= stale_after * 1e9

    def put(
        self,
        arrays: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Encode one unroll straight into the next slot and publish it.

        Returns False (nothing enqueued) on timeout, when the queue is closed, or when its
        owner is gone. Raises `codec.FrameTooLargeError` if the unroll exceeds the slot size
        and TypeError/ValueError on an unframeable array; the queue is unchanged then.
        """
        if self.closed:
            return False
        now = time.monotonic()
        if now >= self._next_liveness:  # cheap enough to do every ~0.25 s, not every put
            if not self.owner_alive():
                return False
            self._next_liveness = now + _LIVENESS_EVERY
        n = self._layout.slots
        head = self._head
        full = head - int(self._ctrl[_C_TAIL]) >= n
        if full and not self._drop:
            deadline = None if timeout is None else time.monotonic() + timeout
            next_check = time.monotonic() + _LIVENESS_EVERY
            backoff = _MIN_BACKOFF
            while head - int(self._ctrl[_C_TAIL]) >= n:
                if self.closed:
                    return False
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if now >= next_check:
                    if not self.owner_alive():
                        return False
                    next_check = now + _LIVENESS_EVERY
                backoff = _sleep_backoff(backoff, deadline)
        slot = head % n
        old_seq = int(self._ring[slot, 0])
        self._ring[slot, 0] = 2 * head + 1  # "being written": drop_oldest readers back off
        try:
            length = encode_into(self._slot_views[slot], arrays, meta)
        except BaseException:
            # encode_into validates and sizes before writing a byte: the slot is intact.
            self._ring[slot, 0] = old_seq
            raise
        self._ring[slot, 1] = length
        self._ring[slot, 0] = 2 * head + 2  # slot complete ...
        self._head = head + 1
        self._ctrl[_C_HEAD] = head + 1  # ... then publish
        self._put += 1
        if full and self._drop:
            self._overwrites += 1
            self._ctrl[_C_OVERWRITES] = self._overwrites
        return True

    def close(self) -> None:
        """Detach (never unlinks). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._hdr = self._ctrl = self._ring = None
        self._slot_views = []
        self._finalizer()


class ShmParamStore(_Segment):
    """Latest parameters + version in one segment under a seqlock.

    One writer (the owner/learner) calls `publish`; any number of attached readers call
    `fetch`, which copies the frame out and retries (bounded) if the writer was mid-write.
    """

    def __init__(self, shm, capacity: int, owner: bool, max_retries: int):
        self._shm = shm
        self.capacity = capacity
        self.owner = owner
        self.max_retries = max_retries
        self._hdr = _i64(shm.buf, 0, _HEADER_BYTES // 8)
        self._published = self._fetched = self._rejected = self._torn = 0
        self._refused = -1  # the seqlock count of the write `fetch` rejected last
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _finalize_segment, shm, owner, _P_CLOSED * 8, None, None
        )

    @classmethod
    def create(
        cls, capacity_bytes: int, name_prefix: str | None = None, *, max_retries: int = 16
    ) -> ShmParamStore:
        """Create the store segment ``<name_prefix>_p`` holding frames of <= capacity_bytes."""
        if (
            isinstance(capacity_bytes, bool)
            or not isinstance(capacity_bytes, int)
            or not (1 <= capacity_bytes <= _MAX_SEGMENT_BYTES)
        ):
            raise ValueError(f"capacity_bytes must be a positive int, got {capacity_bytes!r}")
        shm = _create_segment(f"{name_prefix or make_prefix()}_p", _HEADER_BYTES + capacity_bytes)
        hdr = _i64(shm.buf, 0, _HEADER_BYTES // 8)
        hdr[:] = 0
        hdr[_P_LAYOUT], hdr[_P_CAPACITY] = LAYOUT_VERSION, capacity_bytes
        hdr[_P_VERSION], hdr[_P_OWNER_PID] = -1, os.getpid()
        hdr[_P_MAGIC] = _PARAMS_MAGIC
        del hdr
        return cls(shm, capacity_bytes, True, max_retries)

    @classmethod
    def attach(cls, name: str, *, max_retries: int = 16) -> ShmParamStore:
        """Attach a reader to the store segment `name` (never unlinks)."""
        with _attached(name) as shm:
            magic, layout, capacity = (int(x) for x in _i64(shm.buf, 0, 3))
            if magic != _PARAMS_MAGIC or layout != LAYOUT_VERSION:
                raise ValueError(f"segment {name!r} is not a jaxrl_impala param store")
            if not 1 <= capacity <= shm.size - _HEADER_BYTES:
                raise ValueError(f"segment {name!r} has a corrupt header")
            return cls(shm, capacity, False, max_retries)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "published": self._published,
            "fetched": self._fetched,
            "frames_rejected": self._rejected,
            "torn_retries": self._torn,
        }

    def publish(self, version: int, arrays: Mapping[str, Any]) -> None:
        """Replace the stored parameters. Raises FrameTooLargeError if they exceed capacity."""
        if self._closed:
            raise ValueError("publish on a closed ShmParamStore")
        hdr = self._hdr
        seq = int(hdr[_P_SEQ])
        seq += seq & 1  # a previous publish that raised mid-way is abandoned
        hdr[_P_SEQ] = seq + 1  # odd: readers retry
        try:
            length = encode_into(
                self._shm.buf[_HEADER_BYTES : _HEADER_BYTES + self.capacity],
                arrays,
                {"version": int(version)},
            )
        except BaseException:
            hdr[_P_SEQ] = seq  # nothing was written (encode_into sizes first)
            raise
        hdr[_P_LENGTH] = length
        hdr[_P_VERSION] = int(version)
        hdr[_P_SEQ] = seq + 2  # even: consistent
        self._published += 1

    def fetch(
        self, newer_than: int = -1, *, spec: FrameSpec | None = None
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(version, arrays)`` if the stored version > `newer_than`, else None.

        Never waits for the writer beyond `max_retries` short back-offs; returns None then.
        The arrays are read-only views into a private copy.

        Raises:
          FrameError: the frame fails the codec's or `spec`'s checks (counted in
            ``stats["frames_rejected"]``); that write is not reported again.
        """
        if self._closed:
            return None
        hdr = self._hdr
        backoff = _MIN_BACKOFF / 2
        for attempt in range(self.max_retries):
            if attempt:
                self._torn += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            seq = int(hdr[_P_SEQ])
            if seq & 1:
                continue
            if seq == self._refused:  # the write we rejected last: still there
                return None
            version, length = int(hdr[_P_VERSION]), int(hdr[_P_LENGTH])
            if version <= newer_than:
                if int(hdr[_P_SEQ]) == seq:
                    return None
                continue
            if not 0 < length <= self.capacity:
                if int(hdr[_P_SEQ]) == seq:
                    self._rejected += 1
                    return None
                continue
            data = bytearray(self._shm.buf[_HEADER_BYTES : _HEADER_BYTES + length])
            if int(hdr[_P_SEQ]) != seq:
                continue  # torn: the writer moved on while we copied
            try:
                frame = decode(data, spec=spec)
                if frame.meta.get("version") != version:
                    raise FrameError("param frame version disagrees with the store header")
            except FrameError:
                self._rejected += 1
                self._refused = seq
                raise
            self._fetched += 1
            return version, frame.arrays
        return None

    def close(self) -> None:
        """Detach; the owner also unlinks the segment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._hdr = None
        self._finalizer()


def cleanup_stale(prefix: str) -> list[str]:
    """Unlink every segment in /dev/shm whose name starts with `prefix`; returns the names.

    For leftovers of crashed runs (e.g. ``cleanup_stale("jri_12345_")``). The prefix must be
    specific (at least 4 characters) so one call cannot wipe unrelated segments.
    """
    if not isinstance(prefix, str) or len(prefix) < 4 or "/" in prefix:
        raise ValueError(f"cleanup prefix {prefix!r} must be >= 4 chars with no '/'")
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for entry in sorted(names):
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def install_cleanup_signal_handlers(
    *closables: Any, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Callable[[], None]:
    """Make SIGTERM / SIGINT call ``close()`` on each of `closables`, then behave as before.

    After closing, the previously installed handler runs (so SIGINT still raises
    KeyboardInterrupt); a default disposition (or one set outside Python) is re-raised so the
    exit status says which signal ended the process. A signal this process ignores stays
    ignored: SIGINT is ignored in a job that a non-interactive shell starts in the background
    (``pytest &`` in a script), and a handler that closed the transport and then, as before,
    ignored the signal would leave the owner running with its segments gone (the Ctrl-C
    "hang" of issue 18; POSIX shells keep such signals ignored for the same reason). A second
    signal while the first one's cleanup runs skips the cleanup and acts at once, so a cleanup
    that blocks cannot swallow it. Call from the main thread. Returns a function restoring
    the previous handlers.
    """
    previous = {}
    cleaning = []  # non-empty once a signal has started the cleanup

    def handler(signum, frame):
        if not cleaning:
            cleaning.append(signum)
            for obj in closables:
                try:
                    obj.close()
                except Exception:  # keep closing the others
                    pass
        prev = previous.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        else:  # SIG_DFL, or None: a handler installed outside Python, which cannot be called
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, signal.SIG_DFL if prev is None else prev)

    return restore

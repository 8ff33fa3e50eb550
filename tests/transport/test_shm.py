"""Shared-memory specifics: no segment survives any exit path, actors notice a dead learner, and
a hostile actor scribbling on its ring counters cannot hurt the learner."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pytest

from jaxrl_impala.transport import (
    ShmParamStore,
    ShmQueue,
    cleanup_stale,
    connect_actor,
    create_transport,
    make_prefix,
)

CHILD_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

# The owner's SIGINT disposition is set, not inherited: a test session that a non-interactive
# shell starts in the background (`pytest &` in a script) runs with SIGINT ignored, and so do
# its children; an interactive program (the case under test) raises KeyboardInterrupt. With
# "ignore-sigint", the owner ignores it as such a background job does.
OWNER_SRC = """
import json, signal, sys, time
from jaxrl_impala.transport import create_transport, install_cleanup_signal_handlers

ignore = sys.argv[2:] == ["ignore-sigint"]
signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else signal.default_int_handler)
t = create_transport("shm", num_producers=1, slots_per_producer=2, slot_bytes=4096,
                     param_bytes=4096, prefix=sys.argv[1])
install_cleanup_signal_handlers(t)
print(json.dumps(t.address), flush=True)
try:
    while True:
        time.sleep(0.02)
except KeyboardInterrupt:
    sys.exit(130)
"""

# An actor-like loop: it runs until the learner is gone, then exits by itself.
PRODUCER_LOOP_SRC = """
import json, sys, time
import numpy as np
from jaxrl_impala.transport import connect_actor

producer, params = connect_actor(json.loads(sys.argv[1]), 0)
print("attached", flush=True)
unroll = {"x": np.zeros(int(sys.argv[2]), np.uint8)}
while True:
    ok = producer.put(unroll, {"t": time.monotonic_ns()}, timeout=0.2)
    params.fetch()
    if not ok and not producer.owner_alive():
        break
print("owner gone", flush=True)
producer.close()
params.close()
"""


@pytest.fixture
def prefix():
    p = make_prefix("jritest")
    yield p
    leaked = cleanup_stale(p)
    assert leaked == [], f"segments leaked: {leaked}"


def _entries(prefix):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def _spawn(src, *args, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", src, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CHILD_ENV,
        **kw,
    )


def _readline(proc) -> bytes:
    line = proc.stdout.readline()
    assert line, f"child died: {proc.stderr.read().decode()}"
    return line


def _reap(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# ----------------------------------------------------------------------------- exit paths


def test_normal_close_and_attached_children_never_unlink(prefix):
    t = create_transport(
        num_producers=1, slots_per_producer=4, slot_bytes=4096, param_bytes=4096, prefix=prefix
    )
    assert _entries(prefix) == [f"{prefix}_p", f"{prefix}_q"]
    # A child attaches, puts and exits normally: the segments must survive it, silently.
    child = _spawn(
        """
import json, sys, numpy as np
from jaxrl_impala.transport import connect_actor
producer, params = connect_actor(json.loads(sys.argv[1]), 0)
assert producer.put({"x": np.arange(3)}, {}, timeout=5)
""",
        json.dumps(t.address),
    )
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()
    assert b"leaked" not in err and b"resource_tracker" not in err, err.decode()
    assert _entries(prefix) == [f"{prefix}_p", f"{prefix}_q"]
    frame = t.queue.get(timeout=1)
    np.testing.assert_array_equal(frame.arrays["x"], [0, 1, 2])
    # Closing while the caller still holds zero-copy views must not raise; the views stay
    # readable and the names are gone at once.
    t.close()
    t.close()  # idempotent
    assert _entries(prefix) == []
    np.testing.assert_array_equal(frame.arrays["x"], [0, 1, 2])


def test_owner_dropped_without_close_is_unlinked_by_its_finalizer(prefix):
    queue = ShmQueue.create(1, 2, 1024, name_prefix=prefix)
    store = ShmParamStore.create(1024, name_prefix=prefix)
    assert len(_entries(prefix)) == 2
    del queue, store
    gc.collect()
    assert _entries(prefix) == []


@pytest.mark.parametrize(
    "sig, returncode", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)]
)
def test_owner_signal_cleans_up_and_stops_producers(prefix, sig, returncode):
    owner = _spawn(OWNER_SRC, prefix)
    producer = None
    try:
        address = _readline(owner)
        producer = _spawn(PRODUCER_LOOP_SRC, address.decode().strip(), 100)
        assert _readline(producer) == b"attached\n"
        time.sleep(0.3)  # the producer has filled the ring and is blocked in put
        owner.send_signal(sig)
        owner.wait(timeout=10)
        assert owner.returncode == returncode, owner.stderr.read().decode()
        assert _entries(prefix) == []  # removed by the owner's own handler
        start = time.monotonic()
        out, err = producer.communicate(timeout=10)
        assert producer.returncode == 0, err.decode()
        assert out == b"owner gone\n" and time.monotonic() - start < 3.0
    finally:
        _reap(owner, *([producer] if producer else []))


def test_an_ignored_sigint_stays_ignored_and_closes_nothing(prefix):
    """An owner that ignores SIGINT (a background job of a script) keeps ignoring it: the
    cleanup handler must not take it over, or SIGINT would remove the segments under an
    owner that carries on (issue 18: the segments were gone and the owner never exited)."""
    owner = _spawn(OWNER_SRC, prefix, "ignore-sigint")
    try:
        _readline(owner)
        owner.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert owner.poll() is None and _entries(prefix) == [f"{prefix}_p", f"{prefix}_q"]
        owner.send_signal(signal.SIGTERM)  # not ignored: cleans up and ends the owner
        owner.wait(timeout=10)
        assert owner.returncode == -signal.SIGTERM, owner.stderr.read().decode()
        assert _entries(prefix) == []
    finally:
        _reap(owner)


def test_producer_exits_by_itself_when_the_owner_is_sigkilled(prefix):
    owner = _spawn(OWNER_SRC, prefix)
    producer = None
    try:
        address = _readline(owner)
        producer = _spawn(PRODUCER_LOOP_SRC, address.decode().strip(), 100)
        assert _readline(producer) == b"attached\n"
        time.sleep(0.3)
        owner.kill()  # SIGKILL; left unreaped (a zombie) until the producer is done
        start = time.monotonic()
        out, err = producer.communicate(timeout=10)
        assert producer.returncode == 0, err.decode()
        assert out == b"owner gone\n" and time.monotonic() - start < 3.0
        owner.wait(timeout=5)
        # No handler ran; the owner's resource tracker unlinks what it created when it sees
        # the owner die. Give it a moment.
        deadline = time.monotonic() + 5
        while _entries(prefix) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _entries(prefix) == []
    finally:
        _reap(owner, *([producer] if producer else []))


def test_producer_sigkilled_mid_put_does_not_disturb_the_owner(prefix):
    t = create_transport(
        num_producers=2,
        slots_per_producer=2,
        slot_bytes=(2 << 20) + 4096,
        param_bytes=4096,
        prefix=prefix,
    )
    child = _spawn(PRODUCER_LOOP_SRC, json.dumps(t.address), 2 << 20)  # 2 MB unrolls
    try:
        assert _readline(child) == b"attached\n"
        received = 0
        while received < 5:  # keep the ring draining so the child is always inside put
            received += t.queue.get(timeout=5) is not None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
    finally:
        _reap(child)
    while t.queue.get(timeout=0.05) is not None:
        received += 1
    # The owner carries on: another actor, and a restart of the killed one, both deliver.
    (other, _), (restarted, _) = connect_actor(t.address, 1), connect_actor(t.address, 0)
    assert other.put({"x": np.full(10, 1, np.uint8)}, {"t": 1}, timeout=1)
    assert restarted.put({"x": np.full(10, 2, np.uint8)}, {"t": 2}, timeout=1)
    got = sorted(int(f.arrays["x"][0]) for f in iter(lambda: t.queue.get(timeout=0.1), None))
    assert got == [1, 2]
    assert t.queue.stats["frames_rejected"] == 0
    other.close()
    restarted.close()
    t.close()
    assert _entries(prefix) == []


def test_cleanup_stale_removes_leftovers_by_prefix(prefix):
    for suffix in ("_q", "_p"):  # what a crashed run leaves behind
        seg = shared_memory.SharedMemory(name=prefix + suffix, create=True, size=64)
        resource_tracker.unregister(seg._name, "shared_memory")
        seg.close()
    assert len(_entries(prefix)) == 2
    assert cleanup_stale(prefix) == [f"{prefix}_p", f"{prefix}_q"]
    assert _entries(prefix) == []
    with pytest.raises(ValueError, match="prefix"):
        cleanup_stale("j")


# ----------------------------------------------------------------------------- attaching


def test_attach_errors_are_clear(prefix):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ShmQueue.attach(f"{prefix}_nope", 0)
    t = create_transport(
        num_producers=2, slots_per_producer=2, slot_bytes=1024, param_bytes=1024, prefix=prefix
    )
    try:
        with pytest.raises(ValueError, match="not a jaxrl_impala queue"):
            ShmQueue.attach(t.address["params"], 0)
        with pytest.raises(ValueError, match="not a jaxrl_impala param store"):
            ShmParamStore.attach(t.address["queue"])
        with pytest.raises(ValueError, match="producer_id"):
            ShmQueue.attach(t.address["queue"], 2)
        with pytest.raises(ValueError, match="overflow"):
            ShmQueue.create(1, 1, 64, name_prefix=prefix + "x", overflow="drop_newest")
        producer = ShmQueue.attach(t.address["queue"], 1)
        assert producer.owner_alive()
    finally:
        t.close()
    assert not producer.owner_alive() and producer.put({"x": np.zeros(1)}) is False
    producer.close()


# ----------------------------------------------------------------------------- hostile rings


def test_hostile_ring_counters_are_rejected_not_raised(prefix):
    queue = ShmQueue.create(1, 4, 1024, name_prefix=prefix)
    p = ShmQueue.attach(queue.name, 0)
    good = {"x": np.arange(4, dtype=np.int32)}
    assert p.put(good, {"i": 0})
    p._ring[0, 1] = 10**12  # length beyond the slot
    assert queue.get(timeout=0) is None
    assert queue.stats["frames_rejected"] == 1

    assert p.put(good, {"i": 1})
    p._ring[1, 0] = 12345  # sequence word not the one expected for this unroll
    assert queue.get(timeout=0) is None
    assert queue.stats["frames_rejected"] == 2

    # A producer killed mid-write leaves an odd sequence word and an unpublished slot: the
    # learner does not see it, and the restarted producer rewrites the same slot.
    p._ring[2, 0] = 2 * 2 + 1
    p._slot_views[2][:8] = b"garbage!"
    assert queue.get(timeout=0) is None and queue.qsize() == 0
    p.close()
    p = ShmQueue.attach(queue.name, 0)
    assert p.put(good, {"i": 2})
    assert queue.get(timeout=0).meta == {"i": 2}

    p._ctrl[0] = 2**62  # head far beyond the ring (block mode: impossible)
    assert queue.get(timeout=0) is None  # resynchronised, nothing valid to deliver
    assert queue.stats["frames_rejected"] >= 3
    assert queue.qsize() <= 4
    p.close()
    queue.close()


def test_a_frame_whose_bytes_land_late_is_read_again_not_dropped(prefix, monkeypatch):
    """On a weakly ordered CPU a slot's sequence word can be seen before its bytes: the first
    read fails its crc32, a later one is whole. The learner reads it again; only a frame that
    stays bad is rejected."""
    from jaxrl_impala.transport import shm as shm_module

    queue = ShmQueue.create(1, 4, 1024, name_prefix=prefix)
    p = ShmQueue.attach(queue.name, 0)
    good = {"x": np.arange(4, dtype=np.int32)}
    assert p.put(good, {"i": 0})
    view = p._slot_views[0]
    saved = bytes(view[30:31])
    view[30:31] = bytes([saved[0] ^ 0xFF])  # not yet visible: the crc fails
    real_decode, calls = shm_module.decode, []

    def late(buf, **kw):  # the writer's byte lands between the first read and the second
        calls.append(1)
        if len(calls) == 2:
            view[30:31] = saved
        return real_decode(buf, **kw)

    monkeypatch.setattr(shm_module, "decode", late)
    frame = queue.get(timeout=0)
    assert frame is not None and frame.meta == {"i": 0}
    np.testing.assert_array_equal(frame.arrays["x"], good["x"])
    assert queue.stats["frames_rejected"] == 0 and queue.stats["frames_reread"] == 1
    queue.release(frame)

    assert p.put(good, {"i": 1})
    p._slot_views[1][30:31] = bytes([p._slot_views[1][30] ^ 0xFF])  # bad for good
    assert queue.get(timeout=0) is None
    assert queue.stats["frames_rejected"] == 1 and queue.stats["frames_reread"] == 1 + 3
    p.close()
    queue.close()

"""The contract every transport passes. Parametrised by transport kind: to add one, add a
`Harness` subclass and its name to `HARNESSES`; the tests themselves are kind-agnostic and
talk to the transport only through `create_transport` / `connect_actor` and the protocols.

The one documented difference is where the queue bound applies (`Harness.bound`): shm bounds
each actor's ring (``slots`` per producer); Redis bounds the whole list at
``num_producers * slots``, because there actor ids are metadata and remote actors may join."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from redis_server import redis_server  # noqa: F401  (the fixture)

from jaxrl_impala.transport import (
    FrameSpec,
    FrameTooLargeError,
    ParamStore,
    ShmQueue,
    TrajectoryConsumer,
    TrajectoryProducer,
    Transport,
    connect_actor,
    create_transport,
    encode,
    make_prefix,
)

# One definition of the unroll pattern, executed here and in the producer child processes.
# Every byte depends on (producer, seq), so a torn or duplicated frame cannot pass the check.
PATTERN_SRC = """
import numpy as np

def make_unroll(producer, seq, nbytes):
    ramp = np.arange(nbytes, dtype=np.int64)
    obs = ((ramp * 7 + producer * 131 + seq * 17) % 251).astype(np.uint8)
    return {
        "obs": obs,
        "tag": np.array([producer, seq], np.int64),
        "rewards": np.full((8, 4), seq + producer / 8, np.float32),
    }
"""
_pattern: dict = {}
exec(PATTERN_SRC, _pattern)
make_unroll = _pattern["make_unroll"]

PRODUCER_SRC = (
    PATTERN_SRC
    + """
import json, sys
from jaxrl_impala.transport import connect_actor

address, producer_id = json.loads(sys.argv[1]), int(sys.argv[2])
count, nbytes, pause = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
producer, params = connect_actor(address, producer_id)
ok = 0
for seq in range(count):
    unroll = make_unroll(producer_id, seq, nbytes)
    if not producer.put(unroll, {"producer": producer_id, "seq": seq}, timeout=20.0):
        break
    ok += 1
    if pause:
        time.sleep(pause)
print(json.dumps({"ok": ok, **producer.stats}))
producer.close()
params.close()
""".replace("import json, sys", "import json, sys, time")
)

PARAM_READER_SRC = """
import json, sys, time
from jaxrl_impala.transport import connect_actor

address, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
producer, params = connect_actor(address, 0)
last, fetches, deadline = -1, 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    got = params.fetch(newer_than=last)
    if got is None:
        continue
    version, arrays = got
    assert version > last, (version, last)
    for name, arr in arrays.items():
        assert (arr == version).all(), f"torn read: {name} mixes versions at v{version}"
    last, fetches = version, fetches + 1
print(json.dumps({"fetches": fetches, "last": last, **params.stats}))
producer.close()
params.close()
"""

CHILD_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def check_unroll(frame, nbytes):
    """Verify every byte of a received unroll; returns its (producer, seq)."""
    producer, seq = (int(x) for x in frame.arrays["tag"])
    assert frame.meta == {"producer": producer, "seq": seq}
    want = make_unroll(producer, seq, nbytes)
    for name, arr in want.items():
        np.testing.assert_array_equal(frame.arrays[name], arr, err_msg=name)
    return producer, seq


# ----------------------------------------------------------------------------- harnesses


class Harness:
    """Creates transports of one kind and cleans up after them."""

    kind = ""
    bound = "per_producer"  # or "total": see the module docstring

    def __init__(self):
        self.prefix = make_prefix("jritest")
        self.transports: list[Transport] = []
        self.handles = []

    def create_kwargs(self) -> dict:
        return {}

    def create(
        self,
        *,
        num_producers=2,
        slots=4,
        slot_bytes=1 << 16,
        param_bytes=1 << 20,
        overflow="block",
        spec=None,
    ) -> Transport:
        t = create_transport(
            self.kind,
            num_producers=num_producers,
            slots_per_producer=slots,
            slot_bytes=slot_bytes,
            param_bytes=param_bytes,
            overflow=overflow,
            prefix=f"{self.prefix}_{len(self.transports)}",
            spec=spec,
            **self.create_kwargs(),
        )
        self.transports.append(t)
        return t

    def connect(self, t: Transport, producer_id: int):
        handles = connect_actor(t.address, producer_id)
        self.handles.extend(handles)
        return handles

    def inject_raw(self, t: Transport, producer_id: int, data: bytes) -> None:
        """Enqueue arbitrary bytes as if a hostile or broken actor had sent them."""
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """Server-side state the transports failed to remove."""
        raise NotImplementedError

    def close_all(self) -> None:
        for h in self.handles:
            h.close()
        for t in self.transports:
            t.close()


class ShmHarness(Harness):
    kind = "shm"

    def inject_raw(self, t, producer_id, data):
        p = ShmQueue.attach(t.address["queue"], producer_id)
        try:  # write the slot the way `put` does, but with raw bytes instead of a frame
            head = p._head
            slot = head % p._layout.slots
            p._slot_views[slot][: len(data)] = data
            p._ring[slot, 1] = len(data)
            p._ring[slot, 0] = 2 * head + 2
            p._ctrl[0] = head + 1
        finally:
            p.close()

    def leftovers(self):
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(self.prefix))


class RedisHarness(Harness):
    kind = "redis"
    bound = "total"

    def __init__(self, server):
        super().__init__()
        self.server = server
        self.client = server.client()

    def create_kwargs(self):
        return {"url": self.server.url}

    def inject_raw(self, t, producer_id, data):
        self.client.rpush(f"{t.address['prefix']}:unrolls", data)

    def leftovers(self):
        # The closed marker is meant to outlive the queue (with a TTL) so late actors see it.
        keys = {k.decode() for k in self.client.scan_iter(match=f"{self.prefix}*")}
        markers = {k for k in keys if k.endswith(":closed")}
        assert all(self.client.pttl(k) > 0 for k in markers)
        return sorted(keys - markers)

    def close_all(self):
        super().close_all()
        self.client.close()


HARNESSES = {"shm": ShmHarness, "redis": RedisHarness}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request):
    if request.param == "redis":
        h = RedisHarness(request.getfixturevalue("redis_server"))
    else:
        h = HARNESSES[request.param]()
    try:
        yield h
    finally:
        h.close_all()
    assert h.leftovers() == []


def _drain(queue, nbytes, timeout=0.05):
    got = []
    while (frame := queue.get(timeout=timeout)) is not None:
        got.append(check_unroll(frame, nbytes))
    return got


# ----------------------------------------------------------------------------- the queue


def test_every_unroll_arrives_once_intact_in_process(harness):
    t = harness.create(num_producers=3, slots=8)
    producers = [harness.connect(t, i)[0] for i in range(3)]
    assert isinstance(t.queue, TrajectoryConsumer) and isinstance(t.params, ParamStore)
    assert all(isinstance(p, TrajectoryProducer) for p in producers)
    sent = set()
    for seq in range(5):
        for i, p in enumerate(producers):
            assert p.put(make_unroll(i, seq, 1000), {"producer": i, "seq": seq})
            sent.add((i, seq))
    assert t.queue.qsize() == 15
    got = _drain(t.queue, 1000)
    assert sorted(got) == sorted(sent)  # exactly once
    assert t.queue.qsize() == 0 and t.queue.get(timeout=0) is None
    assert t.queue.stats["got"] == 15 and t.queue.stats["frames_rejected"] == 0
    t.queue.close()
    assert t.queue.stats["put"] == 15  # counters survive close, for the final report
    # Round-robin: the first three frames come from three different producers.
    assert len({p for p, _ in got[:3]}) == 3


@pytest.mark.parametrize("overflow", ["block", "drop_oldest"])
def test_real_producer_processes_exactly_once_and_bounded(harness, overflow):
    """Several producer processes, a few hundred ~100 KB frames, a small ring."""
    if overflow == "block":
        num_producers, count, nbytes, pause, consumer_pause = 3, 100, 100_000, 0.0, 0.0
    else:  # a slow consumer so the producers overrun their rings
        num_producers, count, nbytes, pause, consumer_pause = 2, 150, 20_000, 0.0005, 0.004
    slots = 4
    t = harness.create(
        num_producers=num_producers, slots=slots, slot_bytes=nbytes + 4096, overflow=overflow
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PRODUCER_SRC,
                json.dumps(t.address),
                str(i),
                str(count),
                str(nbytes),
                str(pause),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CHILD_ENV,
        )
        for i in range(num_producers)
    ]
    got, max_depth, deadline = [], 0, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            max_depth = max(max_depth, t.queue.qsize())
            frame = t.queue.get(timeout=0.05)
            if frame is not None:
                got.append(check_unroll(frame, nbytes))
                if consumer_pause:
                    time.sleep(consumer_pause)
            elif all(p.poll() is not None for p in procs):
                got += _drain(t.queue, nbytes)
                break
        outputs = [p.communicate(timeout=10) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        assert b"resource_tracker" not in err, err.decode()  # the child must not "own" it
    reports = [json.loads(out) for out, _ in outputs]
    assert [r["ok"] for r in reports] == [count] * num_producers  # every put accepted

    assert len(got) == len(set(got))  # no duplicates
    assert max_depth <= num_producers * slots  # bounded
    for i in range(num_producers):  # FIFO per producer (no promise across producers)
        seqs = [s for p, s in got if p == i]
        assert seqs == sorted(seqs)
    stats = t.queue.stats
    assert stats["frames_rejected"] == 0 and stats["got"] == len(got)
    if overflow == "block":
        assert sorted(got) == [(i, s) for i in range(num_producers) for s in range(count)]
        assert stats["unrolls_dropped"] == 0
    else:
        # Exactly accounted: every unroll put was either delivered or counted as dropped,
        # and each producer's newest unroll is never dropped.
        assert stats["unrolls_dropped"] > 0
        assert len(got) + stats["unrolls_dropped"] == num_producers * count
        newest = {(i, count - 1) for i in range(num_producers)}
        if harness.bound == "per_producer":  # each producer's newest unroll is never dropped
            assert newest <= set(got)
        else:  # the newest unroll of all is never dropped
            assert newest & set(got)


def test_block_policy_put_times_out_when_full_and_resumes_after_get(harness):
    t = harness.create(num_producers=1, slots=3)
    (producer, _) = harness.connect(t, 0)
    for seq in range(3):
        assert producer.put(make_unroll(0, seq, 100), {"producer": 0, "seq": seq})
    start = time.monotonic()
    assert not producer.put(
        make_unroll(0, 3, 100),
        {"producer": 0, "seq": 3},
        timeout=0.2,
    )
    assert 0.15 <= time.monotonic() - start < 2.0
    assert t.queue.qsize() == 3
    frame = t.queue.get(timeout=1)
    assert check_unroll(frame, 100) == (0, 0)
    t.queue.release(frame)
    assert producer.put(
        make_unroll(0, 3, 100),
        {"producer": 0, "seq": 3},
        timeout=1.0,
    )
    assert [s for _, s in _drain(t.queue, 100)] == [1, 2, 3]


def test_drop_policy_keeps_newest_counts_drops_and_never_duplicates(harness):
    t = harness.create(num_producers=2, slots=4, overflow="drop_oldest")
    (p0, _), (p1, _) = harness.connect(t, 0), harness.connect(t, 1)
    start = time.monotonic()
    for seq in range(10):
        assert p0.put(make_unroll(0, seq, 500), {"producer": 0, "seq": seq})
    assert p1.put(make_unroll(1, 0, 500), {"producer": 1, "seq": 0})
    assert time.monotonic() - start < 1.0  # never waits
    if harness.bound == "per_producer":  # p0's ring keeps its newest 4, p1's is untouched
        kept = [(0, 6), (0, 7), (0, 8), (0, 9), (1, 0)]
    else:  # the list keeps the newest 8 of all 11
        kept = [(0, s) for s in range(3, 10)] + [(1, 0)]
    assert t.queue.qsize() == len(kept)  # bounded
    got = _drain(t.queue, 500)
    assert sorted(got) == kept
    assert t.queue.stats["unrolls_dropped"] == 11 - len(kept)


def test_close_makes_blocked_and_later_puts_return_false_promptly(harness):
    t = harness.create(num_producers=1, slots=2)
    (producer, _) = harness.connect(t, 0)
    unroll = make_unroll(0, 0, 100)
    assert producer.put(unroll, {}) and producer.put(unroll, {})
    result = {}

    def blocked_put():
        start = time.monotonic()
        result["ok"] = producer.put(unroll, {}, timeout=30.0)
        result["waited"] = time.monotonic() - start

    thread = threading.Thread(target=blocked_put)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # really blocked on the full ring
    closed_at = time.monotonic()
    t.queue.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and result["ok"] is False
    assert time.monotonic() - closed_at < 1.0
    assert producer.put(unroll, {}, timeout=30.0) is False  # immediately, after close
    assert t.queue.get(timeout=0) is None


def test_corrupt_frames_are_counted_and_skipped(harness):
    meta = {"producer": (0, 7), "seq": (0, 99)}
    spec = FrameSpec.from_arrays(make_unroll(0, 0, 256), meta=meta, finite=("rewards",))
    t = harness.create(num_producers=1, slots=16, spec=spec)
    (producer, _) = harness.connect(t, 0)
    valid = encode(make_unroll(0, 1, 256), {"producer": 0, "seq": 1})
    flipped = bytearray(valid)
    flipped[-5] ^= 0xFF
    nan_rewards = {**make_unroll(0, 5, 256), "rewards": np.full((8, 4), np.nan, np.float32)}
    garbage = [
        os.urandom(3000),
        bytes(flipped),  # crc
        valid[:-8],  # truncated
        b"\x80\x04\x95" + os.urandom(100),  # looks like a pickle
        encode({"obs": np.zeros(3, np.uint8)}, {"producer": 0, "seq": 9}),  # violates the spec
        encode(make_unroll(0, 3, 256), {"producer": 0}),  # no "seq"
        encode(make_unroll(0, 4, 256), {"producer": 9, "seq": 4}),  # producer out of range
        encode(nan_rewards, {"producer": 0, "seq": 5}),  # non-finite rewards
    ]
    assert producer.put(make_unroll(0, 0, 256), {"producer": 0, "seq": 0})
    for data in garbage:
        harness.inject_raw(t, 0, data)
    producer.close()
    (producer, _) = harness.connect(t, 0)  # a restarted actor resumes after the garbage
    assert producer.put(make_unroll(0, 2, 256), {"producer": 0, "seq": 2})
    assert _drain(t.queue, 256) == [(0, 0), (0, 2)]
    stats = t.queue.stats
    assert stats["frames_rejected"] == len(garbage)
    by_reason = {r: stats[f"frames_rejected_{r}"] for r in ("malformed", "spec", "meta", "values")}
    assert by_reason == {"malformed": 4, "spec": 1, "meta": 2, "values": 1}


def test_unroll_larger_than_a_slot_raises_and_leaves_the_queue_usable(harness):
    t = harness.create(num_producers=1, slots=2, slot_bytes=4096)
    (producer, _) = harness.connect(t, 0)
    with pytest.raises(FrameTooLargeError):
        producer.put(make_unroll(0, 0, 10_000), {"producer": 0, "seq": 0})
    assert producer.put(make_unroll(0, 1, 1000), {"producer": 0, "seq": 1})
    assert _drain(t.queue, 1000) == [(0, 1)]
    assert t.queue.stats["frames_rejected"] == 0


# ----------------------------------------------------------------------------- params


def test_params_fetch_semantics(harness):
    t = harness.create(param_bytes=1 << 16)
    (_, reader_a), (_, reader_b) = harness.connect(t, 0), harness.connect(t, 1)
    assert reader_a.fetch() is None  # nothing published yet
    w = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.array(5, np.int64)}
    t.params.publish(1, w)
    for reader in (reader_a, reader_b):
        version, arrays = reader.fetch()
        assert version == 1
        np.testing.assert_array_equal(arrays["w"], w["w"])
        np.testing.assert_array_equal(arrays["step"], 5)
    assert reader_a.fetch(newer_than=1) is None
    t.params.publish(2, {"w": w["w"] + 1, "step": np.array(6, np.int64)})
    t.params.publish(3, {"w": w["w"] + 2, "step": np.array(7, np.int64)})
    version, arrays = reader_a.fetch(newer_than=1)
    assert version == 3 and int(arrays["step"]) == 7  # the latest, not the next
    with pytest.raises(FrameTooLargeError):
        t.params.publish(4, {"w": np.zeros(1 << 16, np.float32)})
    assert reader_b.fetch(newer_than=-1)[0] == 3  # a failed publish leaves the old params


def test_params_reader_process_never_sees_a_torn_mix(harness):
    t = harness.create(param_bytes=3 << 20)
    reader = subprocess.Popen(
        [sys.executable, "-c", PARAM_READER_SRC, json.dumps(t.address), "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CHILD_ENV,
    )
    version, start = 0, time.monotonic()
    try:
        while reader.poll() is None and time.monotonic() - start < 30:
            # ~1.2 MB per version, every element equal to the version number
            t.params.publish(
                version,
                {
                    "w": np.full(1 << 18, version, np.float32),
                    "b": np.full(1 << 15, version, np.int64),
                },
            )
            version += 1
            time.sleep(0.001)
        out, err = reader.communicate(timeout=10)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["fetches"] >= 5 and report["frames_rejected"] == 0
    assert 0 <= report["last"] < version

"""From the queue to the update's batch: copying, stale unrolls, episode statistics, and the
prefetching thread (one batch ahead, errors handed over, stops when told)."""

import threading
import time

import numpy as np
import pytest

from jaxrl_impala.learner.batches import (
    InlineBatches,
    Prefetcher,
    batch_source,
    stage,
    take_unrolls,
)
from jaxrl_impala.transport.codec import Frame

T, B, K = 3, 2, 2  # unroll length, envs per unroll, reward terms
TERMS = ("progress", "time")


def unroll(seed: int, actor_id: int = 0, index: int = 0, version: int = 0):
    rng = np.random.default_rng(seed)
    returns = np.full((T, B), np.nan, np.float32)
    returns[1, 0] = rng.normal()  # one episode ends in every unroll
    terms = np.zeros((T, B, K), np.float32)
    terms[1, 0] = rng.normal(size=K)
    arrays = {
        "obs": rng.normal(size=(T + 1, B, 4)).astype(np.float32),
        "actions": rng.integers(0, 3, (T, B)).astype(np.int32),
        "behaviour_logp": rng.normal(size=(T, B)).astype(np.float32),
        "behaviour_dist": rng.normal(size=(T, B, 3)).astype(np.float32),
        "rewards": rng.normal(size=(T, B)).astype(np.float32),
        "terminated": rng.random((T, B)) < 0.3,
        "truncated": np.zeros((T, B), bool),
        "truncation_value": np.zeros((T, B), np.float32),
        "discounted_return": rng.normal(size=(T, B)).astype(np.float32),
        "episode_return": returns,
        "episode_length": np.zeros((T, B), np.int32),
        "episode_terms": terms,
    }
    meta = {"actor_id": actor_id, "unroll_index": index, "policy_version": version}
    return arrays, meta


class FakeQueue:
    """Serves (arrays, meta) pairs. As the shared-memory queue does, a frame's arrays are
    views of one buffer that the next ``get`` overwrites; an empty queue waits out the
    timeout. ``fail_at``: the get (1-based) that raises instead."""

    def __init__(self, items, fail_at: int | None = None):
        self.items = list(items)
        self.gets = 0
        self.fail_at = fail_at
        self._buf: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, timeout=None):
        with self._lock:
            self.gets += 1
            if self.fail_at is not None and self.gets >= self.fail_at:
                raise ConnectionError("the queue went away")
            if self.items:
                arrays, meta = self.items.pop(0)
                for name, v in arrays.items():
                    self._buf.setdefault(name, np.empty_like(v))[...] = v
                return Frame(arrays={n: self._buf[n] for n in arrays}, meta=dict(meta))
        time.sleep(min(timeout or 0.0, 0.01))
        return None

    def remaining(self) -> int:
        with self._lock:
            return len(self.items)


def always() -> bool:
    return True


def test_take_unrolls_copies_each_frame_and_drops_the_stale_ones():
    items = [unroll(0, version=5), unroll(1, version=1), unroll(2, version=4), unroll(3, version=5)]
    taken, dropped, rejected = take_unrolls(FakeQueue(items), 3, lambda: 5, 2, always)
    assert dropped == 1  # version 1 is 4 behind 5, more than the 2 allowed
    assert rejected == {"meta": 0, "future_version": 0}
    assert [t.policy_version for t in taken] == [5, 4, 5]
    # The queue reused its buffer for every frame: each kept unroll must still be its own.
    for t, (arrays, _) in zip(taken, [items[0], items[2], items[3]], strict=True):
        for name, v in arrays.items():
            np.testing.assert_array_equal(t.arrays[name], v)

    # max_policy_lag 0 keeps everything
    taken, dropped, _ = take_unrolls(FakeQueue(items), 4, lambda: 100, 0, always)
    assert dropped == 0 and len(taken) == 4


def test_frames_from_the_future_or_without_their_meta_are_rejected_and_counted():
    """A version newer than the learner's (a dead run's actors, a forged number) would make
    the lag negative; missing or non-int meta (a queue without a spec) would raise. Each is
    rejected, counted by reason, and the batch fills up from the honest frames."""
    arrays, good_meta = unroll(0, version=5)
    bad_metas = [
        ({**good_meta, "policy_version": 6}, "future_version"),
        ({**good_meta, "policy_version": 2**62}, "future_version"),
        ({k: v for k, v in good_meta.items() if k != "policy_version"}, "meta"),
        ({}, "meta"),
        ({**good_meta, "actor_id": "0"}, "meta"),
        ({**good_meta, "unroll_index": 1.5}, "meta"),
        ({**good_meta, "policy_version": True}, "meta"),
    ]
    items = [(arrays, meta) for meta, _ in bad_metas]
    items += [unroll(1, version=5), unroll(2, version=0)]
    taken, dropped, rejected = take_unrolls(FakeQueue(items), 2, lambda: 5, 0, always)
    assert [t.policy_version for t in taken] == [5, 0] and dropped == 0
    assert rejected == {"future_version": 2, "meta": 5}

    batches = InlineBatches(FakeQueue(items * 2), 2, 0, lambda b: b, TERMS)
    assert batches.next(5, always) is not None and batches.next(5, always) is not None
    assert batches.rejected == {"future_version": 4, "meta": 10}
    prefetch = Prefetcher(InlineBatches(FakeQueue(items), 2, 0, lambda b: b, TERMS))
    try:
        assert prefetch.next(5, always) is not None
        assert prefetch.rejected == {"future_version": 2, "meta": 5}
    finally:
        prefetch.close()


def test_a_batch_gathered_ahead_takes_versions_made_since_it_was_asked_for():
    """The Prefetcher gathers update v+2's batch while update v+1 runs: once v+1's params are
    out (published early, e.g. by a checkpoint), honest unrolls carry v+1 though the batch
    was asked for at v. Judged against the learner's newest version they are kept; judged
    against the version asked for, every one was rejected and the run hung."""
    items = [unroll(0, version=6), unroll(1, version=6)]
    taken, _, rejected = take_unrolls(FakeQueue(items), 2, lambda: 5, 0, always, lambda: 6)
    assert [t.policy_version for t in taken] == [6, 6]
    assert rejected["future_version"] == 0
    newest = [6]
    prefetch = Prefetcher(
        InlineBatches(FakeQueue(items), 2, 0, lambda b: b, TERMS, newest=lambda: newest[0])
    )
    try:
        assert prefetch.next(5, always).policy_versions == [6, 6]
    finally:
        prefetch.close()


def test_take_unrolls_returns_short_once_told_to_stop():
    calls = []

    def twice() -> bool:
        calls.append(1)
        return len(calls) <= 2

    taken, _, _ = take_unrolls(FakeQueue([unroll(0)]), 3, lambda: 0, 0, twice)
    assert len(taken) == 1 and len(calls) == 3


def test_stage_concatenates_along_envs_and_collects_the_finished_episodes():
    items = [unroll(7), unroll(8)]
    taken, _, _ = take_unrolls(FakeQueue(items), 2, lambda: 0, 0, always)
    staged = stage(taken, lambda batch: batch, TERMS)
    a, b = items[0][0], items[1][0]
    for name in ("obs", "actions", "rewards", "terminated", "behaviour_dist"):
        expected = np.empty((a[name].shape[0], 2 * B, *a[name].shape[2:]), a[name].dtype)
        for env in range(B):
            expected[:, env] = a[name][:, env]
            expected[:, B + env] = b[name][:, env]
        np.testing.assert_array_equal(staged.batch[name], expected)
    assert set(staged.batch) == {
        "obs", "actions", "behaviour_logp", "behaviour_dist", "rewards", "terminated",
        "truncated", "truncation_value", "discounted_return",
    }  # fmt: skip
    np.testing.assert_allclose(
        staged.episode_returns, [a["episode_return"][1, 0], b["episode_return"][1, 0]]
    )
    for j, name in enumerate(TERMS):
        mean = (a["episode_terms"][1, 0, j] + b["episode_terms"][1, 0, j]) / 2
        assert staged.episode_terms[name] == pytest.approx(mean)


def test_inline_batches_can_order_unrolls_by_actor_and_index():
    items = [unroll(1, actor_id=1, index=0), unroll(2, actor_id=0, index=1),
             unroll(3, actor_id=0, index=0)]  # fmt: skip
    batches = InlineBatches(FakeQueue(items), 3, 0, lambda b: b, TERMS, ordered=True)
    staged = batches.next(0, always)
    expected = np.concatenate([items[2][0]["obs"], items[1][0]["obs"], items[0][0]["obs"]], 1)
    np.testing.assert_array_equal(staged.batch["obs"], expected)
    assert batches.next(0, lambda: False) is None


def _wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prefetcher_hands_over_batches_in_order_and_stays_one_batch_ahead():
    items = [unroll(i, index=i) for i in range(8)]
    queue = FakeQueue(items)
    prefetch = Prefetcher(InlineBatches(queue, 2, 0, lambda b: b, TERMS))
    try:
        assert queue.remaining() == 8  # nothing is taken before the first ask
        first = prefetch.next(0, always)
        np.testing.assert_array_equal(
            first.batch["obs"], np.concatenate([items[0][0]["obs"], items[1][0]["obs"]], 1)
        )
        # The next batch is gathered at once, and no more than that one.
        _wait_until(lambda: queue.remaining() == 4)
        time.sleep(0.2)
        assert queue.remaining() == 4
        second = prefetch.next(1, always)
        np.testing.assert_array_equal(
            second.batch["obs"], np.concatenate([items[2][0]["obs"], items[3][0]["obs"]], 1)
        )
        _wait_until(lambda: queue.remaining() == 2)
    finally:
        prefetch.close()
    assert not prefetch._thread.is_alive()


def test_prefetcher_raises_the_queue_error_in_the_learner_thread():
    prefetch = Prefetcher(
        InlineBatches(FakeQueue([unroll(0)] * 4, fail_at=3), 2, 0, lambda b: b, TERMS)
    )
    try:
        assert prefetch.next(0, always) is not None
        deadline = time.monotonic() + 10.0
        with pytest.raises(ConnectionError, match="went away"):
            prefetch.next(1, lambda: time.monotonic() < deadline)
    finally:
        prefetch.close()


def test_prefetcher_returns_none_when_told_to_stop_and_close_joins_its_thread():
    prefetch = Prefetcher(InlineBatches(FakeQueue([]), 2, 0, lambda b: b, TERMS))
    asked = []

    def a_few_times() -> bool:
        asked.append(1)
        return len(asked) < 4

    assert prefetch.next(0, a_few_times) is None
    prefetch.close()
    assert not prefetch._thread.is_alive()


@pytest.mark.parametrize(
    "overlap, deterministic, num_processes, kind, ordered",
    [
        (True, False, 1, Prefetcher, None),
        (False, False, 1, InlineBatches, False),  # learner.overlap: false
        (True, True, 1, InlineBatches, True),  # deterministic: in order, on the learner thread
        (True, False, 2, InlineBatches, False),  # several processes: JAX work on one thread
    ],
)
def test_batch_source_prefetches_only_when_overlap_is_asked_and_allowed(
    overlap, deterministic, num_processes, kind, ordered
):
    source = batch_source(
        FakeQueue([]), 2, 0, lambda b: b, TERMS,
        overlap=overlap, deterministic=deterministic, num_processes=num_processes,
    )  # fmt: skip
    try:
        assert type(source) is kind
        if ordered is not None:
            assert source.ordered is ordered
    finally:
        source.close()

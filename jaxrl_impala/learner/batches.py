"""From the trajectory queue to the update's batch: take unrolls off the queue, drop stale
ones, concatenate them, and (on a thread, while the update runs) stage the next batch.

The learner's host work per update (copying k frames out of the queue, concatenating
them, the host-to-device copy, the episode statistics) is small but on the update's path;
:class:`Prefetcher` does it for update v+1 while update v runs, so the learner's thread goes
from one update straight to the next.
"""

from __future__ import annotations

import queue as queue_lib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxrl_impala import unroll


@dataclass
class Taken:
    """One unroll taken off the queue: who acted it, with which params, and its arrays
    (private copies, ``[T(+1), B, ...]`` each)."""

    actor_id: int
    unroll_index: int
    policy_version: int
    arrays: dict[str, np.ndarray]


# Why the batcher rejects a frame the queue let through (``frames_rejected_<reason>``):
#   meta: its metadata is missing or not integers (a queue built without a spec);
#   future_version: acted with params newer than the learner's, which no honest actor has
#     (the actors of a dead run, or a forged version; the lag would go negative).
BATCHER_REJECT_REASONS = ("meta", "future_version")


def _frame_meta(meta: Any) -> tuple[int, int, int] | None:
    """``(policy_version, actor_id, unroll_index)`` of a frame's meta; None unless all three
    are there as ints (bool excluded)."""
    try:
        values = [meta[name] for name in unroll.META_FIELDS]
    except (KeyError, TypeError):
        return None
    if any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in values):
        return None
    policy_version, actor_id, unroll_index = (int(v) for v in values)
    return policy_version, actor_id, unroll_index


def take_unrolls(
    queue: Any,
    k: int,
    version: Callable[[], int],
    max_policy_lag: int,
    keep_going: Callable[[], bool],
    newest: Callable[[], int] | None = None,
) -> tuple[list[Taken], int, dict[str, int]]:
    """Up to ``k`` unrolls off ``queue``; fewer only once ``keep_going()`` turns False
    (it is asked before every wait of at most 50 ms). An unroll acted with params more than
    ``max_policy_lag`` versions older than ``version()`` is dropped (0: keep all); one
    without its integer metadata, or acted with params newer than ``newest()`` (the newest
    version the learner has made; default ``version()``), is rejected
    (`BATCHER_REJECT_REASONS`). Never raises on a frame's content.

    Returns:
      ``(unrolls, how many were dropped, rejected: reason -> count)``.
    """
    taken: list[Taken] = []
    dropped = 0
    rejected = dict.fromkeys(BATCHER_REJECT_REASONS, 0)
    while len(taken) < k and keep_going():
        frame = queue.get(timeout=0.05)
        if frame is None:
            continue
        meta = _frame_meta(frame.meta)
        if meta is None:
            rejected["meta"] += 1
            continue
        policy_version, actor_id, unroll_index = meta
        now = version()
        if policy_version > (newest or version)():
            rejected["future_version"] += 1
            continue
        if max_policy_lag and now - policy_version > max_policy_lag:
            dropped += 1
            continue
        # The frame's arrays are views into the queue's slot, valid until the next get.
        arrays = {name: np.array(v) for name, v in frame.arrays.items()}
        taken.append(Taken(actor_id, unroll_index, policy_version, arrays))
    return taken, dropped, rejected


@dataclass
class Staged:
    """A batch ready for the update, and what the learner logs about its unrolls.

    Attributes:
      batch: the update's batch, already on the device(s) (``put_batch``).
      policy_versions: each unroll's acting params version (for the policy lag).
      episode_returns: returns of the episodes that ended in these unrolls.
      episode_terms: per reward term, its mean over those episodes (empty if none ended).
    """

    batch: Any
    policy_versions: list[int]
    episode_returns: np.ndarray
    episode_terms: dict[str, float] = field(default_factory=dict)


def episode_summary(
    episode_return: np.ndarray, episode_terms: np.ndarray | None, term_names: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, float]]:
    """The returns of the episodes that ended (``episode_return`` [T, N], NaN elsewhere), and
    per reward term its mean over them (``episode_terms`` [T, N, K]; empty if none ended)."""
    done = ~np.isnan(episode_return)
    terms = {}
    if episode_terms is not None and done.any():
        ends = episode_terms[done]  # [episodes, K]
        terms = {n: float(ends[:, j].mean()) for j, n in enumerate(term_names)}
    return episode_return[done].astype(np.float64), terms


def stage(taken: list[Taken], put_batch: Callable, term_names: tuple[str, ...]) -> Staged:
    """Concatenates the unrolls and puts the batch on the device(s)."""
    cat = unroll.concat([t.arrays for t in taken])
    returns, terms = episode_summary(cat["episode_return"], cat.get("episode_terms"), term_names)
    return Staged(
        batch=put_batch(unroll.batch_from_frame(cat)),
        policy_versions=[t.policy_version for t in taken],
        episode_returns=returns,
        episode_terms=terms,
    )


class InlineBatches:
    """The learner's batches, taken and staged on the learner's thread when it asks.

    ``ordered``: sort each batch's unrolls by (actor, unroll index), so that a deterministic
    run sees the same batch whatever order the actors delivered in.
    """

    def __init__(
        self,
        queue: Any,
        k: int,
        max_policy_lag: int,
        put_batch: Callable,
        term_names: tuple[str, ...],
        ordered: bool = False,
        newest: Callable[[], int] | None = None,
    ):
        # newest(): the newest params version the learner has made, read live; a batch
        # gathered ahead (Prefetcher) may meet unrolls of versions made since it was asked for.
        self.newest = newest
        self.queue, self.k, self.max_policy_lag = queue, k, max_policy_lag
        self.put_batch, self.term_names, self.ordered = put_batch, term_names, ordered
        self.dropped = 0  # unrolls dropped for policy lag
        # frames rejected here, per reason (the queue counts its own)
        self.rejected = dict.fromkeys(BATCHER_REJECT_REASONS, 0)

    def next(self, version: int, keep_going: Callable[[], bool]) -> Staged | None:
        """The batch for the update after ``version``; None once ``keep_going()`` turns
        False first (it is asked at least every 50 ms)."""
        taken, dropped, rejected = take_unrolls(
            self.queue, self.k, lambda: version, self.max_policy_lag, keep_going, self.newest
        )
        self.dropped += dropped
        for reason, n in rejected.items():
            self.rejected[reason] += n
        if len(taken) < self.k:
            return None
        if self.ordered:
            taken.sort(key=lambda t: (t.actor_id, t.unroll_index))
        return stage(taken, self.put_batch, self.term_names)

    def close(self) -> None:
        pass


class Prefetcher:
    """The batches of an :class:`InlineBatches`, each taken and staged on a thread while the
    update before it runs.

    ``next`` hands over the staged batch and asks the thread for the following one at
    once. No more than one batch waits, so prefetching adds at most one version to the
    policy lag; the ``max_policy_lag`` check uses the version of the latest ``next`` call.
    An error on the thread is raised by ``next``; ``close`` stops and joins the thread
    (call it before closing the queue).
    """

    def __init__(self, inline: InlineBatches):
        self._inline = inline
        self._version = 0
        self._stop = threading.Event()
        self._wanted = threading.Semaphore(0)  # the first ``next`` asks for the first batch
        self._ready: queue_lib.Queue[Staged] = queue_lib.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)

    @property
    def dropped(self) -> int:
        """Unrolls dropped for policy lag."""
        return self._inline.dropped

    @property
    def rejected(self) -> dict[str, int]:
        """Frames rejected by the batcher, per reason."""
        return dict(self._inline.rejected)

    def _run(self) -> None:
        going = lambda: not self._stop.is_set()  # noqa: E731
        try:
            while going():
                if not self._wanted.acquire(timeout=0.05):
                    continue
                staged = self._inline.next(self._version, going)
                if staged is None:
                    return
                self._ready.put(staged)
        except BaseException as e:  # noqa: BLE001 - handed to the learner thread
            self._error = e

    def next(self, version: int, keep_going: Callable[[], bool]) -> Staged | None:
        """As :meth:`InlineBatches.next`; the batch after this one is then gathered while
        the caller runs its update."""
        self._version = version
        if self._thread.ident is None:  # the first call starts the thread
            self._wanted.release()
            self._thread.start()
        while keep_going():
            try:
                staged = self._ready.get(timeout=0.05)
            except queue_lib.Empty:
                if self._error is not None:
                    raise self._error from None
                continue
            self._wanted.release()
            return staged
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)


def batch_source(
    queue: Any,
    k: int,
    max_policy_lag: int,
    put_batch: Callable,
    term_names: tuple[str, ...],
    *,
    overlap: bool,
    deterministic: bool,
    num_processes: int,
    newest: Callable[[], int] | None = None,
) -> InlineBatches | Prefetcher:
    """The learner's batch source: a :class:`Prefetcher` when ``overlap`` is asked for and
    allowed (one process, not deterministic), else :class:`InlineBatches` (in actor and
    unroll order when ``deterministic``). ``newest()``: the newest params version the
    learner has made (unrolls of newer ones are forged)."""
    prefetch = overlap and not deterministic and num_processes == 1
    inline = InlineBatches(
        queue, k, max_policy_lag, put_batch, term_names, ordered=deterministic, newest=newest
    )
    return Prefetcher(inline) if prefetch else inline

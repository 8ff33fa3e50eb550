"""The training loop: take a batch, update, log, evaluate, checkpoint; then finish.

:class:`RunState` is everything the loop carries from one update to the next, and
:class:`TrainLoop` is a handful of small steps over it. Its side effects reach it through
small objects (:class:`Ports`): a batch source, the queue's gauges, the actors' supervisor,
the metrics log, the checkpointer, the publisher and the progress line. The trainer wires
real ones; a test wires an in-memory transport and in-process actors, and drives the loop
with no subprocess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_impala.errors import TrainError
from jaxrl_impala.learner.batches import BATCHER_REJECT_REASONS, Prefetcher, Staged
from jaxrl_impala.runtime import distributed
from jaxrl_impala.train.evaluation import eval_references, eval_seed, evaluate
from jaxrl_impala.train.setup import Setup
from jaxrl_impala.train.stop import StopFlag
from jaxrl_impala.transport import codec

# Why frames were rejected, by the queue (the codec's reasons) or the batcher.
REJECT_REASONS = tuple(dict.fromkeys((*codec.REJECT_REASONS, *BATCHER_REJECT_REASONS)))
COUNTERS = (
    "frames_rejected",
    "unrolls_dropped",
    "actor_restarts",
    "updates_skipped_nonfinite",
    "eval_failures",
    *(f"frames_rejected_{reason}" for reason in REJECT_REASONS),
)


class Actors(Protocol):
    """What the loop asks of the actors: restart the dead ones, count restarts."""

    restarts: int

    def check(self) -> None: ...


@dataclasses.dataclass
class Ports:
    """The loop's I/O.

    Attributes:
      batches: ``next(version, keep_going) -> Staged | None``, ``dropped``, ``rejected``
        (reason -> frames), ``close()``.
      queue: the trajectory queue, for its ``qsize()`` and ``stats`` gauges.
      actors: see :class:`Actors`.
      log: ``write(record)`` (`io.metrics.MetricsLog`, or `NullLog`).
      progress: ``update``, ``show``, ``note``, ``close`` (`io.progress.Progress`).
      checkpointer: ``save(host_state, meta)`` and ``list()`` (None: not the lead process).
      publisher: ``submit(version, host_params_and_stats)`` (None: not the lead process).
      stop: the stop request.
    """

    batches: Any
    queue: Any
    actors: Actors
    log: Any
    progress: Any
    checkpointer: Any = None
    publisher: Any = None
    stop: StopFlag = dataclasses.field(default_factory=StopFlag)


@dataclasses.dataclass
class RunState:
    """What the loop carries between updates.

    ``state``, ``key``, ``env_steps``, ``version``, ``episodes`` and ``counters`` are the
    run's (checkpointed); the rest is the current logging window and schedule.
    """

    state: Any
    key: jax.Array
    env_steps: int = 0
    version: int = 0
    episodes: int = 0
    counters: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    wall0: float = dataclasses.field(default_factory=time.time)  # wall_time_s counts from here
    # the counters' values when this process started (a resumed run continues them)
    counters_at_start: dict[str, int] = dataclasses.field(default_factory=dict)
    # the logging window
    lags: list[int] = dataclasses.field(default_factory=list)
    recent_returns: deque = dataclasses.field(default_factory=lambda: deque(maxlen=100))
    term_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    metrics_acc: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    sps_window: deque = dataclasses.field(default_factory=lambda: deque(maxlen=20))
    waited: float = 0.0
    last_log: float = 0.0
    # the schedule
    next_log: float = 0.0
    next_ckpt: float = 0.0
    next_eval: float = math.inf
    last_eval: dict | None = None
    reached_target: bool = False
    nonfinite_in_row: int = 0
    in_flight: tuple | None = None  # (version, metrics, params) of an update not yet read


class TrainLoop:
    """Runs updates until the budget, a stop request or the evaluation target.

    Args:
      s: the run's :class:`~jaxrl_impala.train.setup.Setup`.
      run: the starting :class:`RunState` (fresh or restored).
      ports: the loop's I/O.
      update: the update to call (default ``s.update``; the trainer passes it compiled ahead).
      lead: process 0 of a multi-process run (publishes, logs, evaluates, checkpoints).
      num_processes: learner processes; with several, every stop is agreed on.
    """

    def __init__(
        self,
        s: Setup,
        run: RunState,
        ports: Ports,
        *,
        update: Any = None,
        lead: bool = True,
        num_processes: int = 1,
    ):
        self.s, self.run, self.ports = s, run, ports
        self.config = s.config
        self._update = update or s.update
        self.lead, self.multi = lead, num_processes > 1
        self.det = self.config.train.deterministic
        # With learner.overlap (a Prefetcher), update v+1 is dispatched before update v's
        # results are read: XLA goes from one update straight to the next. (Deterministic
        # runs cannot: their actors wait for v's params to act the unrolls of update v+1.)
        self.ahead = isinstance(ports.batches, Prefetcher)
        self._snapshot = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        # Evaluation runs on a thread, on a snapshot of the params, so the learner keeps
        # consuming unrolls meanwhile. Deterministic and multi-process runs evaluate inline.
        self._eval_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")
        self._eval_future: Future | None = None
        self._eval_future_steps = 0  # the env steps its params were taken at
        self._last_eval_error = ""  # the last evaluation error printed with its traceback
        self._references: dict[str, float] | None = None  # by the first evaluation
        now = time.monotonic()
        ce, ct = self.config.eval, self.config.train
        run.last_log, run.next_log, run.next_ckpt = (
            now,
            now + ct.log_every_s,
            now + ct.checkpoint_every_s,
        )
        if ce.every_env_steps > 0:
            run.next_eval = (run.env_steps // ce.every_env_steps + 1) * ce.every_env_steps
        run.counters_at_start = dict(run.counters)

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Runs the loop and its end; returns the process's exit code."""
        try:
            while not self._agreed_stop():
                staged = self.take_batch()
                if staged is None:
                    break
                self.update(staged)
                self.maybe_log()
                if self.lead:
                    self.poll_eval()
                self.maybe_evaluate()
                self.maybe_checkpoint()
            return self.finish()
        finally:
            self._eval_pool.shutdown()

    def wall(self) -> float:
        return time.time() - self.run.wall0

    def _agreed_stop(self) -> bool:
        # Every process must run the same updates (collectives): stop only together.
        run = self.run
        want = (
            run.env_steps >= self.config.train.total_env_steps
            or self.ports.stop.requested
            or run.reached_target
        )
        return distributed.agree_stop(want)

    def keep_going(self) -> bool:
        """Asked while waiting for unrolls: restarts dead actors; False on a stop request
        (with several processes a stop waits for the next agreement)."""
        self.run.counters["actor_restarts"] = (
            self.run.counters_at_start["actor_restarts"] + self.ports.actors.restarts
        )
        self.ports.actors.check()
        return self.multi or not self.ports.stop.requested

    def take_batch(self) -> Staged | None:
        """This process's share of the next batch, on the devices; None on a stop."""
        run = self.run
        t_wait = time.monotonic()
        staged = self.ports.batches.next(run.version, self.keep_going)
        run.waited += time.monotonic() - t_wait
        if staged is None:
            return None
        run.lags.extend(run.version - v for v in staged.policy_versions)
        run.recent_returns.extend(staged.episode_returns.tolist())
        run.episodes += len(staged.episode_returns)
        run.term_sums.update(staged.episode_terms)
        return staged

    def update(self, staged: Staged) -> None:
        """Dispatches one update; reads the one before it (or this one, without overlap)."""
        run = self.run
        run.key, sub = jax.random.split(run.key)
        sub = jax.device_put(np.asarray(sub), self.s.replicated)
        run.state, metrics = self._update(run.state, staged.batch, sub)
        run.version += 1
        run.env_steps += self.s.steps_per_update
        params = None
        publish = run.version % self.config.learner.publish_every == 0 or self.det
        if self.ports.publisher is not None and publish:
            params = (run.state.params, run.state.obs_stats)
            if self.ahead:  # the next update takes over the state's buffers: keep a copy
                params = self._snapshot(params)
            # Start the device-to-host copy now, so it runs as soon as the update ends.
            distributed.start_host_copy(params)
        if run.in_flight is not None:
            self.read_update(*run.in_flight)  # the update before this one: done, or nearly
        run.in_flight = (run.version, metrics, params)
        if not self.ahead:
            self.read_in_flight()
        run.sps_window.append((time.monotonic(), run.env_steps))
        self.ports.progress.update(run.env_steps)

    def read_in_flight(self) -> None:
        if self.run.in_flight is not None:
            in_flight, self.run.in_flight = self.run.in_flight, None
            self.read_update(*in_flight)

    def read_update(self, done_version: int, metrics: Any, params: Any) -> None:
        """Reads an update's metrics and hands its params (if any) to the publisher."""
        run = self.run
        metrics = distributed.to_host(metrics)
        if params is not None:
            self.ports.publisher.submit(done_version, distributed.to_host(params))
        if not metrics.pop("nonfinite"):
            run.nonfinite_in_row = 0
            for name, v in metrics.items():
                run.metrics_acc.setdefault(name, []).append(float(v))
            return
        # The update kept the previous state; its metrics are NaN, so leave them out.
        run.counters["updates_skipped_nonfinite"] += 1
        run.nonfinite_in_row += 1
        self.ports.progress.note(f"update {done_version}: non-finite loss or gradient, skipped")
        if run.nonfinite_in_row >= self.config.train.max_nonfinite_in_row:
            raise TrainError(
                f"{run.nonfinite_in_row} updates in a row had a non-finite loss or gradient "
                f"(env_steps={run.env_steps}); lower learner.lr or check the env's rewards "
                f"and observations. The last good checkpoint is untouched"
            )

    # ------------------------------------------------------------------ logging
    def refresh_counters(self) -> None:
        """The run's counters: this process's plus what a resumed run had counted."""
        run, start = self.run, self.run.counters_at_start
        stats = getattr(self.ports.queue, "stats", {})
        # Rejected by the queue (its stats, per reason) or by the batcher (per reason).
        by_batcher = getattr(self.ports.batches, "rejected", {})
        rejected = {n: int(v) for n, v in stats.items() if n.startswith("frames_rejected_")}
        for reason, n in by_batcher.items():
            name = f"frames_rejected_{reason}"
            rejected[name] = rejected.get(name, 0) + n
        for name, n in rejected.items():
            run.counters[name] = start.get(name, 0) + n
        run.counters["frames_rejected"] = (
            start["frames_rejected"]
            + int(stats.get("frames_rejected", 0))
            + sum(by_batcher.values())
        )
        run.counters["unrolls_dropped"] = (
            start["unrolls_dropped"]
            + self.ports.batches.dropped
            + int(stats.get("unrolls_dropped", 0))
        )
        run.counters["actor_restarts"] = start["actor_restarts"] + self.ports.actors.restarts

    def maybe_log(self) -> None:
        run, now = self.run, time.monotonic()
        total = self.config.train.total_env_steps
        if not (self.det or now >= run.next_log or run.env_steps >= total):
            return
        run.next_log = now + self.config.train.log_every_s
        self.refresh_counters()
        record = self.training_record(now)
        self.ports.log.write(record)
        self.ports.progress.show(record, run.last_eval)
        run.metrics_acc.clear()
        run.lags.clear()
        run.waited = 0.0
        run.last_log = now

    def training_record(self, now: float) -> dict[str, Any]:
        """One training line of ``metrics.jsonl`` for the window since the last."""
        run = self.run
        t_first, s_first = run.sps_window[0]
        sps = (
            (run.env_steps - s_first) / max(now - t_first, 1e-9) if len(run.sps_window) > 1 else 0.0
        )
        record = {
            "env_steps": run.env_steps,
            "wall_time_s": self.wall(),
            "updates": run.version,
            "sps": sps,
            "policy_lag_mean": float(np.mean(run.lags)) if run.lags else 0.0,
            "policy_lag_max": int(np.max(run.lags)) if run.lags else 0,
            "queue_depth": self.ports.queue.qsize(),
            "episodes": run.episodes,
            "episode_return_mean": float(np.mean(run.recent_returns))
            if run.recent_returns
            else None,
            "learner_busy_fraction": 1.0 - run.waited / max(now - run.last_log, 1e-9),
            **{n: float(np.mean(v)) for n, v in run.metrics_acc.items()},
            **{f"episode_{n}": v for n, v in run.term_sums.items()},
            **{c: v for c, v in run.counters.items() if v},
        }
        if self.det:  # a wall-clock share: not reproducible
            record.pop("learner_busy_fraction")
        return record

    # ------------------------------------------------------------------ evaluation
    def eval_job(self):
        """A job evaluating the current params (copied to the host now)."""
        host = distributed.to_host((self.run.state.params, self.run.state.obs_stats))
        at_steps, ce = self.run.env_steps, self.config.eval

        def job() -> dict:
            if self._references is None:  # one evaluation job at a time: no race
                self._references = eval_references(self.config)
            returns = evaluate(
                self.config, self.s.policy, host[0], host[1], ce.episodes, eval_seed(self.config)
            )
            return {
                "env_steps": at_steps,
                "wall_time_s": self.wall(),
                "eval_return_mean": float(returns.mean()),
                "eval_return_std": float(returns.std()),
                "eval_episodes": len(returns),
                **self._references,  # DrivingEnv: the scripted and random drivers
            }

        return job

    def eval_done(self, record: dict) -> None:
        self.ports.log.write(record)
        self.ports.progress.note(
            f"eval return {record['eval_return_mean']:.1f} +- {record['eval_return_std']:.1f}"
            f" (at {record['env_steps']} env steps)"
        )
        self.run.last_eval = record
        target = self.config.train.stop_at_eval_return
        if target is not None and record["eval_return_mean"] >= target:
            self.ports.progress.note(f"reached eval return {target}: stopping")
            self.run.reached_target = True

    def eval_result(self, get: Callable[[], dict], at_steps: int) -> None:
        """Hands the record ``get()`` returns to :meth:`eval_done`. An evaluation that raises
        does not end the run: it is counted (``eval_failures``) and reported on stderr, and
        the next interval (or the end of the run) evaluates again."""
        try:
            record = get()
        except Exception as e:  # noqa: BLE001 - whatever broke, training goes on
            self.eval_failed(e, at_steps)
            return
        self.eval_done(record)

    def eval_failed(self, error: Exception, at_steps: int) -> None:
        """Counts a failed evaluation; prints its traceback, or one line for a repeat of the
        error printed last."""
        self.run.counters["eval_failures"] += 1
        summary = f"{type(error).__name__}: {error}"
        head = f"evaluation at env_steps={at_steps} failed ({summary}); training goes on"
        if summary == self._last_eval_error:
            print(f"{head} (the same error as before; traceback above)", file=sys.stderr)
        else:
            self._last_eval_error = summary
            trace = "".join(traceback.format_exception(error)).rstrip()
            print(f"{head}\n{trace}", file=sys.stderr)
        sys.stderr.flush()

    def poll_eval(self, wait: bool = False) -> None:
        future = self._eval_future
        if future is not None and (wait or future.done()):
            self._eval_future = None
            self.eval_result(future.result, self._eval_future_steps)

    def maybe_evaluate(self) -> None:
        run = self.run
        if run.env_steps < run.next_eval or run.reached_target:
            return
        run.next_eval += self.config.eval.every_env_steps
        if not self.lead:
            return
        if self.det or self.multi:
            # Inline with several processes: no JAX work on a side thread of process 0 while
            # the processes are inside a collective together.
            self.eval_result(self.eval_job(), run.env_steps)
        elif self._eval_future is None:  # (one still running: skip this one)
            self._eval_future = self._eval_pool.submit(self.eval_job())
            self._eval_future_steps = run.env_steps

    # ------------------------------------------------------------------ checkpoints
    def maybe_checkpoint(self) -> None:
        if not self.lead or time.monotonic() < self.run.next_ckpt:
            return
        self.run.next_ckpt = time.monotonic() + self.config.train.checkpoint_every_s
        # A checkpoint holds only updates whose results were read: one ending a non-finite
        # streak stops the run before it is saved.
        self.read_in_flight()
        self.save()

    def save(self, final: bool = False) -> None:
        run, ckpt = self.run, self.ports.checkpointer
        meta = {
            "env_steps": run.env_steps,
            "wall_time_s": self.wall(),
            "version": run.version,
            "episodes": run.episodes,
            **run.counters,
        }
        try:
            ckpt.save(distributed.to_host(run.state), meta)
        except OSError as e:
            kept = ckpt.list()
            where = f"; the last good one is {kept[-1]}" if kept else ""
            msg = f"checkpoint at env_steps={run.env_steps} not written: {e}{where}"
            if final:
                raise TrainError(msg) from None
            self.ports.progress.note(msg + " (retrying at the next interval)")

    # ------------------------------------------------------------------ the end
    def finish(self) -> int:
        """The end: a final evaluation (if the last is stale), checkpoint and counters."""
        run, ports = self.run, self.ports
        ports.batches.close()  # (takes no more unrolls off the queue)
        self.read_in_flight()
        if self.lead:
            self.poll_eval(wait=True)
        ports.progress.close()
        if self.multi:
            # Every process ends with the same replicated params; the test compares these.
            digest = params_digest(distributed.to_host((run.state.params, run.state.obs_stats)))
            print(f"process {jax.process_index()}: final params sha256 {digest}", flush=True)
        if ports.stop.requested:
            print(f"stopping on {ports.stop.reason} at env_steps={run.env_steps}")
        if not self.lead:
            return 0
        stale = run.last_eval is None or run.last_eval["env_steps"] != run.env_steps
        if not ports.stop.requested and not run.reached_target and stale:
            # (one that fails is counted: the checkpoint and the final line are still written)
            self.eval_result(self.eval_job(), run.env_steps)
        self.refresh_counters()
        self.save(final=True)
        ports.log.write(
            {"env_steps": run.env_steps, "wall_time_s": self.wall(), "final": True, **run.counters}
        )
        return 0


def params_digest(tree: Any) -> str:
    """sha256 over the leaves' dtypes, shapes and bytes (in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()

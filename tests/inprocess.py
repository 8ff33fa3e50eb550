"""The training loop driven in-process: an in-memory transport and actors stepped in this
process, so a test exercises the real loop, update and evaluation with no subprocess."""

from __future__ import annotations

import jax

from jaxrl_impala.actor.rollout import Rollout
from jaxrl_impala.config import load_config
from jaxrl_impala.io.checkpoints import Checkpointer
from jaxrl_impala.io.progress import Progress
from jaxrl_impala.learner.batches import batch_source
from jaxrl_impala.train.loop import Ports, RunState, TrainLoop
from jaxrl_impala.train.setup import setup
from jaxrl_impala.transport.memory import MemoryParamStore, MemoryQueue
from jaxrl_impala.unroll import params_to_frame

# debug.yaml's shapes: 2 actors x 4 CartPole envs x 8 steps, 2 unrolls per update.
TINY = [
    "env.id=CartPole-v1",
    "env.num_envs=4",
    "actors.num=2",
    "rollout.length=8",
    "network.hidden=[16]",
    "learner.batch_unrolls=2",
    "learner.epochs=1",
    "learner.minibatches=2",
    "train.deterministic=true",
    "eval.episodes=2",
    "eval.gif=false",
]
STEPS_PER_UPDATE = 2 * 4 * 8


class LocalActors:
    """Actors stepped in this process: each `check` lets every actor that has the params it
    must act with (lock-step, as `train.deterministic` runs do) push one unroll."""

    def __init__(self, config, queue, store):
        self.rollouts = [Rollout(config, actor_id=i) for i in range(config.actors.num)]
        self.versions = [-1] * len(self.rollouts)
        self.per_version = max(1, config.learner.batch_unrolls // config.actors.num)
        self.queue, self.store = queue, store
        self.restarts = 0

    def check(self) -> None:
        for i, rollout in enumerate(self.rollouts):
            got = self.store.fetch(newer_than=self.versions[i])
            if got is not None:
                self.versions[i], arrays = got
                rollout.set_params(arrays)
            if self.versions[i] >= rollout.unroll_index // self.per_version:
                self.queue.put(*rollout.unroll(self.versions[i]))

    def close(self) -> None:
        for rollout in self.rollouts:
            rollout.env.close()


class ListLog:
    """A metrics log that keeps its records."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        pass


class SyncPublisher:
    """Publishes on the caller's thread."""

    def __init__(self, store):
        self.store = store

    def submit(self, version: int, host) -> None:
        self.store.publish(version, params_to_frame(*host))


def run_in_process(run_dir, overrides=(), *, wrap_update=None, preload=None):
    """Runs the loop on a tiny CartPole config; returns (exit code, log records, loop).
    ``wrap_update(update)``, when given, returns the update the loop calls instead;
    ``preload(setup)``, frames (bytes) queued before the first honest unroll, as a hostile
    writer to the queue would."""
    config = load_config(None, [*TINY, *overrides])
    s = setup(config)
    spec, _ = s.frame_spec()
    frames = list(preload(s)) if preload else []
    queue, store = MemoryQueue(bound=8 + len(frames), spec=spec), MemoryParamStore()
    queue._frames.extend(frames)  # (test-only: raw bytes, past put's encoder)
    key, init_key = jax.random.split(jax.random.PRNGKey(config.train.seed))
    state = s.init_state(init_key)
    store.publish(0, params_to_frame(*jax.device_get((state.params, state.obs_stats))))
    run = RunState(state=jax.device_put(state, s.replicated), key=key)
    actors, log = LocalActors(config, queue, store), ListLog()
    ports = Ports(
        batches=batch_source(
            queue,
            config.learner.batch_unrolls,
            0,
            s.put_batch,
            s.term_names,
            overlap=False,
            deterministic=True,
            num_processes=1,
        ),
        queue=queue,
        actors=actors,
        log=log,
        progress=Progress(config.train.total_env_steps, 0, quiet=True),
        checkpointer=Checkpointer(run_dir),
        publisher=SyncPublisher(store),
    )
    update = wrap_update(s.update) if wrap_update else None
    loop = TrainLoop(s, run, ports, update=update)
    try:
        return loop.train(), log.records, loop
    finally:
        actors.close()


# DrivingEnv, small: 2 x 8 envs x 8 steps per update, short routes.
TINY_DRIVING = [
    "env.id=jaxrl_impala/Driving-v0",
    "env.num_envs=8",
    "env.kwargs={max_episode_steps: 40, route_length_min: 60.0, route_length_max: 80.0}",
    "rollout.length=8",
    "network.hidden=[16]",
    "learner.batch_unrolls=2",
    "learner.epochs=1",
    "learner.minibatches=2",
    "train.mode=on_device",
    "train.deterministic=true",
    "eval.episodes=2",
    "eval.gif=false",
]


def run_on_device_in_process(run_dir, overrides=()):
    """The on-device mode's loop in this process; returns (exit code, log records, loop)."""
    from jaxrl_impala.train.on_device import NoActors, NoQueue, OnDeviceBatches

    config = load_config(None, [*TINY_DRIVING, *overrides])
    s = setup(config)
    key, init_key = jax.random.split(jax.random.PRNGKey(config.train.seed))
    run = RunState(state=jax.device_put(s.init_state(init_key), s.replicated), key=key)
    log = ListLog()
    ports = Ports(
        batches=OnDeviceBatches(s, lambda: (run.state.params, run.state.obs_stats)),
        queue=NoQueue(),
        actors=NoActors(),
        log=log,
        progress=Progress(config.train.total_env_steps, 0, quiet=True),
        checkpointer=Checkpointer(run_dir),
    )
    loop = TrainLoop(s, run, ports)
    return loop.train(), log.records, loop

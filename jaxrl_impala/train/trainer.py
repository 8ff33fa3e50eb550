"""The trainer: wires the actors, the transport and the learner around the training loop.

Outputs go to ``RUN_DIR`` (``run.dir``, or ``runs/<name>``): ``config.yaml``, ``metrics.jsonl``,
TensorBoard events in ``tb/``, ``checkpoints/``, ``eval.gif`` (DrivingEnv), ``plots/*.png``
and one log per actor in ``logs/``. Ctrl-C or SIGTERM stops the actors, writes a final
checkpoint, removes the shared memory and exits 0.

JAX is imported only once the actors are started (their start-up overlaps this process's),
so the modules that import it are imported inside `Trainer._run`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from jaxrl_impala.config import (
    AUTO,
    Config,
    ConfigError,
    check_multiprocess,
    dump_yaml,
    resolve_auto_actors,
)
from jaxrl_impala.errors import TrainError
from jaxrl_impala.io.checkpoints import Checkpointer, newest_checkpoint_steps
from jaxrl_impala.io.rundir import START_TIME, check_writable
from jaxrl_impala.runtime import distributed
from jaxrl_impala.runtime.cpus import (
    accelerator_expected,
    auto_num_actors,
    cpu_ranges,
    pin_process,
    split_cpus,
)
from jaxrl_impala.runtime.supervisor import ActorSupervisor
from jaxrl_impala.train.stop import StopFlag


class Trainer:
    """One learner process of a run: ``Trainer(config, run_dir, resume).run()``."""

    def __init__(self, config: Config, run_dir: Path, resume: bool):
        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.stop = StopFlag()
        # Set by `_lay_out_cpus`: the backend the CPU layout was made for, and whether
        # actors.num was auto.
        self.accelerator = self.auto_actors = False

    def request_stop(self, signum, _frame) -> None:
        if self.stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop.requested = True
        self.stop.reason = signal.Signals(signum).name

    def run(self) -> int:
        config, run_dir = self.config, self.run_dir
        # The URL with its password (from the URL, transport.password_file or REDIS_PASSWORD):
        # it reaches the transport and, on their stdin, the actors; files, argv and logs get
        # the masked config. Resolved first, so a refused password file stops nothing started.
        self.redis_url = config.transport.url
        if config.transport.kind == "redis":
            from jaxrl_impala.transport import resolve_url

            self.redis_url = resolve_url(config.transport.url, config.transport.password_file)
        # Join the other learner processes before anything touches a JAX backend.
        try:
            process_id, num_processes = distributed.initialize(config.distributed)
        except distributed.DistributedError as e:
            raise TrainError(str(e)) from None
        check_multiprocess(config, num_processes)
        self.process_id, self.num_processes = process_id, num_processes
        self.lead = process_id == 0  # publishes params, writes the outputs, evaluates
        if self.lead and not self.resume and (run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"run.dir {run_dir} already holds a run; use --resume {run_dir} or another run.dir"
            )
        if self.lead:
            check_writable(run_dir)
        on_device = config.train.mode == "on_device"
        if on_device and num_processes > 1:
            raise ConfigError("train.mode=on_device runs one learner process for now")
        # No actors on device: the learner keeps every CPU.
        pin = config.train.pin_cpus and num_processes == 1 and not on_device
        split = self._lay_out_cpus(pin)
        config = self.config  # actors.num resolved
        # The actors start now: their imports, env and policy compile overlap this process's
        # own, and they wait for the transport's address. A resumed run's actors draw fresh
        # scenarios, numbered from the newest checkpoint.
        first_incarnation = newest_checkpoint_steps(run_dir) if self.resume else 0
        if on_device:
            from jaxrl_impala.train.on_device import NoActors

            actors = NoActors()
        else:
            actors = ActorSupervisor(
                config,
                run_dir,
                first_id=process_id * config.actors.num,
                first_incarnation=first_incarnation,
                actor_cpus=split[1] if split is not None else None,
            )
        # From here a first Ctrl-C or SIGTERM asks for a clean stop: one during start-up takes
        # effect when the training loop begins (final checkpoint, plots); a second Ctrl-C
        # interrupts at once.
        old_handlers = {
            s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            actors.start_all()
            return self._run(actors, split)
        finally:
            actors.stop()
            for s, handler in old_handlers.items():
                signal.signal(s, handler)

    def _lay_out_cpus(self, pin: bool) -> tuple[list[int], list[int]] | None:
        """Splits the CPUs between the learner and its actors (``train.pin_cpus``), pins this
        process to the learner's, and resolves ``actors.num: auto`` from the layout; returns
        the split (None: none).

        Called before this process imports JAX: XLA sizes its thread pool by the CPUs the
        process may use when the pool starts, and the actors start before the import so that
        their start-up overlaps it. So the learner's backend, which decides the layout, is
        read from the environment (:func:`accelerator_expected`), not asked of JAX; `_run`
        checks it against JAX's once JAX is up.
        """
        self.accelerator = accelerator_expected()
        self.auto_actors = self.config.actors.num == AUTO
        split = split_cpus(self.accelerator) if pin else None
        if split is not None:
            pin_process(split[0])
        self.config = resolve_auto_actors(self.config, auto_num_actors(self.accelerator))
        if self.lead and split is not None:
            kind = "an accelerator" if self.accelerator else "a CPU"
            print(
                f"cpus: learner {cpu_ranges(split[0])} (for {kind} learner), "
                f"actors {cpu_ranges(split[1])}"
            )
        if self.lead and self.auto_actors:
            print(f"actors.num: auto, {self.config.actors.num} (one per CPU the learner leaves)")
        return split

    def _check_backend(self, split) -> None:
        """Says so when JAX's backend is not the one the CPU layout was made for."""
        import jax

        if not self.lead or (split is None and not self.auto_actors):
            return
        backend = jax.default_backend()
        if (backend != "cpu") != self.accelerator:
            kind = "an accelerator" if self.accelerator else "a CPU"
            print(
                f"cpus: laid out for {kind} learner, but JAX runs it on {backend}; set "
                f"JAX_PLATFORMS (e.g. cuda, or cpu) so that both agree",
                file=sys.stderr,
            )

    def _run(self, actors: ActorSupervisor, split) -> int:
        import jax
        import numpy as np

        from jaxrl_impala.runtime.compile_cache import use_compile_cache
        from jaxrl_impala.train.setup import CompiledAhead, setup

        config = self.config
        use_compile_cache(config.train.compile_cache)
        s = setup(config, num_processes=self.num_processes)
        self._check_backend(split)
        if split is not None and not self.accelerator:
            # XLA's pool threads, which run the update, now exist and stay on the learner
            # CPUs. This thread (it dispatches the updates) and the threads it starts from
            # here on (compiler, batch prefetch, publisher, evaluation) may use every CPU.
            # With an accelerator they stay on the learner's CPUs, kept for them: every
            # other CPU runs an actor.
            os.sched_setaffinity(0, split[0] + split[1])
        key, init_key = jax.random.split(jax.random.PRNGKey(config.train.seed))
        # Compile the update on a thread now, from the state's shapes, not when the first batch
        # arrives: its tracing overlaps the params init's compile while the actors start.
        then = None
        if self.lead and config.eval.every_env_steps > 0:
            from jaxrl_impala.train.evaluation import compile_eval_step

            then = lambda shapes: compile_eval_step(  # noqa: E731
                s.policy, s.obs_space, shapes, config.eval.episodes
            )
        update = CompiledAhead(s, jax.device_put(np.asarray(key), s.replicated), then)
        run = self._start(s, key, init_key)
        if config.train.mode == "on_device":
            from jaxrl_impala.train.on_device import NoQueue

            transport, queue, store = None, NoQueue(), None
        else:
            transport, queue, store, address = self._open_transport(s, run)
            actors.set_address(address)
        return self._train(s, run, update, actors, transport, queue, store)

    def _start(self, s, key, init_key):
        """The loop's first :class:`RunState`: fresh, or restored from the newest checkpoint."""
        import jax

        from jaxrl_impala.train.loop import RunState

        run_dir = self.run_dir
        state = s.init_state(init_key)
        run = RunState(state=state, key=key, wall0=START_TIME)
        if self.resume:
            # Every process restores the same checkpoint (the run dir on a shared filesystem).
            reader = Checkpointer(run_dir)
            restored = reader.restore(state)
            if restored is None:
                raise TrainError(f"--resume {run_dir}: no readable checkpoint in {reader.dir}")
            state, meta, path = restored
            run.state, run.env_steps = state, int(meta["env_steps"])
            run.wall0 = START_TIME - float(meta["wall_time_s"])
            run.episodes = int(meta.get("episodes", 0))
            run.counters.update({k: int(meta.get(k, 0)) for k in run.counters})
            run.key = jax.random.fold_in(key, run.env_steps)
            print(f"resumed from {path} at env_steps={run.env_steps}")
        if self.lead:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_yaml(self.config))
        host_state = jax.device_get(run.state)
        run.version = int(host_state.step)
        run.state = jax.device_put(host_state, s.replicated)
        return run

    def _open_transport(self, s, run):
        """``(transport, queue, params store, actors' address)``. Process 0 creates the
        transport; the others attach to its Redis queue (they publish nothing)."""
        import jax

        from jaxrl_impala.transport import (
            RedisQueue,
            RedisTransportError,
            create_transport,
            encoded_size,
            redis_address,
        )
        from jaxrl_impala.unroll import params_to_frame

        config, ct = self.config, self.config.transport
        spec, slot_bytes = s.frame_spec()
        params_example = params_to_frame(*jax.device_get((run.state.params, run.state.obs_stats)))
        param_bytes = encoded_size(params_example, {"version": 0}) + 4096
        transport = None
        try:
            if self.lead:
                transport = create_transport(
                    ct.kind,
                    num_producers=config.actors.num * self.num_processes,
                    slots_per_producer=ct.slots_per_actor,
                    slot_bytes=slot_bytes,
                    param_bytes=param_bytes,
                    overflow=ct.overflow,
                    spec=spec,
                    # shm names its segments per run; Redis keys are shared with remote actors
                    **({"url": self.redis_url, "prefix": ct.prefix} if ct.kind == "redis" else {}),
                )
        except RedisTransportError as e:
            raise TrainError(str(e)) from None
        # The other processes consume from the keys process 0 has just claimed.
        distributed.barrier("jaxrl_impala:transport")
        if self.lead:
            return transport, transport.queue, transport.params, transport.address
        queue = RedisQueue.attach(self.redis_url, ct.prefix, spec=spec)
        address = {**redis_address(self.redis_url, ct.prefix), "max_frame_bytes": slot_bytes}
        return None, queue, None, address

    def _train(self, s, run, update, actors, transport, queue, store) -> int:
        """Runs the loop; then closes everything, writes the GIF and the plots."""
        import jax

        from jaxrl_impala.io.metrics import MetricsLog, NullLog
        from jaxrl_impala.io.progress import Progress
        from jaxrl_impala.learner.batches import batch_source
        from jaxrl_impala.learner.publisher import Publisher
        from jaxrl_impala.train.loop import Ports, TrainLoop
        from jaxrl_impala.unroll import params_to_frame

        config, lead = self.config, self.lead
        publisher = Publisher(store) if lead and store is not None else None
        if config.train.mode == "on_device":
            from jaxrl_impala.train.on_device import OnDeviceBatches

            params = lambda: (run.state.params, run.state.obs_stats)  # noqa: E731
            batches = OnDeviceBatches(s, params, incarnation=run.env_steps)
        else:
            # learner.overlap: each batch is gathered on a thread while the update before it
            # runs. Deterministic runs gather in order on this thread; with several processes
            # JAX work stays on this thread.
            batches = batch_source(
                queue,
                s.sizes["local_batch_unrolls"],
                config.learner.max_policy_lag,
                s.put_batch,
                s.term_names,
                overlap=config.learner.overlap,
                deterministic=config.train.deterministic,
                num_processes=self.num_processes,
                newest=lambda: run.version,
            )
        log = NullLog()
        try:
            if publisher is not None:
                host = jax.device_get(run.state)
                store.publish(run.version, params_to_frame(host.params, host.obs_stats))
            if lead:
                # metrics.jsonl appears once the actors run (tests and tools wait on it).
                log = MetricsLog(self.run_dir)
            ports = Ports(
                batches=batches,
                queue=queue,
                actors=actors,
                log=log,
                progress=Progress(config.train.total_env_steps, run.env_steps, quiet=not lead),
                checkpointer=Checkpointer(self.run_dir) if lead else None,
                publisher=publisher,
                stop=self.stop,
            )
            loop = TrainLoop(
                s, run, ports, update=update, lead=lead, num_processes=self.num_processes
            )
            exit_code = loop.train()
        finally:
            try:
                batches.close()
                if publisher is not None:
                    publisher.close()
            finally:
                actors.stop()
                (transport or queue).close()
                log.close()
        if lead:
            self._write_gif_and_plots(s, run)
        distributed.shutdown()
        return exit_code

    def _write_gif_and_plots(self, s, run) -> None:
        from jaxrl_impala.io.plots import plot_run
        from jaxrl_impala.train.evaluation import eval_seed, write_eval_gif

        if self.config.eval.gif and not self.stop.requested:
            host = distributed.to_host((run.state.params, run.state.obs_stats))
            path = self.run_dir / "eval.gif"
            if write_eval_gif(self.config, s.policy, *host, path, eval_seed(self.config)):
                print(f"wrote {path}")
        try:
            plot_run(self.run_dir)
        except Exception as e:  # noqa: BLE001 - plots are a nicety
            print(f"plots skipped: {e}", file=sys.stderr)

"""The training CLI: wires actors, the transport and the learner; logs, evaluates, checkpoints.

    python -m jaxrl_impala.train --config configs/driving.yaml [--set KEY=VALUE ...]
    python -m jaxrl_impala.train --resume RUN_DIR [--set train.total_env_steps=...]
    python -m jaxrl_impala.train --config configs/cartpole.yaml --print-config

Outputs go to ``RUN_DIR`` (``run.dir``, or ``runs/<name>``): ``config.yaml``, ``metrics.jsonl``,
TensorBoard events in ``tb/``, ``checkpoints/``, ``eval.gif`` (DrivingEnv), ``plots/*.png``
and one log per actor in ``logs/``. Ctrl-C or SIGTERM stops the actors, writes a final
checkpoint, removes the shared memory and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from jaxrl_impala.batches import Prefetcher, batch_source, concat_unrolls, to_batch
from jaxrl_impala.config import (
    Config,
    ConfigError,
    check_multiprocess,
    derived_sizes,
    dump_yaml,
    load_config,
    to_dict,
)


def process_start_time() -> float:
    """When this process started (Unix time): ``wall_time_s`` counts from there, so it
    includes the interpreter's start-up and imports. Linux reads it from ``/proc``; elsewhere
    it is the time this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError, IndexError):
        return time.time()
    return time.time() - age if 0.0 <= age < 600.0 else time.time()


START_TIME = process_start_time()


class TrainError(RuntimeError):
    """A run that cannot go on; the message is shown to the user as one line."""


# --------------------------------------------------------------------------- run directory
def make_run_dir(config: Config) -> Path:
    if config.run.dir:
        return Path(config.run.dir)
    name = config.run.name or time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / name


def check_writable(run_dir: Path) -> None:
    """Fails fast (one line) when the run dir cannot be created or written."""
    probe = run_dir / f".write_probe_{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"run dir {run_dir} is not writable: {e.strerror or e}") from None


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _import_summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors; we log
    floats. That import costs seconds of CPU and ~300 MB in the learner, at start-up, when
    the actors are starting too. Unless torch is already loaded, hide it for the import.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """``metrics.jsonl`` (append, one flushed line per record) and TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.failed_writes = 0
        self.file = open(self.path, "a", buffering=1)
        try:
            SummaryWriter = _import_summary_writer()
            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception as e:  # noqa: BLE001 - TensorBoard is optional output, never fatal
            print(f"TensorBoard events disabled: {e}", file=sys.stderr)
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record. A failed write (disk full, ...) is reported once and the run
        goes on: training state never depends on its logs."""
        clean = {k: _jsonable(v) for k, v in record.items()}
        try:
            self.file.write(json.dumps(clean) + "\n")
            if self.tb is not None:
                step = int(clean["env_steps"])
                for k, v in clean.items():
                    if k != "env_steps" and isinstance(v, int | float) and math.isfinite(v):
                        self.tb.add_scalar(k, v, step)
        except OSError as e:
            self.failed_writes += 1
            if self.failed_writes == 1:
                print(
                    f"warning: metrics not written to {self.path.parent}: {e} "
                    f"(training goes on; records are lost until writes succeed again)",
                    file=sys.stderr,
                )

    def close(self) -> None:
        for closer in (self.file.close, self.tb.close if self.tb is not None else None):
            try:
                if closer is not None:
                    closer()
            except OSError as e:
                print(f"warning: closing the metrics of {self.path.parent}: {e}", file=sys.stderr)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray):
        v = v.item() if np.ndim(v) == 0 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """``checkpoints/ckpt_<env_steps>/{state.msgpack, meta.json}``, written atomically.

    The directory is assembled under a temporary name and renamed into place, so a crash
    mid-write leaves either the previous checkpoints or a complete new one. The newest
    ``keep`` are kept. Serialisation is flax's msgpack (no pickle).
    """

    def __init__(self, run_dir: Path, keep: int = 3):
        self.dir = run_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def save(self, state: Any, meta: dict[str, Any]) -> Path:
        """Writes, reads back and verifies a checkpoint, then drops the oldest.

        Raises:
          OSError: the write failed (disk full, unwritable dir): nothing half-written is
            left behind and the previous checkpoints are untouched.
        """
        import hashlib
        import shutil

        import flax.serialization

        data = flax.serialization.to_bytes(state)
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        final = self.dir / f"ckpt_{int(meta['env_steps']):012d}"
        tmp = self.dir / f".tmp_{final.name}_{os.getpid()}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            atomic_write(tmp / "state.msgpack", data)
            atomic_write(tmp / "meta.json", json.dumps(meta).encode())
            self._verify(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def _verify(path: Path) -> tuple[dict[str, Any], bytes]:
        """Meta and state bytes of a checkpoint dir whose state matches its recorded hash."""
        import hashlib

        meta = json.loads((path / "meta.json").read_text())
        data = (path / "state.msgpack").read_bytes()
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise OSError(
                f"state.msgpack is {len(data)} bytes and does not match its sha256 "
                f"(expected {meta.get('bytes', '?')} bytes)"
            )
        return meta, data

    def list(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("ckpt_*") if p.is_dir())

    def restore(self, template: Any) -> tuple[Any, dict[str, Any], Path] | None:
        """The newest checkpoint that reads back whole and matches its hash; falls back to
        older ones (saying so), None when there is none."""
        import flax.serialization

        for path in reversed(self.list()):
            try:
                meta, data = self._verify(path)
                state = flax.serialization.from_bytes(template, data)
                return state, meta, path
            except Exception as e:  # noqa: BLE001 - any corrupt checkpoint: try the previous
                print(
                    f"checkpoint {path} is unreadable ({e}); falling back to an older one",
                    file=sys.stderr,
                )
        return None


def newest_checkpoint_steps(run_dir: Path) -> int:
    """Env steps of the newest checkpoint in ``run_dir`` (0 if none), from its name."""
    kept = Checkpointer(run_dir).list()
    return int(kept[-1].name.removeprefix("ckpt_")) if kept else 0


# --------------------------------------------------------------------------- actors
class ActorSupervisor:
    """Starts actor processes, restarts crashed ones with backoff, detects crash loops.

    The actors may start before the transport exists: each builds its env and compiles its
    policy, then waits for the address on its stdin (``--address -``), which
    :meth:`set_address` writes (or ``_start``, once the address is known).
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        address: dict | None = None,
        first_id: int = 0,
        first_incarnation: int = 0,
        actor_cpus: list[int] | None = None,
    ):
        self.config = config
        self.actor_cpus = actor_cpus  # actor i runs on actor_cpus[i % len]; None: anywhere
        self.first_id = first_id  # several learner processes: each starts its own actor ids
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.procs: list[subprocess.Popen | None] = [None] * config.actors.num
        self.restart_at: list[float | None] = [None] * config.actors.num
        self.crashes: list[deque] = [deque() for _ in range(config.actors.num)]
        self.restarts = 0
        # Each start of an actor gets a new incarnation number, so a restarted actor (or one
        # of a resumed run, which starts counting at its env_steps) plays fresh scenarios.
        self.incarnations = [first_incarnation] * config.actors.num

    def actor_env(self, i: int) -> dict[str, str]:
        """The environment actor ``i`` starts with."""
        from jaxrl_impala.cpus import ACTOR_CPU_ENV, ACTOR_OWN_CPU_ENV, LEARNER_PID_ENV

        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        env[LEARNER_PID_ENV] = str(os.getpid())
        for name in ("XLA_FLAGS", ACTOR_CPU_ENV, ACTOR_OWN_CPU_ENV):
            env.pop(name, None)
        if self.actor_cpus:
            env[ACTOR_CPU_ENV] = str(self.actor_cpus[i % len(self.actor_cpus)])
            if len(self.actor_cpus) >= len(self.procs):
                env[ACTOR_OWN_CPU_ENV] = "1"
        return env

    def _start(self, i: int) -> None:
        env = self.actor_env(i)
        cmd = [
            sys.executable,
            "-m",
            "jaxrl_impala.actor",
            "--config-json",
            json.dumps(to_dict(self.config)),
            "--actor-id",
            str(self.first_id + i),
            "--address",
            "-",
            "--incarnation",
            str(self.incarnations[i]),
        ]
        self.incarnations[i] += 1
        log = open(self.log_dir / f"actor_{self.first_id + i}.log", "ab")
        # A session of its own: Ctrl-C in the terminal reaches the learner only, which stops
        # its actors itself (a dead learner's actors get SIGTERM from PR_SET_PDEATHSIG).
        self.procs[i] = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        if self.address is not None:
            self._send_address(self.procs[i])

    def _send_address(self, proc: subprocess.Popen) -> None:
        try:
            proc.stdin.write(json.dumps(self.address).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died already: check() restarts it
            pass

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self._start(i)

    def set_address(self, address: dict) -> None:
        """Hands the transport's address to the running actors (and to later restarts)."""
        self.address = address
        for proc in self.procs:
            if proc is not None and not proc.stdin.closed:
                self._send_address(proc)

    def log_tail(self, i: int, lines: int = 12) -> str:
        try:
            text = (self.log_dir / f"actor_{self.first_id + i}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def check(self) -> None:
        """Restarts dead actors; raises TrainError on a crash loop."""
        now = time.monotonic()
        ac = self.config.actors
        for i, proc in enumerate(self.procs):
            if self.restart_at[i] is not None:
                if now >= self.restart_at[i]:
                    self.restart_at[i] = None
                    self._start(i)
                    self.restarts += 1
                continue
            if proc is None or proc.poll() is None:
                continue
            crashes = self.crashes[i]
            crashes.append(now)
            while crashes and now - crashes[0] > ac.crash_loop_window_s:
                crashes.popleft()
            tail = self.log_tail(i)
            if len(crashes) > ac.crash_loop_restarts:
                raise TrainError(
                    f"actor {self.first_id + i} crashed {len(crashes)} times in "
                    f"{ac.crash_loop_window_s:.0f}s "
                    f"(exit {proc.returncode}); its last output:\n{tail}"
                )
            delay = ac.restart_backoff_s * 2 ** (len(crashes) - 1)
            print(
                f"actor {self.first_id + i} exited with code {proc.returncode}; "
                f"restarting in {delay:.1f}s"
                + (f"\n{tail}" if proc.returncode not in (0, -9, -15) and tail else ""),
                file=sys.stderr,
            )
            self.restart_at[i] = now + delay

    def stop(self, timeout: float = 5.0) -> None:
        for proc in self.procs:
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            if not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- evaluation
def evaluate(
    config: Config, policy, params, stats, episodes: int, seed: int, ends: dict | None = None
) -> np.ndarray:
    """Greedy returns of ``episodes`` episodes on env seeds disjoint from training.

    ``ends``, when given, is filled (DrivingEnv) with how many episodes ended in a
    ``collision``, ``offroad``, at the ``route_end`` or at the ``time_limit``."""
    import jax

    from jaxrl_impala.actor import make_vector_env

    env = make_vector_env(config, episodes)
    step = _greedy_step(policy)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        done = np.zeros(episodes, bool)
        space = env.single_action_space
        limit = config.env.max_episode_steps or 100_000
        key = jax.random.PRNGKey(0)  # unused by the greedy policy
        for _ in range(limit + 1):
            action = np.asarray(step(params, stats, obs, key)[0])
            if isinstance(space, gym.spaces.Box):
                action = np.clip(action, space.low, space.high).astype(space.dtype)
            obs, reward, term, trunc, info = env.step(action)
            term = np.asarray(term, bool)
            returns += np.where(done, 0.0, reward)
            ending = ~done & (term | np.asarray(trunc, bool))
            if ends is not None and "collision" in info:
                collision = np.asarray(info["collision"], bool)
                offroad = np.asarray(info["offroad"], bool) & ~collision
                route_end = term & ~collision & ~offroad
                for name, hit in (
                    ("collision", collision),
                    ("offroad", offroad),
                    ("route_end", route_end),
                    ("time_limit", ~term),
                ):
                    ends[name] = ends.get(name, 0) + int((ending & hit).sum())  # fmt: skip
            done |= ending
            if done.all():
                break
        return returns
    finally:
        env.close()


_GREEDY_CACHE: dict[int, Any] = {}


def _greedy_step(policy):
    import jax

    from jaxrl_impala.learner import policy_step_fn

    key = id(policy)
    if key not in _GREEDY_CACHE:
        _GREEDY_CACHE[key] = jax.jit(policy_step_fn(policy, greedy=True))
    return _GREEDY_CACHE[key]


def compile_eval_step(policy, obs_space, shapes, episodes: int) -> None:
    """Compiles `evaluate`'s greedy step ahead, for a state of these shapes (see
    `learner.train_state_shapes`) and ``episodes`` envs, so the first evaluation does not
    (half a second on a small CPU machine, in the middle of training)."""
    import jax

    from jaxrl_impala.networks import sample_obs

    host = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    key = jax.ShapeDtypeStruct((2,), np.uint32)  # jax.random.PRNGKey(0)
    obs = jax.eval_shape(lambda: sample_obs(obs_space, (episodes,)))
    _greedy_step(policy).lower(host(shapes.params), host(shapes.obs_stats), obs, key).compile()


def write_eval_gif(config: Config, policy, params, stats, path: Path, seed: int) -> bool:
    """A GIF of one greedy DrivingEnv episode; False when the env is not DrivingEnv."""
    import jax

    if config.env.id != "jaxrl_impala/Driving-v0":
        return False
    from jaxrl_impala.actor import make_vector_env
    from jaxrl_impala.envs import write_gif

    step = _greedy_step(policy)
    frames = []
    env = make_vector_env(config, 1, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=seed)
        space = env.single_action_space
        while True:
            frames.append(env.render())
            action = np.asarray(step(params, stats, obs, jax.random.PRNGKey(0))[0])
            if isinstance(space, gym.spaces.Box):
                action = np.clip(action, space.low, space.high).astype(space.dtype)
            obs, _, term, trunc, _ = env.step(action)
            if term[0] or trunc[0]:
                frames.append(env.render())
                break
    except Exception as e:  # noqa: BLE001 - a GIF is a nicety; never fail the run for it
        print(f"evaluation GIF skipped: {e}", file=sys.stderr)
        return False
    finally:
        env.close()
    write_gif(str(path), frames[::2], fps=10)
    return True


# --------------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, config: Config, run_dir: Path, resume: bool):
        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.stop_requested = False
        self.stop_reason = ""

    def request_stop(self, signum, _frame) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.stop_reason = signal.Signals(signum).name

    def run(self) -> int:
        from jaxrl_impala import distributed

        config, run_dir = self.config, self.run_dir
        # Join the other learner processes before anything touches a JAX backend.
        try:
            process_id, num_processes = distributed.initialize(config.distributed)
        except distributed.DistributedError as e:
            raise TrainError(str(e)) from None
        check_multiprocess(config, num_processes)
        self.process_id, self.num_processes = process_id, num_processes
        lead = process_id == 0  # publishes params, writes the outputs, evaluates
        if lead and not self.resume and (run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"run.dir {run_dir} already holds a run; use --resume {run_dir} or another run.dir"
            )
        if lead:
            check_writable(run_dir)
        from jaxrl_impala.cpus import pin_process, split_cpus

        actor_cpus = None
        split = split_cpus() if config.train.pin_cpus and num_processes == 1 else None
        if split is not None:  # before JAX starts its thread pool in this process
            learner_cpus, actor_cpus = split
            pin_process(learner_cpus)
            if lead:
                cpu_list = lambda cpus: ",".join(map(str, cpus))  # noqa: E731
                print(f"cpus: learner {cpu_list(learner_cpus)}, actors {cpu_list(actor_cpus)}")

        # The actors start now: their imports, env and policy compile (seconds on a small CPU
        # machine) overlap this process's own, and they wait for the transport's address.
        # A resumed run's actors draw fresh scenarios, numbered from the newest checkpoint.
        actors = ActorSupervisor(
            config,
            run_dir,
            first_id=process_id * config.actors.num,
            first_incarnation=newest_checkpoint_steps(run_dir) if self.resume else 0,
            actor_cpus=actor_cpus,
        )
        # From here a first Ctrl-C or SIGTERM asks for a clean stop: one during start-up takes
        # effect when the training loop begins (final checkpoint, plots); a second Ctrl-C
        # interrupts at once.
        old_handlers = {
            s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            actors.start_all()
            return self._run(actors, split, process_id, num_processes)
        finally:
            actors.stop()
            for s, handler in old_handlers.items():
                signal.signal(s, handler)

    def _run(self, actors: ActorSupervisor, split, process_id: int, num_processes: int) -> int:
        from jaxrl_impala import distributed

        config, run_dir = self.config, self.run_dir
        lead = process_id == 0

        import jax

        from jaxrl_impala.compile_cache import use_compile_cache

        use_compile_cache(config.train.compile_cache)
        from jaxrl_impala.actor import env_spaces, flatten_params
        from jaxrl_impala.learner import (
            init_train_state,
            make_mesh,
            make_optimizer,
            make_update,
            train_state_shapes,
        )
        from jaxrl_impala.networks import make_policy
        from jaxrl_impala.transport import (
            FrameSpec,
            RedisTransportError,
            create_transport,
            encoded_size,
            redis_address,
        )

        cfg_l = config.learner
        obs_space, action_space, term_names = env_spaces(config)
        mesh = make_mesh(cfg_l.num_devices)
        sizes = derived_sizes(config, mesh.size, num_processes)
        steps_per_update = sizes["env_steps_per_update"]
        total_updates = max(1, config.train.total_env_steps // steps_per_update)
        policy = make_policy(obs_space, action_space, config.network, cfg_l.obs_norm)
        optimizer = make_optimizer(config, total_updates)
        key = jax.random.PRNGKey(config.train.seed)
        key, init_key = jax.random.split(key)
        if split is not None:
            # XLA's pool threads, which run the update, now exist and stay on the learner
            # CPUs. This thread (it dispatches the updates) and the threads it starts from
            # here on (compiler, batch prefetch, publisher, evaluation) may use every CPU,
            # including the actors' idle time.
            os.sched_setaffinity(0, split[0] + split[1])
        update, put_batch, replicated = make_update(policy, optimizer, config, mesh)
        # Frame layout from a zero unroll: the spec every received frame must match.
        example = self._example_unroll(policy, obs_space, action_space, term_names, jax)
        # Compile the update on a thread now, from the state's shapes, not when the first batch
        # arrives: its tracing overlaps the params init's compile and vice versa (XLA releases
        # the GIL) while the actors start (cold CartPole on 2 cores: first update ~0.5 s sooner).
        k = sizes["local_batch_unrolls"]
        shapes = train_state_shapes(policy, obs_space, optimizer, replicated)
        evaluates = lead and config.eval.every_env_steps > 0
        update = _CompiledAhead(
            update,
            lambda: (shapes, put_batch(to_batch(concat_unrolls([example] * k)))),
            jax.device_put(np.asarray(key), replicated),
            then=(lambda: compile_eval_step(policy, obs_space, shapes, config.eval.episodes))
            if evaluates
            else None,
        )
        state = init_train_state(policy, obs_space, optimizer, init_key)

        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(run_dir) if lead else None
        env_steps, wall_offset, episodes_total = 0, 0.0, 0
        counters = {
            "frames_rejected": 0,
            "unrolls_dropped": 0,
            "actor_restarts": 0,
            "updates_skipped_nonfinite": 0,
        }
        if self.resume:
            # Every process restores the same checkpoint (the run dir on a shared filesystem).
            reader = ckpt or Checkpointer(run_dir)
            restored = reader.restore(state)
            if restored is None:
                raise TrainError(f"--resume {run_dir}: no readable checkpoint in {reader.dir}")
            state, meta, path = restored
            env_steps = int(meta["env_steps"])
            wall_offset = float(meta["wall_time_s"])
            episodes_total = int(meta.get("episodes", 0))
            counters.update({k: int(meta.get(k, 0)) for k in counters})
            key = jax.random.fold_in(key, env_steps)
            print(f"resumed from {path} at env_steps={env_steps}")
        if lead:
            (run_dir / "config.yaml").write_text(dump_yaml(config))

        host_state = jax.device_get(state)
        version = int(host_state.step)
        state = jax.device_put(host_state, replicated)

        spec = FrameSpec.from_arrays(example)
        # Slack for the header: meta integers grow digits as the run goes on.
        slot_bytes = (
            encoded_size(example, {"policy_version": 0, "actor_id": 0, "unroll_index": 0}) + 4096
        )
        params_example = flatten_params(host_state.params, host_state.obs_stats)
        param_bytes = encoded_size(params_example, {"version": 0}) + 4096

        cfg_tr = config.transport
        transport = None
        try:
            if lead:
                transport = create_transport(
                    cfg_tr.kind,
                    num_producers=config.actors.num * num_processes,
                    slots_per_producer=cfg_tr.slots_per_actor,
                    slot_bytes=slot_bytes,
                    param_bytes=param_bytes,
                    overflow=cfg_tr.overflow,
                    spec=spec,
                    # shm names its segments per run; Redis keys are shared with remote actors
                    **(
                        {"url": cfg_tr.url, "prefix": cfg_tr.prefix}
                        if cfg_tr.kind == "redis"
                        else {}
                    ),
                )
        except RedisTransportError as e:
            raise TrainError(str(e)) from None
        # The other processes consume from the keys process 0 has just claimed.
        distributed.barrier("jaxrl_impala:transport")
        if lead:
            queue, store, address = transport.queue, transport.params, transport.address
        else:
            queue = distributed.SharedRedisConsumer(cfg_tr.url, cfg_tr.prefix, spec)
            store = None
            address = {**redis_address(cfg_tr.url, cfg_tr.prefix), "max_frame_bytes": slot_bytes}
        actors.set_address(address)
        log: MetricsLog | _NullLog = _NullLog()
        publisher = _Publisher(store, flatten_params) if lead else None
        # learner.overlap: each batch is gathered on a thread while the update before it runs
        # (and _loop keeps one update ahead). Deterministic runs gather in order on this thread;
        # with several processes JAX work stays on this thread (see the evaluation in _loop).
        batches = batch_source(
            queue,
            k,
            cfg_l.max_policy_lag,
            put_batch,
            tuple(term_names),
            overlap=cfg_l.overlap,
            deterministic=config.train.deterministic,
            num_processes=num_processes,
        )
        exit_code = 0
        try:
            if lead:
                store.publish(version, params_example)
            # metrics.jsonl appears once the actors run (tests and tools wait on it).
            log = MetricsLog(run_dir) if lead else _NullLog()
            exit_code = self._loop(
                state,
                key,
                update,
                batches,
                replicated,
                queue,
                publisher,
                actors,
                log,
                ckpt,
                spec,
                policy,
                env_steps,
                version,
                wall_offset,
                episodes_total,
                counters,
                steps_per_update,
            )
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
            try:
                from jaxrl_impala.plot import plot_run

                plot_run(run_dir)
            except Exception as e:  # noqa: BLE001 - plots are a nicety
                print(f"plots skipped: {e}", file=sys.stderr)
        distributed.shutdown()
        return exit_code

    def _example_unroll(self, policy, obs_space, action_space, term_names, jax) -> dict:
        from jaxrl_impala.actor import obs_fields
        from jaxrl_impala.networks import sample_obs

        T, B = self.config.rollout.length, self.config.env.num_envs

        def action_and_dist_params():
            params = policy.net.init(jax.random.PRNGKey(0), sample_obs(obs_space))
            dist, _, dist_params = policy.apply(params, None, sample_obs(obs_space, (B,)))
            return dist.sample(jax.random.PRNGKey(0)), dist_params

        # Shapes and dtypes only: nothing is computed (or compiled).
        action, dist_params = jax.eval_shape(action_and_dist_params)
        obs = jax.tree.map(np.asarray, sample_obs(obs_space, (T + 1, B)))
        arrays = {
            **obs_fields(obs),
            "actions": np.zeros((T, *action.shape), action.dtype),
            "behaviour_logp": np.zeros((T, B), np.float32),
            "behaviour_dist": np.zeros((T, *dist_params.shape), np.float32),
            "rewards": np.zeros((T, B), np.float32),
            "terminated": np.zeros((T, B), bool),
            "truncated": np.zeros((T, B), bool),
            "truncation_value": np.zeros((T, B), np.float32),
            "episode_return": np.zeros((T, B), np.float32),
            "episode_length": np.zeros((T, B), np.int32),
        }
        if term_names:
            arrays["episode_terms"] = np.zeros((T, B, len(term_names)), np.float32)
        self.term_names = term_names
        return arrays

    def _loop(
        self,
        state,
        key,
        update,
        batches,
        replicated,
        queue,
        publisher,
        actors,
        log,
        ckpt,
        spec,
        policy,
        env_steps,
        version,
        wall_offset,
        episodes_total,
        counters,
        steps_per_update,
    ) -> int:
        import jax
        import jax.numpy as jnp

        from jaxrl_impala import distributed

        config = self.config
        cfg_l, cfg_t, cfg_e = config.learner, config.train, config.eval
        total = cfg_t.total_env_steps
        lead = self.process_id == 0
        multi = self.num_processes > 1
        stop_at_target = False
        wall0 = START_TIME - wall_offset  # wall_time_s counts from the command's start
        last_log = time.monotonic()
        det = cfg_t.deterministic
        # Unrolls dropped for policy lag (batches.dropped), plus what the queue dropped (the
        # queue's own counter restarts with the process; a resumed run starts from the saved
        # count).
        dropped_before = counters["unrolls_dropped"]
        rejected_before, restarts_before = counters["frames_rejected"], counters["actor_restarts"]
        recent_returns: deque = deque(maxlen=100)
        term_sums: dict[str, float] = {}
        lags: list[int] = []
        next_log = time.monotonic() + cfg_t.log_every_s
        next_ckpt = time.monotonic() + cfg_t.checkpoint_every_s
        next_eval = (
            (env_steps // cfg_e.every_env_steps + 1) * cfg_e.every_env_steps
            if (cfg_e.every_env_steps > 0)
            else math.inf
        )
        sps_window: deque = deque(maxlen=20)
        waited = 0.0  # time spent waiting for the next batch, since the last log line
        last_eval = None
        progress = _Progress(total, env_steps, quiet=not lead)
        metrics_acc: dict[str, list[float]] = {}
        nonfinite_in_row = 0

        def wall() -> float:
            return time.time() - wall0

        def save(final: bool = False) -> None:
            host_state = distributed.to_host(state)
            meta = {
                "env_steps": env_steps,
                "wall_time_s": wall(),
                "version": version,
                "episodes": episodes_total,
                **counters,
            }
            try:
                ckpt.save(host_state, meta)
            except OSError as e:
                kept = ckpt.list()
                where = f"; the last good one is {kept[-1]}" if kept else ""
                msg = f"checkpoint at env_steps={env_steps} not written: {e}{where}"
                if final:
                    raise TrainError(msg) from None
                progress.note(msg + " (retrying at the next interval)")

        # Evaluation runs on a background thread on a snapshot of the params, so the learner
        # keeps consuming unrolls meanwhile (16 DrivingEnv episodes take seconds; done inline
        # they stalled the actors). Deterministic runs evaluate inline, in a fixed order.
        eval_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")
        eval_future = None

        def eval_job():
            host = distributed.to_host((state.params, state.obs_stats))
            at_steps = env_steps

            def job() -> dict:
                returns = evaluate(
                    config, policy, host[0], host[1], cfg_e.episodes, 1_000_000 + 1000 * cfg_t.seed
                )
                return {
                    "env_steps": at_steps,
                    "wall_time_s": wall(),
                    "eval_return_mean": float(returns.mean()),
                    "eval_return_std": float(returns.std()),
                    "eval_episodes": len(returns),
                }

            return job

        def eval_done(record: dict) -> None:
            nonlocal last_eval, stop_at_target
            log.write(record)
            progress.note(
                f"eval return {record['eval_return_mean']:.1f} +- {record['eval_return_std']:.1f}"
                f" (at {record['env_steps']} env steps)"
            )
            last_eval = record
            target = cfg_t.stop_at_eval_return
            if target is not None and record["eval_return_mean"] >= target:
                progress.note(f"reached eval return {target}: stopping")
                stop_at_target = True

        def poll_eval(wait: bool = False) -> None:
            nonlocal eval_future
            if eval_future is not None and (wait or eval_future.done()):
                future, eval_future = eval_future, None
                eval_done(future.result())

        # With learner.overlap (batches from a Prefetcher), update v+1 is dispatched before
        # update v's results are read: XLA goes from one update straight to the next while this
        # thread reads v's metrics and publishes v's params. (Deterministic runs cannot: their
        # actors wait for v's params to act the unrolls of update v+1.)
        ahead = isinstance(batches, Prefetcher)
        snapshot = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        in_flight = None

        def finish(done_version: int, metrics: Any, params: Any) -> None:
            """Reads an update's metrics and hands its params (if any) to the publisher."""
            nonlocal nonfinite_in_row
            metrics = distributed.to_host(metrics)
            if params is not None:
                # Encoding and writing run on the publisher's thread.
                publisher.submit(done_version, distributed.to_host(params))
            if metrics.pop("nonfinite"):
                # The update kept the previous state; its metrics are NaN, so leave them out.
                counters["updates_skipped_nonfinite"] += 1
                nonfinite_in_row += 1
                progress.note(f"update {done_version}: non-finite loss or gradient, skipped")
                if nonfinite_in_row >= cfg_t.max_nonfinite_in_row:
                    raise TrainError(
                        f"{nonfinite_in_row} updates in a row had a non-finite loss or gradient "
                        f"(env_steps={env_steps}); lower learner.lr or check the env's rewards "
                        f"and observations. The last good checkpoint is untouched"
                    )
            else:
                nonfinite_in_row = 0
                for name, v in metrics.items():
                    metrics_acc.setdefault(name, []).append(float(v))

        def keep_going() -> bool:
            counters["actor_restarts"] = restarts_before + actors.restarts
            actors.check()
            return multi or not self.stop_requested

        while True:
            # Every process must run the same updates (collectives): stop only together.
            want_stop = env_steps >= total or self.stop_requested or stop_at_target
            if distributed.agree_stop(want_stop):
                break
            # --- gather k unrolls (this process's share); with several processes a stop
            # request waits for the next agreement: the others are already in this update.
            t_wait = time.monotonic()
            staged = batches.next(version, keep_going)
            waited += time.monotonic() - t_wait
            if staged is None:
                break
            lags.extend(version - v for v in staged.policy_versions)
            recent_returns.extend(staged.episode_returns.tolist())
            episodes_total += len(staged.episode_returns)
            term_sums.update(staged.episode_terms)
            # --- update
            key, sub = jax.random.split(key)
            sub = jax.device_put(np.asarray(sub), replicated)
            state, metrics = update(state, staged.batch, sub)
            version += 1
            env_steps += steps_per_update
            params = None
            if lead and (version % cfg_l.publish_every == 0 or det):
                params = (state.params, state.obs_stats)
                if ahead:  # the next update takes over the state's buffers: keep a copy
                    params = snapshot(params)
                # Start the device-to-host copy now, so it runs as soon as the update ends.
                distributed.start_host_copy(params)
            if in_flight is not None:
                finish(*in_flight)  # the update before this one: done, or nearly
            in_flight = (version, metrics, params)
            if not ahead:
                finish(*in_flight)
                in_flight = None
            sps_window.append((time.monotonic(), env_steps))
            progress.update(env_steps)

            # --- log
            now = time.monotonic()
            if det or now >= next_log or env_steps >= total:
                next_log = now + cfg_t.log_every_s
                stats = queue.stats if hasattr(queue, "stats") else {}
                counters["frames_rejected"] = rejected_before + int(stats.get("frames_rejected", 0))
                counters["unrolls_dropped"] = (
                    dropped_before + batches.dropped + int(stats.get("unrolls_dropped", 0))
                )
                t_first, s_first = sps_window[0]
                sps = (
                    (env_steps - s_first) / max(now - t_first, 1e-9) if len(sps_window) > 1 else 0.0
                )
                record = {
                    "env_steps": env_steps,
                    "wall_time_s": wall(),
                    "updates": version,
                    "sps": sps,
                    "policy_lag_mean": float(np.mean(lags)) if lags else 0.0,
                    "policy_lag_max": int(np.max(lags)) if lags else 0,
                    "queue_depth": queue.qsize(),
                    "episodes": episodes_total,
                    "episode_return_mean": float(np.mean(recent_returns))
                    if recent_returns
                    else None,
                    "learner_busy_fraction": 1.0 - waited / max(now - last_log, 1e-9),
                    **{n: float(np.mean(v)) for n, v in metrics_acc.items()},
                    **{f"episode_{n}": v for n, v in term_sums.items()},
                    **{c: v for c, v in counters.items() if v},
                }
                if det:
                    record.pop("learner_busy_fraction")
                log.write(record)
                progress.show(record, last_eval)
                metrics_acc.clear()
                lags.clear()
                waited = 0.0
                last_log = now
            if lead:
                poll_eval()
            if env_steps >= next_eval and not stop_at_target:
                next_eval += cfg_e.every_env_steps
                # Several processes: inline too, so that no JAX work runs on a side thread
                # of process 0 while the processes are inside a collective together (a
                # gloo "collective mismatch" abort was seen with the eval thread).
                if lead and (det or multi):
                    eval_done(eval_job()())
                elif lead and eval_future is None:  # (one still running: skip this one)
                    eval_future = eval_pool.submit(eval_job())
            if lead and time.monotonic() >= next_ckpt:
                next_ckpt = time.monotonic() + cfg_t.checkpoint_every_s
                if in_flight is not None:
                    # A checkpoint holds only updates whose results were read: one ending a
                    # non-finite streak stops the run before it is saved.
                    finish(*in_flight)
                    in_flight = None
                save()

        # --- the end: final eval (if the last one is stale), checkpoint, counters
        batches.close()  # (takes no more unrolls off the queue)
        if in_flight is not None:
            finish(*in_flight)
        if lead:
            poll_eval(wait=True)
        eval_pool.shutdown()
        progress.close()
        if multi:
            # Every process ends with the same replicated params; the test compares these.
            digest = params_digest(distributed.to_host((state.params, state.obs_stats)))
            print(f"process {self.process_id}: final params sha256 {digest}", flush=True)
        if self.stop_requested:
            print(f"stopping on {self.stop_reason} at env_steps={env_steps}")
        elif not lead:
            return 0
        elif stop_at_target:
            pass  # the evaluation that reached the target is the run's last word
        elif last_eval is None or last_eval["env_steps"] != env_steps:
            eval_done(eval_job()())
        if not lead:
            return 0
        stats = queue.stats if hasattr(queue, "stats") else {}
        counters["frames_rejected"] = rejected_before + int(stats.get("frames_rejected", 0))
        counters["unrolls_dropped"] = (
            dropped_before + batches.dropped + int(stats.get("unrolls_dropped", 0))
        )
        counters["actor_restarts"] = restarts_before + actors.restarts
        save(final=True)
        log.write({"env_steps": env_steps, "wall_time_s": wall(), "final": True, **counters})
        if config.eval.gif and not self.stop_requested:
            host = distributed.to_host((state.params, state.obs_stats))
            if write_eval_gif(
                config,
                policy,
                host[0],
                host[1],
                self.run_dir / "eval.gif",
                1_000_000 + 1000 * cfg_t.seed,
            ):
                print(f"wrote {self.run_dir / 'eval.gif'}")
        return 0


class _CompiledAhead:
    """The jitted update, compiled on a background thread from example arguments (the
    state's shapes will do; XLA releases the GIL) while the params init compiles and the actors
    start; the first call waits for that compile, which leaves the executable in JAX's cache,
    so no call compiles again. Should the ahead-of-time compile fail, the first call compiles
    as before and reports the error itself."""

    def __init__(self, jitted, example_args, key, then: Callable[[], None] | None = None):
        self._jitted = jitted

        def compile_it() -> None:
            try:
                jitted.lower(*example_args(), key).compile()
                if then is not None:  # more compiling, while the first updates run
                    then()
            except Exception:  # noqa: BLE001 - the first real call reports it
                pass

        # Not a daemon: should the run fail before its first update (a refused Redis
        # password, say), the interpreter waits for the compile to end instead of tearing
        # the thread down inside XLA, which aborts the process ("exception not rethrown").
        self._thread: threading.Thread | None = threading.Thread(
            target=compile_it, name="compile-update", daemon=False
        )
        self._thread.start()

    def __call__(self, *args):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self._jitted(*args)


def params_digest(tree: Any) -> str:
    """sha256 over the leaves' dtypes, shapes and bytes (in tree order)."""
    import hashlib

    import jax

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _NullLog:
    """What the learner processes other than 0 log: nothing (process 0 writes the run)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _Publisher:
    """Publishes params from a background thread, so the learner never waits for the encode
    or the store's write (a Redis round trip) of a new version.

    `submit` takes host copies (numpy) of version v's params and stats; the thread encodes
    and publishes them while the learner gathers and runs update v+1. If the thread falls
    behind, only the newest pending version is published (versions stay monotonic). An error
    in the thread is raised by the next `submit` or by `close`.
    """

    def __init__(self, store, flatten):
        self.store = store
        self.flatten = flatten
        self._cv = threading.Condition()
        self._pending: tuple[int, Any] | None = None
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self.published = self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="param-publisher", daemon=True)
        self._thread.start()

    def submit(self, version: int, host_params_and_stats: Any) -> None:
        self._raise()
        with self._cv:
            if self._pending is not None:
                self.skipped += 1
            self._pending = (version, host_params_and_stats)
            self._cv.notify()

    def flush(self) -> None:
        """Waits until everything submitted is published."""
        with self._cv:
            self._cv.wait_for(lambda: (self._pending is None and not self._busy) or self._error)
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closing)
                if self._pending is None:
                    return
                (version, host), self._pending = self._pending, None
                self._busy = True
            try:
                self.store.publish(version, self.flatten(*host))
                self.published += 1
            except BaseException as e:  # noqa: BLE001 - handed to the learner thread
                self._error = e
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def close(self) -> None:
        """Publishes what is pending, stops the thread; raises a publishing error."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self._raise()


class _Progress:
    """A live line on a terminal (tqdm), plain lines otherwise (nothing when quiet)."""

    def __init__(self, total: int, initial: int, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.total = total
        self.start = time.monotonic()
        self.initial = initial
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, env_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)

    def show(self, record: dict, last_eval: dict | None) -> None:
        if self.quiet:
            return
        ret = record.get("episode_return_mean")
        fields = {
            "sps": f"{record['sps']:.0f}",
            "ret": "-" if ret is None else f"{ret:.1f}",
            "eval": "-" if last_eval is None else f"{last_eval['eval_return_mean']:.1f}",
            "lag": f"{record['policy_lag_mean']:.1f}/{record['policy_lag_max']}",
            "q": str(record["queue_depth"]),
        }
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=True)
            return
        done = record["env_steps"] - self.initial
        elapsed = time.monotonic() - self.start
        remaining = max(0, self.total - record["env_steps"])
        eta = remaining * elapsed / done if done > 0 else float("nan")
        line = "  ".join(f"{k} {v}" for k, v in fields.items())
        print(f"steps {record['env_steps']}/{self.total}  {line}  eta {eta:.0f}s", flush=True)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrl_impala.train",
        description="Train an agent with CPU actors and a jit-compiled learner.",
    )
    parser.add_argument("--config", help="YAML preset, e.g. configs/driving.yaml")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys (repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
            config = load_config(run_dir / "config.yaml", args.set)
        else:
            config = load_config(args.config, args.set)
            run_dir = make_run_dir(config)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        print(f"run dir: {run_dir}")
        return Trainer(config, run_dir, resume=bool(args.resume)).run()
    except (ConfigError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the trainer started
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

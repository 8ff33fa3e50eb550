"""Which CPUs the learner and the actors run on (``train.pin_cpus``). No JAX here: the
actor pins itself before it imports JAX, so XLA's threads start on its one CPU, and the
trainer lays out its CPUs before it imports JAX, so its actors start meanwhile.

XLA gives every process a thread pool as wide as the CPUs it may use. With the learner and
the actors all free to use every CPU, their small ops wait on each other's preempted
threads; split, each keeps its own CPUs busy. How many the learner keeps depends on where its
update runs: on CPU, XLA's threads run it on half the CPUs; on an accelerator, the learner's
CPUs only feed it (dispatch, batch prefetch, publishing, evaluation), so it keeps one or two
and every other CPU runs an actor.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping

# Set by the trainer for each actor it starts: the one CPU that actor runs on.
ACTOR_CPU_ENV = "JAXRL_IMPALA_ACTOR_CPU"
# Set by the trainer when every actor has a CPU to itself: their start-ups then compile side
# by side instead of taking turns (`compile_cache.in_turn`).
ACTOR_OWN_CPU_ENV = "JAXRL_IMPALA_ACTOR_OWN_CPU"
# Also set by the trainer: its pid, the learner the actor dies with. Here rather than in
# actor.py so that the trainer can start its actors before it imports JAX.
LEARNER_PID_ENV = "JAXRL_IMPALA_LEARNER_PID"


def learner_cpu_count(num_cpus: int, accelerator: bool) -> int:
    """How many of ``num_cpus`` the learner keeps: one (two from 8 CPUs) when its update runs
    on an accelerator, else half of them rounded up. At least one, at most all."""
    # With an accelerator, a second CPU keeps the dispatching thread clear of the prefetch,
    # publishing and evaluation threads once there are enough CPUs to spare one.
    keep = (2 if num_cpus >= 8 else 1) if accelerator else (num_cpus + 1) // 2
    return max(1, min(keep, num_cpus))


def cpu_layout(cpus: list[int], accelerator: bool) -> tuple[list[int], list[int]]:
    """(learner CPUs, actor CPUs): the first :func:`learner_cpu_count` of ``cpus`` (sorted)
    and the rest (empty with one CPU)."""
    cpus = sorted(cpus)
    keep = learner_cpu_count(len(cpus), accelerator)
    return cpus[:keep], cpus[keep:]


def available_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def split_cpus(accelerator: bool = False) -> tuple[list[int], list[int]] | None:
    """:func:`cpu_layout` of the CPUs this process may use; None where there is nothing to
    split (one CPU, or not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = available_cpus()
    if len(cpus) < 2:
        return None
    return cpu_layout(cpus, accelerator)


def auto_num_actors(accelerator: bool, cpus: list[int] | None = None) -> int:
    """``actors.num: auto``: one actor per CPU the learner does not keep (of ``cpus``, default
    the CPUs this process may use), at least one. Split or not, the count is the same."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, len(cpu_layout(cpus, accelerator)[1]))


def accelerator_expected(environ: Mapping[str, str] | None = None) -> bool:
    """Whether JAX will give this process an accelerator (GPU, TPU) as its default backend,
    decided without importing JAX or starting a backend (the trainer pins itself before).

    ``JAX_PLATFORM_NAME``, else the first of ``JAX_PLATFORMS`` (JAX's priority order; a listed
    platform that fails to start is an error, not a fallback) decides when set. Otherwise the
    answer is JAX's own choice foreseen: an accelerator whose JAX plugin is installed and whose
    device files exist (the checks of ``jax._src.hardware_utils``). The trainer compares the
    answer with ``jax.default_backend()`` once JAX runs and says so when they differ.
    """
    env = os.environ if environ is None else environ
    named = env.get("JAX_PLATFORM_NAME", "").strip() or env.get("JAX_PLATFORMS", "").strip()
    if named:
        return named.split(",")[0].strip().lower() != "cpu"
    plugins = " ".join(_jax_plugins())
    if "cuda" in plugins and _nvidia_gpu_visible(env):
        return True
    if "rocm" in plugins and os.path.exists("/dev/kfd"):
        return True
    if importlib.util.find_spec("libtpu") is not None:
        return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))
    return False


def _jax_plugins() -> list[str]:
    """Names of the installed JAX PJRT plugins (``jax_plugins.*`` modules and entry points,
    as ``jax._src.xla_bridge.discover_pjrt_plugins`` finds them), none imported."""
    names = []
    try:
        spec = importlib.util.find_spec("jax_plugins")
        if spec is not None and spec.submodule_search_locations:
            names += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
        names += [ep.value for ep in importlib.metadata.entry_points(group="jax_plugins")]
    except (ImportError, ValueError):
        pass
    return names


def _nvidia_gpu_visible(env: Mapping[str, str]) -> bool:
    if env.get("CUDA_VISIBLE_DEVICES", "all").strip() in ("", "-1"):
        return False  # every GPU hidden: JAX falls back to its CPU backend
    return any(os.path.exists(d) for d in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


def cpu_ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2,5"`` (Linux's cpulist format)."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def pin_process(cpus: list[int] | set[int]) -> None:
    """Runs every thread of this process, and the threads they start later, on ``cpus``."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that has just ended
            pass


def pin_actor_from_env() -> None:
    """In an actor process: run on the CPU the trainer chose (``ACTOR_CPU_ENV``), if any."""
    cpu = os.environ.get(ACTOR_CPU_ENV)
    if not cpu or not hasattr(os, "sched_setaffinity"):
        return
    try:
        pin_process({int(cpu)})
    except ValueError as e:
        print(f"actor: cannot pin to CPU {cpu!r} ({e}); running unpinned", file=sys.stderr)

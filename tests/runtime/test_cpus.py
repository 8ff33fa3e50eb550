"""The CPU layout: which CPUs the learner and the actors get, and ``actors.num: auto``."""

import os
import subprocess
import sys

import pytest

from jaxrl_impala.config import load_config, resolve_auto_actors
from jaxrl_impala.runtime import cpus as cpus_module
from jaxrl_impala.runtime.cpus import (
    accelerator_expected,
    auto_num_actors,
    cpu_layout,
    cpu_ranges,
    split_cpus,
)


@pytest.mark.parametrize(
    "cpus, expected",
    [
        ({0}, None),
        ({0, 1}, ([0], [1])),
        ({0, 1, 2}, ([0, 1], [2])),
        ({4, 5, 6, 7}, ([4, 5], [6, 7])),
    ],
)
def test_split_cpus_gives_a_cpu_learner_the_first_half(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    assert split_cpus() == expected
    assert split_cpus(accelerator=False) == expected


@pytest.mark.parametrize(
    "num_cpus, accelerator, learner, actors",
    [
        # CPU learner: the first half, rounded up (XLA's threads run the update there)
        (2, False, [0], [1]),
        (16, False, list(range(8)), list(range(8, 16))),
        (64, False, list(range(32)), list(range(32, 64))),
        # accelerator: one CPU for its host work, two from 8 CPUs; every other CPU an actor's
        (2, True, [0], [1]),
        (7, True, [0], list(range(1, 7))),
        (8, True, [0, 1], list(range(2, 8))),
        (16, True, [0, 1], list(range(2, 16))),
        (64, True, [0, 1], list(range(2, 64))),
    ],
)
def test_cpu_layout(num_cpus, accelerator, learner, actors):
    assert cpu_layout(list(range(num_cpus)), accelerator) == (learner, actors)
    # auto: one actor per CPU the learner does not keep
    assert auto_num_actors(accelerator, list(range(num_cpus))) == len(actors)


def test_cpu_layout_sorts_and_keeps_the_cpus_it_is_given():
    assert cpu_layout([11, 3, 7, 5], accelerator=False) == ([3, 5], [7, 11])
    assert cpu_layout([11, 3, 7, 5], accelerator=True) == ([3], [5, 7, 11])


def test_split_cpus_with_an_accelerator(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert split_cpus(accelerator=True) == ([0, 1], list(range(2, 16)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert split_cpus(accelerator=True) is None


@pytest.mark.parametrize("accelerator", [False, True])
def test_auto_is_at_least_one_actor(accelerator):
    # one CPU (nothing to split, e.g. train.pin_cpus off): the learner keeps it, one actor
    assert auto_num_actors(accelerator, [0]) == 1


def test_auto_counts_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4, 20)))
    assert auto_num_actors(False) == 8
    assert auto_num_actors(True) == 14


def test_auto_resolves_to_a_number_in_the_config():
    config = load_config(None, ["actors.num=auto"])
    assert config.actors.num == "auto"
    resolved = resolve_auto_actors(config, auto_num_actors(True, list(range(16))))
    assert resolved.actors.num == 14
    assert resolved.actors.restart_backoff_s == config.actors.restart_backoff_s
    assert resolved.env == config.env and resolved.learner == config.learner
    # a number stays as it is
    fixed = load_config(None, ["actors.num=3"])
    assert resolve_auto_actors(fixed, 14) is fixed


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"JAX_PLATFORMS": "cpu"}, False),
        ({"JAX_PLATFORMS": "cuda"}, True),
        ({"JAX_PLATFORMS": "gpu,cpu"}, True),
        ({"JAX_PLATFORMS": "cpu,cuda"}, False),
        ({"JAX_PLATFORMS": "tpu"}, True),
        ({"JAX_PLATFORMS": "cuda", "JAX_PLATFORM_NAME": "cpu"}, False),
    ],
)
def test_the_backend_is_read_from_jax_platforms(env, expected):
    assert accelerator_expected(env) is expected


def test_without_jax_platforms_a_gpu_needs_its_plugin_and_its_device(monkeypatch):
    devices = {"/dev/nvidiactl"}
    monkeypatch.setattr(cpus_module.os.path, "exists", lambda path: path in devices)
    monkeypatch.setattr(cpus_module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(cpus_module, "_jax_plugins", lambda: ["xla_cuda12"])
    assert accelerator_expected({}) is True
    assert accelerator_expected({"CUDA_VISIBLE_DEVICES": ""}) is False  # every GPU hidden
    devices.clear()
    assert accelerator_expected({}) is False  # a plugin, no GPU: JAX falls back to CPU
    devices.add("/dev/nvidia0")
    monkeypatch.setattr(cpus_module, "_jax_plugins", lambda: [])
    assert accelerator_expected({}) is False  # a GPU, no plugin: JAX runs on CPU


def test_the_backend_is_read_without_importing_jax():
    # The trainer asks before it pins itself and starts its actors, ahead of its JAX import.
    code = (
        "import sys; from jaxrl_impala.runtime.cpus import accelerator_expected; "
        "print(accelerator_expected()); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    answer, imported = out.stdout.split("\n")[:2]
    assert answer in ("True", "False") and imported == "[]"


def test_cpu_ranges():
    assert cpu_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert cpu_ranges([3]) == "3"

"""The CPU layout: which CPUs the learner and the actors get."""

import os

import pytest

from jaxrl_impala.runtime.cpus import split_cpus


@pytest.mark.parametrize(
    "cpus, expected",
    [
        ({0}, None),
        ({0, 1}, ([0], [1])),
        ({0, 1, 2}, ([0, 1], [2])),
        ({4, 5, 6, 7}, ([4, 5], [6, 7])),
    ],
)
def test_split_cpus_gives_the_learner_the_first_half(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    assert split_cpus() == expected

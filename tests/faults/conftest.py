"""Fault-injection tests: every test here checks that no shared memory and no actor process
outlives it."""

import time

import psutil
import pytest
from runs import assert_no_leaks, shm_segments


def actors_of(tag: str) -> list[psutil.Process]:
    """Live actor processes whose command line mentions ``tag`` (the test's tmp dir)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "jaxrl_impala.actor" in cmd and tag in cmd:
            out.append(p)
    return out


@pytest.fixture(autouse=True)
def no_leaks_or_orphans(tmp_path):
    before = shm_segments()
    yield
    deadline = time.time() + 10
    while time.time() < deadline and actors_of(str(tmp_path)):
        time.sleep(0.2)
    assert actors_of(str(tmp_path)) == [], "actor processes outlived the run"
    assert_no_leaks(before)

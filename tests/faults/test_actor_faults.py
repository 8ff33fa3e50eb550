"""An env that raises inside an actor, and a learner that dies under its actors."""

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from runs import DEBUG, ROOT, actor_pids, train_cmd, wait_for

HERE = Path(__file__).resolve().parent


def test_env_exception_restarts_the_actor_then_a_crash_loop_stops_the_run(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.monotonic()
    out = subprocess.run(
        train_cmd(
            "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=100000000",
            "env.id=raising_env:RaisingCartPole-v0", "env.kwargs={raise_after: 30}",
            "actors.num=1", "learner.batch_unrolls=1", "actors.restart_backoff_s=0.2",
            "actors.crash_loop_restarts=2", "actors.crash_loop_window_s=600",
            "eval.every_env_steps=0",
        ),
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stderr[-3000:]
    # Each crash is reported with the actor's own traceback, and the restarts back off.
    assert out.stderr.count("actor 0 exited with code 1; restarting in") == 2
    assert "restarting in 0.2s" in out.stderr and "restarting in 0.4s" in out.stderr
    assert "RuntimeError: injected env fault after 30 steps" in out.stderr
    # The third crash inside the window stops the run with the actor's error, not a hang.
    assert "error: actor 0 crashed 3 times in 600s (exit 1); its last output:" in out.stderr
    assert out.stderr.strip().endswith("RuntimeError: injected env fault after 30 steps")
    log = (run_dir / "logs" / "actor_0.log").read_text()
    assert log.count("Traceback (most recent call last)") == 3  # once per crash
    assert elapsed < 240


@pytest.mark.parametrize("transport", ["shm", "redis"])
def test_actors_exit_by_themselves_when_the_learner_is_killed(transport, tmp_path):
    server = None
    args = []
    if transport == "redis":
        from redis_server import RedisServer, find_redis_server

        if find_redis_server() is None:
            pytest.skip("no redis-server binary")
        server = RedisServer()
        server.start()
        args = ["transport.kind=redis", f"transport.url={server.url}"]
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            "--config", DEBUG, "--set", f"run.dir={run_dir}",
            "train.total_env_steps=100000000", *args,
        ),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(run_dir / "metrics.jsonl")
        actors = [psutil.Process(p) for p in actor_pids(psutil.Process(proc.pid))]
        assert len(actors) == 2
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        _, alive = psutil.wait_procs(actors, timeout=10)
        assert alive == [], f"actors still running 10 s after the learner died: {alive}"
        print(f"{transport}: actors gone {time.monotonic() - t0:.2f}s after the learner")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.close()

"""Redis faults: the server restarted under a run, and bad URLs, unreachable servers and
rejected credentials as one-line errors naming the URL with its password masked (from the
transport, the standalone actor CLI and the trainer CLI)."""

import subprocess
import sys

import pytest
from redis_runs import CHILD_ENV, DEBUG, ROOT, finish, read_metrics, train, wait_for
from redis_server import RedisServer, find_redis_server, free_port

from jaxrl_impala.transport import (
    RedisTransportError,
    connect_actor,
    create_transport,
    mask_url,
    redis_address,
)


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_run_survives_a_redis_restart(tmp_path):
    run_dir = tmp_path / "run"
    with RedisServer() as server:
        proc = train(
            "--config",
            DEBUG,
            "--set",
            "transport.kind=redis",
            f"transport.url={server.url}",
            f"run.dir={run_dir}",
            "train.total_env_steps=16000",
            "eval.every_env_steps=0",
        )
        try:
            training = lambda: [r for r in read_metrics(run_dir) if "loss" in r]  # noqa: E731
            before = wait_for(training, 90, "the first training line", proc)
            server.restart(pause=1.5)
            restarted_at = before[-1]["env_steps"]
            out, err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "learner lost Redis" in err and "learner reconnected" in err
    metrics = read_metrics(run_dir)
    assert metrics[-1]["final"] and metrics[-1]["env_steps"] >= 16000
    after = [r for r in metrics if "loss" in r and r["env_steps"] > restarted_at + 2000]
    assert after, "no training progress after the restart"
    actor_logs = " ".join(p.read_text() for p in (run_dir / "logs").glob("actor_*.log"))
    assert "reconnected" in actor_logs
    assert metrics[-1].get("actor_restarts", 0) == 0  # the actors rode it out


# ----------------------------------------------------------------------------- bad URLs


def _error(url: str, actor: bool = False) -> str:
    with pytest.raises(RedisTransportError) as info:
        if actor:
            connect_actor(redis_address(url, "jri_bad"), 0)
        else:
            create_transport(
                "redis",
                num_producers=1,
                slots_per_producer=1,
                slot_bytes=1024,
                param_bytes=1024,
                prefix="jri_bad",
                url=url,
            )
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mask_url():
    assert mask_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("rediss://:pw@h:1/0") == "rediss://:***@h:1/0"
    assert mask_url("redis://h:1/0?password=pw") == "redis://h:1/0?password=***"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize("actor", [False, True])
def test_bad_scheme_and_unreachable_server(actor):
    message = _error("http://:hunter2@127.0.0.1:6379/0", actor)
    assert "scheme http://" in message and "http://:***@127.0.0.1:6379/0" in message
    assert "hunter2" not in message
    port = free_port()  # nothing listens there
    message = _error(f"redis://:hunter2@127.0.0.1:{port}/0", actor)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in message
    assert "hunter2" not in message


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_wrong_password():
    with RedisServer(password="s3cret") as server:
        for actor in (False, True):
            url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
            message = _error(url, actor)
            assert f"Redis at redis://:***@127.0.0.1:{server.port}/0 rejected the credentials" in (
                message
            )
            assert "wrong-pw" not in message
        # the right password works, and the learner's keys go away on close
        t = create_transport(
            "redis",
            num_producers=1,
            slots_per_producer=1,
            slot_bytes=1024,
            param_bytes=1024,
            prefix="jri_auth",
            url=server.url,
        )
        t.close()
        assert server.client().keys("jri_auth*") == [b"jri_auth:closed"]


def test_standalone_actor_cli_reports_a_bad_url_in_one_line():
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_impala.actor", "--config", DEBUG, "--set"]
        + ["transport.kind=redis", f"transport.url=redis://bob:hunter2@127.0.0.1:{port}/0"]
        + ["--actor-id", "3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=CHILD_ENV,
        timeout=60,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "hunter2" not in out.stderr, out.stderr
    assert f"actor 3: error: cannot reach Redis at redis://bob:***@127.0.0.1:{port}/0" in lines[0]


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_trainer_cli_reports_rejected_credentials_in_one_line(tmp_path):
    with RedisServer(password="s3cret") as server:
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        out = subprocess.run(
            [sys.executable, "-m", "jaxrl_impala.train", "--config", DEBUG, "--set",
             "transport.kind=redis", f"transport.url={url}", f"run.dir={tmp_path / 'run'}"],
            capture_output=True, text=True, cwd=ROOT, env=CHILD_ENV, timeout=120,
        )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong-pw" not in out.stderr, out.stderr
    assert lines[0].startswith(
        f"error: Redis at redis://:***@127.0.0.1:{server.port}/0 rejected the credentials"
    )

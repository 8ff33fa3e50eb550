"""Redis specifics against a real ``redis-server`` on a free loopback port: a run learns over
Redis, hostile frames are rejected during a run and a standalone actor joins it. (A server
restart mid-run and bad URLs are in ``tests/faults/test_redis_faults.py``.)

Training runs cost ~15 s each of JAX start-up on 2 cores, so there are three of them; the
transport itself is covered by `tests/transport/test_contract.py` (parametrised over Redis too).
"""

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from hostile import push_within_bound
from redis_runs import CARTPOLE, CHILD_ENV, DEBUG, ROOT, finish, read_metrics, train, wait_for
from redis_server import RedisServer, find_redis_server, free_port, redis_server  # noqa: F401

from jaxrl_impala.transport import (
    RedisTransportError,
    connect_actor,
    create_transport,
    decode,
    encode,
    make_prefix,
    redis_address,
)


class MakesMarker:
    """A pickle payload: unpickling it creates `path` (it must never be unpickled)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_cartpole_learns_over_redis(redis_server, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    proc = train(
        "--config",
        CARTPOLE,
        "--set",
        "transport.kind=redis",
        f"transport.url={redis_server.url}",
        "transport.prefix=jri_cartpole",
        f"run.dir={run_dir}",
        "train.stop_at_eval_return=200",  # the preset's budget (100k) is the upper bound
    )
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    metrics = read_metrics(run_dir)
    evals = [r["eval_return_mean"] for r in metrics if "eval_return_mean" in r]
    # Random play scores ~20; shm reaches 475+ in 10-40k steps with this preset
    # (benchmarks/time_to_solve.py); the run stops at the first eval >= 200.
    assert evals and evals[-1] >= 200, evals
    assert metrics[-1]["final"] and metrics[-1]["frames_rejected"] == 0
    client = redis_server.client()
    assert {k.decode() for k in client.keys("jri_cartpole*")} == {"jri_cartpole:closed"}


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_hostile_frames_are_rejected_and_a_standalone_actor_joins(redis_server, tmp_path):  # noqa: F811
    prefix = make_prefix("jri_hostile")
    url = redis_server.url
    run_dir = tmp_path / "run"
    common = ["transport.kind=redis", f"transport.url={url}", f"transport.prefix={prefix}"]
    proc = train(
        "--config",
        DEBUG,
        "--set",
        *common,
        f"run.dir={run_dir}",
        "train.total_env_steps=24000",
        "eval.every_env_steps=0",
    )
    # An extra actor "on another host": id >= actors.num, knows only the config and the URL.
    standalone = subprocess.Popen(
        [sys.executable, "-m", "jaxrl_impala.actor", "--config", DEBUG, "--set", *common]
        + ["--actor-id", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=CHILD_ENV,
    )
    marker = tmp_path / "unpickled"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(MakesMarker(str(control))))  # the payload is live ...
    assert control.exists()
    try:
        client = redis_server.client()
        queue_key = f"{prefix}:unrolls"
        good = wait_for(lambda: client.lindex(queue_key, 0), 60, "a first unroll", proc)
        frame = decode(good)
        arrays = {k: np.array(v) for k, v in frame.arrays.items()}
        wrong_dtype = {**arrays, "obs": arrays["obs"].astype(np.float64)}
        wrong_shape = {**arrays, "obs": np.concatenate([arrays["obs"], arrays["obs"][:1]])}
        hostile = [
            os.urandom(2000),
            good[:-10],  # truncated
            encode(wrong_dtype, frame.meta),
            encode(wrong_shape, frame.meta),
            pickle.dumps(MakesMarker(str(marker))),  # ... but must never be unpickled here
        ]
        push_within_bound(client, prefix, hostile)

        def standalone_frame_seen():
            for data in client.lrange(queue_key, 0, -1):
                try:
                    if decode(data).meta.get("actor_id") == 7:
                        return True
                except ValueError:
                    pass
            return False

        wait_for(standalone_frame_seen, 60, "an unroll from the standalone actor", proc)
        out, err = finish(proc)
        assert proc.returncode == 0, err[-3000:]
        # The learner wrote the closed marker: the standalone actor stops by itself.
        s_out, s_err = standalone.communicate(timeout=20)
        assert standalone.returncode == 0, s_err[-3000:]
    finally:
        for p in (proc, standalone):
            if p.poll() is None:
                p.kill()
                p.wait()
    final = read_metrics(run_dir)[-1]
    assert final["final"] and final["env_steps"] >= 24000
    assert final["frames_rejected"] == len(hostile)
    assert not marker.exists()


# ----------------------------------------------------------------------------- liveness


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_prefix_in_use_and_actor_liveness(redis_server):  # noqa: F811
    kwargs = dict(num_producers=1, slots_per_producer=2, slot_bytes=4096, param_bytes=4096)
    prefix = make_prefix("jri_live")
    t = create_transport("redis", prefix=prefix, url=redis_server.url, **kwargs)
    try:
        with pytest.raises(RedisTransportError, match="in use by a live learner"):
            create_transport("redis", prefix=prefix, url=redis_server.url, **kwargs)
        producer, reader = connect_actor(redis_address(redis_server.url, prefix), 42)
        assert producer.owner_alive() and not producer.closed
        assert producer.put({"x": np.zeros(3)}, {"actor_id": 42}, timeout=1)
        assert t.queue.get(timeout=1).meta == {"actor_id": 42}  # any id: ids are metadata
    finally:
        t.close()
    time.sleep(0.3)  # let the status cache expire
    assert producer.closed and not producer.owner_alive()
    assert producer.put({"x": np.zeros(3)}, {}, timeout=5) is False  # at once
    producer.close()
    reader.close()

    # A learner that vanished without closing (SIGKILL): its heartbeat expires, and actors
    # give up only after `stale_after` seconds without one.
    orphan = connect_actor(redis_address(redis_server.url, make_prefix("jri_none")), 0)
    orphan[0].stale_after = 0.5
    start = time.monotonic()
    assert orphan[0].put({"x": np.zeros(3)}, {}, timeout=5) is False
    assert 0.4 < time.monotonic() - start < 2.0
    assert not orphan[0].owner_alive() and not orphan[0].closed
    for h in orphan:
        h.close()

"""Hostile or stale peers against a real ``redis-server``: whoever can write to the run's keys
may push well-formed unrolls with absurd meta or values, garbage, wrong-shape or NaN
parameter frames, forge a huge version, push a 64 MB element or a flood of tiny ones, and the
learner may die and come back under standalone actors. None of it may crash or strand the
actors or reach the learner's memory.

The store and queue rules are checked in-process (no JAX, fast); one live CartPole run takes
the attacks in sequence, and one standalone actor rides out a learner restart.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import psutil
import pytest
from hostile import REASONS, hostile_unroll_frames, push_within_bound
from redis_runs import CHILD_ENV, DEBUG, ROOT, finish, read_metrics, train, wait_for
from redis_server import RedisServer, find_redis_server, redis_server  # noqa: F401

from jaxrl_impala.transport import (
    FrameError,
    FrameSpec,
    RedisParamStore,
    RedisTransportError,
    connect_actor,
    create_transport,
    decode,
    encode,
    make_prefix,
)

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")

MB = 1 << 20
# Server-side Lua, so the test process never holds the big element or the flood itself.
PUSH_BIG = "redis.call('RPUSH', KEYS[1], string.rep('x', tonumber(ARGV[1]))) return 1"
PUSH_FLOOD = "for i = 1, tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], 'f' .. i) end return 1"
HAS_BIG = """
for _, e in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if #e > 1000000 then return 1 end
end
return 0
"""


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's peak RSS (``VmHWM``); False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def hold(client, key: str, version: int, token: bytes, frame: bytes, seconds: float) -> None:
    """Keep writing one forged params hash for `seconds` (the learner writes its own back
    within 0.5 s, and every actor must fetch the forgery at least once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"version": version, "token": token, "frame": frame})
        pipe.execute()
        time.sleep(0.02)


# ----------------------------------------------------------------------------- the rules


def test_params_reader_follows_its_learner_through_garbage_forgeries_and_a_restart(
    redis_server,  # noqa: F811
):
    prefix = make_prefix("jri_params")
    url, key, client = redis_server.url, f"{prefix}:params", redis_server.client()
    good = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    spec = FrameSpec.from_arrays(good, finite=["w", "b"])
    learner = RedisParamStore.create(url, prefix, capacity=1 << 16)
    reader = RedisParamStore.connect(url, prefix)
    try:
        learner.publish(3, good)
        assert reader.fetch(spec=spec)[0] == 3
        assert reader.fetch(newer_than=3, spec=spec) is None
        ours, token = client.hget(key, "frame"), learner.token
        meta = {"version": 4, "token": token}
        # 1. Garbage, wrong shape, NaN (as version 4): each rejected once with its reason,
        #    not fetched again, and the learner's own frame is written back.
        attacks = {
            "malformed": os.urandom(300),
            "spec": encode({**good, "w": np.ones((4, 4), np.float32)}, meta),
            "values": encode({**good, "b": np.full(4, np.nan, np.float32)}, meta),
        }
        for reason, frame in attacks.items():
            client.hset(key, mapping={"version": 4, "token": token, "frame": frame})
            with pytest.raises(FrameError) as info:
                reader.fetch(newer_than=3, spec=spec)
            assert info.value.reason == reason
            assert reader.fetch(newer_than=3, spec=spec) is None
            wait_for(lambda: client.hget(key, "frame") == ours, 2, "the learner's frame back")
            assert reader.fetch(newer_than=3, spec=spec) is None  # it holds that one already
        assert reader.stats["frames_rejected"] == 3
        assert learner.stats["params_rewritten"] >= 3

        # 2. The same version, token and length, other bytes (NaN): readers that hold version
        #    3 never fetch it; the learner finds it by its SHA-1 (every 2 s) and writes its
        #    own back, which a fresh reader takes once its 1 s pause after the rejection ends.
        nan = encode(
            {**good, "w": np.full((3, 4), np.nan, np.float32)}, {"version": 3, "token": token}
        )
        assert len(nan) == len(ours)
        client.hset(key, "frame", nan)
        assert reader.fetch(newer_than=3, spec=spec) is None
        fresh = RedisParamStore.connect(url, prefix)
        with pytest.raises(FrameError):
            fresh.fetch(spec=spec)
        wait_for(lambda: client.hget(key, "frame") == ours, 4, "the SHA-1 check's rewrite")
        got = wait_for(lambda: fresh.fetch(spec=spec), 2, "the fresh reader's retry")
        assert got[0] == 3 and (got[1]["w"] == 1).all()
        fresh.close()

        # 3. A forged huge version, right token, valid params: taken (nothing tells it from a
        #    new version); the learner writes its own back within 0.5 s and the reader
        #    follows it down.
        huge = 2**62
        forged = encode({**good, "b": np.full(4, 7, np.float32)}, {"version": huge, "token": token})
        got = None
        for _ in range(5):  # the learner may win the race to the key: forge again
            client.hset(key, mapping={"version": huge, "token": token, "frame": forged})
            got = reader.fetch(newer_than=3, spec=spec)
            if got is not None:
                break
        assert got[0] == huge and (got[1]["b"] == 7).all()
        got = wait_for(lambda: reader.fetch(newer_than=huge, spec=spec), 2, "version 3 back")
        assert got[0] == 3 and (got[1]["b"] == 0).all()

        # 4. A restarted learner: a new token, versions start over; the reader takes 0.
        learner.close()
        learner = RedisParamStore.create(url, prefix, capacity=1 << 16)
        assert learner.token != token
        learner.publish(0, good)
        assert reader.fetch(newer_than=3, spec=spec)[0] == 0
        # a reader's first fetch still honours newer_than
        fresh = RedisParamStore.connect(url, prefix)
        assert fresh.fetch(newer_than=0) is None and fresh.fetch()[0] == 0
        fresh.close()
    finally:
        learner.close()
        reader.close()


def test_params_upkeep_sends_no_frame_while_the_stored_one_is_the_learners(
    redis_server,  # noqa: F811
):
    prefix = make_prefix("jri_upkeep")
    client = redis_server.client()
    learner = RedisParamStore.create(redis_server.url, prefix, capacity=2 * MB)
    try:
        learner.publish(1, {"w": np.arange(MB // 4, dtype=np.float32)})  # a 1 MB frame
        before = client.info("stats")["total_net_input_bytes"]
        time.sleep(2.3)  # four checks, one of them with the SHA-1
        sent = client.info("stats")["total_net_input_bytes"] - before
        assert sent < 20_000, sent  # a few checks of ~100 bytes, no 1 MB rewrite
        assert learner.stats["params_rewritten"] == 0
        client.delete(f"{prefix}:params")  # as a server restart loses it
        wait_for(lambda: client.hget(f"{prefix}:params", "version") == b"1", 2, "the rewrite")
        assert learner.stats["params_rewritten"] == 1
    finally:
        learner.close()


@pytest.mark.parametrize("overflow", ["block", "drop_oldest"])
def test_a_64mb_element_and_a_flood_never_reach_the_learners_memory(
    redis_server,  # noqa: F811
    overflow,
):
    prefix = make_prefix("jri_flood")
    key, client = f"{prefix}:unrolls", redis_server.client()
    t = create_transport(
        "redis",
        num_producers=2,
        slots_per_producer=2,  # a bound of 4 unrolls
        slot_bytes=4096,
        param_bytes=4096,
        overflow=overflow,
        prefix=prefix,
        url=redis_server.url,
    )
    producer, reader = connect_actor(t.address, 0)
    honest = {"x": np.arange(4, dtype=np.float32)}
    try:
        # A 64 MB element behind an honest unroll: discarded on the server, counted.
        assert producer.put(honest, {"seq": 0}, timeout=1)
        client.eval(PUSH_BIG, 1, key, 64 * MB)
        peak_known = reset_peak_rss(os.getpid())
        rss = psutil.Process().memory_info().rss
        assert t.queue.get(timeout=2).meta == {"seq": 0}
        assert t.queue.get(timeout=0.2) is None and client.llen(key) == 0
        if peak_known:
            assert peak_rss(os.getpid()) - rss < 16 * MB
        stats = t.queue.stats
        assert stats["frames_rejected"] == 1 and stats["frames_rejected_oversized"] == 1

        # A flood of 10,000 tiny elements: cut back to the bound on the next pop (counted as
        # dropped), the 4 kept are rejected one by one, and honest unrolls flow again.
        client.eval(PUSH_FLOOD, 1, key, 10_000)
        assert t.queue.get(timeout=1) is None
        assert client.llen(key) == 0
        stats = t.queue.stats
        assert stats["unrolls_dropped"] == 10_000 - 4
        assert stats["frames_rejected"] == 1 + 4
        assert producer.put(honest, {"seq": 1}, timeout=1)
        assert t.queue.get(timeout=2).meta == {"seq": 1}
    finally:
        producer.close()
        reader.close()
        t.close()


# ----------------------------------------------------------------------------- live


def test_a_live_run_rides_out_poisoned_params_a_huge_element_and_a_flood(tmp_path):
    prefix = make_prefix("jri_poison")
    run_dir = tmp_path / "run"
    with RedisServer(password="hostile-peers-pw") as server:
        client = server.client()
        pkey, ukey = f"{prefix}:params", f"{prefix}:unrolls"
        proc = train(
            "--config",
            DEBUG,
            "--set",
            "transport.kind=redis",
            f"transport.url={server.url}",
            f"transport.prefix={prefix}",
            f"run.dir={run_dir}",
            "train.total_env_steps=100000000",  # stopped by SIGTERM
            "eval.every_env_steps=2048",
            "eval.episodes=8",
        )
        try:
            training = lambda: [r for r in read_metrics(run_dir) if "loss" in r]  # noqa: E731
            evals = lambda: [r for r in read_metrics(run_dir) if "eval_return_mean" in r]  # noqa: E731
            before = wait_for(evals, 120, "the first evaluation", proc)[-1]

            # Well-formed unrolls with missing or absurd meta, bool bytes of 2, NaN rewards,
            # a future version, built from an honest unroll caught in the queue.
            good = wait_for(lambda: client.lindex(ukey, 0), 60, "an unroll in the queue", proc)
            fields = {k: np.array(v) for k, v in decode(good).arrays.items()}
            push_within_bound(client, prefix, hostile_unroll_frames(fields))

            # Parameter frames: garbage, wrong shape, NaN, and a forged huge version.
            token = client.hget(pkey, "token")
            arrays = {k: np.array(v) for k, v in decode(client.hget(pkey, "frame")).arrays.items()}
            first, huge = sorted(arrays)[0], 2**62
            meta = lambda v: {"version": v, "token": int(token)}  # noqa: E731
            poisoned = {
                huge - 3: os.urandom(500),
                huge - 2: encode(
                    {**arrays, first: np.zeros((*arrays[first].shape, 2), np.float32)},
                    meta(huge - 2),
                ),
                huge - 1: encode(
                    {**arrays, first: np.full_like(arrays[first], np.nan)}, meta(huge - 1)
                ),
                huge: encode(arrays, meta(huge)),  # a forged version with valid params
            }
            for version, frame in poisoned.items():
                hold(client, pkey, version, token, frame, seconds=1.5)
            # The learner's params are back (its upkeep rewrites a changed frame, and every
            # publish writes its own): never more than a few updates after the last forgery.
            wait_for(
                lambda: int(client.hget(pkey, "version")) < huge - 3, 2, "its params back", proc
            )

            # A 64 MB element, then a flood: the learner's peak RSS stays put.
            peak_known = reset_peak_rss(proc.pid)
            rss = psutil.Process(proc.pid).memory_info().rss
            client.eval(PUSH_BIG, 1, ukey, 64 * MB)
            wait_for(lambda: not client.eval(HAS_BIG, 1, ukey), 10, "the element popped", proc)
            client.eval(PUSH_FLOOD, 1, ukey, 10_000)
            wait_for(lambda: client.llen(ukey) <= 8, 10, "the flood cut back", proc)
            if peak_known:
                assert peak_rss(proc.pid) - rss < 40 * MB
            # It trains on and evaluates at least as well as before the attacks.
            steps = training()[-1]["env_steps"]
            recovered = lambda: [  # noqa: E731
                r
                for r in evals()
                if r["env_steps"] > steps and r["eval_return_mean"] >= before["eval_return_mean"]
            ]
            wait_for(recovered, 120, "an evaluation as good as before the attacks", proc)
            proc.send_signal(signal.SIGTERM)
            out, err = finish(proc, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-3000:]
    final = read_metrics(run_dir)[-1]
    assert final.get("actor_restarts", 0) == 0
    assert final["frames_rejected_oversized"] == 1  # the 64 MB element, on the server
    for reason, n in REASONS.items():  # each hostile unroll, counted under its reason
        assert final[f"frames_rejected_{reason}"] >= n, (reason, final)
    assert final["frames_rejected"] >= sum(REASONS.values())
    assert final["unrolls_dropped"] >= 10_000 - 8  # the flood, cut back to the bound
    logs = [p.read_text() for p in sorted((run_dir / "logs").glob("actor_*.log"))]
    assert logs and all("a parameter frame was rejected" in log for log in logs), logs
    assert all(log.count("a parameter frame was rejected") == 1 for log in logs)  # said once
    counts = [int(n) for log in logs for n in re.findall(r"params_rejected=(\d+)", log)]
    assert len(counts) == len(logs) and sum(counts) >= 3, logs  # every bad frame counted
    assert "Traceback" not in "".join(logs)


# ----------------------------------------------------------------------------- restart

LEARNER_SRC = """
import sys, time
from pathlib import Path
from jaxrl_impala.transport import create_transport, decode

url, prefix, path = sys.argv[1:4]
frame = decode(Path(path).read_bytes())
t = create_transport("redis", num_producers=2, slots_per_producer=2, slot_bytes=1 << 16,
                     param_bytes=1 << 16, prefix=prefix, url=url)
t.params.publish(frame.meta["version"], frame.arrays)
print("ready", flush=True)
time.sleep(600)
"""


def _always(action: int):
    """CartPole params (debug config) whose policy picks `action` whatever it sees: every
    weight zero but the logits' bias."""
    from jaxrl_impala.actor.rollout import Rollout
    from jaxrl_impala.config import load_config
    from jaxrl_impala.networks import init_obs_stats
    from jaxrl_impala.unroll import params_to_frame

    rollout = Rollout(load_config(DEBUG), actor_id=0)
    bias = np.array([20.0, -20.0] if action == 0 else [-20.0, 20.0], np.float32)

    def leaf(path, t):
        if getattr(path[-1], "key", None) == "bias" and t.shape == (2,):
            return bias
        return np.zeros(t.shape, t.dtype)

    params = jax.tree_util.tree_map_with_path(leaf, rollout.params_template)
    stats = jax.device_get(init_obs_stats(rollout.env.single_observation_space))
    rollout.env.close()
    return params_to_frame(params, stats)


def _acted_with(frame, version: int, action: int) -> bool:
    return frame.meta["policy_version"] == version and (frame.arrays["actions"] == action).all()


def test_a_restarted_learner_has_standalone_actors_on_its_params_within_10s(
    redis_server,  # noqa: F811
    tmp_path,
):
    prefix, url, client = make_prefix("jri_restart"), redis_server.url, redis_server.client()
    old = tmp_path / "old_params"
    old.write_bytes(encode(_always(0), {"version": 1000}))
    learner = subprocess.Popen(
        [sys.executable, "-c", LEARNER_SRC, url, prefix, str(old)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    actor = subprocess.Popen(
        [sys.executable, "-m", "jaxrl_impala.actor", "--config", DEBUG, "--actor-id", "5"]
        + ["--set", "transport.kind=redis", f"transport.url={url}", f"transport.prefix={prefix}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=CHILD_ENV,
    )
    t = None
    try:
        assert learner.stdout.readline().strip() == "ready", learner.stderr.read()
        old_run = lambda: any(  # noqa: E731
            _acted_with(decode(x), 1000, 0) for x in client.lrange(f"{prefix}:unrolls", 0, -1)
        )
        wait_for(old_run, 120, "an unroll acted with the first learner's params", actor)
        learner.kill()  # a crash: its keys stay, its heartbeat expires in 5 s
        learner.wait()
        deadline = time.monotonic() + 15
        while t is None:
            try:
                t = create_transport(
                    "redis",
                    num_producers=2,
                    slots_per_producer=2,
                    slot_bytes=1 << 16,
                    param_bytes=1 << 16,
                    prefix=prefix,
                    url=url,
                )
            except RedisTransportError:
                assert time.monotonic() < deadline, "the dead learner's claim never expired"
                time.sleep(0.1)
        t.params.publish(0, _always(1))  # a lower version than the actor holds
        start = time.monotonic()
        while True:
            frame = t.queue.get(timeout=0.5)
            if frame is not None and _acted_with(frame, 0, 1):
                break
            assert time.monotonic() - start < 10, "the actor is still on the old params"
            assert actor.poll() is None, actor.stderr.read()
    finally:
        if t is not None:
            t.close()  # the actor sees the closed marker and exits 0
        for p in (learner, actor):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert actor.returncode == 0, actor.stderr.read()[-3000:]

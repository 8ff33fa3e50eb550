"""The training loop, driven in-process (tests/inprocess.py): an in-memory transport and
actors stepped in this process, no subprocess. Faults are injected here, in the tests: the
update is wrapped so that chosen updates see NaN rewards, and evaluation is made to raise."""

import math

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hostile import REASONS, hostile_unroll_frames
from inprocess import STEPS_PER_UPDATE, run_in_process

from jaxrl_impala import unroll
from jaxrl_impala.errors import TrainError
from jaxrl_impala.io.checkpoints import Checkpointer
from jaxrl_impala.train import loop as loop_module


def poison(update, bad_updates):
    """``update`` with NaN rewards in the updates numbered (1-based) in ``bad_updates``."""
    calls = [0]

    def poisoned(state, batch, key):
        calls[0] += 1
        if calls[0] in bad_updates:
            batch = {**batch, "rewards": batch["rewards"] * jnp.nan}
        return update(state, batch, key)

    return poisoned


def test_the_loop_trains_evaluates_and_checkpoints_in_process(tmp_path):
    code, records, loop = run_in_process(
        tmp_path, ["train.total_env_steps=1024", "eval.every_env_steps=512"]
    )
    assert code == 0
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_return_mean" in r]
    # deterministic: a line per update, evaluations at 512 and 1024 env steps, a final line
    assert [r["env_steps"] for r in train] == list(range(64, 1025, 64))
    assert [r["env_steps"] for r in evals] == [512, 1024]
    assert records[-1]["final"] is True and records[-1]["env_steps"] == 1024
    assert all(math.isfinite(r["loss"]) and r["policy_lag_max"] == 0 for r in train)
    assert train[-1]["episodes"] > 0 and train[-1]["episode_return_mean"] > 8
    assert int(loop.run.state.step) == 1024 // STEPS_PER_UPDATE
    assert all(0 <= r["wall_time_s"] < 600 for r in records)
    meta, _ = Checkpointer.verify(Checkpointer(tmp_path).list()[-1])
    assert meta["env_steps"] == 1024 and meta["version"] == 16


def hostile_frames(s):
    return hostile_unroll_frames(unroll.to_frame(s.example_unroll()))


def test_hostile_frames_are_rejected_counted_by_reason_and_the_run_trains_on(tmp_path):
    code, records, loop = run_in_process(
        tmp_path,
        [f"train.total_env_steps={4 * STEPS_PER_UPDATE}", "eval.every_env_steps=0"],
        preload=hostile_frames,
    )
    assert code == 0 and int(loop.run.state.step) == 4
    want = REASONS
    final = records[-1]
    assert final["final"] and final["frames_rejected"] == sum(want.values())
    assert {r: final[f"frames_rejected_{r}"] for r in want} == want
    train = [r for r in records if "loss" in r]
    assert len(train) == 4 and train[0]["frames_rejected_values"] == 2
    assert all(r["updates"] > 0 and math.isfinite(r["loss"]) for r in train)
    # the checkpoint keeps them, so a resumed run goes on counting
    meta, _ = Checkpointer.verify(Checkpointer(tmp_path).list()[-1])
    assert {r: meta[f"frames_rejected_{r}"] for r in want} == want


def test_nonfinite_updates_are_skipped_and_counted(tmp_path):
    bad = set(range(5, 17, 4))  # updates 5, 9, 13 of 16
    code, records, loop = run_in_process(
        tmp_path,
        ["train.total_env_steps=1024", "eval.every_env_steps=0"],
        wrap_update=lambda update: poison(update, bad),
    )
    assert code == 0
    assert records[-1]["updates_skipped_nonfinite"] == len(bad) == 3
    train = [r for r in records if "loss" in r]
    # the skipped updates' metrics are left out; the others are finite
    assert len(train) == 16 - 3
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in train)
    evals = [r["eval_return_mean"] for r in records if "eval_return_mean" in r]
    assert evals and all(math.isfinite(e) for e in evals)
    params = jax.tree.leaves(jax.device_get(loop.run.state.params))
    assert all(np.isfinite(np.asarray(x)).all() for x in params)


def _finite_tree(tree) -> bool:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return bool(leaves) and all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")


def test_a_nonfinite_streak_stops_the_run_and_keeps_good_checkpoints(tmp_path):
    with pytest.raises(TrainError, match="5 updates in a row had a non-finite loss") as e:
        run_in_process(
            tmp_path,
            [
                "train.total_env_steps=4096",
                "eval.every_env_steps=0",
                "train.max_nonfinite_in_row=5",
                "train.checkpoint_every_s=0.001",
            ],
            wrap_update=lambda update: poison(update, set(range(20, 100))),
        )
    assert "last good checkpoint is untouched" in str(e.value)
    ckpts = Checkpointer(tmp_path).list()
    assert ckpts, "no checkpoint was written before the streak"
    for path in ckpts:
        meta, data = Checkpointer.verify(path)
        # The streak was updates 20..24: the run stopped before saving the fifth.
        assert meta["env_steps"] < 24 * STEPS_PER_UPDATE
        assert _finite_tree(flax.serialization.msgpack_restore(data)["params"])


class EvalBroke(RuntimeError):
    pass


def failing_evaluate(monkeypatch, fail_calls):
    """Makes the loop's evaluations raise on the calls numbered (1-based) in ``fail_calls``."""
    real, calls = loop_module.evaluate, [0]

    def evaluate(*args, **kwargs):
        calls[0] += 1
        if calls[0] in fail_calls:
            raise EvalBroke("the eval env broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    return calls


def test_a_failed_evaluation_is_counted_reported_once_and_retried(tmp_path, monkeypatch, capsys):
    calls = failing_evaluate(monkeypatch, {1})
    code, records, loop = run_in_process(
        tmp_path, ["train.total_env_steps=1024", "eval.every_env_steps=512"]
    )
    assert code == 0 and calls[0] == 2
    evals = [r for r in records if "eval_return_mean" in r]
    assert [r["env_steps"] for r in evals] == [1024]  # 512 failed; the next interval's ran
    assert records[-1]["final"] and records[-1]["eval_failures"] == 1
    train = [r for r in records if "loss" in r]
    # the count reaches the training lines once non-zero (the line at 512 precedes its eval)
    assert [r.get("eval_failures", 0) for r in train if r["env_steps"] in (512, 576)] == [0, 1]
    meta, _ = Checkpointer.verify(Checkpointer(tmp_path).list()[-1])
    assert meta["eval_failures"] == 1 and meta["env_steps"] == 1024
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1
    assert "evaluation at env_steps=512 failed (EvalBroke: the eval env broke)" in err
    assert "raise EvalBroke" in err


def test_a_failed_final_evaluation_keeps_the_final_checkpoint_and_line(
    tmp_path, monkeypatch, capsys
):
    calls = failing_evaluate(monkeypatch, set(range(1, 100)))
    code, records, loop = run_in_process(
        tmp_path, ["train.total_env_steps=256", "eval.every_env_steps=128"]
    )
    # evaluations at 128 and 256 fail, and so does the final one (the last result is stale)
    assert code == 0 and calls[0] == 3
    assert not [r for r in records if "eval_return_mean" in r]
    assert records[-1]["final"] and records[-1]["env_steps"] == 256
    assert records[-1]["eval_failures"] == 3
    meta, _ = Checkpointer.verify(Checkpointer(tmp_path).list()[-1])
    assert meta["env_steps"] == 256 and meta["eval_failures"] == 3
    err = capsys.readouterr().err
    # the traceback once; a repeat of the same error is one line
    assert err.count("Traceback (most recent call last)") == 1
    assert err.count("the same error as before") == 2


def test_a_failed_evaluation_on_the_eval_thread_is_counted_too(tmp_path, monkeypatch, capsys):
    # Not deterministic: evaluations run on the loop's thread pool, read by poll_eval.
    failing_evaluate(monkeypatch, {1})
    code, records, _ = run_in_process(
        tmp_path,
        ["train.deterministic=false", "train.total_env_steps=1024", "eval.every_env_steps=512"],
    )
    assert code == 0 and records[-1]["final"] and records[-1]["eval_failures"] == 1
    assert [r["env_steps"] for r in records if "eval_return_mean" in r][-1] == 1024
    assert capsys.readouterr().err.count("Traceback (most recent call last)") == 1


def test_a_recurrent_run_through_the_queue_is_on_policy_and_deterministic(tmp_path):
    # Actors (the stepwise path, on CartPole) send initial_core through the frame spec; the
    # deterministic schedule acts with the params it trains: IMPALA's one gradient step per
    # batch sees rho == 1 (no obs normalisation: the update refreshes it before the loss).
    overrides = [
        f"train.total_env_steps={8 * STEPS_PER_UPDATE}",
        "eval.every_env_steps=256",
        "network.core=lstm",
        "network.core_size=8",
        "learner.algo=impala",
        "learner.obs_norm=false",
    ]
    code, first, loop = run_in_process(tmp_path / "a", overrides)
    assert code == 0 and loop.s.example_unroll().initial_core.shape == (1, 4, 32)
    train = [r for r in first if "loss" in r]
    assert len(train) == 8 and train[-1]["episodes"] > 0
    for r in train:
        assert r["rho_max"] == pytest.approx(1.0, abs=1e-5)
        assert r["rho_mean"] == pytest.approx(1.0, abs=1e-6)
    assert [r["env_steps"] for r in first if "eval_return_mean" in r] == [256, 512]
    _, second, _ = run_in_process(tmp_path / "b", overrides)
    keep = lambda rs: [{k: v for k, v in r.items() if "time" not in k and k != "sps"} for r in rs]  # noqa: E731
    assert keep(second) == keep(first)

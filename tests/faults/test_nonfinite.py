"""Non-finite updates: skipped and counted; a streak stops the run with the checkpoints intact.

The fault is injected by config (``learner.inject_nan_from``): NaN rewards make the loss and
the gradients NaN inside the jitted update.
"""

import math

import flax.serialization
import jax
import numpy as np
from runs import DEBUG, final_record, read_metrics, run_train

# debug.yaml: 2 unrolls of 4 envs x 8 steps per update = 64 env steps per update.
STEPS_PER_UPDATE = 64


def test_nonfinite_updates_are_skipped_and_counted(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train(
        "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=4096",
        "learner.inject_nan_from=5", "learner.inject_nan_every=4",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    updates = 4096 // STEPS_PER_UPDATE
    expected = len(range(5, updates + 1, 4))  # updates 5, 9, ..., 61
    final = final_record(run_dir)
    assert final["updates_skipped_nonfinite"] == expected == 15
    train_rows = [r for r in read_metrics(run_dir) if "loss" in r]
    assert train_rows
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in train_rows)
    evals = [r["eval_return_mean"] for r in read_metrics(run_dir) if "eval_return_mean" in r]
    assert evals and all(e is not None and math.isfinite(e) for e in evals)


def _finite_tree(tree) -> bool:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return bool(leaves) and all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")


def test_a_nonfinite_streak_stops_the_run_and_keeps_good_checkpoints(tmp_path):
    from jaxrl_impala.train import Checkpointer

    run_dir = tmp_path / "run"
    out = run_train(
        "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=20000",
        "learner.inject_nan_from=40", "train.max_nonfinite_in_row=5",
        "train.checkpoint_every_s=0.05",
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 5 updates in a row had a non-finite loss or gradient")
    assert "last good checkpoint is untouched" in last
    ckpts = Checkpointer(run_dir).list()
    assert ckpts, "no checkpoint was written before the streak"
    for path in ckpts:
        meta, data = Checkpointer._verify(path)
        # The streak was updates 40..44; the run stopped before any later checkpoint.
        assert meta["env_steps"] < 44 * STEPS_PER_UPDATE
        assert _finite_tree(flax.serialization.msgpack_restore(data)["params"])
    final = [r for r in read_metrics(run_dir) if r.get("final")]
    assert final == []  # a stopped run writes no final record

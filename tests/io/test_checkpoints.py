"""Checkpoints: atomic replacement with no window, a required hash, and a one-line error
for a checkpoint that does not fit the config."""

import json

import jax
import numpy as np
import pytest

from jaxrl_impala.io.checkpoints import Checkpointer, CheckpointMismatch, newest_checkpoint_steps


def _state(width: int = 3, value: float = 1.0):
    return {"params": {"w": np.full((2, width), value, np.float32)}, "step": np.int32(7)}


def test_a_second_checkpoint_at_the_same_step_replaces_the_first_without_a_gap(tmp_path):
    ckpt = Checkpointer(tmp_path)
    first = ckpt.save(_state(value=1.0), {"env_steps": 64, "wall_time_s": 1.0})
    seen_during_rename = []
    real_rename = __import__("os").rename

    def rename(src, dst):  # the moment the new one lands, the old one must still be there
        seen_during_rename.append(first.exists())
        real_rename(src, dst)

    import jaxrl_impala.io.checkpoints as module

    module.os.rename = rename
    try:
        second = ckpt.save(_state(value=2.0), {"env_steps": 64, "wall_time_s": 2.0})
    finally:
        module.os.rename = real_rename
    assert seen_during_rename == [True]
    assert second.name == "ckpt_000000000064_1" and not first.exists()
    state, meta, path = ckpt.restore(_state())
    assert path == second and meta["wall_time_s"] == 2.0
    np.testing.assert_array_equal(state["params"]["w"], 2.0)
    assert newest_checkpoint_steps(tmp_path) == 64


def test_checkpoints_are_ordered_by_steps_and_the_newest_three_kept(tmp_path):
    ckpt = Checkpointer(tmp_path)
    for steps in (64, 128, 1024, 64 * 100, 64 * 1000):
        ckpt.save(_state(), {"env_steps": steps, "wall_time_s": 0.0})
    names = [p.name for p in ckpt.list()]
    assert names == ["ckpt_000000001024", "ckpt_000000006400", "ckpt_000000064000"]


def test_a_checkpoint_without_its_hash_is_not_read(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(_state(), {"env_steps": 64, "wall_time_s": 0.0})
    meta = json.loads((path / "meta.json").read_text())
    del meta["sha256"]
    (path / "meta.json").write_text(json.dumps(meta))
    assert ckpt.restore(_state()) is None
    assert "records no sha256" in capsys.readouterr().err


def test_a_changed_network_is_one_line_naming_the_first_leaf_that_differs(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(_state(width=3), {"env_steps": 64, "wall_time_s": 0.0})
    with pytest.raises(CheckpointMismatch) as e:
        ckpt.restore(_state(width=5))
    message = str(e.value)
    assert "\n" not in message
    assert message.endswith("params/w has shape (2, 3) in the checkpoint, (2, 5) in this config")
    wider = {**_state(), "extra": np.zeros(1)}
    with pytest.raises(CheckpointMismatch, match="extra is missing from the checkpoint"):
        ckpt.restore(wider)


@pytest.mark.parametrize("return_norm", ["none", "running", "popart"])
def test_restore_fills_a_flax_train_state(tmp_path, return_norm):
    """Every leaf comes back, ``learner.return_norm``'s statistics too."""
    from jaxrl_impala.config import load_config
    from jaxrl_impala.train.setup import setup

    overrides = ["env.id=CartPole-v1", "network.hidden=[8]", f"learner.return_norm={return_norm}"]
    s = setup(load_config(None, overrides))
    state = s.init_state(jax.random.PRNGKey(0))
    if return_norm != "none":  # statistics unlike a fresh state's
        stats = jax.tree.map(lambda x: x + 3, state.return_stats)
        state = state.replace(return_stats=stats)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(jax.device_get(state), {"env_steps": 64, "wall_time_s": 0.0})
    restored, _, _ = ckpt.restore(s.init_state(jax.random.PRNGKey(1)))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_trained_state_is_restored_leaf_by_leaf(tmp_path):
    """After a few real updates (Adam's moments and count no longer zero), the final
    checkpoint restored into a fresh state from another seed gives back every leaf of the
    params, the optimiser state and the obs statistics, bit for bit."""
    from inprocess import STEPS_PER_UPDATE, run_in_process

    code, _, loop = run_in_process(
        tmp_path, [f"train.total_env_steps={3 * STEPS_PER_UPDATE}", "eval.every_env_steps=0"]
    )
    assert code == 0
    saved = jax.device_get(loop.run.state)
    fresh = loop.s.init_state(jax.random.PRNGKey(123))
    restored, meta, _ = Checkpointer(tmp_path).restore(fresh)
    assert meta["env_steps"] == 3 * STEPS_PER_UPDATE and int(restored.step) == 3
    for part in ("params", "opt_state", "obs_stats"):
        want = jax.tree_util.tree_leaves_with_path(getattr(saved, part))
        got = jax.tree_util.tree_leaves_with_path(getattr(restored, part))
        assert [p for p, _ in got] == [p for p, _ in want], part
        for (path, a), (_, b) in zip(want, got, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape, (part, path)
            np.testing.assert_array_equal(a, b, err_msg=f"{part}{jax.tree_util.keystr(path)}")
    # Not vacuous: training moved the optimiser state, and the fresh state differs.
    moved = [np.any(np.asarray(x) != 0) for x in jax.tree.leaves(saved.opt_state)]
    assert sum(moved) > len(moved) // 2
    unequal = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(saved.params), strict=True)
    ]
    assert any(unequal)


def test_a_replaced_checkpoint_does_not_count_against_the_kept_three(tmp_path):
    ckpt = Checkpointer(tmp_path)
    for steps in (64, 128, 192, 192):
        ckpt.save(_state(), {"env_steps": steps, "wall_time_s": 0.0})
    names = [p.name for p in ckpt.list()]
    assert names == ["ckpt_000000000064", "ckpt_000000000128", "ckpt_000000000192_1"]


def test_newest_checkpoint_steps_reads_the_newest_name(tmp_path):
    from jaxrl_impala.io.checkpoints import newest_checkpoint_steps

    assert newest_checkpoint_steps(tmp_path) == 0
    for steps in (4096, 123456, 8192):
        (tmp_path / "checkpoints" / f"ckpt_{steps:012d}").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".tmp_ckpt_000000999999_1").mkdir()  # a write in progress
    assert newest_checkpoint_steps(tmp_path) == 123456

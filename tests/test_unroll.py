"""The Unroll's frame layout: to frame fields and back, its frame spec, and the params
frame."""

import jax
import numpy as np
import pytest

from jaxrl_impala import unroll
from jaxrl_impala.transport.codec import FrameError, FrameSpec, decode, encode


def _example(obs_row, num_terms=2, core_size=0):
    action = np.zeros((3, 2), np.float32)
    return unroll.example(4, 3, obs_row, action, 4, num_terms, core_size)


def test_frame_fields_are_the_unroll_fields_with_dict_observations_flattened():
    u = _example({"lidar": np.zeros((3, 5), np.float32), "image": np.zeros((3, 2, 2), np.uint8)})
    fields = unroll.to_frame(u)
    assert {"obs__lidar", "obs__image"} <= set(fields) and "obs" not in fields
    # every field but a recurrent policy's initial state and a teacher's actions (this
    # example has neither)
    no_core = set(unroll.Unroll._fields) - {"obs", "initial_core", "teacher_actions"}
    assert set(fields) - {"obs__lidar", "obs__image"} == no_core
    assert fields["obs__lidar"].shape == (5, 3, 5) and fields["actions"].shape == (4, 3, 2)
    assert fields["terminated"].dtype == np.bool_ and fields["episode_length"].dtype == np.int32
    batch = unroll.batch_from_frame(unroll.concat([fields, fields]))
    assert set(batch) == set(unroll.BATCH_FIELDS)
    assert batch["obs"]["image"].shape == (5, 6, 2, 2) and batch["rewards"].shape == (4, 6)


def test_a_recurrent_unroll_carries_its_initial_state_into_the_batch():
    u = _example(np.zeros((3, 5), np.float32), core_size=6)
    fields = unroll.to_frame(u)
    assert fields["initial_core"].shape == (1, 3, 6)  # time extent 1: columns on axis 1
    assert fields["initial_core"].dtype == np.float32
    batch = unroll.batch_from_frame(unroll.concat([fields, fields]))
    assert set(batch) == set(unroll.BATCH_FIELDS) | {"initial_core"}
    assert batch["initial_core"].shape == (1, 6, 6)
    assert "initial_core" in unroll.frame_spec(u).finite


def test_an_absent_field_is_left_out_of_the_frame():
    u = _example(np.zeros((3, 5), np.float32), num_terms=0)
    assert u.episode_terms is None and "episode_terms" not in unroll.to_frame(u)


def test_the_frame_spec_checks_meta_and_the_values_the_update_reads():
    u = _example({"lidar": np.zeros((3, 5), np.float32), "image": np.zeros((3, 2, 2), np.uint8)})
    spec = unroll.frame_spec(u)
    assert spec.fields == FrameSpec.from_arrays(unroll.to_frame(u)).fields
    assert set(spec.meta) == set(unroll.META_FIELDS)
    assert all(low == 0 for low, _ in spec.meta.values())
    assert spec.meta["actor_id"][1] == unroll.MAX_ACTOR_ID == 2**31 - 1
    # float fields the update reads; not the uint8 image, not the NaN-by-design returns
    assert spec.finite == {
        "obs__lidar", "actions", "behaviour_logp", "behaviour_dist", "rewards",
        "truncation_value", "discounted_return",
    }  # fmt: skip
    assert spec.ranges == {}  # float actions: no bounds

    discrete = unroll.example(4, 3, np.zeros((3, 5), np.float32), np.zeros(3, np.int32), 2, 0)
    spec = unroll.frame_spec(discrete, (0, 1))
    assert spec.ranges == {"actions": (0, 1)} and "actions" not in spec.finite
    meta = {"policy_version": 2, "actor_id": 1, "unroll_index": 0}
    fields = unroll.to_frame(discrete)
    decode(encode(fields, meta), spec=spec)
    with pytest.raises(FrameError, match="'actions': values outside") as caught:
        decode(encode({**fields, "actions": np.full((4, 3), 2, np.int32)}, meta), spec=spec)
    assert caught.value.reason == "values"
    with pytest.raises(FrameError, match="'unroll_index' is missing"):
        decode(encode(fields, {"policy_version": 2, "actor_id": 1}), spec=spec)


def test_cast_gives_every_fixed_field_its_dtype():
    u = _example(np.zeros((3, 5), np.float32))
    wide = u._replace(rewards=u.rewards.astype(np.float64), terminated=u.terminated.astype(int))
    cast = unroll.cast(wide)
    assert cast.rewards.dtype == np.float32 and cast.terminated.dtype == np.bool_


def test_params_travel_as_a_frame_and_come_back_in_their_tree():
    params = {"dense": {"kernel": np.arange(6.0).reshape(2, 3), "bias": np.ones(3)}}
    stats = (np.zeros(2), np.float32(3.0))
    arrays = unroll.params_to_frame(params, stats)
    assert sorted(arrays) == ["p0000", "p0001", "s0000", "s0001"]
    back_params, back_stats = unroll.params_from_frame(arrays, params, stats)
    want, got = jax.tree.leaves((params, stats)), jax.tree.leaves((back_params, back_stats))
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_teachers_actions_travel_beside_the_actions_into_the_batch_within_their_bounds():
    u = unroll.example(
        4, 3, np.zeros((3, 5), np.float32), np.zeros(3, np.int32), 2, 0, teacher=True
    )
    fields = unroll.to_frame(u)
    assert fields["teacher_actions"].shape == fields["actions"].shape == (4, 3)
    assert fields["teacher_actions"].dtype == np.int32
    batch = unroll.batch_from_frame(unroll.concat([fields, fields]))
    assert set(batch) == set(unroll.BATCH_FIELDS) | {"teacher_actions"}
    assert batch["teacher_actions"].shape == (4, 6)
    spec = unroll.frame_spec(u, (0, 1))
    assert spec.ranges == {"actions": (0, 1), "teacher_actions": (0, 1)}
    meta = {"policy_version": 0, "actor_id": 0, "unroll_index": 0}
    bad = {**fields, "teacher_actions": np.full((4, 3), 2, np.int32)}
    with pytest.raises(FrameError, match="'teacher_actions': values outside"):
        decode(encode(bad, meta), spec=spec)
    floats = _example(np.zeros((3, 5), np.float32))._replace(teacher_actions=np.zeros((4, 3, 2)))
    assert "teacher_actions" in unroll.frame_spec(floats).finite

"""Well-formed but hostile unroll frames, shared by the in-process loop test and the live
Redis run (tests/faults/test_hostile_peers.py)."""

import numpy as np

from jaxrl_impala.transport import encode

# The reason each frame of `hostile_unroll_frames` is rejected under (counter suffixes).
REASONS = {"malformed": 1, "spec": 1, "meta": 2, "values": 2, "future_version": 1}


def hostile_unroll_frames(fields: dict) -> list[bytes]:
    """Frames a writer to the queue could push, built from an honest unroll's ``fields``:
    each is rejected, counted under its reason (`REASONS`), and the run trains on."""
    fields = {k: np.asarray(v) for k, v in fields.items()}
    meta = {"policy_version": 0, "actor_id": 0, "unroll_index": 0}
    nan_rewards = {**fields, "rewards": np.full_like(fields["rewards"], np.nan)}
    byte_two = np.zeros(fields["terminated"].shape, np.uint8)
    byte_two[2, 1] = 2  # a "bool" that makes 1 - (terminated | truncated) negative
    bool_two = {**fields, "terminated": byte_two.view(np.bool_)}
    return [
        b"not a frame",  # malformed
        encode({"x": np.zeros(3, np.float32)}, meta),  # spec
        encode(fields, {}),  # meta: none at all (the KeyError that ended runs)
        encode(fields, {**meta, "actor_id": -1}),  # meta: out of range
        encode(nan_rewards, meta),  # values
        encode(bool_two, meta),  # values
        encode(fields, {**meta, "policy_version": 10**12}),  # future_version (the batcher)
    ]

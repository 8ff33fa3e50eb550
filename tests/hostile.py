"""Well-formed but hostile unroll frames, shared by the in-process loop test and the live
Redis run (tests/faults/test_hostile_peers.py)."""

import time

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


# Push one element only while the list holds fewer than the learner's bound: an element past
# the bound is cut by the learner's pop (as a flood is) and would be counted as dropped, not
# under its rejection reason.
_PUSH_WITHIN_BOUND = """
local bound = tonumber(redis.call('HGET', KEYS[2], 'bound'))
if bound and redis.call('LLEN', KEYS[1]) >= bound then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


def push_within_bound(client, prefix: str, frames: list[bytes], timeout: float = 30.0) -> None:
    """RPUSH each frame onto ``{prefix}:unrolls`` as a writer to the database could, one at a
    time and only while the queue has room, so that each reaches the learner's checks."""
    deadline = time.monotonic() + timeout
    for frame in frames:
        keys = (f"{prefix}:unrolls", f"{prefix}:learner")
        while not client.eval(_PUSH_WITHIN_BOUND, 2, *keys, frame):
            assert time.monotonic() < deadline, "the queue never had room"
            time.sleep(0.005)

"""The actor process: the address it reads from its stdin."""

import pytest


def test_the_address_on_stdin_is_one_json_object_and_end_of_input_means_stop(monkeypatch):
    import io

    from jaxrl_impala.actor.process import address_from_stdin

    monkeypatch.setattr("sys.stdin", io.StringIO('{"kind": "shm", "name": "x"}\n'))
    assert address_from_stdin() == {"kind": "shm", "name": "x"}
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert address_from_stdin() is None
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]\n"))
    with pytest.raises(ValueError, match="not a JSON object"):
        address_from_stdin()


def test_a_bad_parameter_frame_is_counted_said_once_and_the_actor_acts_on(capsys):
    import numpy as np

    from jaxrl_impala.actor.process import _Params
    from jaxrl_impala.transport.codec import FrameSpec
    from jaxrl_impala.transport.memory import MemoryParamStore

    good = {"w": np.ones(3, np.float32)}

    class Rollout:  # what the loop needs of one: the spec, and set_params
        params_spec = FrameSpec.from_arrays(good, finite=["w"])

        def set_params(self, arrays):
            self.arrays = arrays

    store, rollout, params = MemoryParamStore(), Rollout(), _Params(actor_id=3)
    store.publish(1, good)
    params.refresh(store, rollout)
    assert params.version == 1
    store.publish(2, {"w": np.full(3, np.nan, np.float32)})  # NaN
    params.refresh(store, rollout)
    store.publish(3, {"w": np.ones(4, np.float32)})  # a wrong shape
    params.refresh(store, rollout)
    assert params.version == 1 and params.rejected == 2 and (rollout.arrays["w"] == 1).all()
    err = capsys.readouterr().err
    assert err.count("a parameter frame was rejected") == 1  # said once
    assert "acting on with the params of version 1" in err
    store.publish(4, good)
    params.refresh(store, rollout)
    assert params.version == 4


@pytest.mark.parametrize("actor_id", ["-1", str(2**31)])
def test_an_actor_id_the_learner_would_reject_is_a_usage_error(actor_id, capsys):
    from jaxrl_impala.actor.__main__ import main

    argv = ["--config", "configs/debug.yaml", "--set", "transport.kind=redis"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--actor-id", actor_id])
    assert exit_info.value.code == 2
    assert f"--actor-id: must be in 0..{2**31 - 1}, got {actor_id}" in capsys.readouterr().err

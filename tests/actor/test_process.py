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

"""Config loading, overrides and one-line errors."""

import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from jaxrl_impala.config import ConfigError, derived_sizes, dump_yaml, load_config

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_yaml(config))
    assert load_config(again) == config


def test_contract_keys_exist_with_defaults():
    c = load_config()
    assert c.env.id == "jaxrl_impala/Driving-v0"
    assert c.learner.algo == "appo" and c.transport.kind == "shm"
    for key in (
        "env.num_envs",
        "actors.num",
        "rollout.length",
        "learner.num_devices",
        "transport.url",
        "transport.prefix",
        "train.total_env_steps",
        "train.seed",
        "train.deterministic",
        "eval.every_env_steps",
        "eval.episodes",
        "run.dir",
    ):
        section, name = key.split(".")
        assert hasattr(getattr(c, section), name), key


def test_overrides_are_typed():
    c = load_config(
        None,
        [
            "learner.lr=1e-4",
            "network.hidden=[32, 16]",
            "train.deterministic=true",
            "learner.reward_clip=null",
            "env.kwargs.obs_mode=pixels",
        ],
    )
    assert c.learner.lr == pytest.approx(1e-4)
    assert c.network.hidden == (32, 16)
    assert c.train.deterministic is True
    assert c.learner.reward_clip is None
    assert c.env.kwargs == {"obs_mode": "pixels"}


def test_an_env_kwarg_override_keeps_the_presets_other_kwargs():
    c = load_config(ROOT / "configs/driving.yaml", ["env.kwargs.num_vehicles=4"])
    assert c.env.kwargs["num_vehicles"] == 4
    assert c.env.kwargs["obs_mode"] == "vector" and c.env.kwargs["action_mode"] == "continuous"


@pytest.mark.parametrize(
    "override,message",
    [
        ("learner.lrr=1", "unknown config key 'learner.lrr'; valid keys in learner: algo"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("learner.algo=dqn", "learner.algo: 'dqn' is not one of appo, impala, ppo"),
        ("transport.kind=zmq", "transport.kind: 'zmq' is not one of shm, redis"),
        ("env.num_envs=abc", "env.num_envs: expected an integer"),
        ("env.num_envs=0", "env.num_envs: must be > 0"),
        ("train.deterministic=maybe", "train.deterministic: expected true or false"),
        ("learner.minibatches=7", "learner.minibatches=7 does not divide the batch"),
        ("learner", "expected KEY=VALUE"),
        ("actors.num=many", "actors.num: expected an integer or auto, got 'many'"),
        ("actors.num=AUTO", "actors.num: expected an integer or auto, got 'AUTO'"),
        ("actors.num=0", "actors.num: must be > 0"),
        ("learner.return_norm=pop", "learner.return_norm: 'pop' is not one of none, running"),
        ("learner.popart_beta=0", "learner.popart_beta: must be > 0"),
        ("learner.popart_beta=1.5", "learner.popart_beta=1.5: must be <= 1"),
        ("learner.teacher_coef=-1", "learner.teacher_coef=-1.0: must be >= 0"),
        ("learner.teacher_schedule=cosine", "learner.teacher_schedule: 'cosine' is not one of"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_actors_num_auto_loads_round_trips_and_is_refused_where_it_cannot_work(tmp_path):
    c = load_config(None, ["actors.num=auto"])
    assert c.actors.num == "auto"
    preset = tmp_path / "auto.yaml"
    preset.write_text("actors:\n  num: auto\n")
    assert load_config(preset) == c
    assert load_config(None, ["actors.num=3"]).actors.num == 3
    # a lock-step schedule splits learner.batch_unrolls among a fixed number of actors
    with pytest.raises(ConfigError, match="actors.num=auto: train.deterministic needs") as e:
        load_config(None, ["actors.num=auto", "train.deterministic=true"])
    assert "\n" not in str(e.value)
    # several learner processes number their actors from process_id * actors.num
    multi = ["actors.num=auto", "transport.kind=redis", "distributed.coordinator=h:1"]
    with pytest.raises(ConfigError, match="actors.num=auto: 2 learner processes") as e:
        load_config(None, [*multi, "distributed.num_processes=2"])
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_derived_sizes_fail_loudly_on_devices():
    c = load_config(None, ["env.num_envs=6", "learner.batch_unrolls=1", "learner.minibatches=2"])
    assert derived_sizes(c, 1)["minibatch_size"] == 3
    with pytest.raises(ConfigError, match="does not split over 2 devices"):
        derived_sizes(c, 2)


@settings(max_examples=60, deadline=None)
@given(key=st.text(max_size=20), value=st.text(max_size=20))
def test_fuzzed_overrides_never_crash_with_anything_but_config_error(key, value):
    try:
        load_config(None, [f"{key}={value}"])
    except ConfigError as e:
        assert "\n" not in str(e)


# Any YAML-able document: scalars of every type, lists, nested mappings with real and fake keys.
_SECTIONS = ["env", "actors", "rollout", "network", "learner", "transport", "train", "eval", "run"]
_KEYS = ["num_envs", "num", "length", "hidden", "lr", "algo", "kind", "seed", "dir", "bogus", ""]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=8,
)
_documents = st.one_of(
    _values,
    st.dictionaries(
        st.sampled_from(_SECTIONS) | st.text(max_size=6),
        st.dictionaries(st.sampled_from(_KEYS), _values, max_size=3) | _values,
        max_size=4,
    ),
)


@settings(max_examples=150, deadline=None)
@given(doc=_documents)
def test_fuzzed_config_files_load_or_fail_with_one_config_error_line(doc, tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_fuzzed_config_file_bytes_never_escape_as_anything_but_config_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


def test_cli_help_print_config_and_errors():
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "jaxrl_impala.train", *a],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    out = run("--help")
    assert out.returncode == 0 and "--print-config" in out.stdout
    out = run("--config", "configs/cartpole.yaml", "--set", "learner.lr=0.002", "--print-config")
    assert out.returncode == 0 and "lr: 0.002" in out.stdout and "CartPole-v1" in out.stdout
    # --set repeats: every occurrence applies, not just the last one.
    out = run(
        "--config", "configs/cartpole.yaml", "--set", "learner.lr=0.002",
        "--set", "env.num_envs=8", "learner.epochs=5", "--print-config",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "lr: 0.002" in out.stdout and "num_envs: 8" in out.stdout and "epochs: 5" in out.stdout
    out = run("--config", "configs/cartpole.yaml", "--set", "learner.bogus=1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown config key 'learner.bogus'; valid keys in learner: "
        + out.stderr.split("valid keys in learner: ")[1].strip()
    ]

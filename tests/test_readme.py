"""The README's commands: the two install lines are the ones CI runs, and every command the
README gives (`python -m jaxrl_impala.*`, `python benchmarks/*`) is run here.

`COMMANDS` maps each README command, exactly as written, to how this test runs it: the same
entry point and config with a tiny budget (`TINY`), outputs in the test's tmp dir. A README
command the table lacks fails `test_every_readme_command_is_in_the_table`. Benchmarks take
minutes, so their options are checked against the script's ``--help`` instead.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis_server import RedisServer, find_redis_server
from runs import final_record

from jaxrl_impala.transport import decode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _commands():
    lines = README.read_text().splitlines()
    return [line.strip() for line in lines if line.strip().startswith("python3 -m venv .venv")]


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _commands()
    assert len(commands) == 2, commands
    test_command = [c for c in commands if "pytest" in c]
    assert len(test_command) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command[0] in [line.strip() for line in ci]


# ------------------------------------------------------------------ every README command

# What counts as a command to exercise: the package's CLIs and the benchmark scripts.
RUNS = re.compile(r"\bpython3? (?:-m jaxrl_impala\.|benchmarks/)")

# Appended to a README command's own overrides: debug.yaml's sizes, one short evaluation,
# and the test session's compile cache (conftest.py) so later runs load what earlier compiled.
TINY = (
    "train.total_env_steps=1024 env.num_envs=4 rollout.length=8 actors.num=1 "
    "network.hidden=[16] learner.batch_unrolls=1 learner.epochs=1 learner.minibatches=1 "
    "env.max_episode_steps=50 eval.every_env_steps=0 eval.episodes=1 eval.gif=false "
    "train.compile_cache={cache}"
)
# The benchmarks run for minutes: their options are checked against their --help.
HELP = "--help"

INSTALL_AND_TRAIN = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m "
    "jaxrl_impala.train --config configs/driving.yaml --set train.total_env_steps=1000000 "
    "run.name=driving-short"
)
RESUME = "python -m jaxrl_impala.train --resume runs/driving --set train.total_env_steps=100000000"
REDIS_URL = "transport.url=redis://hostA:6379/0"  # the password comes from REDIS_PASSWORD
REDIS_TRAIN = (
    f"python -m jaxrl_impala.train --config configs/driving.yaml --set transport.kind=redis "
    f"{REDIS_URL}"
)
REDIS_ACTOR = (
    f"python -m jaxrl_impala.actor --config configs/driving.yaml --actor-id 2 --set "
    f"transport.kind=redis {REDIS_URL}"
)

# README command -> how this test runs it (after `python`), in the order it runs them.
# {tmp}: the test's tmp dir; {url}: a real redis-server with a password (the URL without it:
# the commands get it from REDIS_PASSWORD, as the README's do); {tiny}: TINY.
# The two DrivingEnv train commands differ only in the budget and the run name, which the
# test sets itself, so they map to one run; resume, evaluate and plot use its run dir.
DRIVING_RUN = (
    "-m jaxrl_impala.train --config configs/driving.yaml --set {tiny} run.dir={tmp}/driving"
)
COMMANDS = {
    INSTALL_AND_TRAIN: DRIVING_RUN,
    "python -m jaxrl_impala.train --config configs/driving.yaml --set run.name=driving": (
        DRIVING_RUN
    ),
    RESUME: "-m jaxrl_impala.train --resume {tmp}/driving --set train.total_env_steps=2048",
    "python -m jaxrl_impala.evaluate runs/driving --episodes 100": (
        "-m jaxrl_impala.evaluate {tmp}/driving --episodes 2"
    ),
    "python -m jaxrl_impala.plot runs/driving": "-m jaxrl_impala.plot {tmp}/driving",
    "python benchmarks/driving_gap.py runs/driving": (
        "benchmarks/driving_gap.py {tmp}/driving --episodes 2"
    ),
    "python -m jaxrl_impala.train --config configs/cartpole.yaml": (
        "-m jaxrl_impala.train --config configs/cartpole.yaml --set train.total_env_steps=2048 "
        "eval.every_env_steps=1024 eval.episodes=2 train.compile_cache={cache} "
        "run.dir={tmp}/cartpole"
    ),
    "python -m jaxrl_impala.train --config configs/cartpole_lstm.yaml": (
        "-m jaxrl_impala.train --config configs/cartpole_lstm.yaml --set "
        "train.total_env_steps=2048 eval.every_env_steps=1024 eval.episodes=2 "
        "train.compile_cache={cache} run.dir={tmp}/cartpole_lstm"
    ),
    (
        "python -m jaxrl_impala.train --config configs/driving.yaml --set train.mode=on_device "
        "run.name=on-device"
    ): (
        "-m jaxrl_impala.train --config configs/driving.yaml --set {tiny} train.mode=on_device "
        "run.dir={tmp}/on_device"
    ),
    # The learner runs until the standalone actor's unroll reaches it, then gets SIGTERM.
    REDIS_TRAIN: (
        "-m jaxrl_impala.train --config configs/driving.yaml --set transport.kind=redis "
        "transport.url={url} {tiny} train.total_env_steps=100000000 run.dir={tmp}/redis"
    ),
    REDIS_ACTOR: (
        "-m jaxrl_impala.actor --config configs/driving.yaml --actor-id 2 --set "
        "transport.kind=redis transport.url={url} {tiny}"
    ),
    (
        "python benchmarks/time_to_solve.py --systems appo ppo sb3_ppo --driving-systems "
        "--seeds 0 1 2 3 4 --compile-cache both --max-minutes 1.5"
    ): HELP,
    "python benchmarks/throughput.py --quick": HELP,
    "python benchmarks/recurrent.py": HELP,
}


def readme_commands() -> list[str]:
    """Every command in the README that runs the package or a benchmark: each line of a
    fenced block (continuation lines joined, comments dropped) and each inline code span,
    with its whitespace collapsed."""
    text = README.read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    found = [" ".join(re.sub(r"(^|\s)#\s.*$", "", c).split()) for c in lines + spans]
    return list(dict.fromkeys(c for c in found if RUNS.search(c)))


def test_every_readme_command_is_in_the_table():
    commands = readme_commands()
    assert INSTALL_AND_TRAIN in commands, "the install line's train command is not found"
    missing = [c for c in commands if c not in COMMANDS]
    assert not missing, f"README commands this test does not run; add them to COMMANDS: {missing}"
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, f"COMMANDS entries no longer in the README: {stale}"


def _argv(how: str, **subs) -> list[str]:
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(subs["tmp"] / "xla")
    tiny = TINY.format(cache=cache)
    return [sys.executable, *shlex.split(how.format(tiny=tiny, cache=cache, **subs))]


def test_readme_train_resume_evaluate_plot_commands_run(tmp_path):
    """Every command of the table but the benchmarks and the Redis pair, in order, each
    distinct invocation once; then what each was meant to leave behind."""
    outputs = {}
    for how in dict.fromkeys(COMMANDS.values()):
        if how == HELP or how in (COMMANDS[REDIS_TRAIN], COMMANDS[REDIS_ACTOR]):
            continue
        argv = _argv(how, tmp=tmp_path)
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, (
            f"{shlex.join(argv)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        )
        outputs[how] = out.stdout
        if how == DRIVING_RUN:
            saved = final_record(tmp_path / "driving")["env_steps"]

    # The train ran to its budget of 1024 and the resume continued it to 2048.
    resume = COMMANDS[RESUME]
    assert 1024 <= saved < 2048 and f"at env_steps={saved}" in outputs[resume], outputs[resume]
    assert final_record(tmp_path / "driving")["env_steps"] >= 2048
    evaluation = outputs[COMMANDS["python -m jaxrl_impala.evaluate runs/driving --episodes 100"]]
    assert "scripted" in evaluation and "random" in evaluation, evaluation
    gap = outputs[COMMANDS["python benchmarks/driving_gap.py runs/driving"]]
    assert "2 episodes from seed 2000000" in gap and "per episode" in gap, gap
    plotted = outputs[COMMANDS["python -m jaxrl_impala.plot runs/driving"]].splitlines()
    plots = [Path(line) for line in plotted if line.endswith(".png")]
    assert plots and all(p.is_file() for p in plots), plotted
    assert final_record(tmp_path / "cartpole")["env_steps"] >= 2048
    assert final_record(tmp_path / "cartpole_lstm")["env_steps"] >= 2048


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_readme_redis_commands_run(tmp_path):
    """The learner on Redis, and an actor started by hand that joins it."""
    procs = []
    with RedisServer(password="readme-secret") as server:
        try:
            for command, name in ((REDIS_TRAIN, "train"), (REDIS_ACTOR, "actor")):
                log = open(tmp_path / f"{name}.log", "w")  # closed in the finally below
                argv = _argv(COMMANDS[command], tmp=tmp_path, url=server.bare_url)
                env = {**os.environ, "REDIS_PASSWORD": server.password}
                procs.append(
                    (subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log, env=env), log)
                )
            (train, _), (actor, _) = procs

            def logs() -> str:
                return "".join(
                    f"--- {p.args[2:4]}\n{Path(f.name).read_text()[-3000:]}" for p, f in procs
                )

            client = server.client()
            deadline = time.monotonic() + 120
            seen = False
            while not seen:
                assert time.monotonic() < deadline, "no unroll from actor 2 within 120 s\n" + logs()
                assert train.poll() is None and actor.poll() is None, logs()
                for frame in client.lrange("jaxrl_impala:unrolls", 0, -1):
                    seen = seen or decode(frame).meta.get("actor_id") == 2
                time.sleep(0.02)
            train.send_signal(signal.SIGTERM)
            assert train.wait(timeout=120) == 0, logs()
            # The learner closed the queue: the standalone actor stops by itself.
            assert actor.wait(timeout=60) == 0, logs()
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
    assert final_record(tmp_path / "redis")["env_steps"] > 0


def test_benchmark_commands_in_the_readme_match_their_scripts():
    for command, how in COMMANDS.items():
        if how != HELP:
            continue
        argv = shlex.split(command)
        script = ROOT / argv[1]
        assert script.is_file(), command
        out = subprocess.run(
            [sys.executable, str(script), "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        unknown = [a for a in argv[2:] if a.startswith("--") and a not in out.stdout]
        assert not unknown, f"{command}: {script.name} has no option {unknown}"

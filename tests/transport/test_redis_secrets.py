"""The Redis password stays out of files, command lines and output lines: `mask_url`,
`resolve_url` (``REDIS_PASSWORD``, ``transport.password_file``) and a real run started with
the password in its URL, against a password-protected ``redis-server``."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from redis_runs import CHILD_ENV, ROOT, read_metrics
from redis_server import RedisServer, find_redis_server

from jaxrl_impala.config import ConfigError, dump_yaml, load_config, public_dict
from jaxrl_impala.transport import mask_url, resolve_url
from jaxrl_impala.transport.redis import read_password_file

# A child without REDIS_PASSWORD: the run's only source of the password is what each test gives.
ENV = {k: v for k, v in CHILD_ENV.items() if k != "REDIS_PASSWORD"}


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("rediss://:p@ss@h:1/0", "rediss://:***@h:1/0"),  # an @ in the password
        ("unix://:pw@/tmp/redis.sock?db=0", "unix://:***@/tmp/redis.sock?db=0"),
        ("redis://h:1/0?password=pw&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://u@h:1/0", "redis://u@h:1/0"),  # a user name alone is no secret
        # Unparsable: everything after the scheme goes.
        ("redis://:pw@[::1/0", "redis://***"),  # a bracket never closed
        ("redis://:pw@h:port/0", "redis://***"),  # a port that is not a number
        ("redis://h/0?x=:pw@h", "redis://***"),  # an @ where no user info can be
        ("redis:/:pw@h:1/0", "***"),  # no scheme://
        (":pw@h:1", "***"),
        ("h:1/0?password=pw", "***"),
        ("127.0.0.1:6379", "127.0.0.1:6379"),  # nothing that could be a password
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert "pw" not in mask_url(url) and "ss@" not in mask_url(url)


def test_config_yaml_and_the_actors_config_mask_the_password(tmp_path):
    config = load_config(None, ["transport.url=redis://trainer:hunter2@h:1/0"])
    assert config.transport.url == "redis://trainer:hunter2@h:1/0"  # the run still has it
    for text in (dump_yaml(config), str(public_dict(config))):
        assert "hunter2" not in text and "redis://trainer:***@h:1/0" in text


# ------------------------------------------------------------------ the password's sources


def _secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "redis.pass"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_resolve_url_order_url_then_file_then_environment(tmp_path):
    env = {"REDIS_PASSWORD": "from-env"}
    pw_file = str(_secret_file(tmp_path, "from/file@:\nsecond line ignored\n"))
    assert resolve_url("redis://:given@h:1/0", pw_file, env) == "redis://:given@h:1/0"
    assert resolve_url("redis://h:1/0?password=given", pw_file, env).endswith("password=given")
    # Put in the user info, URL-quoted (redis-py unquotes it); a user name is kept.
    assert resolve_url("redis://trainer@h:1/0", pw_file, env) == (
        "redis://trainer:from%2Ffile%40%3A@h:1/0"
    )
    assert resolve_url("redis://h:1/0", "", env) == "redis://:from-env@h:1/0"
    assert resolve_url("redis://h:1/0", "", {}) == "redis://h:1/0"  # a server without one
    # The masked URL of a config.yaml: the password must come from elsewhere ...
    assert resolve_url("redis://:***@h:1/0", "", env) == "redis://:from-env@h:1/0"
    assert resolve_url("redis://h:1/0?password=***&db=1", "", env) == (
        "redis://:from-env@h:1/0?db=1"
    )
    # ... or the run says where to put it, in one line.
    with pytest.raises(ConfigError, match="REDIS_PASSWORD .* transport.password_file") as e:
        resolve_url("redis://:***@h:1/0", "", {})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "mode, text, message",
    [
        (0o644, "pw\n", "mode 0644 lets group or others at it"),
        (0o640, "pw\n", "mode 0640 lets group or others at it"),
        (0o602, "pw\n", "mode 0602 lets group or others at it"),
        (0o600, "", "the first line is empty"),
        (0o600, "\npw\n", "the first line is empty"),
    ],
)
def test_password_file_is_refused_in_one_line_like_ssh_refuses_a_key(tmp_path, mode, text, message):
    path = _secret_file(tmp_path, text, mode)
    with pytest.raises(ConfigError, match=message) as e:
        read_password_file(str(path))
    assert "\n" not in str(e.value) and "pw" not in str(e.value).replace(str(path), "")


def test_password_file_missing_or_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot open it"):
        read_password_file(str(tmp_path / "nope"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):  # and no hang on open
        read_password_file(str(fifo))
    assert read_password_file(str(_secret_file(tmp_path, "pw", 0o400))) == "pw"


# ----------------------------------------------------------------------------- a whole run


def _train(config: Path, *sets: str, env: dict, out: Path) -> subprocess.Popen:
    """The trainer, its output to files (read after it ends, so no pipe can fill)."""
    argv = [sys.executable, "-m", "jaxrl_impala.train", "--config", str(config), "--set", *sets]
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as err:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=err)


def _command_lines_while_running(proc: subprocess.Popen, timeout: float) -> list[str]:
    """Every command line of the trainer's process tree, polled until it exits."""
    seen: set[str] = set()
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the run did not finish in time"
        for p in [parent, *parent.children(recursive=True)]:
            try:
                seen.add("\0".join(p.cmdline()))
            except psutil.Error:  # exited meanwhile
                pass
        time.sleep(0.05)
    return sorted(seen)


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")
def test_a_password_in_the_url_is_in_no_file_command_line_or_output_line(tmp_path):
    password = secrets.token_hex(16)
    run_dir = tmp_path / "run"
    with RedisServer(password=password) as server:
        assert password not in " ".join(psutil.Process(server.proc.pid).cmdline())
        # The password is in the URL, in a preset outside the run dir (so not on our argv).
        preset = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
        preset["transport"] = {"kind": "redis", "url": server.url, "prefix": "jri_secret"}
        config = tmp_path / "preset.yaml"
        config.write_text(yaml.safe_dump(preset))
        sets = [f"run.dir={run_dir}", "eval.every_env_steps=0"]

        printed = subprocess.run(
            [sys.executable, "-m", "jaxrl_impala.train", "--config", str(config), "--print-config"],
            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120,
        )  # fmt: skip
        assert printed.returncode == 0 and "url: redis://:***@127.0.0.1" in printed.stdout
        assert password not in printed.stdout + printed.stderr

        proc = _train(config, *sets, env=ENV, out=tmp_path / "first")
        try:
            command_lines = _command_lines_while_running(proc, timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = (tmp_path / "first.out").read_text() + (tmp_path / "first.err").read_text()
        assert proc.returncode == 0, output[-3000:]
        actors = [c for c in command_lines if "jaxrl_impala.actor" in c]
        assert len(actors) >= 2 and all("redis://:***@127.0.0.1" in c for c in actors), actors
        assert [c for c in command_lines if password in c] == []
        assert password not in output
        assert _files_holding(run_dir, password.encode()) == []
        assert read_metrics(run_dir)[-1]["env_steps"] >= 2048  # it trained over Redis
        assert "url: redis://:***@127.0.0.1" in (run_dir / "config.yaml").read_text()

        # --resume reads the masked URL back: the password must come from elsewhere ...
        resume = [sys.executable, "-m", "jaxrl_impala.train", "--resume", str(run_dir)]
        more = ["--set", "train.total_env_steps=4096"]
        refused = subprocess.run(
            resume + more, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120
        )
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert "REDIS_PASSWORD" in refused.stderr and "transport.password_file" in refused.stderr
        loose = _secret_file(tmp_path, password + "\n", 0o644)
        refused = subprocess.run(
            resume + more + [f"transport.password_file={loose}"],
            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2 and f"chmod 600 {loose}" in refused.stderr
        assert password not in refused.stdout + refused.stderr
        # ... such as a private password file.
        loose.chmod(0o600)
        resumed = subprocess.run(
            resume + more + [f"transport.password_file={loose}"],
            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=240,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert password not in resumed.stdout + resumed.stderr
    assert read_metrics(run_dir)[-1]["env_steps"] >= 4096
    assert _files_holding(run_dir, password.encode()) == []

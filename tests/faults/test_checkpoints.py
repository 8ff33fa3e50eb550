"""Checkpoint faults: a corrupt or half-written latest checkpoint, a full disk, a bad run dir."""

import subprocess
import sys
import textwrap

from runs import DEBUG, ROOT, final_record, read_metrics, run_train


def _run_with_checkpoints(run_dir, steps=2048):
    out = run_train(
        "--config", DEBUG, "--set", f"run.dir={run_dir}", f"train.total_env_steps={steps}",
        "train.checkpoint_every_s=0.05",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def test_resume_falls_back_from_a_corrupt_latest_checkpoint(tmp_path):
    from jaxrl_impala.io.checkpoints import Checkpointer

    run_dir = tmp_path / "run"
    _run_with_checkpoints(run_dir)
    ckpts = Checkpointer(run_dir).list()
    assert len(ckpts) == 3  # the newest three are kept
    newest, previous = ckpts[-1], ckpts[-2]
    state = newest / "state.msgpack"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a torn write
    half = run_dir / "checkpoints" / f".tmp_ckpt_{99:012d}_1"  # a save killed midway
    half.mkdir()
    (half / "state.msgpack").write_bytes(b"\x00" * 10)
    prev_steps = int(previous.name.split("_")[1])

    out = run_train("--resume", str(run_dir), "--set", "train.total_env_steps=3072")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"checkpoint {newest} is unreadable" in out.stderr
    assert "does not match its sha256" in out.stderr and "falling back" in out.stderr
    assert f"resumed from {previous} at env_steps={prev_steps}" in out.stdout
    assert final_record(run_dir)["env_steps"] >= 3072


def test_resume_with_no_readable_checkpoint_or_no_run_dir_is_one_line(tmp_path):
    out = run_train("--resume", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: --resume {tmp_path / 'nope'}: not a run directory (no config.yaml)"
    ]
    run_dir = tmp_path / "run"
    _run_with_checkpoints(run_dir, steps=512)
    from jaxrl_impala.io.checkpoints import Checkpointer

    for path in Checkpointer(run_dir).list():
        (path / "state.msgpack").write_bytes(b"garbage")
    out = run_train("--resume", str(run_dir))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: --resume {run_dir}: no readable checkpoint in {run_dir / 'checkpoints'}"
    )


# The trainer in a real process whose writes really fail: /dev/full returns ENOSPC.
_DISK_FULL = textwrap.dedent(
    """
    import sys
    import jaxrl_impala.io.checkpoints as c
    import jaxrl_impala.io.metrics as m
    from jaxrl_impala.train.__main__ import main

    what = sys.argv[1]
    if what == "checkpoints":
        real, calls = c.atomic_write, []

        def atomic_write(path, data):
            if path.name == "state.msgpack":
                calls.append(path)
                if len(calls) > 1:  # the first checkpoint is written, then the disk fills
                    with open("/dev/full", "wb") as f:
                        f.write(data)
                        f.flush()
            real(path, data)

        c.atomic_write = atomic_write
    else:
        init = m.MetricsLog.__init__

        def metrics_init(self, run_dir):
            init(self, run_dir)
            self.file = open("/dev/full", "a", buffering=1)

        m.MetricsLog.__init__ = metrics_init
    sys.exit(main(sys.argv[2:]))
    """
)


def _disk_full(what, *args):
    return subprocess.run(
        [sys.executable, "-c", _DISK_FULL, what, *args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path):
    from jaxrl_impala.io.checkpoints import Checkpointer

    run_dir = tmp_path / "run"
    out = _disk_full(
        "checkpoints", "--config", DEBUG, "--set", f"run.dir={run_dir}",
        "train.total_env_steps=2048", "train.checkpoint_every_s=0.05",
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    ckpts = Checkpointer(run_dir).list()
    assert len(ckpts) == 1
    Checkpointer.verify(ckpts[0])  # whole and matching its hash
    assert "No space left on device" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: checkpoint at env_steps=2048 ")
    assert f"the last good one is {ckpts[0]}" in out.stderr
    assert not list((run_dir / "checkpoints").glob(".tmp_*")), "a half-written dir was left"
    # the periodic failures were reported and training went on to the end
    assert "retrying at the next interval" in out.stdout + out.stderr
    # and the run resumes from the good one
    out = run_train("--resume", str(run_dir), "--set", "train.total_env_steps=2560")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from {ckpts[0]}" in out.stdout


def test_disk_full_while_logging_metrics_is_reported_once_and_training_goes_on(tmp_path):
    from jaxrl_impala.io.checkpoints import Checkpointer

    run_dir = tmp_path / "run"
    out = _disk_full(
        "metrics", "--config", DEBUG, "--set", f"run.dir={run_dir}", "train.total_env_steps=2048",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if "metrics not written" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert read_metrics(run_dir) == []
    meta, _ = Checkpointer.verify(Checkpointer(run_dir).list()[-1])
    assert meta["env_steps"] == 2048


def test_unwritable_run_dir_is_a_one_line_error(tmp_path):
    out = run_train("--config", DEBUG, "--set", "run.dir=/proc/jaxrl_impala_test/run")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: run dir /proc/jaxrl_impala_test/run is not writable"
    ), out.stderr

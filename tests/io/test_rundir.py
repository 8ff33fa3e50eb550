"""The run directory's clock: wall_time_s counts from the process start."""

import subprocess
import sys


def test_wall_time_counts_from_the_process_start_including_imports():
    # The process sleeps 0.5 s before it imports train.py: a clock started at the import
    # would miss that half second, and one in the future would make it negative.
    code = (
        "import time; t = time.time(); time.sleep(0.5)\n"
        "from jaxrl_impala.io.rundir import START_TIME\n"
        "print(t - START_TIME)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before_t = float(out.stdout)
    assert 0.0 <= before_t < 3.0, before_t

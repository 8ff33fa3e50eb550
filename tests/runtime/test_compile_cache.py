"""JAX's persistent compile cache, and actors taking turns to fill it."""

import os
import subprocess
import sys
import time


def test_the_compile_cache_keeps_sub_second_compiles(tmp_path):
    code = (
        "import sys, jax\n"
        "from jaxrl_impala.runtime.compile_cache import use_compile_cache\n"
        "use_compile_cache(sys.argv[1])\n"
        "jax.jit(lambda x: x * 2.0 + 1.0)(1.0).block_until_ready()\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "xla")], env=env, check=True)
    assert list((tmp_path / "xla").iterdir()), "nothing was written to the cache"


def test_in_turn_holds_a_second_process_until_the_first_is_done(tmp_path):
    from jaxrl_impala.runtime.compile_cache import in_turn

    code = (
        "import sys\n"
        "from jaxrl_impala.runtime.compile_cache import in_turn\n"
        "print('ready', flush=True)\n"
        "with in_turn(sys.argv[1]):\n"
        "    print('in', flush=True)\n"
    )
    with in_turn(str(tmp_path)):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.5)
        assert proc.poll() is None, "the second process got in while the first held the lock"
    out, _ = proc.communicate(timeout=30)
    assert out == "in\n" and proc.returncode == 0
    with in_turn(""):  # no cache: no lock, nothing to wait for
        pass

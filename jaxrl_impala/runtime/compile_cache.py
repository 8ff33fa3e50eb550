"""JAX's persistent compilation cache (``train.compile_cache``), shared by the learner and
the actors: a later run loads its compiled programs from disk instead of compiling them."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path


def use_compile_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at ``path`` (``""``: leave it off). An
    unusable directory only costs the cache, never the run.

    Every program is kept, however quick its compile (JAX's default keeps only those over a
    second): start-up is made of many sub-second compiles (the actors' policy step, the
    params init), and on a small CPU machine they add up to seconds."""
    if not path:
        return
    import jax

    cache = Path(path).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"compile cache off: {cache}: {e.strerror}", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@contextlib.contextmanager
def in_turn(path: str) -> Iterator[None]:
    """Holds an exclusive lock on the cache at ``path`` (none when ``path`` is ``""``) for
    the block, so processes that compile the same programs compile them once: the actors of a
    run build the same env and unroll, and while the first one compiles, the next waits and
    then loads them from the cache (on 2 cores two actors share one CPU, and compiling the
    DrivingEnv unroll there took each of them twice as long). Without a usable lock (no
    cache directory: `use_compile_cache` makes it) the block runs at once."""
    lock = None
    if path:
        try:
            import fcntl

            # Opened here and closed in the finally below: the lock is held across the yield.
            lock = open(Path(path).expanduser() / ".in_turn.lock", "a")  # noqa: SIM115
            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if lock is not None:
                lock.close()
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the flock

"""JAX's persistent compilation cache (``train.compile_cache``), shared by the learner and
the actors: a later run loads its compiled programs from disk instead of compiling them."""

from __future__ import annotations

import sys
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

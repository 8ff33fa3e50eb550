"""Which functions XLA compiled inside a block (JAX's compile-time monitoring events)."""

import contextlib
from collections.abc import Iterator

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def backend_compiles() -> Iterator[list[str]]:
    """Yields a list that fills with the name of every function XLA compiles in the block,
    e.g. ``jit(step)``; loads from the persistent cache are not compiles."""
    names: list[str] = []

    def listener(event: str, _secs: float, fun_name: str = "", **_) -> None:
        if event == BACKEND_COMPILE:
            names.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)

"""The stop request a signal handler sets and the loop reads. Kept apart from `loop`, which
imports JAX: the trainer holds one before it starts its actors, whose start-up must overlap
this process's JAX import."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StopFlag:
    """Set by a signal handler (or a test): the loop stops at the next update boundary."""

    requested: bool = False
    reason: str = ""

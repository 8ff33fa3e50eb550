"""The learner's device mesh: a 1-D ``"data"`` axis over the local devices of every process."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh


def make_mesh(num_devices: int) -> Mesh:
    """A 1-D ``"data"`` mesh over the first ``num_devices`` local devices (0: all) of every
    process, in process order (one process: just the local devices).

    With several processes (`jaxrl_impala.distributed`) the mesh is global, so process p's
    share of the batch lives on process p's devices; every process must ask for the same
    number of devices.
    """
    local = jax.local_devices()
    if num_devices > len(local):
        raise ValueError(
            f"learner.num_devices={num_devices} but only {len(local)} local devices exist"
        )
    n = num_devices or len(local)
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.asarray(devices), ("data",))

"""``metrics.jsonl`` and TensorBoard scalars."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _import_summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors; we log
    floats. That import costs seconds of CPU and ~300 MB in the learner, at start-up, when
    the actors are starting too. Unless torch is already loaded, hide it for the import.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """``metrics.jsonl`` (append, one flushed line per record) and TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.failed_writes = 0
        self.file = open(self.path, "a", buffering=1)
        try:
            SummaryWriter = _import_summary_writer()
            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception as e:  # noqa: BLE001 - TensorBoard is optional output, never fatal
            print(f"TensorBoard events disabled: {e}", file=sys.stderr)
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record. A failed write (disk full, ...) is reported once and the run
        goes on: training state never depends on its logs."""
        clean = {k: _jsonable(v) for k, v in record.items()}
        try:
            self.file.write(json.dumps(clean) + "\n")
            if self.tb is not None:
                step = int(clean["env_steps"])
                for k, v in clean.items():
                    if k != "env_steps" and isinstance(v, int | float) and math.isfinite(v):
                        self.tb.add_scalar(k, v, step)
        except OSError as e:
            self.failed_writes += 1
            if self.failed_writes == 1:
                print(
                    f"warning: metrics not written to {self.path.parent}: {e} "
                    f"(training goes on; records are lost until writes succeed again)",
                    file=sys.stderr,
                )

    def close(self) -> None:
        for closer in (self.file.close, self.tb.close if self.tb is not None else None):
            try:
                if closer is not None:
                    closer()
            except OSError as e:
                print(f"warning: closing the metrics of {self.path.parent}: {e}", file=sys.stderr)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray):
        v = v.item() if np.ndim(v) == 0 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class NullLog:
    """What the learner processes other than 0 log: nothing (process 0 writes the run)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

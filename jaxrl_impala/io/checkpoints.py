"""Checkpoints: ``checkpoints/ckpt_<env_steps>/{state.msgpack, meta.json}``, atomic."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl_impala.errors import TrainError


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointMismatch(TrainError):
    """A checkpoint whose tree does not fit the run's state (a changed network, say)."""


def _first_mismatch(saved: Any, wanted: Any, path: str = "") -> str | None:
    """Where the state dict ``saved`` first differs from ``wanted`` in keys or shapes."""
    if isinstance(wanted, dict):
        if not isinstance(saved, dict):
            return f"{path or 'the state'} is not a mapping in the checkpoint"
        for key in wanted:
            where = f"{path}/{key}" if path else str(key)
            if key not in saved:
                return f"{where} is missing from the checkpoint"
            found = _first_mismatch(saved[key], wanted[key], where)
            if found:
                return found
        extra = sorted(set(saved) - set(wanted))
        return f"{path}/{extra[0]} is in the checkpoint but not in the config" if extra else None
    shape_saved, shape_wanted = np.shape(saved), np.shape(wanted)
    if shape_saved != shape_wanted:
        return f"{path} has shape {shape_saved} in the checkpoint, {shape_wanted} in this config"
    return None


class Checkpointer:
    """``checkpoints/ckpt_<env_steps>[_<n>]/{state.msgpack, meta.json}``, written atomically.

    A checkpoint is assembled under a temporary name, verified, and renamed into place under
    a name no other checkpoint has (a second one at the same env steps gets a ``_<n>``
    suffix), so at every moment the newest complete checkpoint is on disk. Only then are
    older ones removed: the newest ``keep`` are kept. Serialisation is flax's msgpack (no
    pickle); the recorded sha256 of the state is required to read it back.
    """

    def __init__(self, run_dir: Path, keep: int = 3):
        self.dir = run_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def save(self, state: Any, meta: dict[str, Any]) -> Path:
        """Writes, reads back and verifies a checkpoint, then drops the oldest.

        Raises:
          OSError: the write failed (disk full, unwritable dir): nothing half-written is
            left behind and the previous checkpoints are untouched.
        """
        import flax.serialization

        data = flax.serialization.to_bytes(state)
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        steps = int(meta["env_steps"])
        same = [p for p in self.list() if _steps(p) == steps]
        final = self.dir / (f"ckpt_{steps:012d}" + (f"_{len(same)}" if same else ""))
        tmp = self.dir / f".tmp_{final.name}_{os.getpid()}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            atomic_write(tmp / "state.msgpack", data)
            atomic_write(tmp / "meta.json", json.dumps(meta).encode())
            self.verify(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The new one is in place: now the ones it supersedes may go.
        for old in same:
            shutil.rmtree(old, ignore_errors=True)
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def verify(path: Path) -> tuple[dict[str, Any], bytes]:
        """Meta and state bytes of a checkpoint dir whose state matches its recorded hash."""
        meta = json.loads((path / "meta.json").read_text())
        data = (path / "state.msgpack").read_bytes()
        if "sha256" not in meta:
            raise OSError("meta.json records no sha256 of the state")
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise OSError(
                f"state.msgpack is {len(data)} bytes and does not match its sha256 "
                f"(expected {meta.get('bytes', '?')} bytes)"
            )
        return meta, data

    def list(self) -> list[Path]:
        """The checkpoint dirs, oldest first."""
        return sorted((p for p in self.dir.glob("ckpt_*") if p.is_dir()), key=_order)

    def restore(self, template: Any) -> tuple[Any, dict[str, Any], Path] | None:
        """The newest checkpoint that reads back whole and matches its hash; falls back to
        older ones (saying so), None when there is none.

        Raises:
          CheckpointMismatch: the checkpoint's tree does not fit ``template`` (one line
            naming the first leaf that differs).
        """
        import flax.serialization

        wanted = flax.serialization.to_state_dict(template)
        for path in reversed(self.list()):
            try:
                meta, data = self.verify(path)
                saved = flax.serialization.msgpack_restore(data)
            except Exception as e:  # noqa: BLE001 - any corrupt checkpoint: try the previous
                print(
                    f"checkpoint {path} is unreadable ({e}); falling back to an older one",
                    file=sys.stderr,
                )
                continue
            mismatch = _first_mismatch(saved, wanted)
            if mismatch:
                raise CheckpointMismatch(f"checkpoint {path} does not fit the config: {mismatch}")
            return flax.serialization.from_state_dict(template, saved), meta, path
        return None


def _steps(path: Path) -> int:
    return int(path.name.removeprefix("ckpt_").split("_")[0])


def _order(path: Path) -> tuple[int, int]:
    """(env steps, n) of ``ckpt_<env steps>[_<n>]``."""
    parts = path.name.removeprefix("ckpt_").split("_")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def newest_checkpoint_steps(run_dir: Path) -> int:
    """Env steps of the newest checkpoint in ``run_dir`` (0 if none), from its name."""
    kept = Checkpointer(run_dir).list()
    return _steps(kept[-1]) if kept else 0

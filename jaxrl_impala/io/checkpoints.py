"""Checkpoints: ``checkpoints/ckpt_<env_steps>/{state.msgpack, meta.json}``, atomic."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpointer:
    """``checkpoints/ckpt_<env_steps>/{state.msgpack, meta.json}``, written atomically.

    The directory is assembled under a temporary name and renamed into place, so a crash
    mid-write leaves either the previous checkpoints or a complete new one. The newest
    ``keep`` are kept. Serialisation is flax's msgpack (no pickle).
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
        import hashlib
        import shutil

        import flax.serialization

        data = flax.serialization.to_bytes(state)
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        final = self.dir / f"ckpt_{int(meta['env_steps']):012d}"
        tmp = self.dir / f".tmp_{final.name}_{os.getpid()}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            atomic_write(tmp / "state.msgpack", data)
            atomic_write(tmp / "meta.json", json.dumps(meta).encode())
            self._verify(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def _verify(path: Path) -> tuple[dict[str, Any], bytes]:
        """Meta and state bytes of a checkpoint dir whose state matches its recorded hash."""
        import hashlib

        meta = json.loads((path / "meta.json").read_text())
        data = (path / "state.msgpack").read_bytes()
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise OSError(
                f"state.msgpack is {len(data)} bytes and does not match its sha256 "
                f"(expected {meta.get('bytes', '?')} bytes)"
            )
        return meta, data

    def list(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("ckpt_*") if p.is_dir())

    def restore(self, template: Any) -> tuple[Any, dict[str, Any], Path] | None:
        """The newest checkpoint that reads back whole and matches its hash; falls back to
        older ones (saying so), None when there is none."""
        import flax.serialization

        for path in reversed(self.list()):
            try:
                meta, data = self._verify(path)
                state = flax.serialization.from_bytes(template, data)
                return state, meta, path
            except Exception as e:  # noqa: BLE001 - any corrupt checkpoint: try the previous
                print(
                    f"checkpoint {path} is unreadable ({e}); falling back to an older one",
                    file=sys.stderr,
                )
        return None


def newest_checkpoint_steps(run_dir: Path) -> int:
    """Env steps of the newest checkpoint in ``run_dir`` (0 if none), from its name."""
    kept = Checkpointer(run_dir).list()
    return int(kept[-1].name.removeprefix("ckpt_")) if kept else 0

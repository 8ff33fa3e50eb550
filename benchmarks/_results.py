"""What every benchmark's JSON starts with, and how it is written beside its PNG."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path


def header(benchmark: str, **machine_extra) -> dict:
    """``benchmark``, ``date`` and ``machine`` (platform, cores, Python, plus ``machine_extra``)."""
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            **machine_extra,
        },
    }


def write(result: dict, json_path: Path, png_path: Path, plot: Callable[[dict, Path], None]):
    """Writes ``result`` as JSON and ``plot(result, png_path)``, creating their folders, and
    says where."""
    for path in (json_path, png_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str))
    plot(result, png_path)
    print(f"wrote {json_path} and {png_path}")


def save_figure(fig, path: Path) -> None:
    """Lays out, saves and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

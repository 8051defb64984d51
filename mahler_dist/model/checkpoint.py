"""What a training checkpoint holds, and how it is written and read back (no pickle).

One file, `state.pt`, with fixed keys (a fixed schema, so a checkpoint is read the same way by
every version that knows its `checkpoint_version`): model, optimizer, scheduler, train state
(epoch, step, best validation loss, the schedule's length in steps), loader position (with the
plan's fingerprint), RNG states, the resolved config and the data format version. It is loaded
with `weights_only=True`. Beside it: metrics.json (the report's metrics) and config.json (the
config, so the driver can check a resumed run's architecture without loading weights).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from mahler_dist import storage

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_VERSION = 1
DATA_FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"


def save_checkpoint(directory: str | Path, metrics: dict[str, Any] | None = None, **parts: Any) -> Path:
    """Write state.pt (and metrics.json, so tools without Ray can pick the best checkpoint)."""
    import json

    if metrics is not None:
        (Path(directory) / METRICS_FILE).write_text(json.dumps(metrics, sort_keys=True))
    if parts.get("config") is not None:   # readable without torch: the driver checks it on resume
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(parts["config"], sort_keys=True, indent=1))
    path = Path(directory) / CHECKPOINT_FILE
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, "data_format_version": DATA_FORMAT_VERSION,
                **parts}, path)
    return path


def checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The resolved config a checkpoint was trained with (config.json; state.pt for older ones)."""
    import json

    try:   # a local folder or an object-store URI (the driver checks a resumed run without downloading it)
        return json.loads(storage.read_bytes(storage.join(directory, CONFIG_FILE)))
    except FileNotFoundError:
        return load_checkpoint(directory)["config"]


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("data_format_version") != DATA_FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint for data format {state.get('data_format_version')}, "
                         f"this code reads format {DATA_FORMAT_VERSION}")
    return state

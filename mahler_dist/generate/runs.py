"""Finding a run's checkpoints without Ray: ROOT/runs/NAME/checkpoint_*/{state.pt, metrics.json}.

ROOT may be a local path or an object-store URI (the storage layer, mahler_dist/storage.py): a
run folder is then a URI string, and `local_checkpoint` copies the one checkpoint a command loads
into the local cache (checkpoints are written once; the cache key holds state.pt's size and time).

Folders are checkpoint_epochNNNN (end of an epoch, with a validation score) and
checkpoint_stepNNNNNNNN (inside an epoch, every train.checkpoint_every_steps; no score).
`--model` names a checkpoint folder of the run ("checkpoint_epoch0003"), or "best" (the lowest
finite metrics.json "val_score") or "latest" (the highest step). The name is checked against the
folders that exist; a user string never becomes a path.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from mahler_dist import storage
from mahler_dist.errors import MahlerError
from mahler_dist.model.checkpoint import CHECKPOINT_FILE, METRICS_FILE
from mahler_dist.run_names import check_run_name

CHECKPOINT_DIR = re.compile(r"^checkpoint_(epoch|step)(\d{1,9})$")


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path | str           # a local folder, or a URI on an object-store ROOT
    epoch: int                 # epochs completed when it was written
    step: int
    end_of_epoch: bool
    val_score: float | None    # None for a mid-epoch checkpoint (or one without metrics.json)


def run_dir(root: str | Path, name: str) -> Path | str:
    """ROOT/runs/NAME (a Path, or a URI string on an object-store ROOT), after checking NAME is a
    plain run name and the run exists."""
    check_run_name(name)
    path = storage.child(root if storage.is_uri(root) else Path(root), "runs", name)
    if not storage.is_dir(path):
        raise MahlerError(f"no run {name!r} under {storage.join(root, 'runs')}")
    return path


def list_checkpoints(run: Path | str) -> list[CheckpointInfo]:
    """The run's complete checkpoints (folders with state.pt), oldest first (by step; at one
    step the epoch-end checkpoint last)."""
    store = storage.Store(run)
    out = []
    for child in store.children(store.base, dirs_only=True):
        m = CHECKPOINT_DIR.match(child)
        if not (m and store.is_file(store.path(child, CHECKPOINT_FILE))):
            continue
        try:
            metrics = json.loads(store.read(store.path(child, METRICS_FILE)))
        except (OSError, ValueError):
            metrics = {}
        end_of_epoch = m.group(1) == "epoch"
        score = metrics.get("val_score") if end_of_epoch else None
        score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
        epoch = int(m.group(2)) if end_of_epoch else int(metrics.get("epoch", 0))
        step = int(metrics.get("step", int(m.group(2)) if not end_of_epoch else 0))
        path = storage.child(run, child)
        out.append(CheckpointInfo(child, path, epoch, step, end_of_epoch, score))
    return sorted(out, key=lambda c: (c.step, c.epoch, c.end_of_epoch, c.name))


def local_checkpoint(info: CheckpointInfo) -> Path:
    """A local folder holding the checkpoint: its own on a local ROOT, else a copy in the cache."""
    if not storage.is_uri(info.path):
        return Path(info.path)
    store = storage.Store(info.path)
    stamp = store.info(store.path(CHECKPOINT_FILE))
    key = f"{info.path}@{stamp.size}-{stamp.mtime_ns}"
    return store.download_tree(store.base, storage.cache_dir(key))


def resolve_checkpoint(run: Path | str, which: str = "best") -> CheckpointInfo:
    """"best" | "latest" | the name of one of the run's checkpoint folders."""
    found = list_checkpoints(run)
    if not found:
        raise MahlerError(f"run {_name(run)!r} has no checkpoint yet (no checkpoint_epoch*/state.pt in {run})")
    if which == "latest":
        return found[-1]
    if which == "best":
        scored = [c for c in found if c.val_score is not None]
        if not scored:
            return found[-1]
        return min(scored, key=lambda c: (c.val_score, -c.epoch))
    for c in found:
        if c.name == which:
            return c
    names = ", ".join(c.name for c in found)
    raise MahlerError(f"run {_name(run)!r} has no checkpoint {which!r}; use best, latest or one of: {names}")


def _name(run: Path | str) -> str:
    return str(run).rstrip("/").rsplit("/", 1)[-1]

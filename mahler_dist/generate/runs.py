"""Finding a run's checkpoints without Ray: ROOT/runs/NAME/checkpoint_epochNNNN/{state.pt, metrics.json}.

`--model` names a checkpoint folder of the run ("checkpoint_epoch0003"), or "best" (the lowest
metrics.json "val_score") or "latest" (the highest epoch). The name is checked against the
folders that exist; a user string never becomes a path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mahler_dist.errors import MahlerError
from mahler_dist.model.checkpoint import CHECKPOINT_FILE, METRICS_FILE
from mahler_dist.run_names import check_run_name
CHECKPOINT_DIR = re.compile(r"^checkpoint_epoch(\d{1,9})$")


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    epoch: int
    val_score: float | None


def run_dir(root: str | Path, name: str) -> Path:
    """ROOT/runs/NAME, after checking NAME is a plain run name and the folder exists."""
    check_run_name(name)
    path = Path(root) / "runs" / name
    if not path.is_dir():
        raise MahlerError(f"no run {name!r} under {Path(root) / 'runs'}")
    return path


def list_checkpoints(run: Path) -> list[CheckpointInfo]:
    """The run's complete checkpoints (folders with state.pt), by epoch."""
    out = []
    for child in run.iterdir():
        m = CHECKPOINT_DIR.match(child.name)
        if not (m and child.is_dir() and (child / CHECKPOINT_FILE).is_file()):
            continue
        score = None
        try:
            score = json.loads((child / METRICS_FILE).read_text()).get("val_score")
            score = float(score) if score is not None else None
        except (OSError, ValueError, TypeError):
            score = None
        out.append(CheckpointInfo(child.name, child, int(m.group(1)), score))
    return sorted(out, key=lambda c: (c.epoch, c.name))


def resolve_checkpoint(run: Path, which: str = "best") -> CheckpointInfo:
    """"best" | "latest" | the name of one of the run's checkpoint folders."""
    found = list_checkpoints(run)
    if not found:
        raise MahlerError(f"run {run.name!r} has no checkpoint yet (no checkpoint_epoch*/state.pt in {run})")
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
    raise MahlerError(f"run {run.name!r} has no checkpoint {which!r}; use best, latest or one of: {names}")

"""Where training metrics go: ROOT/runs/NAME/metrics.jsonl always, and exactly one W&B run.

The single writer is a Ray Train `UserCallback`, which runs in the train *controller*, not in
the workers. Workers (all ranks, as Ray Train requires) `report` rank-0-consistent metrics; the
callback appends them to metrics.jsonl and logs them to W&B. Because the controller outlives
worker restarts, a run that loses a worker keeps one W&B run (a worker-side `wandb.init` on
rank 0 would start a second one after every restart - in offline mode, a second directory).
The W&B id is derived from the run name and `resume="allow"`, so re-running the job continues
the same run online. Offline unless the user has W&B credentials (WANDB_API_KEY or a netrc).

On an object-store ROOT the callback works in the driver's local copy of the run folder (the
controller runs on the driver's node) and copies metrics.jsonl to the run's URI after every
epoch, error and checkpoint row, and at most every UPLOAD_EVERY_S seconds between them (an
object store has no append: each copy is one PUT of the whole file).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from mahler_dist import storage

UPLOAD_EVERY_S = 30.0


def wandb_run_id(name: str) -> str:
    """A stable W&B run id for a run name (W&B ids allow letters, digits, - and _)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def wandb_mode() -> str:
    """The user's WANDB_MODE if set; online when credentials exist; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_netrc = (Path.home() / ".netrc").exists() and "api.wandb.ai" in (Path.home() / ".netrc").read_text()
    return "online" if os.environ.get("WANDB_API_KEY") or has_netrc else "offline"


class MetricsWriter:
    """Append-only JSON lines; each row has `kind` (step | epoch | checkpoint | error), `step`,
    `epoch`, `time`. A "checkpoint" row marks a mid-epoch checkpoint (`epoch_progress` in [0, 1))."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({**row, "time": time.time()}, sort_keys=True) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; after a restart, a step logged twice keeps its last row."""
    rows: dict[tuple[str, int], dict] = {}
    path = Path(path)
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row.get("kind", "step"), int(row.get("step", 0)))] = row
    return sorted(rows.values(), key=lambda r: (r.get("step", 0), r.get("kind") == "epoch"))


class TrackingCallback(UserCallback):
    """Runs on the Ray Train controller: metrics.jsonl + one W&B run for the whole training run."""

    def __init__(self, run_dir: str, name: str, config: dict, project: str = "mahler-dist",
                 upload_to: str | None = None):
        self.run_dir = run_dir
        self.upload_to = upload_to     # the run's URI on an object-store ROOT
        self._uploaded = 0.0
        self.name = name
        self.config = config
        self.project = project
        self._writer: MetricsWriter | None = None
        self._wandb_run = None

    def _ensure_started(self) -> None:
        if self._writer is not None:
            return
        self._writer = MetricsWriter(Path(self.run_dir) / "metrics.jsonl")
        mode = wandb_mode()
        if mode == "disabled":
            return
        import wandb

        self._wandb_run = wandb.init(
            project=self.project, name=self.name, id=wandb_run_id(self.name), resume="allow",
            dir=self.run_dir, config=self.config, mode=mode, reinit="finish_previous",
        )

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        row = dict(metrics[0]) if metrics else {}
        if not row.get("kind"):
            return
        self._ensure_started()
        self._writer.write(row)
        self._upload(force=row["kind"] != "step")
        if self._wandb_run is not None and row["kind"] in ("step", "epoch"):   # not "checkpoint" rows
            prefix = "epoch/" if row["kind"] == "epoch" else "train/"
            logged = {f"{prefix}{k}": v for k, v in row.items()
                      if isinstance(v, (int, float)) and k not in ("step",)}
            image = _local_image(row.get("piano_roll"), Path(self.run_dir) / "piano_rolls")
            if image is not None:
                import wandb

                logged["generated/piano_roll"] = wandb.Image(image)
            self._wandb_run.log(logged, step=int(row["step"]))
            if row["kind"] == "epoch" and row.get("final"):
                self._wandb_run.finish()
                self._wandb_run = None
        if self._wandb_run is not None and row["kind"] == "diverged":
            self._wandb_run.summary["diverged"] = row["error"]
            self._wandb_run.finish(exit_code=1)
            self._wandb_run = None

    def after_exception(self, run_context, worker_exceptions) -> None:
        self._ensure_started()
        for rank, error in worker_exceptions.items():
            self._writer.write({"kind": "error", "step": -1, "rank": rank, "error": repr(error)[:500]})
        self._upload(force=True)

    def _upload(self, force: bool) -> None:
        if self.upload_to is None or not (force or time.monotonic() - self._uploaded > UPLOAD_EVERY_S):
            return
        storage.write_bytes(storage.join(self.upload_to, "metrics.jsonl"), self._writer.path.read_bytes())
        self._uploaded = time.monotonic()


def _local_image(location: str | None, cache: Path) -> str | None:
    """A piano roll's local file: the path itself, or a copy of an object-store one in `cache`."""
    if not location or not storage.exists(location):
        return None
    if not storage.is_uri(location):
        return location
    local = cache / location.rsplit("/", 1)[-1]
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(storage.read_bytes(location))
    return str(local)

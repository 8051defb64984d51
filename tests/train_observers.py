"""Observers the training tests hand to `train(observers=[...])` (train/loop.py calls them on
every rank after each step): they record which bars each step trained on, or kill a worker.

Registered to pickle by value, so Ray's workers need not import this test-only module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import ray.cloudpickle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KeyRecorder:
    """One JSON line per step and rank in DIR/rank{r}-pid{pid}.jsonl, written before the next
    step starts (so a killed worker's lines are all there): keys, loss, epoch, step, node."""

    def __init__(self, directory: str | Path):
        self.directory = str(directory)

    def _write(self, rank: int, row: dict) -> None:
        import ray

        row = {**row, "rank": rank, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        with open(Path(self.directory) / f"rank{rank}-pid{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def after_step(self, *, rank, epoch, step, keys, metrics) -> None:
        self._write(rank, {"epoch": epoch, "step": step, "keys": list(keys), "loss": float(metrics["loss"])})

    def after_epoch(self, *, rank, epoch, batches) -> None:
        self._write(rank, {"epoch_end": epoch, "batches": batches})


class KillAtStep:
    """SIGKILL the rank's worker process right after `step`, once (the marker file remembers).

    It waits `settle_s` first: Ray Train's controller collects reported checkpoints when it polls
    the workers (every 2 s by default), so a worker killed sooner after a report loses that
    report and the run resumes from the checkpoint before it - correct, but not the step a test
    wants to pin down."""

    def __init__(self, step: int, marker: str | Path, rank: int = 0, settle_s: float = 5.0):
        self.step, self.marker, self.rank, self.settle_s = step, str(marker), rank, settle_s

    def after_step(self, *, rank, epoch, step, keys, metrics) -> None:
        if rank == self.rank and step == self.step and not os.path.exists(self.marker):
            Path(self.marker).touch()
            time.sleep(self.settle_s)
            os.kill(os.getpid(), signal.SIGKILL)


def read_records(directory: str | Path) -> list[dict]:
    """Every recorded line, each with `attempt`: 0 for the worker processes that started first,
    1 for their restarted successors, ... (ordered by each file's first line)."""
    files = []
    for path in Path(directory).glob("rank*-pid*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            files.append((path.stat().st_mtime, path.name, rows))
    by_rank: dict[int, list] = defaultdict(list)
    for _, _, rows in sorted(files, key=lambda f: (_first_step(f[2]), f[0])):
        by_rank[rows[0]["rank"]].append(rows)
    out = []
    for rank, attempts in by_rank.items():
        for attempt, rows in enumerate(attempts):
            out += [{**r, "attempt": attempt} for r in rows]
    return out


def _first_step(rows: list[dict]) -> tuple:
    first = next((r for r in rows if "step" in r), None)
    return (first["step"],) if first else (10**12,)


def steps_of(records: list[dict], epoch: int) -> list[dict]:
    return [r for r in records if r.get("epoch") == epoch and "step" in r]

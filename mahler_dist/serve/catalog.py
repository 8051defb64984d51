"""Which models a server can load: model ids RUN/CHECKPOINT, matched against what exists.

An id is never joined onto a path. The catalog lists ROOT/runs/*/checkpoint_* (generate/runs.py)
and a request's id must equal one of the listed ids (RUN alone means RUN/best); only then is
the listed folder loaded. The listing is read again when an id is not found, so checkpoints
written after the server started become servable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mahler_dist import storage
from mahler_dist.errors import MahlerError
from mahler_dist.generate.runs import CheckpointInfo, list_checkpoints, resolve_checkpoint
from mahler_dist.run_names import check_run_name


class UnknownModel(MahlerError, LookupError):
    """A model id that names no run/checkpoint this server has."""


@dataclass(frozen=True)
class Entry:
    id: str
    run: str
    checkpoint: str          # best | latest | a checkpoint folder name
    info: CheckpointInfo     # the folder it resolves to now


def canonical_id(model_id: str) -> str:
    return model_id if "/" in model_id else f"{model_id}/best"


class ModelCatalog:
    def __init__(self, root: str | Path):
        self.root = storage.as_root(root)
        self._entries: dict[str, Entry] = {}

    def refresh(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        runs = storage.Store(storage.join(self.root, "runs"))
        for name in runs.children(runs.base, dirs_only=True):
            try:
                check_run_name(name)
            except MahlerError:
                continue
            run = storage.child(self.root, "runs", name)
            found = list_checkpoints(run)
            if not found:
                continue
            for alias in ("best", "latest"):
                entries[f"{name}/{alias}"] = Entry(f"{name}/{alias}", name, alias, resolve_checkpoint(run, alias))
            for c in found:
                entries[f"{name}/{c.name}"] = Entry(f"{name}/{c.name}", name, c.name, c)
        self._entries = entries
        return entries

    def entries(self) -> list[Entry]:
        return list(self.refresh().values())

    def lookup(self, model_id: str) -> Entry:
        key = canonical_id(model_id)
        entry = self._entries.get(key) or self.refresh().get(key)
        if entry is None:
            runs = sorted({e.run for e in self._entries.values()})
            raise UnknownModel(f"model {model_id!r}: no such run/checkpoint here "
                               f"(runs: {', '.join(runs) or 'none'}; see GET /v1/models)")
        return entry

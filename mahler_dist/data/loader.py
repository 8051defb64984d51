"""Streaming, length-bucketed, rank-balanced batches of bar samples from WebDataset shards.

Why this and not Ray Data's `streaming_split` (DESIGN.md section 7, docs/decisions.md): training
needs *equal numbers of batches on every rank* (DDP all-reduces once per step) while batches are
cut under a token budget, so their sizes vary. A streaming split only equalises rows, and the
batch count of a rank is known only after its data ran out. Here every rank computes the same
epoch plan from the samples' lengths alone (read once from the shards), so it knows before
reading any data which samples form which batch on which rank:

1. shards in a seeded order per epoch, samples shuffled inside each shard;
2. that order cut into windows (`shuffle_window` samples, at least one per rank);
   window w belongs to rank w mod world_size;
3. each window sorted by length and cut into batches (<= batch_size bars and, with a budget,
   <= max_batch_rows padded rows); batch order shuffled inside the window;
4. ranks with fewer batches split their largest ones until every rank has as many.

Each sample is in exactly one batch per epoch; a rank holds one window of samples in memory at a
time, whatever the corpus size; the plan is a pure function of (lengths, seed, epoch), so a
resumed run can skip the batches it already trained on (`state_dict`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mahler_dist.model.batch import collate_bars


def _read_shard(url: str) -> Iterator[dict]:
    """Samples of one tar shard in file order, fields as raw bytes (webdataset's tar reader,
    which also opens cloud URLs and `pipe:` commands)."""
    from webdataset import tariterators

    yield from tariterators.tarfile_samples([{"url": url}])


def _decode(sample: dict) -> dict:
    # np.load without pickle: shards are data, never code (DESIGN.md section 5)
    def npy(name: str) -> np.ndarray:
        return np.load(io.BytesIO(sample[name]), allow_pickle=False)

    meta = json.loads(sample["meta.json"])
    return {"key": sample["__key__"], "context": npy("context.npy"), "inputs": npy("inputs.npy"),
            "active": npy("active.npy"), "metre": meta.get("metre", "")}


def scan_lengths(urls: Sequence[str]) -> list[np.ndarray]:
    """Per shard: int64 [n, 2] (context rows, input rows) of its samples in file order."""
    out = []
    for url in urls:
        lengths = []
        for s in _read_shard(url):
            meta = json.loads(s["meta.json"])
            ctx, inp = meta.get("context_rows"), meta.get("rows")
            if ctx is None or inp is None:   # not in meta.json: read the arrays' shapes
                ctx = len(np.load(io.BytesIO(s["context.npy"]), allow_pickle=False))
                inp = len(np.load(io.BytesIO(s["inputs.npy"]), allow_pickle=False))
            lengths.append((int(ctx), int(inp)))
        out.append(np.asarray(lengths, dtype=np.int64).reshape(-1, 2))
    return out


@dataclass(frozen=True)
class PlanOptions:
    world_size: int = 1
    batch_size: int = 64          # bars per batch on one rank
    max_batch_rows: int = 0       # padded rows (context + input) per batch; 0 = no budget
    shuffle_window: int = 4096
    shuffle: bool = True
    seed: int = 0


def plan_epoch(shard_lengths: Sequence[np.ndarray], epoch: int, opt: PlanOptions) -> list[list[list[np.ndarray]]]:
    """plan[rank][window] = list of batches; a batch is an int64 array of global sample ids
    (ids count through the shards in their listed order). Same result on every rank."""
    sizes = np.array([len(l) for l in shard_lengths], dtype=np.int64)
    first_id = np.concatenate([[0], np.cumsum(sizes)])
    lengths = np.concatenate(shard_lengths) if len(shard_lengths) else np.zeros((0, 2), np.int64)
    rng = np.random.default_rng([opt.seed, epoch])
    shard_order = rng.permutation(len(sizes)) if opt.shuffle else np.arange(len(sizes))
    order = np.concatenate([first_id[s] + (rng.permutation(sizes[s]) if opt.shuffle else np.arange(sizes[s]))
                            for s in shard_order]) if len(sizes) else np.zeros(0, np.int64)
    n_windows = max(opt.world_size, -(-len(order) // max(opt.shuffle_window, 1)))
    windows = np.array_split(order, n_windows)
    plan: list[list[list[np.ndarray]]] = [[] for _ in range(opt.world_size)]
    for w, ids in enumerate(windows):
        batches = _cut_batches(ids, lengths, opt)
        if opt.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        plan[w % opt.world_size].append(batches)
    if opt.shuffle:
        for rank_windows in plan:
            rng.shuffle(rank_windows)
    _equalise(plan)
    return plan


def _cut_batches(ids: np.ndarray, lengths: np.ndarray, opt: PlanOptions) -> list[np.ndarray]:
    """Sort a window by length and cut it greedily under the size and row budgets."""
    if len(ids) == 0:
        return []
    ids = ids[np.lexsort((lengths[ids, 0], lengths[ids, 1]))]
    batches, start = [], 0
    max_ctx = max_inp = 0
    for i, sid in enumerate(ids):
        ctx, inp = max(max_ctx, lengths[sid, 0]), max(max_inp, lengths[sid, 1])
        n = i - start + 1
        if i > start and (n > opt.batch_size or (opt.max_batch_rows and n * (ctx + inp) > opt.max_batch_rows)):
            batches.append(ids[start:i])
            start, ctx, inp = i, lengths[sid, 0], lengths[sid, 1]
        max_ctx, max_inp = ctx, inp
    batches.append(ids[start:])
    return batches


def _equalise(plan: list[list[list[np.ndarray]]]) -> None:
    """Give every rank the same number of batches, keeping every sample exactly once: ranks with
    fewer batches split their largest ones; only when a rank has fewer samples than that count
    (tiny corpora, many ranks) do the others merge their smallest batches instead."""
    counts = [sum(len(w) for w in windows) for windows in plan]
    samples = [sum(len(b) for w in windows for b in w) for windows in plan]
    target = min(max(counts), min(samples))
    if target == 0:
        raise ValueError(f"a rank would get no samples ({min(samples)} samples for {len(plan)} ranks); "
                         "use fewer workers or more data")
    for windows in plan:
        while sum(len(w) for w in windows) < target:
            w, b = max(((wi, bi) for wi, win in enumerate(windows) for bi in range(len(win))),
                       key=lambda wb: len(windows[wb[0]][wb[1]]))
            batch = windows[w].pop(b)
            half = len(batch) // 2
            windows[w][b:b] = [batch[:half], batch[half:]]
        while sum(len(w) for w in windows) > target:
            w = max(range(len(windows)), key=lambda wi: len(windows[wi]))
            if len(windows[w]) < 2:   # one batch per window: join two windows first
                windows[0:2] = [windows[0] + windows[1]]
                continue
            smallest = sorted(range(len(windows[w])), key=lambda bi: len(windows[w][bi]))[:2]
            merged = np.concatenate([windows[w][bi] for bi in smallest])
            for bi in sorted(smallest, reverse=True):
                windows[w].pop(bi)
            windows[w].append(merged)


class BarLoader:
    """Iterate one rank's batches of an epoch. Each batch is `collate_bars` output plus "keys".

    `set_epoch(e)` selects the plan; `state_dict()`/`load_state_dict()` carry (epoch, batches
    done) through a checkpoint so a resumed run continues mid-epoch without repeating bars.
    """

    def __init__(self, urls: Sequence[str], *, rank: int = 0, options: PlanOptions = PlanOptions(),
                 shard_lengths: Sequence[np.ndarray] | None = None):
        if not 0 <= rank < options.world_size:
            raise ValueError(f"rank {rank} outside world size {options.world_size}")
        self.urls = list(urls)
        self.rank = rank
        self.options = options
        self.shard_lengths = list(shard_lengths) if shard_lengths is not None else scan_lengths(self.urls)
        self._first_id = np.concatenate([[0], np.cumsum([len(l) for l in self.shard_lengths])])
        self.epoch = 0
        self.batches_done = 0
        self._plan: list[list[np.ndarray]] | None = None

    @property
    def num_samples(self) -> int:
        return int(self._first_id[-1])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.batches_done = 0
        self.epoch = epoch
        self._plan = None

    def _rank_plan(self) -> list[list[np.ndarray]]:
        if self._plan is None:
            self._plan = plan_epoch(self.shard_lengths, self.epoch, self.options)[self.rank]
        return self._plan

    def __len__(self) -> int:
        return sum(len(w) for w in self._rank_plan())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._plan = None

    def __iter__(self) -> Iterator[dict]:
        skip = self.batches_done
        for batches in self._rank_plan():
            if skip >= len(batches):
                skip -= len(batches)
                continue
            todo = batches[skip:]
            skip = 0
            samples = self._load({int(i) for b in todo for i in b})
            for batch_ids in todo:
                chosen = [samples[int(i)] for i in batch_ids]
                batch = collate_bars(chosen)
                batch["keys"] = [s["key"] for s in chosen]
                self.batches_done += 1
                yield batch
        # the epoch is complete: a checkpoint taken now resumes at the next epoch
        self.epoch += 1
        self.batches_done = 0
        self._plan = None

    def _load(self, ids: set[int]) -> dict[int, dict]:
        """Decode the samples with these global ids, reading only the shards that hold them."""
        wanted = np.array(sorted(ids), dtype=np.int64)
        shards = np.unique(np.searchsorted(self._first_id, wanted, side="right") - 1)
        out = {}
        for s in shards:
            base = int(self._first_id[s])
            for i, raw in enumerate(_read_shard(self.urls[s])):
                if base + i in ids:
                    out[base + i] = _decode(raw)
        return out

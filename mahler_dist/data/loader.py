"""Streaming, length-bucketed, rank-balanced batches of bar samples from WebDataset shards.

Why this and not Ray Data's `streaming_split` (DESIGN.md section 7, docs/decisions.md): training
needs *equal numbers of batches on every rank* (DDP all-reduces once per step) while batches are
cut under a token budget, so their sizes vary. A streaming split only equalises rows, and the
batch count of a rank is known only after its data ran out. Here every rank computes the same
epoch plan from the samples' lengths alone (read once from the shards), so it knows before
reading any data which samples form which batch on which rank:

1. shards in a seeded order per epoch, samples shuffled inside each shard;
2. that order cut into windows of at most `shuffle_window` samples, as many on every rank
   (a multiple of world_size, sizes differing by at most one sample), so ranks start with
   nearly equal batch counts; window w belongs to rank w mod world_size;
3. each window sorted by length and cut into batches of <= batch_size bars and <= max_batch_rows
   padded rows (bars x (longest context + longest input)); a bar left alone is paired up
   (section "one-bar batches" below); batch order shuffled inside the window;
4. ranks with fewer batches split their largest ones until every rank has as many.

The row budget is always in force: it bounds a step's memory whatever the lengths. Every sample
must fit it alone (max_batch_rows >= 2 x max_rows_per_bar); a sample past max_rows_per_bar (a
build from before that bound held for contexts) is refused with its shard and key, never padded.

One-bar batches: BatchNorm has no batch statistics for one sample (the model copes, see
model/layers.py, but it is a wasted step), so the cut pairs every lone bar with another bar of its
window that fits the limits with it, and balancing splits batches of >= 4 bars first. A one-bar
batch is left only when nothing can share it: batch_size 1, a one-sample window or rank, a bar
whose pair with any other bar passes the budget, or a rank that must split a batch of <= 3 bars.

Each sample is in exactly one batch per epoch; a rank holds one window of samples in memory at a
time, whatever the corpus size; the plan is a pure function of (lengths, seed, epoch, options),
so a resumed run can skip the batches it already trained on (`state_dict`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset

from mahler_dist.data.augment import transpose_sample
from mahler_dist.data.collate import collate_bars
from mahler_dist.data.shard_reader import decode_sample, npy_array, read_raw_samples
from mahler_dist.data.shards import lengths_path
from mahler_dist.storage import read_bytes


def _read_shard(url: str) -> list[dict]:
    """Samples of one tar shard in file order, fields as bytes-like objects (data/shard_reader.py:
    the project's own shards fast, anything else through webdataset's reader)."""
    return read_raw_samples(url)


def read_samples(url: str) -> Iterator[dict]:
    """The decoded samples of one shard in file order: {"key", "context", "inputs", "active", "metre"}
    (arrays are read-only views of the shard's bytes)."""
    for raw in _read_shard(url):
        yield decode_sample(raw)


def _sidecar_lengths(url: str) -> np.ndarray | None:
    side = lengths_path(url)
    if side is None:
        return None
    try:
        data = read_bytes(side)   # a local file or an object-store URI (the storage layer)
    except FileNotFoundError:
        return None               # a build from before the sidecars
    lengths = np.load(io.BytesIO(data), allow_pickle=False)
    if lengths.ndim != 2 or lengths.shape[1] != 2 or lengths.dtype.kind not in "iu":
        raise ValueError(f"{side}: not a [n, 2] integer lengths array (shape {lengths.shape}, {lengths.dtype})")
    return lengths.astype(np.int64)


def scan_lengths(urls: Sequence[str]) -> list[np.ndarray]:
    """Per shard: int64 [n, 2] (context rows, input rows) of its samples in file order - from the
    build's lengths sidecars (a few bytes per sample: a rank plans its epoch without reading the
    shards), else, for builds from before them, from the shards' meta.json."""
    out = []
    for url in urls:
        side = _sidecar_lengths(url)
        if side is not None:
            out.append(side)
            continue
        lengths = []
        for s in _read_shard(url):
            meta = json.loads(bytes(s["meta.json"]))
            ctx, inp = meta.get("context_rows"), meta.get("rows")
            if ctx is None or inp is None:   # not in meta.json: read the arrays' shapes
                ctx, inp = len(npy_array(s["context.npy"])), len(npy_array(s["inputs.npy"]))
            lengths.append((int(ctx), int(inp)))
        out.append(np.asarray(lengths, dtype=np.int64).reshape(-1, 2))
    return out


@dataclass(frozen=True)
class PlanOptions:
    world_size: int = 1
    batch_size: int = 64          # bars per batch on one rank
    max_batch_rows: int = 16_384  # padded rows per batch on one rank: bars x (max context + max input)
    max_rows_per_bar: int = 256   # the build's data.max_rows_per_bar: a longer context or input is refused
    shuffle_window: int = 4096
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("world_size", "batch_size", "max_rows_per_bar", "shuffle_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlanOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_rows < 2 * self.max_rows_per_bar:
            raise ValueError(f"PlanOptions.max_batch_rows {self.max_batch_rows} cannot hold one bar of "
                             f"{self.max_rows_per_bar} context and {self.max_rows_per_bar} input rows: "
                             f"it must be >= 2 x max_rows_per_bar = {2 * self.max_rows_per_bar}")


def oversized(lengths: np.ndarray, opt: PlanOptions) -> np.ndarray:
    """Indices of the samples of a [n, 2] (context rows, input rows) array that break the limits."""
    return np.flatnonzero((lengths > opt.max_rows_per_bar).any(axis=1)) if len(lengths) else np.zeros(0, np.int64)


def plan_epoch(shard_lengths: Sequence[np.ndarray], epoch: int, opt: PlanOptions) -> list[list[list[np.ndarray]]]:
    """plan[rank][window] = list of batches; a batch is an int64 array of global sample ids
    (ids count through the shards in their listed order). Same result on every rank."""
    sizes = np.array([len(l) for l in shard_lengths], dtype=np.int64)
    first_id = np.concatenate([[0], np.cumsum(sizes)])
    lengths = np.concatenate(shard_lengths) if len(shard_lengths) else np.zeros((0, 2), np.int64)
    bad = oversized(lengths, opt)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"sample {i} has {lengths[i, 0]} context and {lengths[i, 1]} input rows, over "
                         f"max_rows_per_bar {opt.max_rows_per_bar} ({len(bad)} such samples)")
    rng = np.random.default_rng([opt.seed, epoch])
    shard_order = rng.permutation(len(sizes)) if opt.shuffle else np.arange(len(sizes))
    order = np.concatenate([first_id[s] + (rng.permutation(sizes[s]) if opt.shuffle else np.arange(sizes[s]))
                            for s in shard_order]) if len(sizes) else np.zeros(0, np.int64)
    # as many windows on every rank: a rank with one window more would start with a window's
    # worth of extra batches, which the others could only match by halving theirs
    per_rank = max(1, -(-len(order) // (opt.world_size * opt.shuffle_window)))
    n_windows = opt.world_size * per_rank
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
    _equalise(plan, lengths, opt)
    return plan


def _padded_rows(batch: np.ndarray, lengths: np.ndarray) -> int:
    """What a batch costs once padded: bars x (longest context + longest input)."""
    return len(batch) * int(lengths[batch, 0].max() + lengths[batch, 1].max())


def _fits(batch: np.ndarray, lengths: np.ndarray, opt: PlanOptions) -> bool:
    return len(batch) <= opt.batch_size and _padded_rows(batch, lengths) <= opt.max_batch_rows


def _cut_batches(ids: np.ndarray, lengths: np.ndarray, opt: PlanOptions) -> list[np.ndarray]:
    """Sort a window by length and cut it greedily under the size and row budgets, then give the
    bars left alone a partner."""
    if len(ids) == 0:
        return []
    ids = ids[np.lexsort((lengths[ids, 0], lengths[ids, 1]))]
    batches, start = [], 0
    max_ctx = max_inp = 0
    for i, sid in enumerate(ids):
        ctx, inp = max(max_ctx, lengths[sid, 0]), max(max_inp, lengths[sid, 1])
        n = i - start + 1
        if i > start and (n > opt.batch_size or n * (ctx + inp) > opt.max_batch_rows):
            batches.append(ids[start:i])
            start, ctx, inp = i, lengths[sid, 0], lengths[sid, 1]
        max_ctx, max_inp = ctx, inp
    batches.append(ids[start:])
    return _pair_lone_bars(batches, lengths, opt)


def _pair_lone_bars(batches: list[np.ndarray], lengths: np.ndarray, opt: PlanOptions) -> list[np.ndarray]:
    """Give each one-bar batch company, within the limits: join it to a batch with room for it
    (the cheapest once padded), else take one bar from a batch of >= 3 (the longest bar that
    pads the pair least). The greedy cut leaves a lone bar at a window's remainder
    (window size = 1 mod batch_size) or beside a bar too long to share the budget with."""
    if opt.batch_size < 2:
        return batches
    # the longest lone bar first: it has the fewest partners; shorter ones may then join a batch
    for lone in reversed([i for i, b in enumerate(batches) if len(b) == 1]):
        if len(batches[lone]) != 1:
            continue   # joined by an earlier lone bar
        bar = batches[lone]
        joins = [(_padded_rows(np.concatenate([b, bar]), lengths), j) for j, b in enumerate(batches)
                 if j != lone and len(b) < opt.batch_size]
        joins = [(rows, j) for rows, j in joins if rows <= opt.max_batch_rows]
        if joins:
            _, j = min(joins)
            batches[j] = np.concatenate([batches[j], bar])
            batches[lone] = bar[:0]
            continue
        donors = [j for j, b in enumerate(batches) if len(b) >= 3]
        if not donors:
            continue
        pool = np.concatenate([batches[j] for j in donors])
        owner = np.concatenate([np.full(len(batches[j]), j) for j in donors])
        pair_rows = 2 * (np.maximum(lengths[pool, 0], lengths[bar[0], 0])
                         + np.maximum(lengths[pool, 1], lengths[bar[0], 1]))
        ok = np.flatnonzero(pair_rows <= opt.max_batch_rows)
        if not len(ok):
            continue   # too long to share the budget with any bar of its window
        best = ok[np.lexsort((-lengths[pool[ok]].sum(axis=1), pair_rows[ok]))[0]]
        j = int(owner[best])
        batches[j] = batches[j][batches[j] != pool[best]]
        batches[lone] = np.concatenate([[pool[best]], bar])
    return [b for b in batches if len(b)]


def _equalise(plan: list[list[list[np.ndarray]]], lengths: np.ndarray, opt: PlanOptions) -> None:
    """Give every rank the same number of batches, keeping every sample exactly once: ranks with
    fewer batches split their largest ones (halves of a batch of >= 4 bars keep >= 2 bars each);
    only when a rank has fewer samples than that count (tiny corpora, many ranks) do the others
    merge their two batches that pad least together, within the row budget."""
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
            win = windows[w]
            rows, a, b = min((_padded_rows(np.concatenate([win[a], win[b]]), lengths), a, b)
                             for a in range(len(win)) for b in range(a + 1, len(win)))
            if rows > opt.max_batch_rows:
                raise ValueError(f"cannot give {len(plan)} ranks {target} batches each within "
                                 f"max_batch_rows {opt.max_batch_rows}: use fewer workers or more data")
            merged = np.concatenate([win[a], win[b]])
            win.pop(b)
            win.pop(a)
            win.append(merged)


class BarLoader:
    """Iterate one rank's batches of an epoch. Each batch is `collate_bars` output plus "keys".

    `set_epoch(e)` selects the plan; `state_dict()`/`load_state_dict()` carry (epoch, batches
    done) through a checkpoint so a resumed run continues mid-epoch without repeating bars.
    With `workers` > 0 the batches are built in that many torch DataLoader worker processes; the
    stream is the same batch for batch (`batches`), so resuming works the same with any count.
    """

    def __init__(self, urls: Sequence[str], *, rank: int = 0, options: PlanOptions = PlanOptions(),
                 shard_lengths: Sequence[np.ndarray] | None = None, transpose: int = 0,
                 workers: int = 0, prefetch: int = 4, pin_memory: bool = False):
        if not 0 <= rank < options.world_size:
            raise ValueError(f"rank {rank} outside world size {options.world_size}")
        if workers < 0 or prefetch < 1:
            raise ValueError(f"loader workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        # batch building in `workers` processes (0: in this one), each `prefetch` batches ahead;
        # pinned host memory lets the copy to a GPU overlap the step (to_device(non_blocking=True))
        self.workers, self.prefetch, self.pin_memory = workers, prefetch, pin_memory
        self.urls = list(urls)
        self.rank = rank
        self.options = options
        self.transpose = transpose   # +-semitones of pitch augmentation (data/augment.py); 0 = off
        self.shard_lengths = list(shard_lengths) if shard_lengths is not None else scan_lengths(self.urls)
        self._first_id = np.concatenate([[0], np.cumsum([len(l) for l in self.shard_lengths])])
        self._refuse_oversized()
        self.epoch = 0
        self.batches_done = 0
        self._plan: list[list[np.ndarray]] | None = None

    def _refuse_oversized(self) -> None:
        """A sample past max_rows_per_bar cannot be trained within the budget it was sized for
        (builds from before contexts were bounded wrote such samples): stop before the first
        step, naming the shard and the sample."""
        for url, lengths in zip(self.urls, self.shard_lengths):
            bad = oversized(lengths, self.options)
            if len(bad):
                i = int(bad[0])
                key = next((s["__key__"] for j, s in enumerate(_read_shard(url)) if j == i), f"#{i}")
                raise ValueError(
                    f"shard {url}: sample {key} has {lengths[i, 0]} context rows and {lengths[i, 1]} input "
                    f"rows, over max_rows_per_bar {self.options.max_rows_per_bar} ({len(bad)} such samples "
                    "in this shard); preprocess the corpus again with this data.max_rows_per_bar")

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

    def fingerprint(self) -> str:
        """What the plan is a function of, besides the epoch: the shards' names and sample
        lengths and the options. A saved position means something only for the same fingerprint."""
        h = hashlib.sha256(json.dumps([[u.rsplit("/", 1)[-1] for u in self.urls],
                                       dataclasses.asdict(self.options)], sort_keys=True).encode())
        for lengths in self.shard_lengths:
            h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> bool:
        """Continue at the saved position. When the plan would differ (other shards, lengths or
        options - a new build, another world size or batch size), batches_done would point into a
        different plan: resume at the start of the saved epoch instead and return False."""
        self.epoch = int(state["epoch"])
        same = state.get("fingerprint") == self.fingerprint()
        self.batches_done = int(state["batches_done"]) if same else 0
        self._plan = None
        return same

    def __iter__(self) -> Iterator[dict]:
        skip = self.batches_done
        self._rank_plan()   # computed here, once: worker processes get it with the loader
        if self.workers == 0:
            stream: Iterator[dict] = self.batches(skip)
        else:
            import torch.utils.data as tud

            shared = tud.DataLoader(_WorkerShare(self, skip), batch_size=None, num_workers=self.workers,
                                    prefetch_factor=self.prefetch)
            stream = map(unpack_batch, shared)
        for batch in stream:
            if self.pin_memory:   # page-locked, so to_device(non_blocking=True) overlaps the step
                batch = {k: v.pin_memory() if k != "keys" else v for k, v in batch.items()}
            self.batches_done += 1
            yield batch
        # the epoch is complete: a checkpoint taken now resumes at the next epoch
        self.epoch += 1
        self.batches_done = 0
        self._plan = None

    def batches(self, skip: int, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """This rank's batches of the epoch from batch `skip` on, the ones with
        (index - skip) % workers == worker. A DataLoader over N workers takes one batch from each
        worker in turn, so the stream it yields is the plan's order whatever N is; each worker
        decodes only the samples of its own batches."""
        index = 0
        for window in self._rank_plan():
            mine = [(index + j, b) for j, b in enumerate(window)
                    if index + j >= skip and (index + j - skip) % workers == worker]
            index += len(window)
            if not mine:
                continue
            samples = self._load({int(i) for _, b in mine for i in b})
            for _, batch_ids in mine:
                chosen = [samples[int(i)] for i in batch_ids]
                if self.transpose:   # drawn per (seed, epoch, sample): a resumed epoch repeats it
                    chosen = [transpose_sample(s, self.transpose, np.random.default_rng(
                        [self.options.seed, self.epoch, int(i)])) for s, i in zip(chosen, batch_ids)]
                batch = collate_bars(chosen)
                batch["keys"] = [s["key"] for s in chosen]
                yield batch

    def _load(self, ids: set[int]) -> dict[int, dict]:
        """Decode the samples with these global ids, reading only the shards that hold them."""
        wanted = np.array(sorted(ids), dtype=np.int64)
        shards = np.unique(np.searchsorted(self._first_id, wanted, side="right") - 1)
        out = {}
        for s in shards:
            base = int(self._first_id[s])
            for i, raw in enumerate(_read_shard(self.urls[s])):
                if base + i in ids:
                    out[base + i] = decode_sample(raw)
        return out


class _WorkerShare(IterableDataset):
    """What one DataLoader worker iterates: its share of the loader's batches (BarLoader.batches)."""

    def __init__(self, loader: BarLoader, skip: int):
        self.loader, self.skip = loader, skip

    def __iter__(self) -> Iterator[dict]:
        import torch.utils.data as tud

        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return map(pack_batch, self.loader.batches(self.skip, worker, workers))


# Batches cross from a worker process as bytes, not tensors: torch moves each tensor through its
# own shared-memory segment, 4.2 ms per 64-bar batch here against 0.6 ms for the same arrays as
# bytes through the pipe (bench/loader.py). Rows travel as int8 (their compact layout, 1/8 of
# the bytes) and are widened to int64 on arrival.
_COMPACT = {"ctx_rows": np.int8, "inp_rows": np.int8}


def pack_batch(batch: dict) -> dict:
    arrays = {}
    for name, value in batch.items():
        if name == "keys":
            continue
        a = value.numpy()
        a = a.astype(_COMPACT[name]) if name in _COMPACT else a
        arrays[name] = (a.dtype.str, a.shape, a.tobytes())
    return {"keys": batch["keys"], "arrays": arrays}


def unpack_batch(packed: dict) -> dict:
    import torch

    out: dict = {}
    for name, (dtype, shape, data) in packed["arrays"].items():
        a = np.frombuffer(data, dtype=dtype).reshape(shape)
        a = a.astype(np.int64) if name in _COMPACT else a.copy()   # writable, owned arrays
        out[name] = torch.from_numpy(a)
    out["keys"] = list(packed["keys"])
    return out

"""`mahler preprocess ROOT`: a folder of MIDI files -> WebDataset shards, manifest and pieces (Ray Data).

    summary = preprocess("ROOT", DataConfig(), workers=None, force=False)
    print(summary)

Stages (each runs on whatever cluster `ray.init()` reaches; an embedded local Ray otherwise):

1. list   ROOT/input/**.mid|.midi on the driver and hash every file (sha256): the input hash
          decides whether the output is up to date, and files with identical bytes are recorded as
          duplicates without being encoded;
2. encode a Ray Data pipeline, read_binary_files -> map_batches(encode): each task parses,
          quantises and windows its files, writes pieces/<piece>.npz and returns one small manifest
          record per file. A file that cannot be read becomes a rejected record (reason kept); an
          unexpected exception in the representation code does too, flagged as an internal error
          (a bug to fix, listed in the summary), so one odd file never fails the corpus. Blocks
          themselves never fail silently: DataContext.max_errored_blocks stays 0. The files are
          listed in the order schedule.py plans, so that the equal-count tasks balance by bytes;
3. plan   on the driver, from the records alone: split by piece hash, samples sorted by key, cut into
          shards of `shard_samples` (shards.plan_shards) - so the shards are the same whatever the
          number of nodes, tasks or their timing;
4. write  one Ray task per shard loads its pieces' rows and writes the tar (TarShardWriter: the bytes of
          webdataset.TarWriter with a fixed mtime, so a rebuild gives byte-identical shards). Memory
          stays bounded by one shard's pieces per task and one small record per file on the driver,
          whatever the corpus size; the sample arrays never travel through the object store or the
          driver (write_webdataset would need them all materialised and sorted first);
5. publish manifest.jsonl, then shards/index.json (last) into ROOT/.staging-<id>/, then swap the
          staging folder's entries into ROOT (shards/ first out, last in: a visible index.json always
          sits beside the complete output it describes). A run killed before the swap leaves the
          previous output untouched; one killed during the swap is rolled forward by the next run
          (its staging folder is complete); leftovers are removed.

Resources: encode and shard tasks are plain tasks of 1 CPU each (no actors), so nothing holds a CPU
that another stage waits for: no deadlock on 2 CPUs, and tasks spread over every node of a cluster.
By default the read is fused into the encode task (one task reads and encodes its files) and every
CPU of the cluster is used; `workers=N` caps the concurrency with TaskPoolStrategy(size=N), which
Ray Data does not fuse with the read (the file bytes then pass through the object store). On a
multi-node cluster ROOT must be shared storage or a URI (s3://, gs://), as for any Ray Data write:
tasks write where they run. Concurrent runs on the same ROOT are not supported.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import tarfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.schedule import plan_encode_tasks
from mahler_dist.errors import MahlerError, MidiReadError

# --------------------------------------------------------------------------------------------------
# Summary


@dataclass
class PreprocessSummary:
    root: str
    up_to_date: bool
    files: int = 0
    ok: int = 0
    rejected: int = 0
    internal_errors: int = 0
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    pieces: int = 0
    bars: int = 0
    bars_too_long: int = 0
    notes_in: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    workers: int = 0

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def notes_per_s(self) -> float:
        return self.notes_in / self.wall_s if self.wall_s else 0.0

    def __str__(self) -> str:
        splits = " / ".join(f"{s} {self.samples.get(s, 0):,}" for s in S.SPLITS)
        shards = " / ".join(str(self.shards.get(s, 0)) for s in S.SPLITS)
        reasons = ", ".join(f"{r} {n}" for r, n in self.top_reasons[:5])
        head = (f"{self.root}: up to date (same input and config; --force rebuilds)" if self.up_to_date else
                f"{self.root}: {self.files} files in {self.wall_s:.1f} s ({self.files_per_s:.1f} files/s, "
                f"{self.notes_per_s:,.0f} notes/s, {self.workers} workers)")
        lines = [head,
                 f"  files:   {self.ok} ok, {self.rejected} rejected" + (f" (top: {reasons})" if reasons else ""),
                 f"  pieces:  {self.pieces:,}   bars: {self.bars:,} ({self.bars_too_long} too long, not written)",
                 f"  samples: {splits} (train / val / test) in {shards} shards",
                 f"  output:  {S.join(self.root, S.SHARDS_DIR, S.INDEX_NAME)}, {S.PIECES_DIR}/, {S.MANIFEST_NAME}"]
        if self.internal_errors:
            lines.append(f"  WARNING: {self.internal_errors} files hit an internal error (a bug in the "
                         f"representation code): see 'internal error' rows in {S.MANIFEST_NAME}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Storage: ROOT on a pyarrow filesystem (a local path or a URI)


class Store:
    """Path operations under ROOT through pyarrow.fs, so that ROOT may be local or s3://, gs://."""

    def __init__(self, root: str | os.PathLike):
        import pyarrow.fs as pafs

        self.root = str(root)
        if S.is_uri(self.root):
            self.fs, base = pafs.FileSystem.from_uri(self.root)
        else:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(self.root)
        self.base = base.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def info(self, path: str):
        return self.fs.get_file_info(path)

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(path).type != pafs.FileType.NotFound

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def mkdir(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def remove(self, path: str) -> None:
        import pyarrow.fs as pafs

        kind = self.info(path).type
        try:
            if kind == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif kind == pafs.FileType.File:
                self.fs.delete_file(path)
        except OSError:   # a straggler task of a killed run may still be writing; next run retries
            pass

    def children(self, path: str) -> list[str]:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def list_midi(self, path: str) -> list[tuple[str, int]]:
        """(path relative to `path`, size) of every .mid/.midi below it (case-insensitive), sorted."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        out = []
        for i in self.fs.get_file_info(sel):
            if i.type == pafs.FileType.File and i.path.lower().endswith(S.MIDI_EXTENSIONS):
                out.append((i.path[len(path):].lstrip("/"), int(i.size)))
        return sorted(out)

    def sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Stage 2: encode (runs in Ray tasks)


def encode_record(data: bytes, rel: str, max_rows: int) -> tuple[dict, bytes | None]:
    """One file -> (manifest record, pieces npz bytes or None). Never raises for bad input: a file
    that cannot be encoded gives status "rejected" and its reason. Extra keys starting with "_"
    (per-file histograms for the corpus statistics) are dropped from the manifest by the driver."""
    from mahler_dist.music import piece as P
    from mahler_dist.music.encode import encode_bytes
    from mahler_dist.music.instruments import PROGRAM_TO_CLASS, UNMAPPED
    from mahler_dist.music.score import PROGRAM
    from mahler_dist.music.vocab import NUM_INSTRUMENTS

    sha = hashlib.sha256(data).hexdigest()
    rec = _empty_record(rel, sha, len(data))
    try:
        enc = encode_bytes(data, rel)
    except MidiReadError as e:
        rec["reason"] = e.reason
        return rec, None
    except MahlerError as e:
        rec["reason"] = str(e)
        return rec, None
    except MemoryError:
        raise
    except Exception as e:   # a bug in the representation code: record it loudly, keep going
        rec["reason"] = f"internal error: {type(e).__name__}: {e}"
        rec["_internal_error"] = True
        return rec, None
    stats, rows = enc.stats, enc.rows
    if rows.num_bars > MAX_BARS:   # sample keys hold 5 digits
        rec["reason"] = f"too many bars ({rows.num_bars} > {MAX_BARS})"
        return rec, None
    per_bar = np.diff(rows.bar_starts)
    programs = enc.score.notes[:, PROGRAM]
    programs = programs[np.asarray(PROGRAM_TO_CLASS)[programs] != UNMAPPED]
    rec.update(
        status="ok",
        notes_in=int(stats["source notes"]), notes_kept=int(stats["kept notes"]),
        note_parts=int(stats["note parts"]),
        bars=int(len(per_bar)), samples=int((per_bar <= max_rows).sum()),
        bars_too_long=int((per_bar > max_rows).sum()), rows=int(len(rows.rows)),
        metres=dict(sorted(Counter(rows.metres).items())),
        instruments=_nonzero(np.bincount(enc.piece.notes[:, P.INSTR], minlength=NUM_INSTRUMENTS)),
        programs=_nonzero(np.bincount(programs, minlength=128)),
        dropped=_prefixed(stats, "dropped: "), merged=_prefixed(stats, "merged: "),
        _rows_hist=np.bincount(per_bar).tolist(),
    )
    return rec, S.piece_npz_bytes(rec["piece"], rel, enc.piece, rows)


MAX_BARS = 99_999


def _empty_record(rel: str, sha: str, size: int) -> dict:
    return {"path": rel, "status": "rejected", "reason": None, "piece": sha[:S.PIECE_ID_LEN], "split": None,
            "sha256": sha, "size": size, "notes_in": 0, "notes_kept": 0, "note_parts": 0, "bars": 0,
            "samples": 0, "bars_too_long": 0, "rows": 0, "metres": {}, "instruments": {}, "programs": {},
            "dropped": {}, "merged": {}}


def _prefixed(stats: Counter, prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: int(v) for k, v in sorted(stats.items()) if k.startswith(prefix) and v}


def _nonzero(counts: np.ndarray) -> dict[str, int]:
    return {str(i): int(c) for i, c in enumerate(counts) if c}


def _encode_batch(batch: dict, *, store: Store, input_dir: str, pieces_dir: str, max_rows: int) -> dict:
    """map_batches UDF (a function, so it runs as plain tasks): {"bytes", "path"} -> {"record": JSON};
    writes pieces/<piece>.npz into the staging folder."""
    out = []
    for data, path in zip(batch["bytes"], batch["path"]):
        rel = str(path)[len(input_dir):].lstrip("/")
        rec, npz = encode_record(bytes(data), rel, max_rows)
        if npz is not None:
            store.write(f"{pieces_dir}/{rec['piece']}.npz", npz)
        out.append(json.dumps(rec))
    return {"record": np.array(out, dtype=object)}


# --------------------------------------------------------------------------------------------------
# Stage 4: write one shard (runs in a Ray task)


def write_shard(store: Store, pieces_dir: str, path: str, items: list, max_rows: int) -> dict:
    """Write the tar `path` with the samples `items` ([(piece, start, stop)] of shards.ShardItem).

    The tar stream is gzip-compressed (level 1: level 9 tripled the shard stage; mtime 0, so
    rebuilds stay byte-identical): a bar's four members cost 4 KiB of tar headers and padding,
    which gzip folds to a few bytes per event row.
    Both webdataset and ray.data.read_webdataset open shards with tarfile mode "r|*", which
    detects the compression, as does `tar tf`."""
    nsamples = rows = 0
    with store.fs.open_output_stream(path) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as f:
        tar = TarShardWriter(f)
        for piece, start, stop in items:
            piece_rows, meta = S.read_piece_rows(store.read(f"{pieces_dir}/{piece}.npz"))
            samples = S.piece_samples(piece_rows, max_rows)[start:stop]
            if len(samples) != stop - start:
                raise RuntimeError(f"{piece}: expected samples {start}..{stop}, found {len(samples)}")
            names, payloads = zip(*S.sample_members(samples, piece, meta["source"])) if samples else ((), ())
            tar.add_many(names, payloads)
            rows += sum(len(s.inputs) for s in samples)
            nsamples += len(samples)
        tar.close()
    return {"nsamples": nsamples, "rows": rows, "filesize": store.info(path).size}


class TarShardWriter:
    """Writes WebDataset samples as a POSIX ustar stream: the bytes `webdataset.TarWriter(encoder=False,
    mtime=0)` writes for ASCII member names, as every sample key is (tarfile's USTAR format for any
    name; webdataset adds PAX headers for others) - one member per field in sorted field order, mode 0444,
    owner bigdata, mtime 0, so a rebuild gives byte-identical shards - at 10x its speed (tarfile's
    header code was 80% of the shard stage) and without importing webdataset, which imports torch
    (1.4 s per worker process). tests/unit/test_shards.py checks the bytes against tarfile's."""

    _TEMPLATE = bytes(
        bytearray(100)                      # name
        + b"0000444\0" + b"0000000\0" * 2  # mode, uid, gid
        + bytearray(12)                     # size
        + b"00000000000\0" + b" " * 8       # mtime, checksum (spaces while summing)
        + b"0" + bytearray(100)             # typeflag (regular file), linkname
        + b"ustar\x0000"                     # magic, version
        + b"bigdata".ljust(32, b"\0") * 2   # uname, gname
        + bytearray(16 + 155 + 12))         # devmajor, devminor (empty for files), prefix, padding

    _TEMPLATE_ARRAY = np.frombuffer(_TEMPLATE, np.uint8)

    def __init__(self, fileobj, buffer_bytes: int = 1 << 20):
        self.f, self.offset, self.buffer_bytes = fileobj, 0, buffer_bytes
        self.parts: list[bytes] = []
        self.buffered = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        fields = sorted(k for k in sample if not k.startswith("_"))
        self.add_many([f"{key}.{field}" for field in fields], [sample[field] for field in fields])

    def add(self, name: str, data: bytes) -> None:
        self.add_many([name], [data])

    def add_many(self, names, payloads) -> None:
        """Append members: their 512-byte headers are built together in numpy (name, octal size,
        checksum), which costs a tenth of formatting each header in Python."""
        m = len(names)
        if not m:
            return
        encoded = [n.encode() for n in names]
        longest = max(range(m), key=lambda i: len(encoded[i]))
        if len(encoded[longest]) >= 100:
            raise ValueError(f"member name too long for a ustar header: {names[longest]}")
        sizes = np.fromiter(map(len, payloads), np.int64, m)
        head = np.empty((m, 512), np.uint8)
        head[:] = self._TEMPLATE_ARRAY
        head[:, :100] = np.frombuffer(b"".join(n.ljust(100, b"\0") for n in encoded), np.uint8).reshape(m, 100)
        head[:, 124:135] = _octal_digits(sizes, 11)
        head[:, 148:154] = _octal_digits(head.sum(axis=1, dtype=np.int64), 6)   # checksum field: spaces
        head[:, 154] = 0
        heads = memoryview(head.tobytes())
        pads = (-sizes % 512).tolist()
        parts = self.parts
        for i, (data, pad) in enumerate(zip(payloads, pads)):
            parts += (heads[512 * i: 512 * i + 512], data, _ZEROS[:pad])
        total = int(m * 512 + sizes.sum() + sum(pads))
        self.offset += total
        self.buffered += total
        if self.buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        self.f.write(b"".join(self.parts))
        self.parts, self.buffered = [], 0

    def close(self) -> None:
        end = 1024 + (-(self.offset + 1024) % tarfile.RECORDSIZE)   # two zero blocks, then a whole record
        self.parts.append(bytes(end))
        self.offset += end
        self.flush()


_ZEROS = bytes(512)


def _octal_digits(values: np.ndarray, width: int) -> np.ndarray:
    """uint8 [len(values), width]: each value as `width` ASCII octal digits, zero-padded."""
    shifts = 3 * np.arange(width - 1, -1, -1)
    return (((values[:, None] >> shifts) & 7) + ord("0")).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# The pipeline


def preprocess(root: str | os.PathLike, data_config: DataConfig | None = None, *, workers: int | None = None,
               force: bool = False, progress: bool = True) -> PreprocessSummary:
    """ROOT/input/**.mid|.midi -> ROOT/{manifest.jsonl, shards/, pieces/} (see the module docstring).

    `workers` caps the parallel encode/write tasks (default: every CPU of the cluster). Does nothing
    when ROOT already holds the output of the same input, config and representation code, unless
    `force`. Starts (and afterwards stops) a local Ray when none is initialised; connects to
    RAY_ADDRESS when it is set.
    """
    t0 = time.perf_counter()
    config = data_config or DataConfig()
    _check_config(config)
    say = _Say(progress)
    store = Store(root)
    input_dir = store.path(S.INPUT_DIR)
    if not store.exists(input_dir):
        raise MahlerError(f"{root}: no input folder {S.join(root, S.INPUT_DIR)} (put the MIDI files there)")
    recover(store, say)

    files = store.list_midi(input_dir)
    if not files:
        raise MahlerError(f"{S.join(root, S.INPUT_DIR)}: no .mid or .midi files found")
    say(f"hashing {len(files)} input files")
    with ThreadPoolExecutor(8) as pool:
        shas = dict(zip((r for r, _ in files), pool.map(lambda f: store.sha256(f"{input_dir}/{f[0]}"), files)))
    hashes = {"config_hash": S.config_hash(config), "input_hash": S.input_hash(shas.items()),
              "encoder_hash": S.encoder_hash()}
    old = _read_index(store)
    if old is not None and not force and all(old.get(k) == v for k, v in hashes.items()):
        return _summary_from_index(str(root), old, up_to_date=True)

    import ray

    started = not ray.is_initialized()
    if started:
        say("starting a local Ray (set RAY_ADDRESS to use a cluster)")
        ray.init(logging_level="WARNING")
    try:
        nworkers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        staging = f".staging-{uuid.uuid4().hex[:12]}"
        try:
            index = _build(store, staging, input_dir, files, shas, hashes, config, nworkers, workers, say, t0)
        except BaseException:
            store.remove(store.path(staging))   # (a killed run's is removed by the next run's recover())
            raise
        say("publishing")
        publish(store, staging)
    finally:
        if started:
            ray.shutdown()
    summary = _summary_from_index(str(root), index, up_to_date=False)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _build(store: Store, staging: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
           hashes: dict[str, str], config: DataConfig, nworkers: int, cap: int | None, say, t0: float) -> dict:
    """Stages 2-4 into ROOT/<staging>/, index.json last; returns the index."""
    store.mkdir(store.path(staging, S.PIECES_DIR))
    store.mkdir(store.path(staging, S.SHARDS_DIR))
    records = _encode_all(store, staging, input_dir, files, shas, config, nworkers, cap, say)
    manifest, plans, stats = _plan(records, config)
    shardlist = _write_all(store, staging, plans, config, nworkers, say)
    stats["build"] = {"wall_s": round(time.perf_counter() - t0, 3), "workers": nworkers,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    splits = {s: {"shards": sum(1 for x in shardlist if x["split"] == s),
                  "samples": sum(x["nsamples"] for x in shardlist if x["split"] == s),
                  "pieces": sum(1 for m in manifest if m["split"] == s)} for s in S.SPLITS}
    index = S.build_index(shardlist, splits, stats=stats, write_back_programs=stats.pop("write_back_programs"), **hashes)
    store.write(store.path(staging, S.MANIFEST_NAME), "".join(json.dumps(m) + "\n" for m in manifest).encode())
    store.write(store.path(staging, S.SHARDS_DIR, S.INDEX_NAME), json.dumps(index, indent=1).encode())
    return index


def _check_config(c: DataConfig) -> None:
    problems = [f"{k} must be > 0, got {getattr(c, k)}" for k in ("shard_samples", "max_rows_per_bar") if getattr(c, k) <= 0]
    if not (0 <= c.val_fraction and 0 <= c.test_fraction and c.val_fraction + c.test_fraction < 1):
        problems.append(f"val and test fractions must be >= 0 with a sum < 1, got {c.val_fraction} and {c.test_fraction}")
    if problems:
        raise MahlerError("invalid data config: " + "; ".join(problems))


def _encode_all(store: Store, staging: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
                config: DataConfig, nworkers: int, cap: int | None, say) -> list[dict]:
    """Stage 2. Returns one record per input file, in path order (duplicates included)."""
    import ray
    from ray.data import DataContext, TaskPoolStrategy

    first_of: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for rel, _ in files:   # sorted by path: the first of identical files is the one encoded
        sha = shas[rel]
        if sha in first_of:
            duplicates[rel] = first_of[sha]
        else:
            first_of[sha] = rel
    # An explicit list (not the folder), so that Ray reads exactly the files that were hashed, in
    # the order that balances the tasks (schedule.py: big tasks first, none too big for one CPU).
    todo = [(size, rel) for rel, size in files if rel not in duplicates]
    order, nblocks = plan_encode_tasks([size for size, _ in todo], nworkers)
    paths = [f"{input_dir}/{todo[i][1]}" for i in order]
    say(f"encoding {len(paths)} files ({len(duplicates)} duplicates skipped) in {nblocks} tasks, "
        f"{nworkers} at a time" + ("" if cap else " (every CPU of the cluster)"))

    # Uncapped, the read is fused into the encode: one operator feeding take_all, nothing
    # downstream to reserve CPUs for, and with reservation on Ray Data holds back half the CPUs
    # until the first task returns (measured: on 2 CPUs the second task starts only when the first
    # ends, ~1 s lost per run). Capped, read and encode are two operators: the reservation (and
    # the budget backpressure that comes with it) keeps the reads from running ahead of the encode.
    ctx = DataContext.get_current()
    saved = ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.op_resource_reservation_enabled
    ctx.max_errored_blocks, ctx.enable_progress_bars = 0, say.enabled
    ctx.op_resource_reservation_enabled = saved[2] and cap is not None
    try:
        ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=store.fs, override_num_blocks=nblocks)
        ds = ds.map_batches(_encode_batch, batch_size=None, batch_format="numpy",
                            num_cpus=1, **({"compute": TaskPoolStrategy(size=cap)} if cap else {}),
                            fn_kwargs={"store": store, "input_dir": input_dir, "max_rows": config.max_rows_per_bar,
                                       "pieces_dir": store.path(staging, S.PIECES_DIR)})
        found = [json.loads(r["record"]) for r in ds.take_all()]
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.op_resource_reservation_enabled = saved

    by_path = {r["path"]: r for r in found}
    if len(by_path) != len(found) or set(by_path) != {rel for _, rel in todo}:
        raise MahlerError("the encoded files do not match the input listing (did the input change during "
                          "preprocessing?); run again")
    changed = [rel for rel, r in by_path.items() if r["sha256"] != shas[rel]]
    if changed:
        raise MahlerError(f"{len(changed)} input files changed during preprocessing (e.g. {changed[0]}); run again")
    sizes = dict(files)
    for rel, first in duplicates.items():
        rec = _empty_record(rel, shas[rel], sizes[rel])
        rec["reason"] = f"duplicate of {first}"
        by_path[rel] = rec
    return [by_path[rel] for rel, _ in files]


def _plan(records: list[dict], config: DataConfig) -> tuple[list[dict], dict[str, list], dict]:
    """Stage 3: the manifest (records with their split), the shard plan per split and corpus stats."""
    from mahler_dist.music.instruments import DEFAULT_WRITE_BACK, PROGRAM_TO_CLASS
    from mahler_dist.music.vocab import NUM_INSTRUMENTS

    manifest, rows_hist = [], np.zeros(0, np.int64)
    reasons, dropped, merged, metres = Counter(), Counter(), Counter(), Counter()
    instruments = np.zeros(NUM_INSTRUMENTS, np.int64)
    programs_by_class: dict[int, Counter] = {}
    per_split: dict[str, list[tuple[str, int]]] = {s: [] for s in S.SPLITS}
    internal = 0
    for rec in records:
        rec = dict(rec)
        hist = rec.pop("_rows_hist", None)
        internal += bool(rec.pop("_internal_error", False))
        if rec["status"] == "ok":
            rec["split"] = S.split_of(rec["piece"], config)
            if rec["samples"]:
                per_split[rec["split"]].append((rec["piece"], rec["samples"]))
            hist = np.asarray(hist, np.int64)
            if len(hist) > len(rows_hist):
                rows_hist = np.pad(rows_hist, (0, len(hist) - len(rows_hist)))
            rows_hist[: len(hist)] += hist
            dropped.update(rec["dropped"])
            merged.update(rec["merged"])
            metres.update(rec["metres"])
            for cls, n in rec["instruments"].items():
                instruments[int(cls)] += n
            if rec["split"] == "train":
                for program, n in rec["programs"].items():
                    programs_by_class.setdefault(PROGRAM_TO_CLASS[int(program)], Counter())[int(program)] += n
        else:
            reasons[reason_kind(rec["reason"])] += 1
        manifest.append(rec)
    ok = [m for m in manifest if m["status"] == "ok"]
    ids = Counter(m["piece"] for m in ok)
    if len(ids) != len(ok):   # 64-bit id prefixes of different contents: never seen, but never silent
        clash = [m["path"] for m in ok if ids[m["piece"]] > 1]
        raise MahlerError(f"piece id collision between different files: {', '.join(clash[:4])}")
    write_back = list(DEFAULT_WRITE_BACK)
    for cls, counts in programs_by_class.items():
        write_back[cls] = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    stats = {
        "files": {"total": len(manifest), "ok": len(ok), "rejected": len(manifest) - len(ok), "internal_errors": internal},
        "rejected_reasons": dict(reasons.most_common()),
        "pieces": len(ok), "bars": sum(m["bars"] for m in ok), "samples": sum(m["samples"] for m in ok),
        "bars_too_long": sum(m["bars_too_long"] for m in ok), "rows": sum(m["rows"] for m in ok),
        "notes": {"source": sum(m["notes_in"] for m in manifest), "kept": sum(m["notes_kept"] for m in ok),
                  "parts": sum(m["note_parts"] for m in ok)},
        "dropped_notes": dict(dropped.most_common()),
        "merged_notes": dict(merged.most_common()),
        "rows_per_bar": rows_hist.tolist(),
        "metres": dict(metres.most_common()),
        "instrument_classes": instruments.tolist(),
        "programs_by_class": {str(c): {str(p): n for p, n in sorted(v.items())} for c, v in sorted(programs_by_class.items())},
        "max_rows_per_bar": config.max_rows_per_bar,
        "write_back_programs": write_back,
    }
    plans = {s: S.plan_shards(per_split[s], config.shard_samples) for s in S.SPLITS}
    return manifest, plans, stats


def _write_all(store: Store, staging: str, plans: dict[str, list], config: DataConfig, nworkers: int,
               say) -> list[dict]:
    """Stage 4: one Ray task per shard, at most `nworkers` in flight; returns the wids shard list."""
    import ray
    from tqdm import tqdm

    jobs = [(split, i, items) for split in S.SPLITS for i, items in enumerate(plans[split])]
    say(f"writing {len(jobs)} shards")
    task = ray.remote(num_cpus=1)(write_shard)
    pieces_dir = store.path(staging, S.PIECES_DIR)
    results: dict = {}
    pending: dict = {}
    bar = tqdm(total=len(jobs), desc="shards", unit="shard", disable=not say.enabled, file=sys.stderr)
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < nworkers:
            split, i, items = queue.pop(0)
            path = store.path(staging, S.SHARDS_DIR, S.shard_name(split, i))
            ref = task.remote(store, pieces_dir, path, [tuple(x) for x in items], config.max_rows_per_bar)
            pending[ref] = (split, i, items)
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            split, i, items = pending.pop(ref)
            res = ray.get(ref)
            expected = sum(x.stop - x.start for x in items)
            if res["nsamples"] != expected:
                raise RuntimeError(f"shard {S.shard_name(split, i)}: wrote {res['nsamples']} samples, planned {expected}")
            results[(split, i)] = res
            bar.update(1)
    bar.close()
    return [{"url": S.shard_name(split, i), "nsamples": results[(split, i)]["nsamples"], "split": split,
             "filesize": results[(split, i)]["filesize"], "rows": results[(split, i)]["rows"]}
            for split, i, _ in jobs]


# --------------------------------------------------------------------------------------------------
# Stage 5: publish, and recovery from killed runs


#: What a run publishes, in the order it is moved in; shards/ (with index.json) goes last.
PUBLISHED = (S.PIECES_DIR, S.MANIFEST_NAME, S.SHARDS_DIR)


def publish(store: Store, staging: str) -> None:
    """Swap a complete staging folder's entries into ROOT. Idempotent, so a swap interrupted at any
    point is finished by calling it again (recover() does). Old entries go to a trash folder first;
    shards/ goes out first and comes in last, so a visible shards/index.json always describes the
    manifest and pieces beside it."""
    trash = store.path(f".trash-{uuid.uuid4().hex[:12]}")
    store.mkdir(trash)
    if store.exists(store.path(staging, S.SHARDS_DIR)) and store.exists(store.path(S.SHARDS_DIR)):
        store.fs.move(store.path(S.SHARDS_DIR), f"{trash}/{S.SHARDS_DIR}")
    for name in PUBLISHED:
        src = store.path(staging, name)
        if not store.exists(src):
            continue   # already moved by an interrupted swap
        if store.exists(store.path(name)):
            store.fs.move(store.path(name), f"{trash}/{name}")
        store.fs.move(src, store.path(name))
    store.remove(store.path(staging))
    store.remove(trash)


def recover(store: Store, say) -> None:
    """Before a run: finish a swap that a killed run left half done (its staging folder holds
    shards/index.json, written only when everything else was complete), then delete leftovers of
    killed runs (incomplete staging folders, trash)."""
    names = store.children(store.base)
    complete = [n for n in names if n.startswith(".staging-") and store.exists(store.path(n, S.SHARDS_DIR, S.INDEX_NAME))]
    if complete:
        latest = max(complete, key=lambda n: store.info(store.path(n, S.SHARDS_DIR, S.INDEX_NAME)).mtime_ns or 0)
        say(f"finishing the interrupted publication of {latest}")
        publish(store, latest)
    for n in store.children(store.base):
        if n.startswith((".staging-", ".trash-")):
            say(f"removing {n} (left by an interrupted run)")
            store.remove(store.path(n))


# --------------------------------------------------------------------------------------------------
# Helpers


class _Say:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"mahler preprocess [{time.perf_counter() - self.t0:6.1f} s]: {msg}", file=sys.stderr, flush=True)


def reason_kind(reason: str | None) -> str:
    """A rejection reason without its particulars (for the summary's top reasons)."""
    reason = reason or "unknown"
    if reason.startswith("duplicate of "):
        return "duplicate"
    if reason.startswith("internal error"):
        return "internal error"
    kind = re.split(r" \(|: ", reason, maxsplit=1)[0]
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", kind)


def _read_index(store: Store) -> dict | None:
    path = store.path(S.SHARDS_DIR, S.INDEX_NAME)
    if not store.exists(path):
        return None
    try:
        return json.loads(store.read(path))
    except (OSError, ValueError):
        return None


def _summary_from_index(root: str, index: dict, up_to_date: bool) -> PreprocessSummary:
    st = index["stats"]
    return PreprocessSummary(
        root=root, up_to_date=up_to_date, files=st["files"]["total"], ok=st["files"]["ok"],
        rejected=st["files"]["rejected"], internal_errors=st["files"].get("internal_errors", 0),
        top_reasons=list(st["rejected_reasons"].items()), pieces=st["pieces"], bars=st["bars"],
        bars_too_long=st["bars_too_long"], notes_in=st["notes"]["source"],
        samples={s: v["samples"] for s, v in index["splits"].items()},
        shards={s: v["shards"] for s, v in index["splits"].items()},
        wall_s=st.get("build", {}).get("wall_s", 0.0), workers=st.get("build", {}).get("workers", 0))


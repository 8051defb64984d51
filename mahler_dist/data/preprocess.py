"""`mahler preprocess ROOT`: a folder of MIDI files -> a build of WebDataset shards, manifest and
pieces (Ray Data), published under ROOT/builds/<build>/ and pointed to by ROOT/CURRENT.

    summary = preprocess("ROOT", DataConfig(), workers=None, force=False)
    print(summary)

Stages (each runs on whatever cluster `ray.init()` reaches; an embedded local Ray otherwise):

0. lock   take ROOT/.lock (publish.RootLock: a second run waits `wait_s` or fails naming the
          owner), then remove what killed runs left (publish.recover);
1. list   ROOT/input/**.mid|.midi on the driver and hash every file (sha256): the input hash
          decides whether the output is up to date, and files with identical bytes are recorded as
          duplicates without being encoded; files over data.max_file_bytes are rejected unread;
2. encode a Ray Data pipeline, read_binary_files -> map_batches(encode): each task parses,
          quantises and windows its files (build_tasks.encode_record, bounded before the work by
          the data limits), writes pieces/<piece>.npz and returns one small manifest record per
          file. A file that cannot be read becomes a rejected record (reason kept); an unexpected
          exception in the representation code does too, flagged as an internal error (a bug to
          fix, listed in the summary), and so does a MemoryError, so one odd file never fails the
          corpus. Blocks themselves never fail silently: DataContext.max_errored_blocks stays 0.
          The files are listed in the order schedule.py plans, so that the equal-count tasks
          balance by bytes;
3. plan   on the driver, from the records alone: split by piece hash, samples sorted by key, cut into
          shards of `shard_samples` (shards.plan_shards) - so the shards are the same whatever the
          number of nodes, tasks or their timing;
4. write  one Ray task per shard loads its pieces' rows and writes the tar (TarShardWriter: the bytes of
          webdataset.TarWriter with a fixed mtime, so a rebuild gives byte-identical shards). Memory
          stays bounded by one shard's pieces per task and one small record per file on the driver,
          whatever the corpus size; the sample arrays never travel through the object store or the
          driver (write_webdataset would need them all materialised and sorted first);
5. publish manifest.jsonl, then shards/index.json (last) into the build's folder, then one write
          of ROOT/CURRENT (publish.publish). A run killed before that leaves the previous build
          current and untouched; its partial build is removed by the next run.

Resources: encode and shard tasks are plain tasks of 1 CPU each (no actors), so nothing holds a CPU
that another stage waits for: no deadlock on 2 CPUs, and tasks spread over every node of a cluster.
By default the read is fused into the encode task (one task reads and encodes its files) and every
CPU of the cluster is used; `workers=N` caps the concurrency with TaskPoolStrategy(size=N), which
Ray Data does not fuse with the read (the file bytes then pass through the object store). On a
multi-node cluster ROOT must be shared storage or a URI (s3://, gs://), as for any Ray Data write:
tasks write where they run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from mahler_dist.config import DATA_LIMITS, DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.build_tasks import MAX_BARS, TarShardWriter, empty_record, encode_batch, encode_record, write_shard
from mahler_dist.data.publish import RootLock, build_dir, new_build_id, publish, recover
from mahler_dist.data.schedule import plan_encode_tasks
from mahler_dist.storage import Store
from mahler_dist.errors import MahlerError

__all__ = ["PreprocessSummary", "Store", "TarShardWriter", "encode_record", "preprocess", "reason_kind", "write_shard"]

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
    contexts_too_long: int = 0
    repaired: int = 0
    notes_in: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    workers: int = 0
    build: str = ""

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
                 f"  pieces:  {self.pieces:,}   bars: {self.bars:,} ({self.bars_too_long} too long, "
                 f"{self.contexts_too_long} with a too-long context, not written)",
                 f"  repairs: {self.repaired} files read after a repair (see 'repairs' in {S.MANIFEST_NAME})",
                 f"  samples: {splits} (train / val / test) in {shards} shards",
                 f"  output:  build {self.build} ({S.join(self.root, S.CURRENT_NAME)} -> "
                 f"{S.BUILDS_DIR}/{self.build}/: {S.SHARDS_DIR}/, {S.LENGTHS_DIR}/, {S.PIECES_DIR}/, {S.MANIFEST_NAME})"]
        if self.internal_errors:
            lines.append(f"  WARNING: {self.internal_errors} files hit an internal error (a bug in the "
                         f"representation code): see 'internal error' rows in {S.MANIFEST_NAME}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The pipeline


def preprocess(root: str | os.PathLike, data_config: DataConfig | None = None, *, workers: int | None = None,
               force: bool = False, progress: bool = True, wait_s: float = 0.0,
               address: str | None = None) -> PreprocessSummary:
    """ROOT/input/**.mid|.midi -> ROOT/builds/<build>/{manifest.jsonl, shards/, lengths/, pieces/}, published
    by ROOT/CURRENT (see the module docstring and publish.py).

    `workers` caps the parallel encode/write tasks (default: every CPU of the cluster). Does nothing
    when ROOT's current build holds the output of the same input, config and representation code,
    unless `force`. Another run on ROOT is waited for up to `wait_s` seconds, then refused with a
    MahlerError naming it. Runs on the Ray that `ray_runtime(address)` enters: the initialised one,
    `address` or RAY_ADDRESS, else a new local Ray it stops afterwards.
    """
    t0 = time.perf_counter()
    config = data_config or DataConfig()
    _check_config(config)
    say = _Say(progress)
    store = Store(root)
    input_dir = store.path(S.INPUT_DIR)
    if not store.exists(input_dir):
        raise MahlerError(f"{root}: no input folder {S.join(root, S.INPUT_DIR)} (put the MIDI files there)")
    build = new_build_id()
    with RootLock(store, build, wait_s, say) as lock:
        recover(store, say, writing=build)
        return _run_locked(store, str(root), input_dir, build, lock, config, workers, force, say, t0,
                           address)


def _run_locked(store: Store, root: str, input_dir: str, build: str, lock: RootLock, config: DataConfig,
                workers: int | None, force: bool, say, t0: float, address: str | None = None
                ) -> PreprocessSummary:
    files = store.list_midi(input_dir)
    if not files:
        raise MahlerError(f"{S.join(root, S.INPUT_DIR)}: no .mid or .midi files found")
    say(f"hashing {len(files)} input files")
    with ThreadPoolExecutor(8) as pool:
        shas = dict(zip((r for r, _ in files), pool.map(lambda f: store.sha256(f"{input_dir}/{f[0]}"), files)))
    hashes = {"config_hash": S.config_hash(config), "input_hash": S.input_hash(shas.items()),
              "encoder_hash": S.encoder_hash()}
    old = _current_index(root)
    if old is not None and not force and all(old.get(k) == v for k, v in hashes.items()):
        return _summary_from_index(root, old, up_to_date=True)

    import ray

    from mahler_dist.ray_runtime import ray_runtime

    with ray_runtime(address, say=say, logging_level="WARNING"):
        nworkers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        folder = build_dir(store, build)
        try:
            index, index_bytes = _build(store, folder, input_dir, files, shas, hashes, build, config,
                                        nworkers, workers, say, t0)
            say(f"publishing build {build}")
            publish(store, build, index_bytes, lock)
        except BaseException:
            store.remove(folder)   # (a killed run's is removed by the next run's recover())
            raise
    summary = _summary_from_index(root, index, up_to_date=False)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _build(store: Store, folder: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
           hashes: dict[str, str], build: str, config: DataConfig, nworkers: int, cap: int | None, say,
           t0: float) -> tuple[dict, bytes]:
    """Stages 2-4 into the build's folder, index.json last; returns the index and its bytes."""
    store.mkdir(f"{folder}/{S.PIECES_DIR}")
    store.mkdir(f"{folder}/{S.SHARDS_DIR}")
    store.mkdir(f"{folder}/{S.LENGTHS_DIR}")
    records = _encode_all(store, folder, input_dir, files, shas, config, nworkers, cap, say)
    manifest, plans, stats = _plan(records, config)
    shardlist = _write_all(store, folder, plans, config, nworkers, say)
    stats["build"] = {"wall_s": round(time.perf_counter() - t0, 3), "workers": nworkers,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    splits = {s: {"shards": sum(1 for x in shardlist if x["split"] == s),
                  "samples": sum(x["nsamples"] for x in shardlist if x["split"] == s),
                  "pieces": sum(1 for m in manifest if m["split"] == s)} for s in S.SPLITS}
    index = S.build_index(shardlist, splits, stats=stats, write_back_programs=stats.pop("write_back_programs"),
                          build=build, data_config=dataclasses.asdict(config), **hashes)
    index_bytes = json.dumps(index, indent=1).encode()
    store.write(f"{folder}/{S.MANIFEST_NAME}", "".join(json.dumps(m) + "\n" for m in manifest).encode())
    store.write(f"{folder}/{S.SHARDS_DIR}/{S.INDEX_NAME}", index_bytes)
    return index, index_bytes


def _check_config(c: DataConfig) -> None:
    problems = [f"{k} must be > 0, got {getattr(c, k)}" for k in ("shard_samples", "max_rows_per_bar", *DATA_LIMITS)
                if getattr(c, k) <= 0]
    if c.max_bars > MAX_BARS:
        problems.append(f"max_bars must be at most {MAX_BARS} (sample keys hold 5 digits), got {c.max_bars}")
    if not (0 <= c.val_fraction and 0 <= c.test_fraction and c.val_fraction + c.test_fraction < 1):
        problems.append(f"val and test fractions must be >= 0 with a sum < 1, got {c.val_fraction} and {c.test_fraction}")
    if problems:
        raise MahlerError("invalid data config: " + "; ".join(problems))


def _encode_all(store: Store, folder: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
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
    too_large = {rel for rel, size in files if size > config.max_file_bytes and rel not in duplicates}
    todo = [(size, rel) for rel, size in files if rel not in duplicates and rel not in too_large]
    order, nblocks = plan_encode_tasks([size for size, _ in todo], nworkers)
    paths = [f"{input_dir}/{todo[i][1]}" for i in order]
    say(f"encoding {len(paths)} files ({len(duplicates)} duplicates, {len(too_large)} too large skipped) in {nblocks} tasks, "
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
        found = []
        if paths:
            ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=store.fs, override_num_blocks=nblocks)
            ds = ds.map_batches(encode_batch, batch_size=None, batch_format="numpy",
                                num_cpus=1, **({"compute": TaskPoolStrategy(size=cap)} if cap else {}),
                                fn_kwargs={"store": store, "input_dir": input_dir, "config": config,
                                           "pieces_dir": f"{folder}/{S.PIECES_DIR}"})
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
        rec = empty_record(rel, shas[rel], sizes[rel])
        rec["reason"] = f"duplicate of {first}"
        by_path[rel] = rec
    for rel in too_large:   # never read: the listing's size is enough
        rec = empty_record(rel, shas[rel], sizes[rel])
        rec["reason"] = f"file too large ({sizes[rel]:,} bytes > data.max_file_bytes {config.max_file_bytes:,})"
        by_path[rel] = rec
    return [by_path[rel] for rel, _ in files]


def _plan(records: list[dict], config: DataConfig) -> tuple[list[dict], dict[str, list], dict]:
    """Stage 3: the manifest (records with their split), the shard plan per split and corpus stats."""
    from mahler_dist.music.instruments import DEFAULT_WRITE_BACK, PROGRAM_TO_CLASS
    from mahler_dist.music.vocab import NUM_INSTRUMENTS

    manifest, rows_hist = [], np.zeros(0, np.int64)
    reasons, dropped, merged, moved, metres = Counter(), Counter(), Counter(), Counter(), Counter()
    instruments = np.zeros(NUM_INSTRUMENTS, np.int64)
    programs_by_class: dict[int, Counter] = {}
    per_split: dict[str, list[tuple[str, int]]] = {s: [] for s in S.SPLITS}
    internal = 0
    repairs = Counter()
    for rec in records:
        rec = dict(rec)
        hist = rec.pop("_rows_hist", None)
        internal += bool(rec.pop("_internal_error", False))
        repairs.update(reason_kind(r) for r in rec.get("repairs", ()))
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
            moved.update(rec.get("moved", {}))
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
        "bars_too_long": sum(m["bars_too_long"] for m in ok),
        "contexts_too_long": sum(m["contexts_too_long"] for m in ok), "rows": sum(m["rows"] for m in ok),
        "repairs": {"files": sum(1 for m in manifest if m.get("repairs")),
                    "files_ok": sum(1 for m in ok if m.get("repairs")), "kinds": dict(repairs.most_common())},
        "notes": {"source": sum(m["notes_in"] for m in manifest), "kept": sum(m["notes_kept"] for m in ok),
                  "parts": sum(m["note_parts"] for m in ok)},
        "dropped_notes": dict(dropped.most_common()),
        "merged_notes": dict(merged.most_common()),
        "moved_notes": dict(moved.most_common()),
        "rows_per_bar": rows_hist.tolist(),
        "metres": dict(metres.most_common()),
        "instrument_classes": instruments.tolist(),
        "programs_by_class": {str(c): {str(p): n for p, n in sorted(v.items())} for c, v in sorted(programs_by_class.items())},
        "max_rows_per_bar": config.max_rows_per_bar,
        "write_back_programs": write_back,
    }
    plans = {s: S.plan_shards(per_split[s], config.shard_samples) for s in S.SPLITS}
    return manifest, plans, stats


def _write_all(store: Store, folder: str, plans: dict[str, list], config: DataConfig, nworkers: int,
               say) -> list[dict]:
    """Stage 4: one Ray task per shard, at most `nworkers` in flight; returns the wids shard list."""
    import ray
    from tqdm import tqdm

    jobs = [(split, i, items) for split in S.SPLITS for i, items in enumerate(plans[split])]
    say(f"writing {len(jobs)} shards")
    task = ray.remote(num_cpus=1)(write_shard)
    pieces_dir = f"{folder}/{S.PIECES_DIR}"
    results: dict = {}
    pending: dict = {}
    bar = tqdm(total=len(jobs), desc="shards", unit="shard", disable=not say.enabled, file=sys.stderr)
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < nworkers:
            split, i, items = queue.pop(0)
            path = f"{folder}/{S.SHARDS_DIR}/{S.shard_name(split, i)}"
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


def _current_index(root: str) -> dict | None:
    """The current build's index, or None when there is none usable (never preprocessed, removed,
    unreadable or of another format: then the run rebuilds)."""
    try:
        return S.read_index(root)
    except (MahlerError, OSError, ValueError):
        return None


def _summary_from_index(root: str, index: dict, up_to_date: bool) -> PreprocessSummary:
    st = index["stats"]
    return PreprocessSummary(
        root=root, up_to_date=up_to_date, files=st["files"]["total"], ok=st["files"]["ok"],
        rejected=st["files"]["rejected"], internal_errors=st["files"].get("internal_errors", 0),
        top_reasons=list(st["rejected_reasons"].items()), pieces=st["pieces"], bars=st["bars"],
        bars_too_long=st["bars_too_long"], contexts_too_long=st.get("contexts_too_long", 0),
        repaired=st.get("repairs", {}).get("files", 0), notes_in=st["notes"]["source"],
        samples={s: v["samples"] for s, v in index["splits"].items()},
        shards={s: v["shards"] for s, v in index["splits"].items()},
        wall_s=st.get("build", {}).get("wall_s", 0.0), workers=st.get("build", {}).get("workers", 0),
        build=index.get("build", S.LEGACY_BUILD))


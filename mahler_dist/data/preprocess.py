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
2. encode stages.encode_all: a Ray Data pipeline, read_binary_files -> map_batches(encode): each
          task parses, quantises and windows its files (build_tasks.encode_record, bounded before
          the work by the data limits), writes pieces/<piece>.npz and returns one small manifest
          record per file. A file that cannot be read becomes a rejected record (reason kept); an
          unexpected exception in the representation code does too, flagged as an internal error (a
          bug to fix, listed in the summary), and so does a MemoryError, so one odd file never fails
          the corpus. Blocks themselves never fail silently: DataContext.max_errored_blocks stays 0.
          The files are listed in the order schedule.py plans, so that the equal-count tasks balance
          by bytes;
3. plan   corpus_plan.py, on the driver from the records alone: split by piece hash, samples sorted
          by key, cut into shards of `shard_samples` (shards.plan_shards) - so the shards are the
          same whatever the number of nodes, tasks or their timing;
4. write  stages.write_all: one Ray task per shard loads its pieces' rows and writes the tar
          (TarShardWriter: the bytes of webdataset.TarWriter with a fixed mtime, so a rebuild gives
          byte-identical shards). Memory stays bounded by one shard's pieces per task and one small
          record per file on the driver, whatever the corpus size; the sample arrays never travel
          through the object store or the driver (write_webdataset would need them all materialised
          and sorted first);
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
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from mahler_dist.config import DATA_LIMITS, DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.build_tasks import MAX_BARS
from mahler_dist.data.corpus_plan import plan_corpus
from mahler_dist.data.publish import RootLock, build_dir, new_build_id, publish, recover
from mahler_dist.data.stages import encode_all, write_all
from mahler_dist.data.summary import PreprocessSummary, summary_from_index
from mahler_dist.errors import MahlerError
from mahler_dist.storage import Store

__all__ = ["PreprocessSummary", "preprocess"]

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
        return summary_from_index(root, old, up_to_date=True)

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
    summary = summary_from_index(root, index, up_to_date=False)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _build(store: Store, folder: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
           hashes: dict[str, str], build: str, config: DataConfig, nworkers: int, cap: int | None, say,
           t0: float) -> tuple[dict, bytes]:
    """Stages 2-4 into the build's folder, index.json last; returns the index and its bytes."""
    store.mkdir(f"{folder}/{S.PIECES_DIR}")
    store.mkdir(f"{folder}/{S.SHARDS_DIR}")
    store.mkdir(f"{folder}/{S.LENGTHS_DIR}")
    records = encode_all(store, folder, input_dir, files, shas, config, nworkers, cap, say)
    manifest, plans, stats = plan_corpus(records, config)
    shardlist = write_all(store, folder, plans, config, nworkers, say)
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


# --------------------------------------------------------------------------------------------------
# Helpers


class _Say:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"mahler preprocess [{time.perf_counter() - self.t0:6.1f} s]: {msg}", file=sys.stderr, flush=True)


def _current_index(root: str) -> dict | None:
    """The current build's index, or None when there is none usable (never preprocessed, removed,
    unreadable or of another format: then the run rebuilds)."""
    try:
        return S.read_index(root)
    except (MahlerError, OSError, ValueError):
        return None

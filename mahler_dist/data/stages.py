"""The two Ray stages of preprocessing: encode (a Ray Data pipeline of read + encode tasks over the
input files, one manifest record back per file) and write (one Ray task per planned shard). The
driver-side order, locking and publishing are in preprocess.py; the per-task work in build_tasks.py."""

from __future__ import annotations

import json
import sys

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.build_tasks import empty_record, encode_batch, write_shard
from mahler_dist.data.schedule import plan_encode_tasks
from mahler_dist.errors import MahlerError
from mahler_dist.storage import Store


def encode_all(store: Store, folder: str, input_dir: str, files: list[tuple[str, int]], shas: dict[str, str],
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


def write_all(store: Store, folder: str, plans: dict[str, list], config: DataConfig, nworkers: int,
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

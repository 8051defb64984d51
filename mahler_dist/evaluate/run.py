"""`mahler evaluate NAME --root ROOT --split test`: how good a run's model is, fanned out on Ray.

1. the baselines are fitted on the run's own training split (one Ray task per shard, counts added);
2. every shard of the evaluated split (the run's ROOT, or `pieces`: another preprocessed ROOT such
   as a held-out corpus) is one task: the model's teacher-forced and free-running reconstruction
   (evaluate/recon.py) and the baselines' scores on the same bars (evaluate/baselines.py);
3. one task generates K pieces of L bars from the START context and K continuations of the split's
   pieces; their music statistics are compared with the split's real bars, and the training
   split's with the split's as the ceiling (evaluate/distributions.py, Yang & Lerch 2018);
4. the report (JSON) and its summary PNG go to ROOT/runs/NAME/eval/ and to the run's W&B run.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mahler_dist import storage
from mahler_dist.data.shards import parse_key, read_index, shard_urls
from mahler_dist.errors import MahlerError
from mahler_dist.generate.runs import resolve_checkpoint, run_dir
from mahler_dist.run_names import check_run_name

SPLITS = ("train", "val", "test")
TRAIN_BARS_FOR_CEILING = 4000   # training bars kept (seeded) to compare with the split's


@dataclass
class EvalReport:
    path: Path
    png: Path
    report: dict

    def __str__(self) -> str:
        r = self.report
        tf, fr = r["model"]["teacher_forced"], r["model"]["free_running"]
        base = r["baselines"]
        lines = [f"evaluated {r['run']} ({r['checkpoint']}) on {r['bars']} bars of the {r['split']} split "
                 f"of {r['data_root']} (build {r['build']}) in {r['seconds']:.0f} s",
                 "  teacher-forced pitch: NLL {:.3f} nats, accuracy {:.3f} (bigram {:.3f} / {:.3f}, unigram {:.3f} / {:.3f})"
                 .format(tf["nll_per_event"]["pitch"], tf["accuracy"]["pitch"],
                         base["bigram"]["nll_per_event"]["pitch"], base["bigram"]["accuracy"]["pitch"],
                         base["unigram"]["nll_per_event"]["pitch"], base["unigram"]["accuracy"]["pitch"]),
                 "  free-running note F1 {:.3f} (copy the previous bar {:.3f}), onset F1 {:.3f} ({:.3f})"
                 .format(fr["note_f1_micro"], base["copy_previous_bar"]["note_f1_micro"],
                         fr["onset_f1_micro"], base["copy_previous_bar"]["onset_f1_micro"]),
                 f"  KL {r['model']['kl_bits_per_bar']:.2f} bits/bar, {r['model']['active_units']} of "
                 f"{r['model']['latent_dims']} latent units active, ELBO {r['model']['elbo_per_bar']:.2f} nats/bar"]
        if r.get("generation"):
            oa = r["generation"]["from_start"]["oa"]
            ceiling = r["generation"]["ceiling_train_vs_split"]["oa"]
            lines.append("  generated vs real OA: " + ", ".join(
                f"{k} {v:.2f} (train {ceiling.get(k, math.nan):.2f})" for k, v in oa.items()))
        lines += [f"  report: {self.path}", f"  summary: {self.png}"]
        return "\n".join(lines)


def _urls(root: str | Path, split: str, index: dict) -> list[str]:
    sizes = {s["url"]: s.get("nsamples", 1) for s in index["shardlist"]}
    return [u for u in shard_urls(root, split, index=index) if sizes.get(u.rsplit("/", 1)[-1], 1) > 0]


def evaluate(name: str, root: str | Path, split: str = "test", model: str = "best", pieces: str | Path | None = None,
             *, generated: int = 16, bars: int = 16, max_bars: int = 20_000, seed: int = 0,
             address: str | None = None, log_wandb: bool = True, progress: bool = True) -> EvalReport:
    """Evaluate run NAME's checkpoint `model` on `split` of `pieces` (default: the run's ROOT)."""
    import ray

    from mahler_dist.ray_runtime import ray_runtime

    check_run_name(name)
    if split not in SPLITS:
        raise MahlerError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    for label, n, hi in (("--generated", generated, 1024), ("--bars", bars, 256), ("--max-bars", max_bars, 10**7)):
        if not 0 <= n <= hi:
            raise MahlerError(f"{label} must be in 0..{hi}, got {n}")
    root = storage.as_root(root)
    run = run_dir(root, name)
    info = resolve_checkpoint(run, model)
    data_root = storage.as_root(pieces) if pieces else root
    # the build the run trained on: its splits are the run's (a newer build may assign pieces
    # to other splits, and its test split could then hold bars the model trained on)
    train_index = read_index(root, run_build(run, root, say=print if progress else None))
    index = read_index(data_root) if pieces else train_index
    train_urls, urls = _urls(root, "train", train_index), _urls(data_root, split, index)
    if not urls:
        raise MahlerError(f"{data_root}: build {index['build']} has no {split} bars to evaluate "
                          f"(preprocess with data.{split}_fraction > 0, or pick another --split)")
    if not train_urls:
        raise MahlerError(f"{root}: build {train_index['build']} has no training bars to fit the baselines on")
    sizes = {s["url"]: int(s.get("nsamples", 0)) for s in index["shardlist"]}
    counts = [sizes.get(u.rsplit("/", 1)[-1], 0) for u in urls]
    # the bound comes before the work: whole shards until max_bars is reached
    keep = int(np.searchsorted(np.cumsum(counts), max_bars, side="right")) or 1
    urls, counts = urls[:keep], counts[:keep]
    say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    t0 = time.time()

    with ray_runtime(address, configure_logging=False, log_to_driver=True):
        from mahler_dist.evaluate import tasks

        say(f"fitting the baselines on {len(train_urls)} training shards of {root}")
        fitted = tasks.merge_fits(ray.get([tasks.fit_shard.remote(u, seed) for u in train_urls]))
        say(f"evaluating {info.name} on {sum(counts)} bars in {len(urls)} {split} shards of {data_root}")
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        fitted_ref = ray.put(fitted.counts)
        parts = ray.get([tasks.eval_shard.remote(str(root), name, info.name, u, fitted_ref, seed, int(f))
                         for u, f in zip(urls, firsts)])
        partial, scores, real = tasks.merge_evals(parts)
        generation = None
        if generated and bars:
            say(f"generating {generated} pieces of {bars} bars from the START context and {generated} continuations")
            pieces_real = _pieces(real)
            generation = ray.get(tasks.generation_stats.remote(
                str(root), name, info.name, pieces_real, _pieces(fitted.train_bars), generated, bars, seed))

    report = {"run": name, "checkpoint": info.name, "split": split, "data_root": str(data_root),
              "build": index["build"], "train_build": train_index["build"], "bars": partial.bars,
              "seconds": time.time() - t0, "seed": seed,
              "model": partial.summary(), "baselines": scores.summary(), "baselines_fitted_on_bars": fitted.counts.bars,
              "generation": generation}
    # written here, then copied beside the run when it lives on an object store
    local_run = storage.cache_dir(str(run)) if storage.is_uri(run) else Path(run)
    out_dir = local_run / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{split}-{info.name}" + (f"-{index['build']}" if pieces else "")
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(report, indent=1, default=_jsonable))
    from mahler_dist.evaluate.summary_plot import summary_png

    png = summary_png(report, out_dir / f"{stem}.png")
    if storage.is_uri(run):
        for file in (path, png):
            storage.write_bytes(storage.join(run, "eval", file.name), file.read_bytes())
        say(f"report copied to {storage.join(run, 'eval', path.name)}")
    if log_wandb:
        _log_wandb(local_run, name, report, png)
    return EvalReport(path, png, report)


def run_build(run: Path | str, root: Path | str, say=None) -> str | None:
    """The build id the run last trained on (its data.json), if that build is still in ROOT;
    None (the current build) otherwise, with a note."""
    from mahler_dist.data.shards import build_root

    try:
        build = json.loads(storage.read_bytes(storage.join(run, "data.json")))["build"]
    except (OSError, ValueError, KeyError):
        return None       # a run from before data.json: the current build
    try:
        if storage.is_dir(build_root(root, build)):
            return build
    except ValueError:    # not a build id: data.json was edited by hand
        pass
    if say:
        say(f"note: build {build} that run {str(run).rsplit('/', 1)[-1]} trained on is gone from {root}; using the current build")
    return None


def _pieces(bars: list[tuple[str, np.ndarray, str]]) -> list[list[tuple[np.ndarray, str]]]:
    """(key, rows, metre) bars -> pieces (lists of (rows, metre) in bar order)."""
    by_piece: dict[str, list] = defaultdict(list)
    for key, rows, metre in bars:
        piece, bar = parse_key(key)
        by_piece[piece].append((bar, rows, metre))
    return [[(r, m) for _, r, m in sorted(v, key=lambda t: t[0])] for _, v in sorted(by_piece.items())]


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value)}")


def _log_wandb(run: Path, name: str, report: dict, png: Path) -> None:
    """The report's numbers and its picture in the run's own W&B run (resumed by its id)."""
    from mahler_dist.train.tracking import wandb_mode, wandb_run_id

    mode = wandb_mode()
    if mode == "disabled":
        return
    import wandb

    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[prefix] = value

    walk(f"eval/{report['split']}", {k: report[k] for k in ("model", "baselines", "generation") if report.get(k)})
    wb = wandb.init(project="mahler-dist", name=name, id=wandb_run_id(name), resume="allow", dir=str(run),
                    mode=mode, reinit="finish_previous")
    try:
        wb.log({**flat, f"eval/{report['split']}/summary": wandb.Image(str(png))})
        wb.summary[f"eval/{report['split']}/report"] = json.dumps(report, default=_jsonable)[:100_000]
    finally:
        wb.finish()

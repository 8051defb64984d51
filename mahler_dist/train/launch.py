"""Start, resume and stop a training run: `mahler train NAME --root ROOT --config CONFIG`.

The run NAME is the Ray Train run name under ROOT/runs, so running the same command again
resumes from the latest checkpoint (Ray Train V2 finds the run's snapshot there); `restart`
deletes the run first. On an object-store ROOT (s3://, gs://) Ray Train writes the checkpoints
there itself; the driver works in a local copy of the run's small files (config.yaml, data.json,
metrics.jsonl: mahler_dist/storage.py's cache), fetched at the start and copied back as they change,
so a run resumes from any machine that reaches the bucket. `FailureConfig` restarts dead workers from the latest checkpoint.
Ctrl-C once: the workers finish the epoch, checkpoint and stop; twice: stop now.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from mahler_dist import storage
from mahler_dist.config import Config, config_from_dict, load_config, resolve_config_path, save_config
from mahler_dist.generate.runs import list_checkpoints
from mahler_dist.model.checkpoint import checkpoint_config
from mahler_dist.data.shards import read_index, shard_urls
from mahler_dist.errors import ConfigError, MahlerError
from mahler_dist.ray_runtime import ray_runtime
from mahler_dist.run_names import check_run_name  # the one rule (train, generate, serve)
from mahler_dist.train.loop import STOP_ACTOR_NAMESPACE, train_loop_per_worker
from mahler_dist.train.tracking import TrackingCallback, read_metrics



#: The run folder's files the driver keeps a local copy of (the rest is Ray Train's or W&B's).
RUN_FILES = ("config.yaml", "data.json", "metrics.jsonl")


def split_urls(root: Path | str, split: str, index: dict) -> list[str]:
    """The non-empty shard files of a split, all of the one build `index` describes (the run pins
    the build it resolved once, so a preprocess publishing meanwhile cannot mix two builds)."""
    sizes = {s["url"]: s.get("nsamples", 1) for s in index["shardlist"]}
    return [u for u in shard_urls(root, split, index=index) if sizes.get(u.rsplit("/", 1)[-1], 1) > 0]


@ray.remote(num_cpus=0)
class StopFlag:
    """Set by the driver on the first Ctrl-C; read by rank 0 at the end of every epoch."""

    def __init__(self):
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


@dataclass
class TrainSummary:
    name: str
    run_dir: Path
    epochs_done: int
    stopped_early: bool
    best_checkpoint: str | None
    metrics: dict
    seconds: float

    def __str__(self) -> str:
        how = "stopped after" if self.stopped_early else "finished"
        val = self.metrics.get("val_loss")
        lines = [f"run {self.name}: {how} epoch {self.epochs_done} in {self.seconds:.0f} s",
                 f"  train loss {self.metrics.get('train_loss', float('nan')):.4f}"
                 + (f", validation loss {val:.4f}" if val is not None else " (no validation split)"),
                 f"  best checkpoint: {self.best_checkpoint}"
                 + (" (by validation loss)" if val is not None else " (by training loss)"),
                 f"  metrics: {self.run_dir / 'metrics.jsonl'}"]
        if self.stopped_early:
            lines.append("  run the same command again to continue from the last checkpoint")
        return "\n".join(lines)


def latest_checkpoint(run: Path | str) -> Path | str | None:
    """The run's checkpoint with the highest step (the epoch-end one at a tie)."""
    found = list_checkpoints(run)
    return found[-1].path if found else None


def check_architecture(config: Config, run_dir: Path, run: Path | str | None = None) -> None:
    """A resumed run's architecture is its checkpoint's. An edited model.* key in the run's
    config.yaml would not load into the saved weights: say which keys, before any worker starts.
    `run`: where the checkpoints are (run_dir itself unless the run is on an object store)."""
    ckpt = latest_checkpoint(run_dir if run is None else run)
    if ckpt is None:
        return
    saved = checkpoint_config(ckpt).get("model", {})
    wanted = config.to_dict()["model"]
    changed = [f"model.{k}: {saved[k]!r} in the checkpoint, {wanted.get(k)!r} in config.yaml"
               for k in sorted(saved) if saved[k] != wanted.get(k)]
    if changed:
        listing = "\n  - ".join(changed)
        raise ConfigError(f"run {run_dir.name} resumes from {str(ckpt).rsplit('/', 1)[-1]}, whose architecture differs from "
                          f"{run_dir / 'config.yaml'}:\n  - {listing}\nthe weights only fit the checkpoint's "
                          "architecture: undo these edits, or start over with --restart")


def resolve_run_config(run_dir: Path, config_arg: str | None, epochs: int | None,
                       loader_workers: int | None = None) -> Config:
    """A new run takes --config; a resumed run keeps its saved config.yaml (where a user may edit
    training keys, not the architecture: check_architecture), with only --epochs and
    --loader-workers (how this machine feeds its GPU, not what is trained) applied on top."""
    saved = run_dir / "config.yaml"
    if saved.exists():
        config = load_config(saved)
        if config_arg is not None:
            wanted = load_config(resolve_config_path(config_arg))
            wanted.train.epochs = config.train.epochs
            wanted.data = config.data   # the run's data section is its build's (record_data), not --config's
            if wanted.to_dict() != config.to_dict():
                print(f"note: resuming {run_dir.name} with its saved config ({saved}); "
                      "--config differs and is ignored (use --restart to start over with it)")
    else:
        config = load_config(resolve_config_path(config_arg))
    if epochs is not None:
        if epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {epochs}")
        config.train.epochs = epochs
    if loader_workers is not None:
        if loader_workers < 0:
            raise ConfigError(f"--loader-workers must be >= 0, got {loader_workers}")
        config.train.loader_workers = loader_workers
    return config


def record_data(config: Config, run_dir: Path, root: Path | str, index: dict) -> Config:
    """The run's config records the data config its build was made with (not the defaults or the
    --config's, which may differ), and data.json which build of which ROOT each start read."""
    made_with = index.get("data_config")
    if made_with is not None:
        if made_with != dataclasses.asdict(config.data):
            print(f"note: data settings are build {index['build']}'s (as preprocessed), not the config's")
        config = config_from_dict({**config.to_dict(), "data": made_with},
                                  f"the run's config with the data config of {root} build {index['build']}")
    path = run_dir / "data.json"
    history = json.loads(path.read_text())["starts"] if path.exists() else []
    if history and history[-1]["build"] != index["build"]:
        print(f"note: run {run_dir.name} continues on build {index['build']} (it last read build "
              f"{history[-1]['build']}); a changed plan restarts the current epoch")
    history.append({"root": str(root), "build": index["build"], "splits": index.get("splits"),
                    "time": time.time()})
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"build": index["build"], "starts": history}, indent=1))
    return config


def train(name: str, root: str | Path, config: str | None = None, *, workers: int = 1, gpus: bool = False,
          cpus_per_worker: float | None = None, loader_workers: int | None = None,
          epochs: int | None = None, restart: bool = False,
          yes: bool = False, max_failures: int = 3,
          placement: str = "PACK", observers: Sequence = (), address: str | None = None) -> TrainSummary:
    """Train or resume run NAME. `observers` go to every worker (see train/loop.py): tests use
    them to record the bars each step saw or to kill a worker at a given step."""
    check_run_name(name)
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise MahlerError(f"--cpus-per-worker must be > 0, got {cpus_per_worker}")
    remote = storage.is_uri(root)
    root = storage.as_root(root)
    run = storage.child(root, "runs", name)                                       # Ray Train's run folder
    run_dir = storage.cache_dir(run) / name if remote else run                    # the driver's working copy
    if restart and storage.is_dir(run):
        if not yes and not _confirm(f"delete run {run} and start over?"):
            raise MahlerError("restart cancelled")
        storage.Store(run).remove(storage.Store(run).base)
    if remote:
        fetch_run_files(run, run_dir)
    index = read_index(root)   # resolves ROOT/CURRENT once: the run reads this build only
    train_urls, val_urls = split_urls(root, "train", index), split_urls(root, "val", index)
    if not train_urls:
        raise MahlerError(f"{root}: build {index['build']} has no training shards")
    cfg = resolve_run_config(run_dir, config, epochs, loader_workers)
    check_architecture(cfg, run_dir, run)
    cfg = record_data(cfg, run_dir, root, index)
    if not val_urls:
        print(f"note: build {index['build']} has no validation split; the best checkpoint is chosen by "
              "training loss (preprocess with data.val_fraction > 0 to validate)")
    # the training process and its loader processes: a GPU worker starved of CPUs starves its GPU
    cpus = float(cpus_per_worker) if cpus_per_worker is not None else 1.0 + cfg.train.loader_workers
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if remote:
        push_run_files(run_dir, run)

    with ray_runtime(address, configure_logging=False, log_to_driver=True):
        try:
            return _train_on_ray(name, run_dir, run, root, cfg, train_urls, val_urls, workers=workers, gpus=gpus,
                                 cpus=cpus, max_failures=max_failures, placement=placement,
                                 observers=list(observers), build=index["build"])
        finally:
            if remote:
                push_run_files(run_dir, run)


def fetch_run_files(run: str, run_dir: Path) -> None:
    """The run's small files from its object-store folder into the local working copy (a run
    resumed on another machine, or after the cache was cleared, continues from what is stored)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        try:
            storage.write_bytes(run_dir / name, storage.read_bytes(storage.join(run, name)))
        except FileNotFoundError:
            (run_dir / name).unlink(missing_ok=True)   # not stored (a fresh or restarted run): no stale copy


def push_run_files(run_dir: Path, run: str) -> None:
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            storage.write_bytes(storage.join(run, name), (run_dir / name).read_bytes())


def _train_on_ray(name: str, run_dir: Path, run: Path | str, root: Path | str, cfg: Config, train_urls: list[str],
                  val_urls: list[str], *, workers: int, gpus: bool, cpus: float, max_failures: int, placement: str,
                  observers: list, build: str) -> TrainSummary:
    stop_name = f"stop-{name}-{time.time_ns()}"
    stop_flag = StopFlag.options(name=stop_name, namespace=STOP_ACTOR_NAMESPACE).remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "train_urls": train_urls, "val_urls": val_urls,
                           "stop_actor": stop_name, "observers": observers,
                           "piano_roll_dir": storage.join(run, "piano_rolls")},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus, resources_per_worker={"CPU": cpus},
                                     placement_strategy=placement),
        run_config=RunConfig(
            name=name, storage_path=storage.join(root, "runs"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute="val_score",
                                               checkpoint_score_order="min"),
            callbacks=[TrackingCallback(str(run_dir), name, {**cfg.to_dict(), "build": build},
                                        upload_to=str(run) if storage.is_uri(run) else None)],
        ),
    )
    t0 = time.time()
    try:
        result = _fit_with_graceful_stop(trainer, stop_flag)
    finally:
        ray.kill(stop_flag)
    metrics = dict(result.metrics or {})
    # The loop ends a diverging run on purpose (train/step.py) with a last "diverged" row; fit()
    # then returns normally, and Result.metrics holds the last checkpoint's row, not that one.
    rows = read_metrics(run_dir / "metrics.jsonl")
    if rows and rows[-1]["kind"] == "diverged":
        raise MahlerError(f"run {name}: {rows[-1]['error']}")
    best = best_checkpoint(result.best_checkpoints) or result.checkpoint
    return TrainSummary(name, run_dir, int(metrics.get("epoch", 0)), bool(metrics.get("stopped")),
                        best.path if best else None, metrics, time.time() - t0)


def best_checkpoint(checkpoints: list[tuple]):
    """The epoch checkpoint with the lowest val_score (mid-epoch ones have none)."""
    scored = [(m["val_score"], m["step"], c) for c, m in checkpoints
              if m.get("kind") == "epoch" and isinstance(m.get("val_score"), (int, float))
              and math.isfinite(m["val_score"])]
    return min(scored, key=lambda t: t[:2])[2] if scored else None


def _fit_with_graceful_stop(trainer: TorchTrainer, stop_flag):
    """Run `trainer.fit()` in a helper thread so that this (main) thread keeps the SIGINT
    handler: Ray Train installs its own abort-on-Ctrl-C handler when fit runs on the main
    thread, which would skip the checkpoint of the current epoch."""
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # handed to the main thread below
            box["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    with _stop_on_first_interrupt(stop_flag):
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


class _stop_on_first_interrupt:
    """First SIGINT: ask the workers to stop after this epoch. Second: KeyboardInterrupt."""

    def __init__(self, stop_flag):
        self.stop_flag = stop_flag
        self.presses = 0

    def _handler(self, signum, frame):
        self.presses += 1
        if self.presses == 1:
            self.stop_flag.set.remote()
            print("\nmahler train: finishing this epoch, then checkpoint and stop "
                  "(press Ctrl-C again to stop now)", file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

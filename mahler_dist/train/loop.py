"""`train_loop_per_worker`: what every Ray Train worker runs, readable top to bottom.

resume (the checkpoint's architecture, weights, optimiser, schedule and loader position) ->
for epoch: for batch: step, log, checkpoint every `train.checkpoint_every_steps` -> validate ->
checkpoint and report -> honour a stop request. Every rank calls `ray.train.report` equally often
(it is a barrier in Train V2); only rank 0 hands over a checkpoint. A restarted worker group, or
the same command run again, continues at the batch after the latest checkpoint, mid-epoch too.

`loop_config["observers"]`: objects whose `after_step(rank, epoch, step, keys, metrics)` (and
optional `after_epoch(rank, epoch, batches)`) run on every rank - how tests see which bars each
step trained on, without test code in this loop.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mahler_dist import storage
from mahler_dist.config import Config, config_from_dict
from mahler_dist.data.loader import BarLoader, PlanOptions
from mahler_dist.model.batch import to_device
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.optim import build_optimizer
from mahler_dist.model.checkpoint import load_checkpoint, rng_state, save_checkpoint
from mahler_dist.train.metric_window import MetricWindow
from mahler_dist.train.step import NonFiniteGuard, TrainingDiverged, train_step

STOP_ACTOR_NAMESPACE = "mahler-dist"


def lr_factor(step: int, total: int, cfg) -> float:
    """Linear warm-up, then constant or cosine decay to 10%."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine" and total > cfg.warmup_steps:
        progress = min(1.0, (step - cfg.warmup_steps) / (total - cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _all_reduce_sums(values: dict[str, float], device) -> dict[str, float]:
    """Sum a dict of floats over ranks (no-op on one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _stop_requested(stop_actor: str | None, device) -> bool:
    """Has the driver asked to stop after this epoch? (Same answer on every rank.)"""
    flag = 0.0
    if stop_actor and ray.train.get_context().get_world_rank() == 0:
        try:
            flag = float(ray.get(ray.get_actor(stop_actor, namespace=STOP_ACTOR_NAMESPACE).is_set.remote()))
        except ValueError:   # the driver that owns the flag is gone: keep training
            flag = 0.0
    # on the training device: NCCL all-reduces CUDA tensors only
    return _all_reduce_sums({"stop": flag}, device)["stop"] > 0


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one training step on one rank. Seeding every step (not once per run)
    makes dropout and z samples a function of (seed, step, rank): a run resumed mid-epoch from
    a checkpoint draws exactly what the uninterrupted run would have, with no RNG state to carry
    from every rank; and ranks draw differently."""
    return (seed * 1_000_003 + step * 1009 + rank) % (2**63)


@torch.no_grad()
def validate(model, loader: BarLoader | None, config: Config, step: int, device, autocast) -> dict[str, float]:
    if loader is None:
        return {}
    model.eval()
    window = MetricWindow()
    for batch in loader:
        batch = to_device(batch, device)
        with autocast():
            out = model(batch, use_mean=True)
        _, metrics = compute_loss(out, batch, config.loss, step)
        window.add(metrics)
    model.train()
    return {f"val_{k}": v for k, v in window.reduce().items() if not k.endswith("_per_s")}


def free_running_eval(model: torch.nn.Module, config: Config, samples: list[dict], device) -> dict[str, float]:
    """Rank 0: reconstruct a few validation bars free-running (z = posterior mean, the run's
    sampling settings, seeded), so the curves show whether the model can write a bar, not only
    predict the next event of a given one."""
    from mahler_dist.evaluate.recon import evaluate_bars
    from mahler_dist.generate.generator import Generator

    was_training = model.training
    try:
        part = evaluate_bars(Generator(model, config, device=device), samples, seed=0, free_running=True)
    finally:
        model.train(was_training)
    free = part.summary()["free_running"]
    acc = free["accuracy_step_aligned"]
    return {"val_free_note_f1": free["note_f1_micro"], "val_free_onset_f1": free["onset_f1_micro"],
            "val_free_acc_o": acc["offset"], "val_free_acc_p": acc["pitch"],
            "val_free_capped": free["bars_hit_row_cap"] / max(free["bars"], 1),
            "val_active_units": float(part.active_units())}


def _first_samples(urls: list[str], n: int) -> list[dict]:
    from mahler_dist.data.loader import read_samples

    out: list[dict] = []
    for url in urls:
        for s in read_samples(url):
            if len(out) >= n:
                return out
            out.append(s)
    return out


def epoch_piano_roll(model: torch.nn.Module, config: Config, epoch: int, out_dir: str, device) -> str:
    """Rank 0, end of an epoch: 4 bars sampled from the START context as a piano-roll PNG, so the
    W&B run (and the run folder) shows what the model writes as it learns."""
    from mahler_dist.generate.generator import Generator
    from mahler_dist.music.rows import rows_to_piece
    from mahler_dist.music.timing import Metre
    from mahler_dist.plots import piano_roll

    was_training = model.training
    try:
        bars = Generator(model, config, device=device).sample(n_bars=4, n_samples=1, seed=epoch)[0]
    finally:
        model.train(was_training)
    name = f"epoch{epoch + 1:04d}.png"
    title = f"epoch {epoch + 1}: 4 bars sampled from the START context"
    piece = rows_to_piece(bars, [Metre(4, 4)] * len(bars))
    if not storage.is_uri(out_dir):
        return str(piano_roll(piece, Path(out_dir) / name, title=title))
    with tempfile.TemporaryDirectory() as tmp:   # an object-store run folder: drawn here, then one PUT
        storage.write_bytes(storage.join(out_dir, name), piano_roll(piece, Path(tmp) / name, title=title).read_bytes())
    return storage.join(out_dir, name)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = config_from_dict(loop_config["config"], "the run's config")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    observers = list(loop_config.get("observers") or ())   # e.g. tests recording what each step saw
    precision = config.train.precision
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d, map_location=device)
        # the architecture is the checkpoint's (the driver has refused a config that differs)
        config.model = config_from_dict(state["config"], "the checkpoint's config").model
    tc = config.train
    train_loader, val_loader = _loaders(loop_config, config, rank, world, pin_memory=device.type == "cuda")
    guard = NonFiniteGuard(tc.max_nonfinite_steps, device)

    torch.manual_seed(tc.seed)                      # identical initial weights on every rank
    model = ray.train.torch.prepare_model(MahlerNet(config.model))
    raw_model = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(raw_model, tc)
    # the schedule's length is fixed when the run starts: more --epochs later continue at its end
    # value instead of jumping to another point of a longer cosine
    schedule_steps = int(state.get("schedule_steps", 0)) if state else 0
    schedule_steps = schedule_steps or tc.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, schedule_steps, tc))
    epoch, step, best_val = 0, 0, math.inf
    if state:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if not train_loader.load_state_dict(state["loader"]) and rank == 0 and state["loader"]["batches_done"]:
            print(f"note: the training data or batching changed since the checkpoint at step {state['step']}: "
                  f"epoch {state['loader']['epoch'] + 1} starts again from its first batch")
        epoch, step, best_val = state["epoch"], state["step"], state["best_val"]

    def save(row: dict, dir_name: str) -> None:
        """Report `row` with a checkpoint of everything a resumed run needs (rank 0 writes it)."""
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), loader=train_loader.state_dict(),
                                rng=rng_state(), epoch=row["epoch"], step=step, best_val=best_val,
                                schedule_steps=schedule_steps, config=config.to_dict(),
                                metrics={k: v for k, v in row.items() if isinstance(v, (int, float, bool))})
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ckpt, checkpoint_dir_name=dir_name)

    for epoch in range(epoch, tc.epochs):
        train_loader.set_epoch(epoch)
        window, epoch_window = MetricWindow(), MetricWindow()
        batches, waited = iter(train_loader), 0.0
        while True:
            started = time.perf_counter()
            batch = next(batches, None)          # the time the step waits for data
            waited += time.perf_counter() - started
            if batch is None:
                break
            torch.manual_seed(step_seed(tc.seed, step, rank))
            keys = batch.pop("keys")
            batch = to_device(batch, device, non_blocking=train_loader.pin_memory)
            metrics, finite = train_step(model, raw_model, batch, optimizer, config, step, autocast(), guard)
            scheduler.step()
            step += 1
            window.add(metrics, valid=finite)
            epoch_window.add(metrics, valid=finite)
            for observer in observers:
                observer.after_step(rank=rank, epoch=epoch, step=step, keys=keys, metrics=metrics)
            if step % tc.log_every_steps == 0:
                seconds = time.perf_counter() - window.started
                try:
                    skipped = guard.check(step)
                except TrainingDiverged as e:   # every rank at once: a deliberate end, not a failure to retry
                    ray.train.report({"kind": "diverged", "step": step, "epoch": epoch, "error": str(e)})
                    return
                # lr is the host's schedule: reported as it stands, not summed on the device
                row = {"kind": "step", "step": step, "epoch": epoch, **window.reduce(),
                       "lr": scheduler.get_last_lr()[0], "skipped_steps": skipped,
                       "data_wait_frac": waited / max(seconds, 1e-9)}
                ray.train.report(row)
                window, waited = MetricWindow(), 0.0
            left = len(train_loader) - train_loader.batches_done
            if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0 and left > 0:
                # mid-epoch: no validation score (NaN ranks below every epoch checkpoint in Ray's
                # keep-the-best order, and the latest checkpoint is always kept)
                save({"kind": "checkpoint", "step": step, "epoch": epoch, "val_score": math.nan,
                      "epoch_progress": train_loader.batches_done / len(train_loader)},
                     f"checkpoint_step{step:08d}")

        train_metrics = {**epoch_window.reduce(), "lr": scheduler.get_last_lr()[0]}
        val_metrics = validate(model, val_loader, config, step, device, autocast)
        # with no validation split, the best checkpoint is the one with the lowest training loss;
        # the row says so (score_on) and the driver's summary repeats it
        score = val_metrics.get("val_loss", train_metrics.get("loss", math.nan))
        best_val = min(best_val, score)
        stop = _stop_requested(loop_config.get("stop_actor"), device)
        free_eval = {}
        every = tc.free_eval_every_epochs
        if rank == 0 and every and loop_config.get("val_urls") and ((epoch + 1) % every == 0 or epoch + 1 == tc.epochs):
            try:
                free_eval = free_running_eval(raw_model, config, _first_samples(loop_config["val_urls"],
                                                                                  tc.free_eval_bars), device)
            except Exception as e:  # noqa: BLE001 - a measurement must never end a training run
                print(f"warning: no free-running evaluation for epoch {epoch + 1}: {e!r}")
        roll = None
        if rank == 0 and loop_config.get("piano_roll_dir"):
            try:
                roll = epoch_piano_roll(raw_model, config, epoch, loop_config["piano_roll_dir"], device)
            except Exception as e:  # noqa: BLE001 - a picture must never end a training run
                print(f"warning: no piano roll for epoch {epoch + 1}: {e!r}")
        row = {"kind": "epoch", "step": step, "epoch": epoch + 1, "val_score": score,
               "score_on": "val" if val_metrics else "train",
               "final": stop or epoch + 1 == tc.epochs, "stopped": stop, "piano_roll": roll,
               **{f"train_{k}": v for k, v in train_metrics.items()}, **val_metrics, **free_eval}
        for observer in observers:
            if hasattr(observer, "after_epoch"):
                observer.after_epoch(rank=rank, epoch=epoch, batches=len(train_loader))
        save(row, f"checkpoint_epoch{epoch + 1:04d}")
        if stop:
            break


def _loaders(loop_config: dict, config: Config, rank: int, world: int,
             pin_memory: bool) -> tuple[BarLoader, BarLoader | None]:
    tc = config.train
    plan = dict(world_size=world, batch_size=max(1, tc.batch_size // world), max_batch_rows=tc.max_batch_rows,
                max_rows_per_bar=config.data.max_rows_per_bar, shuffle_window=tc.shuffle_window, seed=tc.seed)
    train_loader = BarLoader(loop_config["train_urls"], rank=rank, options=PlanOptions(**plan),
                             transpose=tc.transpose_semitones, workers=tc.loader_workers,
                             prefetch=tc.prefetch_batches, pin_memory=pin_memory)
    val_loader = (BarLoader(loop_config["val_urls"], rank=rank, options=PlanOptions(**plan, shuffle=False))
                  if loop_config.get("val_urls") else None)
    return train_loader, val_loader

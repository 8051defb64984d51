"""`train_loop_per_worker`: what every Ray Train worker runs, readable top to bottom.

build loaders, model, optimiser, schedule -> resume -> for epoch: for batch: step, log ->
validate -> checkpoint and report -> honour a stop request. Every rank calls `ray.train.report`
equally often (it is a barrier in Train V2); only rank 0 hands over a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mahler_dist.config import Config, config_from_dict
from mahler_dist.data.loader import BarLoader, PlanOptions
from mahler_dist.model.batch import count_events, to_device
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.optim import build_optimizer, clip_gradients
from mahler_dist.model.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

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


class MetricWindow:
    """Sums of per-batch metrics weighted by bars, turned into global means on demand."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], bars: int, rows: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * bars
        self.sums["_bars"] = self.sums.get("_bars", 0.0) + bars
        self.sums["_rows"] = self.sums.get("_rows", 0.0) + rows

    def reduce(self, device) -> dict[str, float]:
        sums = _all_reduce_sums(self.sums, device)
        bars = max(sums.pop("_bars", 0.0), 1.0)
        rows = sums.pop("_rows", 0.0)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        skip = {"bars", "rows", "notes"}
        out = {k: v / bars for k, v in sums.items() if k not in skip}
        out.update(samples_per_s=bars / seconds, events_per_s=rows / seconds)
        return out


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


def _maybe_fail(spec: dict | None, epoch: int, batch_index: int) -> None:
    """Test hook: fail once on rank 0 at (epoch, batch) - the marker file makes it once."""
    if not spec or ray.train.get_context().get_world_rank() != 0:
        return
    if epoch == spec["epoch"] and batch_index == spec["batch"] and not os.path.exists(spec["marker"]):
        Path(spec["marker"]).touch()
        raise RuntimeError(f"injected failure at epoch {epoch}, batch {batch_index}")


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
        window.add(metrics, len(batch["inp_len"]), count_events(batch))
    model.train()
    return {f"val_{k}": v for k, v in window.reduce(device).items() if not k.endswith("_per_s")}


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
    path = Path(out_dir) / f"epoch{epoch + 1:04d}.png"
    return str(piano_roll(rows_to_piece(bars, [Metre(4, 4)] * len(bars)), path,
                          title=f"epoch {epoch + 1}: 4 bars sampled from the START context"))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = config_from_dict(loop_config["config"], "the run's config")
    tc = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    use_bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    per_rank = max(1, tc.batch_size // world)
    plan = dict(world_size=world, batch_size=per_rank, max_batch_rows=tc.max_batch_rows,
                shuffle_window=tc.shuffle_window, seed=tc.seed)
    train_loader = BarLoader(loop_config["train_urls"], rank=rank, options=PlanOptions(**plan))
    val_loader = (BarLoader(loop_config["val_urls"], rank=rank, options=PlanOptions(**plan, shuffle=False))
                  if loop_config.get("val_urls") else None)

    torch.manual_seed(tc.seed)                      # identical initial weights on every rank
    model = ray.train.torch.prepare_model(MahlerNet(config.model))
    raw_model = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(raw_model, tc)
    total_steps = tc.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, tc))
    epoch, step, best_val = 0, 0, math.inf

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d, map_location=device)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        train_loader.load_state_dict(state["loader"])
        if rank == 0:
            set_rng_state(state["rng"])
        epoch, step, best_val = state["epoch"], state["step"], state["best_val"]

    for epoch in range(epoch, tc.epochs):
        train_loader.set_epoch(epoch)
        # per (epoch, rank) seeds: dropout differs across ranks, and a resumed epoch replays exactly
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 1009 + rank)
        window = MetricWindow()
        epoch_window = MetricWindow()
        seen_keys: list[str] = []
        for batch_index, batch in enumerate(train_loader):
            _maybe_fail(loop_config.get("inject_failure"), epoch, batch_index)
            seen_keys += batch["keys"]
            batch = to_device(batch, device)
            with autocast():
                out = model(batch)
                loss, metrics = compute_loss(out, batch, config.loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            metrics["grad_norm"] = clip_gradients(raw_model, tc)
            optimizer.step()
            scheduler.step()
            step += 1
            metrics["lr"] = torch.tensor(scheduler.get_last_lr()[0])
            bars, rows = len(batch["inp_len"]), count_events(batch)
            window.add(metrics, bars, rows)
            epoch_window.add(metrics, bars, rows)
            if step % tc.log_every_steps == 0:
                ray.train.report({"kind": "step", "step": step, "epoch": epoch, **window.reduce(device)})
                window = MetricWindow()

        if loop_config.get("record_keys_dir"):   # test hook: which bars each rank trained on
            Path(loop_config["record_keys_dir"], f"epoch{epoch}_rank{rank}.json").write_text(
                json.dumps({"batches": len(train_loader), "keys": seen_keys, "node": ray.get_runtime_context().get_node_id()}))
        train_metrics = epoch_window.reduce(device)
        val_metrics = validate(model, val_loader, config, step, device, autocast)
        score = val_metrics.get("val_loss", train_metrics["loss"])
        best_val = min(best_val, score)
        stop = _stop_requested(loop_config.get("stop_actor"), device)
        roll = None
        if rank == 0 and loop_config.get("piano_roll_dir"):
            try:
                roll = epoch_piano_roll(raw_model, config, epoch, loop_config["piano_roll_dir"], device)
            except Exception as e:  # noqa: BLE001 - a picture must never end a training run
                print(f"warning: no piano roll for epoch {epoch + 1}: {e!r}")
        row = {"kind": "epoch", "step": step, "epoch": epoch + 1, "val_score": score,
               "final": stop or epoch + 1 == tc.epochs, "stopped": stop, "piano_roll": roll,
               **{f"train_{k}": v for k, v in train_metrics.items()}, **val_metrics}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), loader=train_loader.state_dict(),
                                rng=rng_state(), epoch=epoch + 1, step=step, best_val=best_val,
                                config=config.to_dict(),
                                metrics={k: v for k, v in row.items() if isinstance(v, (int, float, bool))})
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{epoch + 1:04d}")
        if stop:
            break

"""Tiny trained runs for tests that need a real checkpoint (serve, generate): the `tiny` preset
trained in-process with the standard loss on a preprocessed ROOT's training bars, saved the way a
Ray Train run saves it (ROOT/runs/NAME/config.yaml + checkpoint_epochNNNN/); and the ROOT they
start from, the bundled corpus preprocessed for real (`preprocessed_examples`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mahler_dist.config import DataConfig, load_config, resolve_config_path, save_config
from mahler_dist.data.loader import read_samples
from mahler_dist.data.shards import shard_urls
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.checkpoint import save_checkpoint
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.optim import build_optimizer, clip_gradients


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "midi"


def preprocessed_examples(root: Path, **data_config) -> Path:
    """examples/midi copied to ROOT/input and preprocessed with real Ray Data (needs the
    ray_session fixture) under DataConfig(**data_config). Returns ROOT."""
    from mahler_dist.data.preprocess import preprocess

    shutil.copytree(EXAMPLES, Path(root) / "input", ignore=shutil.ignore_patterns("*.md"))
    preprocess(root, DataConfig(**data_config), progress=False)
    return Path(root)


def fit_step(model, batch, optimizer, cfg, step: int):
    """One plain training step on one batch (tests that overfit a model): -> (loss, metrics)."""
    model.train()
    loss, metrics = compute_loss(model(batch), batch, cfg.loss, step)
    optimizer.zero_grad()
    loss.backward()
    clip_gradients(model, cfg.train)
    optimizer.step()
    return loss, metrics


def train_tiny_run(root: Path, name: str, steps: int = 30, seed: int = 0, max_bars: int = 48,
                   epochs: tuple[int, ...] = (1,)) -> Path:
    """Train `steps` steps per saved epoch on the first `max_bars` training bars; one checkpoint
    per entry of `epochs` (later ones trained further). Returns the run folder."""
    samples = [s for u in shard_urls(root, "train") for s in read_samples(u)][:max_bars]
    cfg = load_config(resolve_config_path("tiny"))
    cfg.train.lr = 0.01
    torch.manual_seed(seed)
    model = MahlerNet(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    batch = collate_bars(samples)
    run = Path(root) / "runs" / name
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    step = 0
    for epoch in epochs:
        for _ in range(steps):
            step += 1
            loss, _ = fit_step(model, batch, optimizer, cfg, step)
        d = run / f"checkpoint_epoch{epoch:04d}"
        d.mkdir()
        save_checkpoint(d, metrics={"val_score": float(loss.detach()), "epoch": epoch, "step": step, "kind": "epoch"},
                        model=model.state_dict(), config=cfg.to_dict(), epoch=epoch, step=step)
    return run

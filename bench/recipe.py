"""Training-recipe experiments at a fixed step budget: which change makes pitch learn?

    .venv/bin/python bench/recipe.py --root ROOT [--steps 400] [--variants small,transpose,...]

Each variant is the `small` preset with a few keys changed (VARIANTS below), trained in its own
process (one thread; two at a time on a 2-core machine) for the same number of steps on ROOT's
training split with the project's loader, model and loss (no Ray: the step is train/loop.py's).
Every `--eval-every` steps it scores the first `--val-bars` validation bars teacher-forced (pitch
NLL and accuracy, the other properties, KL, active units). The bigram and unigram baselines are
fitted on the training split and scored on the same bars. The table prints every variant's
figures and its ratio to `small` measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "small": {},
    "absolute_pitch": {"model.relative_pitch": False},   # small before relative_pitch was its default
    "transpose": {"train.transpose_semitones": 5},
    "adam_warmup": {"train.lr": 0.004, "train.warmup_steps": 100, "train.grad_clip_value": 0.0,
                    "train.grad_clip_norm": 1.0},
    "init_0.05": {"model.init_std": 0.05},
    "no_free_bits": {"loss.free_bits": 0.0},
    "relative": {"model.relative_pitch": True},
    "relative_adam": {"model.relative_pitch": True, "train.lr": 0.004, "train.warmup_steps": 100,
                      "train.grad_clip_value": 0.0, "train.grad_clip_norm": 1.0},
    # room in the latent: the KL is free up to 48 bits a bar (MusicVAE's 2-bar figure) and
    # weighted 0.2 above it, annealed in; with 8 free bits the KL sat at ~6.6 bits, too little
    # to say which pitches a bar holds, so reconstruction leaned on the decoder alone
    "free_bits_48": {"loss.free_bits": 48.0},
    "kl_room": {"loss.free_bits": 48.0, "loss.beta_annealing": True, "loss.beta_max": 0.2},
    # word dropout on top of kl_room: 30% of decoder steps lose their true previous row, so the
    # decoder learns to go on without it, as it must from its own samples, and leans on z
    "kl_room_wdrop": {"loss.free_bits": 48.0, "loss.beta_annealing": True, "loss.beta_max": 0.2,
                      "model.dec_input_dropout": 0.3},
    "all": {"train.transpose_semitones": 5, "train.lr": 0.004, "train.warmup_steps": 100,
            "train.grad_clip_value": 0.0, "train.grad_clip_norm": 1.0},
}


def _config(variant: str):
    from mahler_dist.config import config_from_dict, load_config, resolve_config_path

    data = load_config(resolve_config_path("small")).to_dict()
    for key, value in VARIANTS[variant].items():
        section, name = key.split(".")
        data[section][name] = value
    return config_from_dict(data, f"variant {variant}")


def run_variant(root: str, variant: str, steps: int, eval_every: int, val_bars: int, out: str,
                minutes: float = 0.0, save_run: str | None = None) -> None:
    import numpy as np
    import torch

    from mahler_dist.data.loader import BarLoader, PlanOptions, read_samples
    from mahler_dist.data.shards import read_index, shard_urls
    from mahler_dist.data.collate import collate_bars
    from mahler_dist.model.cvae import MahlerNet
    from mahler_dist.model.loss import compute_loss
    from mahler_dist.model.optim import build_optimizer, clip_gradients
    from mahler_dist.train.loop import lr_factor, step_seed
    from mahler_dist.train.metric_window import MetricWindow

    torch.set_num_threads(1)
    cfg = _config(variant)
    tc = cfg.train
    index = read_index(root)
    train_urls = shard_urls(root, "train", index=index)
    val = [s for u in shard_urls(root, "val", index=index) for s in read_samples(u)][:val_bars]
    opts = PlanOptions(batch_size=tc.batch_size, max_batch_rows=tc.max_batch_rows,
                       max_rows_per_bar=cfg.data.max_rows_per_bar, shuffle_window=tc.shuffle_window, seed=tc.seed)
    loader = BarLoader(train_urls, options=opts, transpose=getattr(tc, "transpose_semitones", 0))
    torch.manual_seed(tc.seed)
    model = MahlerNet(cfg.model)
    optimizer = build_optimizer(model, tc)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, tc))
    curve, step, epoch, t0 = [], 0, 0, time.perf_counter()

    def evaluate() -> dict:
        model.eval()
        window = MetricWindow(over_ranks=False)
        with torch.no_grad():
            for i in range(0, len(val), 64):
                batch = collate_bars(val[i:i + 64])
                out_ = model(batch, use_mean=True)
                window.add(compute_loss(out_, batch, cfg.loss, 10**9)[1])
        model.train()
        m = window.reduce()
        return {"step": step, "seconds": time.perf_counter() - t0, **{k: m[k] for k in (
            "loss_p", "acc_p", "loss_o", "acc_o", "loss_d", "acc_d", "kl_bits") if k in m}}

    deadline = t0 + minutes * 60 if minutes else math.inf
    while step < steps and time.perf_counter() < deadline:
        loader.set_epoch(epoch)
        for batch in loader:
            batch.pop("keys")
            torch.manual_seed(step_seed(tc.seed, step, 0))
            loss, _ = compute_loss(model(batch), batch, cfg.loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, tc)
            optimizer.step()
            sched.step()
            step += 1
            if step % eval_every == 0 or step == steps:
                curve.append(evaluate())
                print(variant, json.dumps(curve[-1]), flush=True)
            if step >= steps or time.perf_counter() >= deadline:
                break
        epoch += 1
    if not curve or curve[-1]["step"] != step:
        curve.append(evaluate())
    Path(out).write_text(json.dumps({"variant": variant, "overrides": VARIANTS[variant], "curve": curve}))
    if save_run:   # a run folder `mahler evaluate NAME --root ROOT` reads
        from mahler_dist.config import save_config
        from mahler_dist.model.checkpoint import save_checkpoint

        run = Path(root) / "runs" / save_run
        ckpt = run / "checkpoint_epoch0001"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        save_checkpoint(ckpt, metrics={"kind": "epoch", "step": step, "epoch": 1, "val_score": curve[-1]["loss_p"],
                                       "minutes": (time.perf_counter() - t0) / 60},
                        model=model.state_dict(), config=cfg.to_dict(), epoch=1, step=step)


def baselines(root: str, val_bars: int) -> dict:
    from mahler_dist.data.loader import read_samples
    from mahler_dist.data.shards import read_index, shard_urls
    from mahler_dist.evaluate.baselines import BaselineScorer, BaselineScores, CountBaselines

    index = read_index(root)
    fitted = CountBaselines()
    for u in shard_urls(root, "train", index=index):
        for s in read_samples(u):
            fitted.fit_bar(s["context"], s["inputs"])
    val = [s for u in shard_urls(root, "val", index=index) for s in read_samples(u)][:val_bars]
    scorer, scores = BaselineScorer(fitted), BaselineScores()
    for s in val:
        scorer.score_bar(scores, s["context"], s["inputs"], s["metre"])
    return scores.summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val-bars", type=int, default=512)
    ap.add_argument("--variants", default="small,transpose,adam_warmup,init_0.05")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--baseline", default="small", help="the variant the ratios are against")
    ap.add_argument("--out", default="recipe_results")
    ap.add_argument("--minutes", type=float, default=0.0, help="also stop each variant after this long (0: steps only)")
    ap.add_argument("--save-runs", action="store_true",
                    help="save each variant as ROOT/runs/recipe-VARIANT for `mahler evaluate`")
    ap.add_argument("--variant", help=argparse.SUPPRESS)   # a child process: run this one variant
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    if args.variant:
        run_variant(args.root, args.variant, args.steps, args.eval_every, args.val_bars,
                    str(out / f"{args.variant}.json"), args.minutes,
                    f"recipe-{args.variant}" if args.save_runs else None)
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.baseline not in names:
        sys.exit(f"variants must include the baseline {args.baseline!r} and come from {sorted(VARIANTS)}; "
                 f"got {args.variants!r}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a variant whose result is already in --out is not run again (reuse a baseline, resume a sweep)
    pending, running = [n for n in names if not (out / f"{n}.json").exists()], []
    while pending or running:
        while pending and len(running) < args.parallel:
            v = pending.pop(0)
            running.append(subprocess.Popen([sys.executable, __file__, "--root", args.root, "--steps", str(args.steps),
                                             "--eval-every", str(args.eval_every), "--val-bars", str(args.val_bars),
                                             "--out", str(out), "--minutes", str(args.minutes), "--variant", v]
                                            + (["--save-runs"] if args.save_runs else []), env=env))
        time.sleep(2)
        running = [p for p in running if p.poll() is None]
    base = baselines(args.root, args.val_bars)
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    ref = results[args.baseline]["curve"][-1]
    print(f"\n{args.steps} steps of batch 64 on {args.root}; first {args.val_bars} validation bars, teacher-forced")
    print(f"{'variant':14s} {'pitch NLL':>10s} {'pitch acc':>10s} {'offset acc':>10s} {'KL bits':>8s} "
          f"{'NLL ratio':>12s} {'acc ratio':>12s}  (ratios against {args.baseline})")
    for n in names:
        last = results[n]["curve"][-1]
        print(f"{n:14s} {last['loss_p']:10.3f} {last['acc_p']:10.3f} {last['acc_o']:10.3f} "
              f"{last.get('kl_bits', math.nan):8.2f} {last['loss_p'] / ref['loss_p']:12.3f} "
              f"{last['acc_p'] / max(ref['acc_p'], 1e-9):12.3f}")
    for b in ("bigram", "unigram"):
        print(f"{b:14s} {base[b]['nll_per_event']['pitch']:10.3f} {base[b]['accuracy']['pitch']:10.3f} "
              f"{base[b]['accuracy']['offset']:10.3f}")
    (out / "summary.json").write_text(json.dumps({"baselines": base, "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""Model throughput on this machine: training step (forward + backward + optimiser) and inference.

    .venv/bin/python bench/model.py [--presets small mahlernet] [--batch 64] [--seconds 20]

Events are real (non-padding) event rows. The same batch of bars is used for every preset, so
the ratios printed against the first preset are measured side by side. Bars come from the
shared piano corpus through the representation code when it is present, else from random bars
with the same row invariants (model/synthetic.py). Figures: CPU unless --device says otherwise.

  train      events/s of forward + loss + backward + clip + optimiser step (train mode)
  score      events/s of a teacher-forced forward pass (eval, no grad): validation, n_recon
  generate   events/s of step-wise decoding, B bars at once: decoder step + four heads with
             sampling, as the generator runs (encoding the context once per bar)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mahler_dist.config import load_config, resolve_config_path  # noqa: E402
from mahler_dist.data.collate import collate_bars  # noqa: E402
from mahler_dist.model.batch import count_events, to_device  # noqa: E402
from mahler_dist.model.cvae import MahlerNet  # noqa: E402
from mahler_dist.model.loss import compute_loss  # noqa: E402
from mahler_dist.model.optim import build_optimizer, clip_gradients  # noqa: E402
from mahler_dist.model.summary import parameter_groups  # noqa: E402
from mahler_dist.model.synthetic import random_piece  # noqa: E402


def load_bars(batch: int) -> tuple[list, str]:
    """`batch` bars from the shared piano corpus (several pieces), or synthetic ones."""
    env = os.environ.get("MAHLER_SHARED_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "midi"
    try:
        from mahler_dist.music.encode import encode_file
        bars: list = []
        for path in sorted((root / "piano_midi_de").rglob("*.mid"))[::10]:
            bars += encode_file(path).samples[8:8 + batch // 4]   # skip the sparse openings
            if len(bars) >= batch:
                return bars[:batch], f"piano_midi_de ({root})"
    except Exception as e:  # noqa: BLE001 - any failure falls back to synthetic bars
        print(f"(real bars unavailable: {e}; using synthetic bars)")
    return random_piece(0, batch, min_rows=4, max_rows=40), "synthetic"


def timed(fn, seconds: float, min_reps: int = 3) -> tuple[float, int]:
    """Mean seconds per call of fn() over at least `min_reps` calls and `seconds`, after a warmup."""
    fn()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps, reps


def bench_preset(name: str, batch, events: int, seconds: float, device: str) -> dict[str, float]:
    cfg = load_config(resolve_config_path(name))
    torch.manual_seed(0)
    model = MahlerNet(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.train)

    def train_step():
        model.train()
        loss, _ = compute_loss(model(batch), batch, cfg.loss, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, cfg.train)
        optimizer.step()

    @torch.no_grad()
    def score():
        model.eval()
        model(batch, use_mean=True)

    steps = int(batch["inp_rows"].shape[1])        # decode as many steps as the longest bar

    @torch.no_grad()
    def generate():
        model.eval()
        ctx = model.encode_context(batch["ctx_rows"], batch["ctx_len"])
        n = batch["inp_len"].shape[0]
        mu, logvar = model.prior(ctx, batch=n)
        state = model.init_decoder(model.sample_z(mu, logvar) if cfg.model.use_vae else None,
                                   ctx, batch=n)
        rows = torch.full((n, 5), -1, dtype=torch.long, device=device)
        active = torch.zeros((n, 15), dtype=torch.uint8, device=device)
        heads = model.heads
        for _ in range(steps):
            h, state = model.step(rows, active, state)
            o = torch.multinomial(heads.offset_logits(h).softmax(-1), 1)[:, 0]
            b = torch.full_like(o, -1)      # beats: derived from time by the generator
            d = torch.multinomial(heads.duration_logits(h, o, b).softmax(-1), 1)[:, 0]
            p = torch.multinomial(heads.pitch_logits(h, o, b, d, rows[:, 3]).softmax(-1), 1)[:, 0]
            i = torch.multinomial(heads.instrument_logits(h, o, b, d, p).softmax(-1), 1)[:, 0]
            rows = torch.stack([o, b, d, p, i], dim=-1)

    result = {"params_m": parameter_groups(model)["total"] / 1e6}
    for label, fn, count in (("train", train_step, events), ("score", score, events),
                             ("generate", generate, steps * batch["inp_len"].shape[0])):
        sec, reps = timed(fn, seconds)
        result[label] = count / sec
        result[f"{label}_ms"] = sec * 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "mahlernet"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0, help="timing budget per figure")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a busy machine 1 thread "
                             "can beat 2: OpenMP threads spin-wait for a busy core")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bars, source = load_bars(args.batch)
    batch = to_device(collate_bars(bars), args.device)
    events = count_events(batch)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"batch: {args.batch} bars from {source}, {events} events, padded to "
          f"{batch['inp_rows'].shape[1]} rows\n")
    header = f"{'preset':<10} {'params':>8} {'train ev/s':>11} {'step ms':>8} " \
             f"{'score ev/s':>11} {'generate ev/s':>14}"
    print(header)
    base = None
    for name in args.presets:
        r = bench_preset(name, batch, events, args.seconds, args.device)
        base = base or r
        print(f"{name:<10} {r['params_m']:>7.2f}M {r['train']:>11,.0f} {r['train_ms']:>8.0f} "
              f"{r['score']:>11,.0f} {r['generate']:>14,.0f}"
              + ("" if r is base else
                 f"   (x{r['train'] / base['train']:.3f} / x{r['score'] / base['score']:.3f}"
                 f" / x{r['generate'] / base['generate']:.3f} of {args.presets[0]})"))


if __name__ == "__main__":
    main()

"""Generation throughput: bars/s decoding one bar at a time (batch 1) against B bars at once.

    .venv/bin/python bench/generate.py [--presets small mahlernet] [--batch 64] [--rows 24] [--device cpu]

The batched core loop (mahler_dist/generate/sampler.py) decodes every sample of a call together.
This measures Generator.sample on untrained models of each preset; their offset head is biased
towards class 0 so that every bar runs to exactly --rows event rows (the row cap), which makes
bars comparable across presets and batch sizes. A bar = context encoding + prior z + `rows`
decoder steps with the four heads, masks and sampling. Reported side by side in one run:

  batch 1    bars/s and ms per bar, one sample per call (the sequential baseline)
  batch B    bars/s with B samples per call
  ratio      bars/s at batch B / bars/s at batch 1   (goal >= 10x at B = 64)
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
from mahler_dist.generate import Generator  # noqa: E402
from mahler_dist.generate.sampler import Decoding  # noqa: E402
from mahler_dist.model.cvae import MahlerNet  # noqa: E402


def build(preset: str, rows: int, device: str) -> Generator:
    cfg = load_config(resolve_config_path(preset))
    torch.manual_seed(0)
    model = MahlerNet(cfg.model)
    with torch.no_grad():
        model.heads.linear["offset"].bias[0] = 30.0     # chords at one onset: bars run to the cap
    # no polyphony bound: it would end these bars early, and this measures rows per second
    return Generator(model, cfg, device=device, max_rows=rows, decoding=Decoding.off())


def bars_per_second(gen: Generator, batch: int, bars: int, seconds: float) -> tuple[float, int]:
    gen.sample(n_bars=1, n_samples=batch, seed=0)        # warm-up
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        gen.sample(n_bars=bars, n_samples=batch, seed=calls)
        calls += 1
    elapsed = time.perf_counter() - start
    return calls * bars * batch / elapsed, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "mahlernet"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rows", type=int, default=24, help="event rows per bar")
    ap.add_argument("--bars", type=int, default=2, help="bars chained per call")
    ap.add_argument("--seconds", type=float, default=8.0, help="minimum timing per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    name = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            else platform.processor() or platform.machine())
    print(f"generation benchmark on {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; {args.rows} rows per bar, {args.bars} bars per call; "
          f"load average {os.getloadavg()[0]:.1f} (on a busy small box use --threads 1: spin-waiting "
          "OpenMP threads distort the figures)")
    print(f"{'preset':<10} {'batch':>5} {'bars/s':>9} {'ms/bar':>8} {'rows/s':>9} {'calls':>6}")
    ratios = {}
    for preset in args.presets:
        gen = build(preset, args.rows, device)
        one, calls1 = bars_per_second(gen, 1, args.bars, args.seconds)
        print(f"{preset:<10} {1:>5} {one:>9.1f} {1000 / one:>8.1f} {one * args.rows:>9.0f} {calls1:>6}")
        many, calls = bars_per_second(gen, args.batch, args.bars, args.seconds)
        print(f"{preset:<10} {args.batch:>5} {many:>9.1f} {1000 / many:>8.2f} {many * args.rows:>9.0f} "
              f"{calls:>6}")
        ratios[preset] = many / one
    for preset, r in ratios.items():
        verdict = "meets" if r >= 10 else "below"
        print(f"{preset}: batched/sequential = {r:.1f}x at batch {args.batch} ({verdict} the 10x goal)")


if __name__ == "__main__":
    main()

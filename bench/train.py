"""Training throughput, side by side in one run, on the `small` preset (issue: distributed training).

    .venv/bin/python bench/train.py [--files 24] [--preset small]

1. the loader alone (BarLoader over the train shards, one rank): samples/s it can deliver;
2. a plain single-process PyTorch loop over the same loader's batches;
3. Ray Train with 1 worker, and with 2 workers at the same global batch size.

All four use one thread per process (Ray gives a 1-CPU worker OMP_NUM_THREADS=1), so the ratios
compare the frameworks, not thread counts; the plain loop is also timed with all cores.
Ray Train figures are the loop's own steady-state samples/s (from metrics.jsonl, the first
logging window dropped), and the wall time including Ray start-up is printed beside them.
Goals: Ray Train 1 worker >= 0.9x the plain loop; loader >= 5x what the model consumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mahler_dist.config import DataConfig, load_config, resolve_config_path  # noqa: E402
from mahler_dist.data.loader import BarLoader, PlanOptions  # noqa: E402
from mahler_dist.data.shards import shard_urls  # noqa: E402
from mahler_dist.model.batch import count_events  # noqa: E402
from mahler_dist.model.cvae import MahlerNet  # noqa: E402
from mahler_dist.model.loss import compute_loss  # noqa: E402
from mahler_dist.model.optim import build_optimizer, clip_gradients  # noqa: E402
from mahler_dist.train.tracking import read_metrics  # noqa: E402


def make_root(files: int) -> Path:
    import ray

    from mahler_dist.data.preprocess import preprocess

    env = os.environ.get("MAHLER_SHARED_DATA")
    corpus = (Path(env) if env else REPO.parent / "shared" / "data" / "midi") / "piano_midi_de"
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    (root / "input").mkdir()
    for path in sorted(corpus.rglob("*.mid"))[:files]:
        shutil.copy(path, root / "input" / path.name)
    preprocess(root, DataConfig(val_fraction=0.0, test_fraction=0.0, shard_samples=512))
    return root


def loader_alone(urls, batch: int) -> float:
    loader = BarLoader(urls, options=PlanOptions(batch_size=batch, shuffle_window=2048))
    start, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["keys"])
    return n / (time.perf_counter() - start)


def plain_loop(urls, config, threads: int, max_batches: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MahlerNet(config.model)
    optimizer = build_optimizer(model, config.train)
    loader = BarLoader(urls, options=PlanOptions(batch_size=config.train.batch_size, shuffle_window=2048))
    bars = rows = 0
    start = None
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        if i == 1:     # the first step warms up allocators; Ray's first window is dropped too
            start, bars, rows = time.perf_counter(), 0, 0
        out = model(batch)
        loss, _ = compute_loss(out, batch, config.loss, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, config.train)
        optimizer.step()
        bars, rows = bars + len(batch["keys"]), rows + count_events(batch)
    seconds = time.perf_counter() - start
    return bars / seconds, rows / seconds


def ray_train(root: Path, preset: str, workers: int, name: str) -> tuple[float, float, float]:
    from mahler_dist.train.launch import train

    start = time.perf_counter()
    train(name, root, preset, workers=workers, epochs=1)
    wall = time.perf_counter() - start
    steps = [r for r in read_metrics(root / "runs" / name / "metrics.jsonl") if r["kind"] == "step"][1:]
    sps = sum(r["samples_per_s"] for r in steps) / max(len(steps), 1)
    eps = sum(r["events_per_s"] for r in steps) / max(len(steps), 1)
    return sps, eps, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=24, help="piano_midi_de files to preprocess")
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    root = make_root(args.files)
    config = load_config(resolve_config_path(args.preset))
    config.train.log_every_steps = 5
    urls = shard_urls(root, "train")
    n = BarLoader(urls).num_samples
    print(f"corpus: {args.files} piano files, {n} train bars; preset {args.preset}, batch {config.train.batch_size}; "
          f"{os.cpu_count()} cores, torch {torch.__version__}")

    load_sps = loader_alone(urls, config.train.batch_size)
    plain1 = plain_loop(urls, config, 1, 40)
    plain_all = plain_loop(urls, config, os.cpu_count() or 1, 40)
    r1 = ray_train(root, str(resolve_config_path(args.preset)), 1, "bench1")
    r2 = ray_train(root, str(resolve_config_path(args.preset)), 2, "bench2")
    ray.shutdown()

    rows = [("loader alone", load_sps, None, None), ("plain loop, 1 thread", *plain1, None),
            (f"plain loop, {os.cpu_count()} threads", *plain_all, None),
            ("Ray Train, 1 worker", *r1), ("Ray Train, 2 workers", *r2)]
    print(f"\n{'':26}{'samples/s':>12}{'events/s':>12}{'vs plain 1t':>13}{'wall s':>9}")
    for label, sps, eps, wall in rows:
        print(f"{label:26}{sps:12.1f}{(eps or 0):12.0f}{sps / plain1[0]:12.2f}x"
              + (f"{wall:9.1f}" if wall else ""))
    print(f"\nRay Train 1 worker / plain loop: {r1[0] / plain1[0]:.2f}x (goal >= 0.9)")
    print(f"loader / model consumption (plain, 1 thread): {load_sps / plain1[0]:.1f}x (goal >= 5)")
    print(f"2 workers / 1 worker: {r2[0] / r1[0]:.2f}x on {os.cpu_count()} cores")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

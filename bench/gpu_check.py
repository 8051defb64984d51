"""One prepared check for a GPU machine that has PyTorch and numpy only (issue 13).

    # here (full environment): real bars from real shards -> a small file to carry
    .venv/bin/python bench/gpu_check.py --make-data bench/gpu_bars.npz --root ROOT
    # there (torch + numpy; no Ray, mido, webdataset, wandb or PyYAML needed):
    python bench/gpu_check.py --data bench/gpu_bars.npz [--device cuda] [--steps 200] [--out FILE]
    # CI: the same code path on a CPU, a few steps
    python bench/gpu_check.py --data bench/gpu_bars.npz --device cpu --quick

For `small` and `mahlernet`, each in bf16 autocast and in fp32, it trains --steps steps on the
real bars with the project's own step (train/step.py: loss, clipping, non-finite skip) and
batching (data/loader.py's plan, data/collate.py), timed between device synchronisations after
a warm-up: events/s, bars/s, peak memory, the dtype the LSTMs ran in, steps skipped as
non-finite, and the host syncs per step that torch.cuda.set_sync_debug_mode reports (goal 0).
Then generation: ms per bar at batch 1 and bars/s at batch 64, and a one-GPU NCCL all-reduce
(gloo on a CPU). One JSON with everything, written to --out (default: $OUT/
gpu_check.json when $OUT is set, else next to this file); under 6 minutes on an H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mahler_dist.config import config_from_dict  # noqa: E402
from mahler_dist.data.collate import collate_bars  # noqa: E402
from mahler_dist.data.loader import PlanOptions, plan_epoch  # noqa: E402
from mahler_dist.generate.generator import Generator  # noqa: E402
from mahler_dist.model.batch import to_device  # noqa: E402
from mahler_dist.model.cvae import MahlerNet  # noqa: E402
from mahler_dist.model.optim import build_optimizer  # noqa: E402
from mahler_dist.train.step import NonFiniteGuard, train_step  # noqa: E402

PRESETS = ("small", "mahlernet")
FIELDS = ("context", "inputs", "active")


# -- the carried data ---------------------------------------------------------------------------
def make_data(out: str, root: str, bars: int) -> None:
    """The first `bars` training bars of ROOT, flat, plus the presets as JSON (no pickle)."""
    from mahler_dist.config import load_config, resolve_config_path
    from mahler_dist.data.loader import read_samples
    from mahler_dist.data.shards import shard_urls

    samples = []
    for url in shard_urls(root, "train"):
        samples += list(read_samples(url))
        if len(samples) >= bars:
            break
    samples = samples[:bars]
    arrays = {}
    for f in FIELDS:
        arrays[f] = np.concatenate([s[f] for s in samples])
        arrays[f"{f}_len"] = np.array([len(s[f]) for s in samples], dtype=np.int32)
    arrays["metre"] = np.array([s["metre"] for s in samples], dtype="U8")
    presets = {p: load_config(resolve_config_path(p)).to_dict() for p in PRESETS}
    arrays["presets"] = np.frombuffer(json.dumps(presets).encode(), dtype=np.uint8)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(samples)} bars, {len(arrays['inputs'])} event rows, "
          f"{os.path.getsize(out) / 1e6:.2f} MB")


def load_data(path: str) -> tuple[list[dict], dict]:
    with np.load(path, allow_pickle=False) as z:
        cut = {f: np.cumsum(z[f"{f}_len"])[:-1] for f in FIELDS}
        parts = {f: np.split(z[f], cut[f]) for f in FIELDS}
        metres = z["metre"].tolist()
        presets = json.loads(z["presets"].tobytes())
    samples = [{"context": c, "inputs": x, "active": a, "metre": m}
               for c, x, a, m in zip(parts["context"], parts["inputs"], parts["active"], metres)]
    return samples, presets


# -- measurements -------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(samples: list[dict], config) -> list[dict]:
    """The bars cut as the loader cuts them for this preset (one rank), collated, pinned on a GPU."""
    lengths = np.array([(len(s["context"]), len(s["inputs"])) for s in samples], dtype=np.int64)
    opt = PlanOptions(batch_size=config.train.batch_size, max_batch_rows=config.train.max_batch_rows,
                      max_rows_per_bar=config.data.max_rows_per_bar, shuffle_window=config.train.shuffle_window)
    plan = plan_epoch([lengths], 0, opt)[0]
    out = [collate_bars([samples[int(i)] for i in ids]) for window in plan for ids in window]
    if torch.cuda.is_available():
        out = [{k: v.pin_memory() for k, v in b.items()} for b in out]
    return out


def train_check(preset: str, config, batches: list[dict], device: torch.device, bf16: bool,
                steps: int, warmup: int) -> tuple[dict, MahlerNet]:
    torch.manual_seed(0)
    model = MahlerNet(config.model).to(device)
    model.train()
    optimizer = build_optimizer(model, config.train)
    guard = NonFiniteGuard(config.train.max_nonfinite_steps, device)
    lstm_dtypes: set[str] = set()
    hook = model.decoder.register_forward_hook(lambda m, i, o: lstm_dtypes.add(str(o[0].dtype)))

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def run(n: int, offset: int) -> tuple[int, int, torch.Tensor]:
        bars = rows = 0
        last = torch.zeros(())
        for k in range(n):
            host = batches[(offset + k) % len(batches)]
            batch = to_device(host, device, non_blocking=device.type == "cuda")
            metrics, _ = train_step(model, model, batch, optimizer, config, offset + k, autocast(), guard)
            bars, rows, last = bars + len(host["inp_len"]), rows + int(host["inp_len"].sum()), metrics["loss"]
        return bars, rows, last

    run(warmup, 0)
    _sync(device)
    syncs = None
    if device.type == "cuda":   # what forces the host to wait for the GPU inside a step
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(3, warmup)
        torch.cuda.set_sync_debug_mode(0)
        syncs = {"per_step": len(caught) / 3, "where": sorted({str(w.message)[:160] for w in caught})[:5]}
        _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bars, rows, last = run(steps, warmup)
    _sync(device)
    seconds = time.perf_counter() - start
    hook.remove()
    skipped = int(guard.total)
    return {"preset": preset, "precision": "bf16" if bf16 else "fp32", "steps": steps, "seconds": seconds,
            "events_per_s": rows / seconds, "bars_per_s": bars / seconds, "step_ms": 1e3 * seconds / steps,
            "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
            "lstm_dtype": sorted(lstm_dtypes), "skipped_nonfinite": skipped, "host_syncs": syncs,
            "final_loss": float(last), "nan_free": skipped == 0 and bool(np.isfinite(float(last))),
            "parameters": sum(p.numel() for p in model.parameters())}, model


def generation_check(model, config, device: torch.device, bars: int, batch: int) -> dict:
    gen = Generator(model, config, device=device)
    gen.sample(n_bars=1, n_samples=1, seed=0)                 # warm-up
    _sync(device)
    t = time.perf_counter()
    gen.sample(n_bars=bars, n_samples=1, seed=1)
    _sync(device)
    one = time.perf_counter() - t
    t = time.perf_counter()
    gen.sample(n_bars=max(1, bars // 2), n_samples=batch, seed=2)
    _sync(device)
    many = time.perf_counter() - t
    return {"ms_per_bar_batch1": 1e3 * one / bars, f"bars_per_s_batch{batch}": batch * max(1, bars // 2) / many}


def allreduce_check(device: torch.device, megabytes: int) -> dict:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:   # a free port on loopback for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        x = torch.ones(megabytes * 2**20 // 4, device=device)
        dist.all_reduce(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(x)
        _sync(device)
        ms = 1e3 * (time.perf_counter() - t) / 5
        ok = bool(torch.allclose(x[:8], torch.ones(8, device=device)))
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "megabytes": megabytes, "ms": ms, "correct": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-data", metavar="OUT", help="write the carried bars file from --root and stop")
    ap.add_argument("--root", help="a preprocessed ROOT (with --make-data)")
    ap.add_argument("--bars", type=int, default=4096, help="bars in the carried file")
    ap.add_argument("--data", default=str(REPO / "bench" / "gpu_bars.npz"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="a few steps and bars: the CI run of this code path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.make_data:
        if not args.root:
            ap.error("--make-data needs --root")
        make_data(args.make_data, args.root, args.bars)
        return 0
    device = torch.device(args.device)
    steps, warmup = (3, 1) if args.quick else (args.steps, 10)
    samples, presets = load_data(args.data)
    if args.quick:
        samples = samples[:256]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 matmuls (and the fp32 LSTMs) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick,
              "bars": len(samples), "train": [], "generate": {}}
    started = time.perf_counter()
    for preset in PRESETS:
        config = config_from_dict(presets[preset], f"preset {preset}")
        if args.quick:   # the code path, not the figures: small batches keep the CPU run short
            config.train.batch_size = 8
        batches = _batches(samples, config)
        for bf16 in (True, False):
            row, model = train_check(preset, config, batches, device, bf16, steps, warmup)
            report["train"].append(row)
            print(f"{preset:<10} {row['precision']}: {row['events_per_s']:>10,.0f} events/s {row['bars_per_s']:>8,.0f} "
                  f"bars/s  {row['step_ms']:.1f} ms/step  peak {row['peak_memory_mb'] or 0:,.0f} MB  "
                  f"LSTM {row['lstm_dtype']}  nan_free {row['nan_free']}", flush=True)
        report["generate"][preset] = generation_check(model, config, device, bars=2 if args.quick else 8,
                                                      batch=8 if args.quick else 64)
        print(f"{preset:<10} generate: {report['generate'][preset]}", flush=True)
    report["allreduce"] = allreduce_check(device, 4 if args.quick else 256)
    print(f"all-reduce: {report['allreduce']}")
    report["seconds"] = time.perf_counter() - started
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT")
                       else str(REPO / "bench" / "gpu_check.json"))
    Path(out).write_text(json.dumps(report, indent=1))
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    ok = all(r["nan_free"] for r in report["train"]) and report["allreduce"]["correct"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

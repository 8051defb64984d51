"""The input pipeline alone: bars/s and events/s of the loader before issue 13 vs today's, with
0, 1 and 2 loader processes, in the same run (issue 13).

    .venv/bin/python bench/loader.py [--root ROOT] [--shards 4] [--rounds 2] [--transpose 0]

Without --root, piano_midi_de is preprocessed into a temporary ROOT first (local Ray). Each
configuration iterates one epoch of the first --shards training shards with small's batching
(64 bars, 4,096 padded rows); rounds run in the order before, 0, 1, 2 then reversed, so drift on a
noisy machine hits both sides, and each figure is the best of its rounds. "before" is the loader
as it was: webdataset's tar reader, np.load per array and a collate that pads bar by bar and
finds each END target in Python. Planning time (lengths from the sidecars vs from reading every
shard's meta.json) is printed beside it. Goal: >= 10,000 bars/s in one process, 5x before.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from mahler_dist.data import loader as L  # noqa: E402
from mahler_dist.data.augment import transpose_sample  # noqa: E402
from mahler_dist.data.shards import shard_urls  # noqa: E402
from mahler_dist.music import vocab  # noqa: E402
from mahler_dist.music.rows import end_offset_class  # noqa: E402
from mahler_dist.music.timing import Metre, normalise_metre  # noqa: E402

SMALL = dict(batch_size=64, max_batch_rows=4096, max_rows_per_bar=512, shuffle_window=4096)


def _old_collate(samples):
    def pad(arrays, fill, dtype):
        out = np.full((len(arrays), max(len(a) for a in arrays), arrays[0].shape[-1]), fill, dtype=dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = a
        return out

    def metre(text):
        return normalise_metre(*(int(x) for x in text.split("/"))) if text else Metre(4, 4)

    ctx, inp, act = ([np.asarray(s[k]) for s in samples] for k in ("context", "inputs", "active"))
    return {"ctx_rows": torch.from_numpy(pad(ctx, vocab.NONE, np.int64)),
            "ctx_len": torch.tensor([len(c) for c in ctx]), "inp_rows": torch.from_numpy(pad(inp, vocab.NONE, np.int64)),
            "inp_len": torch.tensor([len(x) for x in inp]), "inp_active": torch.from_numpy(pad(act, 0, np.uint8)),
            "inp_end": torch.tensor([end_offset_class(x, metre(s["metre"])) for s, x in zip(samples, inp)])}


def _old_samples(url):
    from webdataset import tariterators

    for raw in tariterators.tarfile_samples([{"url": url}]):
        npy = lambda name: np.load(io.BytesIO(raw[name]), allow_pickle=False)  # noqa: E731
        yield {"key": raw["__key__"], "context": npy("context.npy"), "inputs": npy("inputs.npy"),
               "active": npy("active.npy"), "metre": json.loads(raw["meta.json"]).get("metre", "")}


class BeforeLoader(L.BarLoader):
    """The same plan, read and collated the way the loader did before issue 13."""

    def _load(self, ids):
        wanted = np.array(sorted(ids), dtype=np.int64)
        out = {}
        for s in np.unique(np.searchsorted(self._first_id, wanted, side="right") - 1):
            base = int(self._first_id[s])
            for i, sample in enumerate(_old_samples(self.urls[s])):
                if base + i in ids:
                    out[base + i] = sample
        return out

    def batches(self, skip, worker=0, workers=1):
        for window in self._rank_plan():
            samples = self._load({int(i) for b in window for i in b})
            for ids in window:
                chosen = [samples[int(i)] for i in ids]
                if self.transpose:
                    chosen = [transpose_sample(s, self.transpose, np.random.default_rng(
                        [self.options.seed, self.epoch, int(i)])) for s, i in zip(chosen, ids)]
                batch = _old_collate(chosen)
                batch["keys"] = [s["key"] for s in chosen]
                yield batch


def one_epoch(loader, step_ms: float = 0.0) -> tuple[float, int, int]:
    """`step_ms`: the consumer waits this long per batch, as a training process does while its
    GPU runs the step (the host is free then: loader processes fill that time)."""
    start, bars, rows = time.perf_counter(), 0, 0
    for batch in loader:
        bars += len(batch["keys"])
        rows += int(batch["inp_len"].sum())
        if step_ms:
            time.sleep(step_ms / 1e3)
    return time.perf_counter() - start, bars, rows


def make_root() -> Path:
    from mahler_dist.config import DataConfig
    from mahler_dist.data.preprocess import preprocess

    corpus = Path(os.environ.get("MAHLER_SHARED_DATA", REPO.parent / "shared" / "data" / "midi")) / "piano_midi_de"
    root = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    shutil.copytree(corpus, root / "input", ignore=shutil.ignore_patterns("*.md"))
    preprocess(root, DataConfig())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="a preprocessed ROOT (default: preprocess piano_midi_de into a temporary one)")
    ap.add_argument("--shards", type=int, default=4, help="training shards per epoch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--transpose", type=int, default=0, help="train.transpose_semitones")
    ap.add_argument("--step-ms", type=float, default=5.0,
                    help="also run each loader under a consumer that waits this long per batch (a GPU step); 0: not")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root) if args.root else make_root()
    urls = shard_urls(root, "train")[: args.shards]
    options = L.PlanOptions(**SMALL)

    t = time.perf_counter()
    lengths = L.scan_lengths(urls)
    planned_sidecars = time.perf_counter() - t
    t = time.perf_counter()
    for url in urls:   # what planning cost before: every shard's meta.json
        [json.loads(bytes(s["meta.json"])) for s in L.read_raw_samples(url)]
    planned_reading = time.perf_counter() - t
    has_sidecars = all(L._sidecar_lengths(u) is not None for u in urls)

    configs = {"before": lambda: BeforeLoader(urls, options=options, shard_lengths=lengths, transpose=args.transpose)}
    for w in (0, 1, 2):
        configs[f"now, {w} workers"] = (lambda w=w: L.BarLoader(urls, options=options, shard_lengths=lengths,
                                                               transpose=args.transpose, workers=w))
    order = list(configs)
    best: dict[str, tuple[float, int, int]] = {}
    stepped: dict[str, float] = {}
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            loader = configs[name]()
            loader.set_epoch(r)
            seconds, bars, rows = one_epoch(loader)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, bars, rows)
            line = f"  round {r + 1} {name:<16} {bars / seconds:>9,.0f} bars/s"
            if args.step_ms:
                loader = configs[name]()
                loader.set_epoch(r)
                seconds, bars, _ = one_epoch(loader, args.step_ms)
                stepped[name] = max(stepped.get(name, 0.0), bars / seconds)
                line += f", {bars / seconds:>7,.0f} bars/s beside a {args.step_ms:g} ms step"
            print(line, flush=True)

    base = best["before"][1] / best["before"][0]
    print(f"\n{len(urls)} training shards of {root} ({best['before'][1]:,} bars, {best['before'][2]:,} event rows "
          f"an epoch), small's batching, transpose {args.transpose}, {os.cpu_count()} CPUs, best of {args.rounds}")
    step = f"  bars/s beside a {args.step_ms:g} ms step (x before)" if args.step_ms else ""
    print(f"{'loader':<18}{'bars/s':>10}{'events/s':>12}{'x before':>10}{step}")
    for name, (seconds, bars, rows) in best.items():
        extra = f"{stepped[name]:>14,.0f} ({stepped[name] / stepped['before']:.2f})" if args.step_ms else ""
        print(f"{name:<18}{bars / seconds:>10,.0f}{rows / seconds:>12,.0f}{bars / seconds / base:>10.2f}{extra}")
    print(f"planning lengths: {planned_sidecars * 1e3:,.0f} ms from {'sidecars' if has_sidecars else 'shards (no sidecars)'}, "
          f"{planned_reading * 1e3:,.0f} ms reading every shard's meta.json")


if __name__ == "__main__":
    main()

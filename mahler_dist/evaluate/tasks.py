"""The Ray tasks of `mahler evaluate` (evaluate/run.py): one per shard, results added up."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ray

from mahler_dist.evaluate.baselines import BaselineScorer, BaselineScores, CountBaselines
from mahler_dist.evaluate.recon import EvalPartial

Bar = tuple[str, np.ndarray, str]   # (sample key, rows, metre)
CEILING_BARS_PER_SHARD = 400        # training bars each fit task keeps for the ceiling statistics


@dataclass
class Fitted:
    counts: CountBaselines = field(default_factory=CountBaselines)
    train_bars: list[Bar] = field(default_factory=list)


@ray.remote(num_cpus=1)
def fit_shard(url: str, seed: int) -> Fitted:
    """Baseline counts of one training shard, and a seeded sample of its bars."""
    from mahler_dist.data.loader import read_samples

    fitted, bars = Fitted(), []
    for s in read_samples(url):
        fitted.counts.fit_bar(s["context"], s["inputs"])
        bars.append((s["key"], s["inputs"], s["metre"]))
    rng = np.random.default_rng([seed, len(bars)])
    # whole pieces' runs of bars keep bar-to-bar repetition measurable: take a contiguous stretch
    start = int(rng.integers(0, max(1, len(bars) - CEILING_BARS_PER_SHARD + 1)))
    fitted.train_bars = bars[start:start + CEILING_BARS_PER_SHARD]
    return fitted


def merge_fits(fits: list[Fitted]) -> Fitted:
    out = Fitted()
    for f in fits:
        out.counts.merge(f.counts)
        out.train_bars += f.train_bars
    return out


@ray.remote(num_cpus=1)
def eval_shard(root: str, name: str, checkpoint: str, url: str, counts: CountBaselines, seed: int,
               first_index: int) -> tuple[EvalPartial, BaselineScores, list[Bar]]:
    """The model and the baselines on every bar of one shard of the evaluated split."""
    import torch

    from mahler_dist.data.loader import read_samples
    from mahler_dist.evaluate.recon import evaluate_bars
    from mahler_dist.generate.generator import Generator

    torch.set_num_threads(1)
    gen = Generator.from_run(root, name, checkpoint)
    samples = list(read_samples(url))
    scorer, scores = BaselineScorer(counts), BaselineScores()
    for s in samples:
        scorer.score_bar(scores, s["context"], s["inputs"], s["metre"])
    part = evaluate_bars(gen, samples, seed=seed, first_index=first_index)
    return part, scores, [(s["key"], s["inputs"], s["metre"]) for s in samples]


def merge_evals(parts) -> tuple[EvalPartial, BaselineScores, list[Bar]]:
    partial, scores, bars = EvalPartial(), BaselineScores(), []
    for p, s, b in parts:
        partial.merge(p)
        scores.merge(s)
        bars += b
    return partial, scores, bars


def _compare(real: list, other: list, seed: int) -> dict:
    """OA and KL per feature of `other` against `real` (Yang & Lerch), plus every detail."""
    from mahler_dist.evaluate.distributions import compare_pieces

    detail = compare_pieces(real, other, seed=seed)
    return {"oa": {k: e["oa"] for k, e in detail.items() if e.get("oa") is not None},
            "kl": {k: e["kl"] for k, e in detail.items() if e.get("kl") is not None},
            "bars": sum(len(p) for p in other), "features": detail}


def _summary_counts(pieces: list) -> dict:
    from mahler_dist.evaluate.music_stats import bar_features

    f = bar_features(pieces)
    n = len(f["empty"])
    return {"bars": n, "empty_bars": float(f["empty"].mean()) if n else None,
            "notes_per_bar": float(f["notes"].mean()) if n else None}


@ray.remote(num_cpus=1)
def generation_stats(root: str, name: str, checkpoint: str, real: list, train: list, k: int, bars: int,
                     seed: int) -> dict:
    """K pieces of `bars` bars from the START context and K continuations of the split's pieces
    (each from a bar a quarter into the piece), against the split's real bars; and the training
    split against the split, the ceiling a model that writes like the corpus would reach."""
    import torch

    from mahler_dist.generate.generator import Generator, SampleRequest

    torch.set_num_threads(1)
    gen = Generator.from_run(root, name, checkpoint)
    metres = [m for piece in real for _, m in piece]
    metre = max(set(metres), key=metres.count) if metres else "4/4"
    from_start = gen.sample_many([SampleRequest(bars, seed=seed, index=i, metre=metre, context="start") for i in range(k)])
    rng = np.random.default_rng(seed)
    long_enough = [p for p in real if len(p) >= 2]
    chosen = [long_enough[i] for i in rng.permutation(len(long_enough))[:k]] if long_enough else []
    seeds = [p[len(p) // 4] for p in chosen]
    cont = gen.sample_many([SampleRequest(bars, seed=seed + 1, index=i, metre=m, context=np.asarray(rows),
                                          context_metre=m)
                            for i, (rows, m) in enumerate(seeds)]) if seeds else []
    start_pieces = [[(r, metre) for r in chain] for chain in from_start]
    cont_pieces = [[(r, m) for r in chain] for chain, (_, m) in zip(cont, seeds)]
    capped = sum(len(r) >= gen.max_rows for chain in from_start + cont for r in chain)
    out = {"pieces": k, "bars_per_piece": bars, "metre": str(metre),
           "bars_hit_row_cap": int(capped),
           "from_start": _compare(real, start_pieces, seed),
           "ceiling_train_vs_split": _compare(real, train, seed),
           "real": _summary_counts(real)}
    out["from_start"].update(_summary_counts(start_pieces))
    if cont_pieces:
        out["continuations"] = _compare(real, cont_pieces, seed)
        out["continuations"].update(_summary_counts(cont_pieces))
    return out

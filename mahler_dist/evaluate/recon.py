"""How well a model reconstructs bars: teacher-forced likelihoods and free-running reconstruction.

For a list of bar samples (as the shards hold them: context, inputs, active, metre):
- teacher-forced, posterior mean z: per-property NLL per event and accuracy (the training
  metrics, weighted by what each counts: train/metric_window.py), the END decision, KL in nats
  and bits per bar, and the ELBO per bar (-(sum of every event's NLL) - KL);
- the posterior means' variance across all evaluated bars per latent dimension: active units
  are the dimensions with variance > 0.01 (Burda et al. 2016);
- free-running: z = posterior mean, the bar decoded from the model's own rows (Generator.reconstruct
  with the run's sampling settings, seeded per bar): step-aligned accuracy, note and onset F1,
  bars that hit the row cap.

Results are sums (EvalPartial) so parallel tasks' results add up. PyTorch, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mahler_dist.generate.generator import Generator
from mahler_dist.generate.metrics import ReconStats
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.batch import to_device
from mahler_dist.model.loss import ACTIVE_UNIT_THRESHOLD, compute_loss
from mahler_dist.train.metric_window import MetricWindow, means_of

LONG_AFTER_ANNEALING = 10**9   # the loss's step: KL annealing has finished (beta = beta_max)


@dataclass
class EvalPartial:
    """Sums over evaluated bars; `merge` adds another task's, `summary` gives the report."""

    teacher: dict[str, float] = field(default_factory=dict)   # MetricWindow totals
    mu_sum: np.ndarray | None = None
    mu_sq_sum: np.ndarray | None = None
    free: ReconStats = field(default_factory=ReconStats)

    def merge(self, other: EvalPartial) -> EvalPartial:
        for k, v in other.teacher.items():
            self.teacher[k] = self.teacher.get(k, 0.0) + v
        if other.mu_sum is not None:
            self.mu_sum = other.mu_sum.copy() if self.mu_sum is None else self.mu_sum + other.mu_sum
            self.mu_sq_sum = other.mu_sq_sum.copy() if self.mu_sq_sum is None else self.mu_sq_sum + other.mu_sq_sum
        self.free.merge(other.free)
        return self

    @property
    def bars(self) -> int:
        return int(self.teacher.get("n:bars", 0))

    def summary(self) -> dict:
        m = means_of(self.teacher) if self.teacher else {}
        n = {c: self.teacher.get(f"n:{c}", 0.0) for c in ("bars", "rows", "notes")}
        props = {"offset": ("o", "rows"), "duration": ("d", "rows"), "pitch": ("p", "notes"),
                 "instrument": ("i", "notes")}
        nll = {name: m.get(f"loss_{s}", math.nan) for name, (s, _) in props.items()}
        # every event's NLL of the bars, summed, per bar; plus the END decision once per bar
        total_nll = sum(nll[name] * n[unit] for name, (_, unit) in props.items() if not math.isnan(nll[name]))
        total_nll += m.get("loss_end", 0.0) * n["bars"]
        kl = m.get("kl_nats", 0.0)
        out = {
            "bars": int(n["bars"]), "events": int(n["rows"]), "notes": int(n["notes"]),
            "teacher_forced": {
                "nll_per_event": nll,
                "nll_per_event_all": total_nll / n["rows"] if n["rows"] else math.nan,
                "accuracy": {name: m.get(f"acc_{s}", math.nan) for name, (s, _) in props.items()},
                "end_accuracy": m.get("acc_end", math.nan),
                "class_distance": {name: m.get(f"dist_{s}", math.nan) for name, (s, _) in props.items()
                                   if f"dist_{s}" in m},
            },
            "kl_nats_per_bar": kl, "kl_bits_per_bar": kl / math.log(2),
            "elbo_per_bar": -(total_nll / n["bars"] + kl) if n["bars"] else math.nan,
            "active_units": self.active_units(),
            "latent_dims": int(len(self.mu_sum)) if self.mu_sum is not None else 0,
            "free_running": self.free.summary(teacher_forcing=False),
        }
        return out

    def active_units(self) -> int:
        if self.mu_sum is None or self.bars < 2:
            return 0
        mean = self.mu_sum / self.bars
        var = self.mu_sq_sum / self.bars - mean**2
        return int((var > ACTIVE_UNIT_THRESHOLD).sum())


@torch.no_grad()
def evaluate_bars(gen: Generator, samples: Sequence[dict], *, batch_size: int = 64, seed: int = 0,
                  first_index: int = 0, free_running: bool = True) -> EvalPartial:
    """Evaluate `gen`'s model on `samples` in batches of `batch_size` bars. Bar i of the list
    samples its free-running decode from the stream (seed, first_index + i), so the same bar
    gets the same draw however the bars are split over tasks."""
    model, config = gen.model.eval(), gen.config
    window = MetricWindow(over_ranks=False)   # called on one rank of a training run, too
    part = EvalPartial()
    mu_sum = mu_sq = None
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        batch = to_device(collate_bars(chunk), gen.device)
        out = model(batch, use_mean=True)
        _, metrics = compute_loss(out, batch, config.loss, LONG_AFTER_ANNEALING)
        window.add(metrics)
        if out.mu is not None:
            mu = out.mu.double()
            mu_sum = mu.sum(0) if mu_sum is None else mu_sum + mu.sum(0)
            mu_sq = (mu**2).sum(0) if mu_sq is None else mu_sq + (mu**2).sum(0)
        if free_running:
            rec = gen.reconstruct(chunk, seed=seed,
                                  sample_index=[first_index + start + i for i in range(len(chunk))])
            part.free.merge(rec.stats)
    part.teacher = window.totals()
    if mu_sum is not None:
        part.mu_sum, part.mu_sq_sum = mu_sum.cpu().numpy(), mu_sq.cpu().numpy()
    return part

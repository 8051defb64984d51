"""Means of training and validation metrics over many batches, weighted by what each one counts.

A metric of one batch is a mean over that batch's rows, note rows or bars (model/loss.py
METRIC_UNIT). Averaging those means with equal (or per-bar) weights biases them towards short
batches, and length bucketing makes batch lengths differ a lot; so each mean is weighted by its
own count, and the window's value is exactly the metric of all its rows taken as one batch.

Sums stay on the device (no host sync per step); `reduce` makes one all-reduce over ranks and one
copy to the host.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from mahler_dist.model.loss import COUNTS, KL_TERM, METRIC_UNIT, RECON_TERMS

STEPS = "_steps"


class MetricWindow:
    """`over_ranks=False`: this rank's batches only (one rank measuring alone must not all-reduce:
    the others are not there to meet it)."""

    def __init__(self, over_ranks: bool = True) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.over_ranks = over_ranks
        self.started = time.perf_counter()

    def _acc(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def add(self, metrics: dict[str, torch.Tensor | float], valid: torch.Tensor | None = None) -> None:
        """One batch's metrics, as compute_loss returns them (with its bars/rows/notes counts).
        `valid` (a 0-dim bool tensor): a step that was skipped for a non-finite loss or gradient
        counts as no batch at all - decided on the device, so adding never syncs with the host."""
        device = metrics["rows"].device if torch.is_tensor(metrics["rows"]) else None
        as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=device).detach()  # noqa: E731
        if valid is not None:   # where, not a product: 0 x NaN is NaN
            keep = valid.to(device)
            as_plain = as_t
            as_t = lambda v: torch.where(keep, as_plain(v), 0.0)  # noqa: E731
        weights = {c: as_t(metrics[c]) for c in COUNTS}
        # filled on the device: torch.as_tensor(1.0, device=cuda) would be a host-to-device copy a step
        weights[STEPS] = as_t(torch.ones((), dtype=torch.float64, device=device))
        for c, w in weights.items():
            self._acc(f"n:{c}", w)
        for k, v in metrics.items():
            if k in COUNTS or k in ("loss", "recon"):
                continue   # counts are summed above; loss and recon are re-added in reduce
            self._acc(k, as_t(v) * weights[METRIC_UNIT.get(k, STEPS)])

    def totals(self) -> dict[str, float]:
        """The raw weighted sums and counts, summed over ranks (mergeable: add two such dicts)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        flat = torch.stack([self.sums[k].reshape(()) for k in keys])
        if self.over_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
        return dict(zip(keys, flat.tolist()))

    def reduce(self) -> dict[str, float]:
        """Means over every rank's batches since the window started (the same dict on every rank)."""
        totals = self.totals()
        if not totals:
            return {}
        out = means_of(totals)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        out.update(samples_per_s=totals["n:bars"] / seconds, events_per_s=totals["n:rows"] / seconds)
        return out


def means_of(totals: dict[str, float]) -> dict[str, float]:
    """Weighted sums -> means (each by its own count), with recon and loss re-added from terms."""
    sums = dict(totals)
    counts = {c: sums.pop(f"n:{c}") for c in (*COUNTS, STEPS)}
    out = {k: v / max(counts[METRIC_UNIT.get(k, STEPS)], 1.0) for k, v in sums.items()}
    recon = [out[k] for k in RECON_TERMS if k in out]
    if recon:
        out["recon"] = sum(recon)
        out["loss"] = out["recon"] + out.get(KL_TERM, 0.0)
    return out

"""One training step with no host sync, and the guard against non-finite steps.

Everything a step produces stays on the device: the metrics (model/loss.py returns 0-dim
tensors, MetricWindow sums them there), the gradient norm, and whether the step was finite. A
step whose loss or gradient norm is not finite is skipped where it is decided - fused Adam and
TFRMSprop read `optimizer.found_inf` and leave the weights and their state as they were - and
counted on the device; the host looks at the counts only at the log interval (`NonFiniteGuard.
check`), so a GPU never waits for the CPU inside an epoch. An optimiser that cannot skip on the
device (an unfused Adam restored from an old checkpoint) falls back to one host check per step.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from mahler_dist.errors import MahlerError
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.optim import clip_gradients, skips_on_device


class TrainingDiverged(MahlerError):
    """train.max_nonfinite_steps non-finite steps in a row: the run ends on purpose, on every rank
    at once, and is not retried (a restart from the last checkpoint would diverge the same way)."""


class NonFiniteGuard:
    """Counts skipped steps on the device: in all, and in a row (reset by a finite step)."""

    def __init__(self, limit: int, device):
        self.limit = limit
        self.total = torch.zeros((), dtype=torch.long, device=device)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)

    def update(self, finite: torch.Tensor) -> None:
        bad = (~finite).long()
        self.total += bad
        self.in_a_row.mul_(bad).add_(bad)

    def check(self, step: int) -> int:
        """Host side, at the log interval: the skipped steps so far; raises TrainingDiverged after
        `limit` in a row. Under DDP the counts are the largest of any rank's (one all-reduce per
        log interval), so every rank decides the same and stops at the same step."""
        counts = torch.stack([self.total, self.in_a_row])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        total, row = (int(v) for v in counts.tolist())
        if row >= self.limit:
            raise TrainingDiverged(
                f"training stopped at step {step}: the last {row} steps had a non-finite loss or gradient "
                f"({total} skipped in all; train.max_nonfinite_steps is {self.limit}). Lower train.lr, "
                "set train.grad_clip_norm, or use train.precision fp32 (in the run's config.yaml), then run the same "
                "command to resume from the last checkpoint")
        return total


def train_step(model: torch.nn.Module, raw_model: torch.nn.Module, batch, optimizer, config, step: int,
               autocast: AbstractContextManager, guard: NonFiniteGuard) -> tuple[dict, torch.Tensor]:
    """Forward, backward, clip and update once -> (metrics as device tensors, finite flag)."""
    with autocast:
        out = model(batch)
        loss, metrics = compute_loss(out, batch, config.loss, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_gradients(raw_model, config.train)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(norm.to(loss.device))
    if skips_on_device(optimizer):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):   # the one host sync, for optimisers that cannot skip on the device
        optimizer.step()
    guard.update(finite)
    metrics["grad_norm"] = norm
    return metrics, finite

"""Optimisers and gradient clipping (reference 4.3).

The original trained with TF1's RMSPropOptimizer, whose semantics differ from torch.optim.RMSprop:
epsilon sits inside the square root and the mean-square accumulator starts at 1.0, not 0 (so the
first steps are small rather than of size lr / sqrt(1 - rho)). `TFRMSprop` reproduces them.

Weight decay is the original's `regularization * sum ||w||^2 / 2` added to the loss: its gradient
is `regularization * w` added to each weight's gradient, i.e. coupled weight decay. It applies
to weight matrices only, not to biases, normalisation parameters or learned initial states.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from mahler_dist.config import TrainConfig

TF_RMSPROP_RHO = 0.9
TF_RMSPROP_EPS = 1e-10
TF_RMSPROP_INITIAL_ACCUMULATOR = 1.0


class TFRMSprop(torch.optim.Optimizer):
    """ms = rho*ms + (1-rho)*g^2 (ms starts at `initial_accumulator`);
    mom = momentum*mom + lr*g / sqrt(ms + eps);  p -= mom."""

    def __init__(self, params: Iterable, lr: float = 1e-3, rho: float = TF_RMSPROP_RHO,
                 eps: float = TF_RMSPROP_EPS, momentum: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator: float = TF_RMSPROP_INITIAL_ACCUMULATOR):
        defaults = dict(lr=lr, rho=rho, eps=eps, momentum=momentum, weight_decay=weight_decay,
                        initial_accumulator=initial_accumulator)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """`self.found_inf` (a 0-dim tensor, set by the caller as GradScaler sets it on fused
        Adam): where it is nonzero the step changes nothing - decided on the device, no host sync."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found = getattr(self, "found_inf", None)
        keep = None if found is None else found.bool()

        def commit(t: torch.Tensor, new: torch.Tensor) -> None:
            t.copy_(new if keep is None else torch.where(keep, t, new))

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.full_like(p, group["initial_accumulator"],
                                                  memory_format=torch.preserve_format)
                    if group["momentum"]:
                        state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms = state["ms"]
                commit(ms, ms.mul(group["rho"]).addcmul_(grad, grad, value=1.0 - group["rho"]))
                denom = ms.add(group["eps"]).sqrt_()
                if group["momentum"]:
                    mom = state["mom"]
                    commit(mom, mom.mul(group["momentum"]).addcdiv_(grad, denom, value=group["lr"]))
                    commit(p, p.sub(mom))
                else:
                    commit(p, p.addcdiv(grad, denom, value=-group["lr"]))
        return loss


def _decays(name: str, p: nn.Parameter) -> bool:
    """Weight matrices decay; biases, BN parameters (1-D) and initial states don't."""
    return p.ndim >= 2 and "initial_state" not in name


def parameter_groups_for_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if _decays(n, p)]
    rest = [p for n, p in trainable if not _decays(n, p)]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop with TF1 semantics (the original), or Adam (coupled L2 like the original's)."""
    groups = parameter_groups_for_decay(model, cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return TFRMSprop(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        # TF's Adam defaults equal PyTorch's (betas 0.9/0.999, eps 1e-8). Fused: one kernel per
        # step on a GPU, and it takes `found_inf`, so a non-finite step is skipped on the device
        return torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    raise ValueError(f"train.optimizer: unknown optimiser {cfg.optimizer!r}")


def clip_gradients(model: nn.Module, cfg: TrainConfig) -> torch.Tensor:
    """Clip by value (each element to +-grad_clip_value, the original), then by global norm
    (grad_clip_norm); 0 disables either. Returns the global gradient norm before clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    if cfg.grad_clip_value > 0:
        for g in grads:
            g.clamp_(-cfg.grad_clip_value, cfg.grad_clip_value)
    if cfg.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                       cfg.grad_clip_norm)
    return norm


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Does `optimizer.step()` honour `optimizer.found_inf` (skip without a host sync)? Fused Adam
    and TFRMSprop do; an Adam restored from a checkpoint of an unfused one does not."""
    if isinstance(optimizer, TFRMSprop):
        return True
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)

"""Losses and metrics (reference section 4).

Reconstruction: one cross-entropy per property, a masked mean over the real rows of the whole
batch (TF `sequence_loss`): offset and duration over every real row, pitch and instrument over
note rows only (pause rows have no pitch), padding nowhere. The four terms are summed.

KL: KL(q(z | bar, ctx) || p(z | ctx)) per bar, summed over latent dims ("mean" = the
original's 1/z_dim scale, reference 9 item 2), minus free bits (per bar, floored at 0), averaged
over the batch and weighted by beta. Without the VAE there is no KL term and no KL metric.

Metrics are detached 0-dim tensors (no host sync until the caller asks):
    loss, recon, loss_{o,d,p,i}, acc_{o,d,p,i}, dist_{o,d,p}  (mean |argmax - target| class),
    kl_loss (the weighted term), kl_nats / kl_bits (true KL per bar, summed over dims), beta,
    active_units (dims whose posterior mean varies across the batch, Burda et al. 2016),
    bars, rows, notes (counts, to weight averages over batches exactly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mahler_dist.config import LossConfig
from mahler_dist.model.batch import Batch
from mahler_dist.model.cvae import ModelOutput
from mahler_dist.model.heads import PROPERTIES
from mahler_dist.music import vocab as V

SHORT = {"offset": "o", "duration": "d", "pitch": "p", "instrument": "i"}
COLUMN = {"offset": V.OFFSET, "duration": V.DURATION, "pitch": V.PITCH,
          "instrument": V.INSTRUMENT}
DISTANCE_PROPERTIES = ("offset", "duration", "pitch")   # as the original's `dst`
ACTIVE_UNIT_THRESHOLD = 0.01

# What each metric is a mean over, so a mean over batches of different lengths weights each batch
# by that count and equals the metric of all the rows as one batch: offset and duration over real
# rows, pitch and instrument over note rows, END and KL over bars. Any other metric (lr, beta,
# grad_norm, active_units) is one value per step. `recon` and `loss` are sums of means: they are
# re-added from their weighted terms (RECON_TERMS, KL_TERM), never averaged themselves.
COUNTS = ("bars", "rows", "notes")
METRIC_UNIT = {**{f"{m}_{s}": "rows" for m in ("loss", "acc", "dist") for s in ("o", "d")},
               **{f"{m}_{s}": "notes" for m in ("loss", "acc", "dist") for s in ("p", "i")},
               "loss_end": "bars", "acc_end": "bars", "kl_loss": "bars", "kl_nats": "bars", "kl_bits": "bars"}
IGNORE = -100   # F.cross_entropy's ignore_index for rows outside a term's mask
RECON_TERMS = ("loss_o", "loss_d", "loss_p", "loss_i", "loss_end")
KL_TERM = "kl_loss"


def kl_weight(cfg: LossConfig, step: int) -> float:
    """beta(step) = beta_max * (1 - beta_rate ** step) when annealing, else 1."""
    return cfg.beta_max * (1.0 - cfg.beta_rate ** step) if cfg.beta_annealing else 1.0


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """Per-dim KL(N(mu, e^logvar) || prior) [B, Z]; the prior is N(0, I) when not given."""
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return 0.5 * (prior_logvar - logvar
                  + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def row_masks(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(real rows, note rows), bool [B, T]. A note row has a pitch; pause rows and padding don't."""
    rows = batch["inp_rows"]
    steps = torch.arange(rows.shape[1], device=rows.device)
    real = steps.unsqueeze(0) < batch["inp_len"].unsqueeze(1)
    return real, real & (rows[..., V.PITCH] >= 0)


def compute_loss(out: ModelOutput, batch: Batch, cfg: LossConfig, step: int
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-> (total loss to backpropagate, metrics). `step` drives beta annealing."""
    real, notes = row_masks(batch)
    metrics: dict[str, torch.Tensor] = {}
    recon = torch.zeros((), device=real.device)
    for name in PROPERTIES:
        mask = real if name in ("offset", "duration") else notes
        logits = getattr(out, name)                                    # [B, T, C]
        target = batch["inp_rows"][..., COLUMN[name]]                  # [B, T]
        # masked by ignore_index and products, never by boolean indexing: its result's size would
        # have to come back to the host, a sync every step on a GPU
        n = mask.sum().clamp(min=1)
        picked = torch.where(mask, target, IGNORE)
        # A batch of pause rows only has no pitch targets: the term is 0, not NaN.
        ce = F.cross_entropy(logits.flatten(0, 1), picked.flatten(), ignore_index=IGNORE, reduction="sum") / n
        recon = recon + ce
        s = SHORT[name]
        metrics[f"loss_{s}"] = ce.detach()
        with torch.no_grad():
            guess = logits.argmax(-1)
            metrics[f"acc_{s}"] = ((guess == target) & mask).sum() / n
            if name in DISTANCE_PROPERTIES:
                metrics[f"dist_{s}"] = ((guess - target).abs() * mask).sum() / n
    if out.end is not None and "inp_end" in batch:
        # END of bar: one more offset decision per bar (its own term, so acc_o stays per row)
        ce_end = F.cross_entropy(out.end, batch["inp_end"])
        recon = recon + ce_end
        metrics["loss_end"] = ce_end.detach()
        with torch.no_grad():
            metrics["acc_end"] = (out.end.argmax(-1) == batch["inp_end"]).float().mean()
    total = recon
    metrics["recon"] = recon.detach()
    if out.mu is not None:
        kl_dims = gaussian_kl(out.mu, out.logvar, out.prior_mu, out.prior_logvar)  # [B, Z]
        kl = kl_dims.sum(-1) if cfg.kl_reduction == "sum" else kl_dims.mean(-1)    # [B]
        kl = (kl - cfg.free_bits * math.log(2)).clamp(min=0.0).mean()
        beta = kl_weight(cfg, step)
        total = total + beta * kl
        with torch.no_grad():
            nats = kl_dims.sum(-1).mean()
            metrics.update(kl_loss=(beta * kl).detach(), kl_nats=nats, kl_bits=nats / math.log(2),
                           beta=kl.new_full((), beta), active_units=active_units(out.mu))
    metrics["loss"] = total.detach()
    metrics.update(bars=batch["inp_len"].new_full((), len(batch["inp_len"])),
                   rows=real.sum(), notes=notes.sum())
    return total, metrics


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> torch.Tensor:
    """Latent dims whose posterior mean varies across the batch: Var_x(E[z|x]) > threshold."""
    if mu.shape[0] < 2:
        return torch.zeros((), dtype=torch.long, device=mu.device)
    return (mu.detach().float().var(dim=0) > threshold).sum()

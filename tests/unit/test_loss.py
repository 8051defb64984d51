"""Losses and metrics: masking of pause rows and padding, the KL (sum / mean, free bits, beta,
learned prior), accuracies and class distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mahler_dist.config import LossConfig
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.cvae import ModelOutput
from mahler_dist.model.loss import active_units, compute_loss, gaussian_kl, kl_weight
from mahler_dist.music import vocab as V


def bar(rows: list[tuple[int, int, int, int, int]]) -> dict[str, np.ndarray]:
    inputs = np.array(rows, dtype=V.ROW_DTYPE)
    return {"context": V.START_ROW[None], "inputs": inputs,
            "active": np.zeros((len(rows), V.ACTIVE_BYTES), np.uint8)}


# bar 0: note, pause, note (3 rows); bar 1: one note (padded to 3 rows)
BATCH = collate_bars([bar([(0, 0, 12, 40, 0), (24, 0, 0, -1, -1), (0, 4, 6, 43, 1)]),
                      bar([(6, 1, 12, 50, 2)])])
PAUSE = (0, 1)
PADDING = [(1, 1), (1, 2)]


def logits(seed: int = 0, z: int | None = 4) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    shape = BATCH["inp_rows"].shape[:2]
    heads = {k: torch.randn(*shape, n, generator=g, requires_grad=True)
             for k, n in (("offset", 60), ("duration", 60), ("pitch", 96), ("instrument", 23))}
    if z is None:
        return ModelOutput(**heads)
    return ModelOutput(**heads, mu=torch.randn(2, z, generator=g, requires_grad=True),
                       logvar=torch.randn(2, z, generator=g, requires_grad=True))


def test_reconstruction_is_masked_mean_cross_entropy():
    out = logits()
    _, m = compute_loss(out, BATCH, LossConfig(), step=0)
    real = [(0, 0), (0, 1), (0, 2), (1, 0)]
    notes = [(0, 0), (0, 2), (1, 0)]
    for name, col, cells, key in (("offset", V.OFFSET, real, "o"), ("duration", V.DURATION, real, "d"),
                                  ("pitch", V.PITCH, notes, "p"), ("instrument", V.INSTRUMENT, notes, "i")):
        x = torch.stack([getattr(out, name)[c] for c in cells])
        y = torch.stack([BATCH["inp_rows"][c][col] for c in cells])
        torch.testing.assert_close(m[f"loss_{key}"], F.cross_entropy(x, y).detach())
    assert m["rows"] == 4 and m["notes"] == 3 and m["bars"] == 2


def test_pause_rows_contribute_nothing_to_pitch_and_instrument():
    out = logits()
    loss, _ = compute_loss(out, BATCH, LossConfig(), step=0)
    loss.backward()
    assert (out.pitch.grad[PAUSE] == 0).all() and (out.instrument.grad[PAUSE] == 0).all()
    assert (out.offset.grad[PAUSE] != 0).any() and (out.duration.grad[PAUSE] != 0).any()


def test_padding_contributes_nothing_anywhere():
    out = logits()
    loss, _ = compute_loss(out, BATCH, LossConfig(), step=0)
    loss.backward()
    for name in ("offset", "duration", "pitch", "instrument"):
        for cell in PADDING:
            assert (getattr(out, name).grad[cell] == 0).all()
    # and scribbling on the padding logits leaves every figure as it was
    scribbled = logits()
    for name in ("offset", "duration", "pitch", "instrument"):
        with torch.no_grad():
            for cell in PADDING:
                getattr(scribbled, name)[cell] = 1e3
    _, a = compute_loss(logits(), BATCH, LossConfig(), step=0)
    _, b = compute_loss(scribbled, BATCH, LossConfig(), step=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_of_pauses_has_zero_pitch_loss_not_nan():
    batch = collate_bars([bar([(48, 0, 0, -1, -1)])])
    out = ModelOutput(*(torch.zeros(1, 1, n) for n in (60, 60, 96, 23)))
    loss, m = compute_loss(out, batch, LossConfig(), step=0)
    assert torch.isfinite(loss) and m["loss_p"] == 0 and m["notes"] == 0


def test_accuracy_and_class_distance():
    out = logits()
    with torch.no_grad():
        out.offset.zero_()
        out.offset[..., 2] = 1.0                     # always guesses offset class 2
    _, m = compute_loss(out, BATCH, LossConfig(), step=0)
    targets = [0, 24, 0, 6]
    assert m["acc_o"] == 0
    assert m["dist_o"] == pytest.approx(np.mean([abs(t - 2) for t in targets]))
    assert "dist_i" not in m                         # class distance means nothing for instruments


def test_kl_is_summed_over_dims_or_mean_in_compat_mode():
    out = logits(z=8)
    per_dim = 0.5 * (out.mu ** 2 + out.logvar.exp() - 1 - out.logvar)
    _, summed = compute_loss(out, BATCH, LossConfig(), step=0)
    _, mean = compute_loss(out, BATCH, LossConfig(kl_reduction="mean"), step=0)
    torch.testing.assert_close(summed["kl_loss"], per_dim.sum(-1).mean().detach())
    torch.testing.assert_close(mean["kl_loss"], per_dim.mean(-1).mean().detach())
    # the reported KL is the true one either way, in nats and bits per bar
    torch.testing.assert_close(mean["kl_nats"], summed["kl_nats"])
    torch.testing.assert_close(summed["kl_bits"], summed["kl_nats"] / math.log(2))


def test_free_bits_floor_per_bar():
    out = logits(z=8)
    kl = gaussian_kl(out.mu, out.logvar).sum(-1).detach()          # [2]
    bits = float(kl.min()) / math.log(2) + 0.5                      # between the two bars
    _, m = compute_loss(out, BATCH, LossConfig(free_bits=bits), step=0)
    expected = (kl - bits * math.log(2)).clamp(min=0).mean()
    torch.testing.assert_close(m["kl_loss"], expected)
    _, huge = compute_loss(out, BATCH, LossConfig(free_bits=1e6), step=0)
    assert huge["kl_loss"] == 0 and huge["kl_nats"] > 0


def test_beta_annealing():
    cfg = LossConfig(beta_annealing=True, beta_max=0.2, beta_rate=0.99)
    assert kl_weight(cfg, 0) == 0.0
    assert kl_weight(cfg, 100) == pytest.approx(0.2 * (1 - 0.99 ** 100))
    assert kl_weight(LossConfig(), 10_000) == 1.0
    out = logits()
    total, m = compute_loss(out, BATCH, cfg, step=100)
    kl = gaussian_kl(out.mu, out.logvar).sum(-1).mean().detach()
    torch.testing.assert_close(m["kl_loss"], kl_weight(cfg, 100) * kl)
    torch.testing.assert_close(total.detach(), m["recon"] + m["kl_loss"])


def test_kl_against_a_learned_prior_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    mu, lv, pmu, plv = (torch.randn(5, 7, generator=g) for _ in range(4))
    q = torch.distributions.Normal(mu, (0.5 * lv).exp())
    p = torch.distributions.Normal(pmu, (0.5 * plv).exp())
    torch.testing.assert_close(gaussian_kl(mu, lv, pmu, plv), torch.distributions.kl_divergence(q, p))
    std = torch.distributions.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    torch.testing.assert_close(gaussian_kl(mu, lv), torch.distributions.kl_divergence(q, std))


def test_active_units_counts_dims_that_vary_across_bars():
    mu = torch.zeros(16, 6)
    mu[:, 0] = torch.linspace(-1, 1, 16)
    mu[:, 3] = torch.linspace(-0.5, 0.5, 16)
    mu[:, 5] = 0.001 * torch.arange(16)               # below the 0.01 variance threshold
    assert active_units(mu) == 2

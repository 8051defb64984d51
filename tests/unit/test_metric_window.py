"""Metrics over many batches are weighted by what each metric counts (issue 10).

Length bucketing makes batches of very different lengths; weighting each batch's mean by bars
(as before) biased val_score, which picks the best checkpoint, towards the short batches.
"""

from __future__ import annotations

import pytest
import torch

from mahler_dist.config import load_config, resolve_config_path
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.synthetic import random_piece
from mahler_dist.train.metric_window import MetricWindow


def _batch_metrics(bars: int, rows: int, notes: int, **values: float) -> dict[str, torch.Tensor]:
    counts = {"bars": torch.tensor(bars), "rows": torch.tensor(rows), "notes": torch.tensor(notes)}
    return {**counts, **{k: torch.tensor(v) for k, v in values.items()}}


def test_two_batches_of_different_lengths_give_the_event_weighted_mean():
    window = MetricWindow()
    window.add(_batch_metrics(2, 10, 4, loss_o=1.0, loss_p=3.0, acc_p=0.5, kl_loss=0.5, lr=0.1, loss=9.9))
    window.add(_batch_metrics(1, 30, 20, loss_o=2.0, loss_p=1.0, acc_p=0.25, kl_loss=2.0, lr=0.3, loss=9.9))
    got = window.reduce()
    assert got["loss_o"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)      # per row
    assert got["loss_p"] == pytest.approx((4 * 3.0 + 20 * 1.0) / 24)       # per note row
    assert got["acc_p"] == pytest.approx((4 * 0.5 + 20 * 0.25) / 24)
    assert got["kl_loss"] == pytest.approx((2 * 0.5 + 1 * 2.0) / 3)        # per bar
    assert got["lr"] == pytest.approx(0.2)                                  # per step
    # loss is re-added from its weighted terms, not averaged (the batches' own 9.9 is ignored)
    assert got["recon"] == pytest.approx(got["loss_o"] + got["loss_p"])
    assert got["loss"] == pytest.approx(got["recon"] + got["kl_loss"])
    # the bar-weighted mean the old window gave differs: the test tells them apart
    assert got["loss_o"] != pytest.approx((2 * 1.0 + 1 * 2.0) / 3)


def test_the_window_of_two_batches_equals_the_metrics_of_their_rows_as_one_batch():
    """With the model in eval mode (posterior mean, BN running stats) each bar's logits do not
    depend on the other bars of its batch, so every per-event metric of two batches of different
    lengths, averaged by the window, must equal the metric of one batch holding all their bars."""
    config = load_config(resolve_config_path("tiny"))
    torch.manual_seed(0)
    model = MahlerNet(config.model).eval()
    short = random_piece(seed=1, bars=6, min_rows=2, max_rows=6)
    long = random_piece(seed=2, bars=3, min_rows=30, max_rows=40)

    def metrics(samples):
        batch = collate_bars(samples)
        with torch.no_grad():
            _, m = compute_loss(model(batch, use_mean=True), batch, config.loss, step=10)
        return m

    window = MetricWindow()
    window.add(metrics(short))
    window.add(metrics(long))
    got = window.reduce()
    whole = metrics(short + long)
    for k in ("loss_o", "loss_d", "loss_p", "loss_i", "acc_o", "acc_p", "dist_p", "kl_nats", "recon", "loss"):
        if k in whole:
            assert got[k] == pytest.approx(float(whole[k]), rel=1e-5, abs=1e-6), k

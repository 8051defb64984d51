"""Issue 10 item 1, model side: a batch of one bar must train, not crash (BatchNorm in train mode
cannot take batch statistics from one sample), and batches of two or more keep the original's
BatchNorm maths exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mahler_dist.config import load_config, resolve_config_path
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.layers import tf_batch_norm
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.summary import build_meta_model, parameter_groups
from mahler_dist.model.synthetic import random_piece

TINY = load_config(resolve_config_path("tiny"))


@pytest.mark.parametrize("changes", [{}, {"logits_batch_norm": True}])
def test_one_bar_batch_trains_forward_and_backward(changes):
    torch.manual_seed(0)
    model = MahlerNet(dataclasses.replace(TINY.model, **changes)).train()
    one = collate_bars(random_piece(seed=3, bars=1, max_rows=1))     # one bar of one row
    assert one["inp_rows"].shape[:2] == (1, 1)
    bn = model.z_proj.net[1]
    before = bn.running_mean.clone(), bn.running_var.clone()
    loss, _ = compute_loss(model(one), one, TINY.loss, step=0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the z projection still learns from a one-bar batch (normalised by the running statistics)
    assert model.z_proj.net[0].weight.grad.abs().sum() > 0
    # one sample is no estimate of the batch statistics: the running averages are left alone
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


def test_batch_norm_keeps_batch_statistics_from_two_samples():
    torch.manual_seed(1)
    ours, reference = tf_batch_norm(8), torch.nn.BatchNorm1d(8, eps=1e-3, momentum=0.01)
    x = torch.randn(2, 8) * 3 + 1
    assert torch.equal(ours.train()(x), reference.train()(x))
    assert torch.equal(ours.running_mean, reference.running_mean)
    assert torch.equal(ours.running_var, reference.running_var)
    # one sample: the output equals eval mode's (running statistics), not a degenerate zero
    single = x[:1]
    assert torch.allclose(ours.train()(single), ours.eval()(single))


def test_mahlernet_preset_keeps_its_parameter_count():
    model = build_meta_model(load_config(resolve_config_path("mahlernet")).model)
    assert parameter_groups(model)["total"] == 23_005_951

"""Optimisers (RMSprop with TF1 semantics, Adam), weight decay groups and gradient clipping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mahler_dist.config import ModelConfig, TrainConfig
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.optim import TFRMSprop, build_optimizer, clip_gradients, parameter_groups_for_decay


def test_tf_rmsprop_follows_tf1_update_rule():
    """ms starts at 1 and eps is inside the sqrt: p -= lr * g / sqrt(0.9 * ms + 0.1 * g^2 + eps)."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = TFRMSprop([p], lr=0.1)
    ms, ref = torch.ones(3), p.detach().clone()
    for g in (torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.1, 0.3, 0.0])):
        p.grad = g.clone()
        opt.step()
        ms = 0.9 * ms + 0.1 * g * g
        ref = ref - 0.1 * g / torch.sqrt(ms + 1e-10)
        torch.testing.assert_close(p.detach(), ref)


def test_tf_rmsprop_first_step_is_small_unlike_torch_rmsprop():
    """With the accumulator at 1 the first step is lr * g / sqrt(0.9 + 0.1 g^2), about lr * g;
    PyTorch's starts at 0 and jumps by lr / sqrt(1 - rho) ~ 3.2 lr whatever the gradient's size."""
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad = b.grad = torch.tensor([0.01])
    TFRMSprop([a], lr=1.0).step()
    torch.optim.RMSprop([b], lr=1.0, alpha=0.9).step()
    assert abs(a.item()) == pytest.approx(0.01 / (0.9 + 0.1 * 0.01 ** 2) ** 0.5, rel=1e-5)
    assert abs(b.item()) == pytest.approx(1 / 0.1 ** 0.5, rel=1e-3)


def test_tf_rmsprop_momentum_and_state_dict_round_trip():
    p = nn.Parameter(torch.ones(2))
    opt = TFRMSprop([p], lr=0.1, momentum=0.5)
    p.grad = torch.ones(2)
    opt.step()
    clone = TFRMSprop([nn.Parameter(p.detach().clone())], lr=0.1, momentum=0.5)
    clone.load_state_dict(opt.state_dict())
    assert torch.equal(clone.state[clone.param_groups[0]["params"][0]]["mom"], opt.state[p]["mom"])


def _model() -> MahlerNet:
    torch.manual_seed(0)
    return MahlerNet(ModelConfig(enc_layers=1, enc_size=8, z_dim=4, dec_layers=1, dec_size=8))


@pytest.mark.parametrize("name, cls", [("rmsprop", TFRMSprop), ("adam", torch.optim.Adam)])
def test_build_optimizer(name, cls):
    model = _model()
    opt = build_optimizer(model, TrainConfig(optimizer=name, lr=0.01, weight_decay=0.05))
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.01
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [n for n, p in model.named_parameters() if id(p) not in params]
    assert frozen and all("bias_hh" in n for n in frozen)     # the TF-equivalent frozen bias


def test_weight_decay_skips_biases_norms_and_initial_states():
    model = _model()
    decay, rest = parameter_groups_for_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert "decoder.weight_ih_l0" in decayed and "heads.linear.pitch.weight" in decayed
    assert not any("bias" in n or "initial_state" in n or ".1.weight" in n for n in decayed)


def _with_grads(values: list[float]) -> nn.Module:
    m = nn.Linear(len(values), 1, bias=False)
    m.weight.grad = torch.tensor([values])
    return m


def test_clip_by_value_is_elementwise_and_returns_the_norm_before():
    m = _with_grads([3.0, -0.5, -4.0])
    norm = clip_gradients(m, TrainConfig(grad_clip_value=1.0, grad_clip_norm=0.0))
    assert float(norm) == pytest.approx((9 + 0.25 + 16) ** 0.5)
    assert m.weight.grad.tolist() == [[1.0, -0.5, -1.0]]


def test_clip_by_norm_keeps_direction():
    m = _with_grads([3.0, 4.0])
    clip_gradients(m, TrainConfig(grad_clip_value=0.0, grad_clip_norm=1.0))
    torch.testing.assert_close(m.weight.grad, torch.tensor([[0.6, 0.8]]), atol=1e-5, rtol=0)
    untouched = _with_grads([3.0, 4.0])
    clip_gradients(untouched, dataclasses.replace(TrainConfig(), grad_clip_value=0.0))
    assert untouched.weight.grad.tolist() == [[3.0, 4.0]]

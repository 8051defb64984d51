"""The training step (issue 13): no host sync decides anything, a non-finite step is skipped on
the device and counted, N in a row stop the run, and the bf16 autocast path trains on a CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mahler_dist.config import load_config, resolve_config_path
from mahler_dist.data.collate import collate_bars, end_targets
from mahler_dist.errors import MahlerError
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.optim import build_optimizer, skips_on_device
from mahler_dist.model.synthetic import random_piece
from mahler_dist.music.rows import end_offset_class
from mahler_dist.music.timing import normalise_metre
from mahler_dist.train.metric_window import MetricWindow
from mahler_dist.train.step import NonFiniteGuard, train_step


def _setup(optimizer: str = "adam", precision_bf16: bool = False):
    cfg = load_config(resolve_config_path("tiny"))
    cfg.train = dataclasses.replace(cfg.train, optimizer=optimizer, max_nonfinite_steps=3)
    torch.manual_seed(0)
    model = MahlerNet(cfg.model)
    batch = collate_bars(random_piece(seed=3, bars=8, max_rows=16))
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16)  # noqa: E731
    return cfg, model, build_optimizer(model, cfg.train), batch, autocast


def _snapshot(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in optimizer.state.values()]
    return params, state


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_non_finite_step_changes_nothing_and_is_counted(optimizer):
    cfg, model, opt, batch, autocast = _setup(optimizer)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, "cpu")
    assert skips_on_device(opt)
    train_step(model, model, batch, opt, cfg, 0, autocast(), guard)   # optimiser state exists now
    params, state = _snapshot(model, opt)
    with torch.no_grad():
        model.heads.linear["pitch"].weight[0, 0] = float("inf")      # the injected inf
    params[[n for n, _ in model.named_parameters()].index("heads.linear.pitch.weight")][0, 0] = float("inf")
    metrics, finite = train_step(model, model, batch, opt, cfg, 1, autocast(), guard)
    assert not bool(finite)
    for before, p in zip(params, model.parameters()):
        assert torch.equal(before, p.detach())
    for before, after in zip(state, opt.state.values()):
        for k, v in before.items():
            assert torch.equal(v, after[k]) if torch.is_tensor(v) else v == after[k], k
    assert guard.check(step=2) == 1
    window = MetricWindow(over_ranks=False)
    window.add(metrics, valid=finite)
    assert window.totals()["n:bars"] == 0          # a skipped step is no batch in the means


def test_a_finite_step_after_a_skip_trains_and_resets_the_run_of_skips():
    cfg, model, opt, batch, autocast = _setup()
    guard = NonFiniteGuard(3, "cpu")
    guard.update(torch.tensor(False))
    guard.update(torch.tensor(False))
    before = [p.detach().clone() for p in model.parameters()]
    _, finite = train_step(model, model, batch, opt, cfg, 0, autocast(), guard)
    assert bool(finite) and guard.check(step=3) == 2
    assert int(guard.in_a_row) == 0
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def test_n_non_finite_steps_in_a_row_stop_the_run_with_a_clear_message():
    cfg, model, opt, batch, autocast = _setup()
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, "cpu")
    with torch.no_grad():
        model.heads.linear["offset"].bias.fill_(float("nan"))
    for step in range(3):
        train_step(model, model, batch, opt, cfg, step, autocast(), guard)
    with pytest.raises(MahlerError, match=r"last 3 steps had a non-finite loss.*max_nonfinite_steps"):
        guard.check(step=3)


def test_the_bf16_autocast_path_trains_on_a_cpu_with_fp32_lstms():
    cfg, model, opt, batch, autocast = _setup(precision_bf16=True)
    guard = NonFiniteGuard(3, "cpu")
    seen = []
    model.decoder.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    losses = []
    for step in range(8):
        metrics, finite = train_step(model, model, batch, opt, cfg, step, autocast(), guard)
        assert bool(finite)
        losses.append(float(metrics["recon"]))
    assert seen and set(seen) == {torch.float32}    # the LSTM ran in fp32 under bf16 autocast
    assert losses[-1] < losses[0]


def test_vectorised_end_targets_equal_the_per_bar_rule():
    bars = random_piece(seed=5, bars=40, max_rows=30)
    metres = ["4/4", "3/4", "6/8", "2/4", "12/8", ""] * 7
    lengths = np.array([len(b["inputs"]) for b in bars])
    got = end_targets(np.concatenate([b["inputs"] for b in bars]), lengths, metres[:len(bars)])
    want = [end_offset_class(b["inputs"], normalise_metre(*map(int, (m or "4/4").split("/"))))
            for b, m in zip(bars, metres)]
    assert got.tolist() == want

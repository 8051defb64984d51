"""model.dec_input_dropout (issue 11): in training, a random share of decoder steps gets step 0's
empty input and no interval term; evaluation and generation see every row."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mahler_dist.config import ConfigError, config_from_dict, load_config, resolve_config_path
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.synthetic import random_piece
from mahler_dist.music import vocab as V

TINY = load_config(resolve_config_path("tiny"))


def _model(p: float) -> MahlerNet:
    torch.manual_seed(0)
    return MahlerNet(dataclasses.replace(TINY.model, dec_input_dropout=p, relative_pitch=True))


def _decoder_inputs(model: MahlerNet, batch) -> torch.Tensor:
    """The row features the decoder LSTM was fed (without the per-step conditioning)."""
    seen = []
    handle = model.decoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(batch)
    handle.remove()
    return seen[0][..., :model.spec.decoder_width]


@pytest.fixture(scope="module")
def batch():
    return collate_bars(random_piece(seed=3, bars=16, min_rows=8, max_rows=24))


def test_training_hides_about_p_of_the_steps_and_evaluation_none(batch):
    model = _model(0.5).train()
    x = _decoder_inputs(model, batch)
    real = torch.arange(x.shape[1])[None, 1:] <= batch["inp_len"][:, None]      # steps 1..len fed a row
    hidden = (x[:, 1:].abs().sum(-1) == 0) & real
    share = hidden.sum().item() / real.sum().item()
    assert 0.35 < share < 0.65, share
    model.eval()
    x = _decoder_inputs(model, batch)
    assert not ((x[:, 1:].abs().sum(-1) == 0) & real).any()


def test_off_by_default_and_the_evaluation_output_is_the_same_with_it_on(batch):
    assert TINY.model.dec_input_dropout == 0.0
    with torch.no_grad():
        off = _model(0.0).eval()(batch, use_mean=True)
        on = _model(0.5).eval()(batch, use_mean=True)
    assert torch.equal(off.pitch, on.pitch) and torch.equal(off.end, on.end)


def test_a_hidden_step_loses_the_interval_term_but_keeps_the_chord_order_mask():
    torch.manual_seed(0)
    heads = MahlerNet(dataclasses.replace(TINY.model, relative_pitch=True,
                                          pitch_same_step_reduction=True)).heads
    with torch.no_grad():
        heads.interval.bias.zero_()
        heads.interval.bias[V.NUM_PITCHES - 1 + 4] = 50.0        # a major third up dominates
    h = torch.zeros(2, heads.linear["offset"].in_features)
    zeros = torch.zeros(2, dtype=torch.long)
    prev = torch.tensor([40, 40])
    logits = heads.pitch_logits(h, zeros, zeros, zeros + 12, prev, torch.tensor([40, V.NONE]))
    assert logits[0].argmax() == 44                                  # the interval term acts
    assert logits[1].argmax() != 44 and logits[1, 44] < 1.0          # hidden: it does not
    assert (logits[1, :40] < -1e8).all()                             # same onset: still ascending


def test_the_probability_is_checked():
    data = TINY.to_dict()
    data["model"]["dec_input_dropout"] = 1.0
    with pytest.raises(ConfigError, match="model.dec_input_dropout"):
        config_from_dict(data, "test")

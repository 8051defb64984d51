"""model.relative_pitch (issue 11): one learned logit per interval from the previous pitch, added
to the absolute pitch logits, the same in every key."""

from __future__ import annotations

import torch

from mahler_dist.config import load_config, resolve_config_path
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.music import vocab as V


def _heads():
    cfg = load_config(resolve_config_path("tiny")).model
    cfg.relative_pitch = True
    heads = MahlerNet(cfg).heads
    with torch.no_grad():
        heads.linear["pitch"].weight.zero_()
        heads.linear["pitch"].bias.zero_()
        heads.interval.weight.zero_()
        heads.interval.bias.zero_()
        heads.interval.bias[V.NUM_PITCHES - 1 + 4] = 5.0      # a major third up
    return heads


def test_an_interval_logit_lands_on_the_same_interval_from_every_previous_pitch():
    heads = _heads()
    prev = torch.tensor([0, 10, 40, 91])
    h = torch.zeros(4, heads.linear["offset"].in_features)
    zeros = torch.zeros(4, dtype=torch.long)
    logits = heads.pitch_logits(h, zeros, zeros, zeros + 12, prev)
    assert logits.argmax(-1).tolist() == (prev + 4).tolist()
    assert torch.allclose(logits.max(-1).values, torch.full((4,), 5.0))


def test_no_previous_pitch_means_no_interval_term_and_no_out_of_range_index():
    heads = _heads()
    h = torch.zeros(2, heads.linear["offset"].in_features)
    zeros = torch.zeros(2, dtype=torch.long)
    logits = heads.pitch_logits(h, zeros, zeros, zeros + 12, torch.tensor([-1, 95]))
    assert torch.equal(logits[0], torch.zeros(V.NUM_PITCHES))          # START or a pause before
    assert logits[1].max() == 0.0                                       # 95 + 4 is outside: nothing lands

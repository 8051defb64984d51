"""MahlerNet: shapes, padding independence, gradient flow, feature switches, the step-wise
decoding API against teacher forcing, and bit-identical seeded training on CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mahler_dist.config import ModelConfig, load_config, resolve_config_path
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.features import FeatureSpec, unpack_active
from mahler_dist.model.loss import compute_loss
from mahler_dist.model.optim import build_optimizer, clip_gradients
from mahler_dist.model.synthetic import random_piece
from mahler_dist.music import vocab as V

TINY = load_config(resolve_config_path("tiny"))


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY.model, **changes)


def make_model(seed: int = 0, **changes) -> MahlerNet:
    torch.manual_seed(seed)
    return MahlerNet(tiny(**changes))



@pytest.fixture(scope="module")
def samples():
    return random_piece(seed=1, bars=12, max_rows=24)


def test_collate_pads_with_none_and_zero(samples):
    batch = collate_bars(samples)
    lengths = [len(s["inputs"]) for s in samples]
    assert batch["inp_rows"].shape == (12, max(lengths), 5)
    assert batch["inp_len"].tolist() == lengths
    assert batch["ctx_len"][0] == 1 and (batch["ctx_rows"][0, 0] == V.NONE).all()   # START
    short = int(np.argmin(lengths))
    assert (batch["inp_rows"][short, lengths[short]:] == V.NONE).all()
    assert (batch["inp_active"][short, lengths[short]:] == 0).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    hnp.arrays(bool, (n, V.NUM_PITCHES)), hnp.arrays(bool, (n, V.NUM_INSTRUMENTS)))))
def test_active_sets_unpack_on_device_like_vocab_packs_them(sets):
    pitches, instruments = sets
    packed = torch.from_numpy(V.pack_active(pitches, instruments))
    got_p, got_i = unpack_active(packed)
    assert np.array_equal(got_p.numpy().astype(bool), pitches)
    assert np.array_equal(got_i.numpy().astype(bool), instruments)


def test_output_shapes(samples):
    batch = collate_bars(samples)
    model = make_model()
    out = model(batch)
    b, t = batch["inp_rows"].shape[:2]
    assert out.offset.shape == (b, t, 60) and out.duration.shape == (b, t, 60)
    assert out.pitch.shape == (b, t, 96) and out.instrument.shape == (b, t, 23)
    assert out.mu.shape == out.logvar.shape == (b, TINY.model.z_dim)
    assert out.prior_mu is None   # N(0, I) unless learned_prior


def test_feature_widths_match_the_reference():
    spec = FeatureSpec.from_config(ModelConfig())
    assert (spec.context_width, spec.event_width, spec.decoder_width) == (248, 247, 366)
    off = FeatureSpec(beats=False, active_pitches=False, active_instruments=True)
    assert (off.event_width, off.decoder_width) == (239, 262)


def test_decoder_input_is_the_previous_row_and_zero_at_step_0(samples):
    batch = collate_bars(samples[:2])
    spec = FeatureSpec.from_config(ModelConfig())
    x = spec.decoder_inputs(batch["inp_rows"], batch["inp_active"])
    assert (x[:, 0] == 0).all()
    t = int((batch["inp_rows"][1, :, V.PITCH] >= 0).nonzero()[0])      # a note row
    row = batch["inp_rows"][1, t]
    assert x[1, t + 1, row[V.OFFSET]] == 1 and x[1, t + 1, 60 + 8 + 60 + row[V.PITCH]] == 1
    assert x[1, t + 1].sum() >= 4   # offset, duration, pitch, instrument (+ beat, active sets)


def test_padding_changes_nothing_for_the_real_rows(samples):
    """A bar alone and the same bar padded in a batch with longer bars give the same outputs."""
    model = make_model().eval()
    short = min(range(len(samples)), key=lambda i: len(samples[i]["inputs"]))
    alone = model(collate_bars([samples[short]]), use_mean=True)
    padded_batch = collate_bars(samples)
    padded = model(padded_batch, use_mean=True)
    n = len(samples[short]["inputs"])
    assert padded_batch["inp_rows"].shape[1] > n
    for name in ("offset", "duration", "pitch", "instrument"):
        torch.testing.assert_close(getattr(padded, name)[short, :n], getattr(alone, name)[0])
    torch.testing.assert_close(padded.mu[short], alone.mu[0])


def test_gradients_reach_both_encoders_and_the_decoder(samples):
    model = make_model()
    batch = collate_bars(samples)
    loss, _ = compute_loss(model(batch), batch, TINY.loss, step=1)
    loss.backward()
    for part in (model.ctx_encoder, model.inp_encoder, model.posterior_net, model.z_proj,
                 model.decoder, model.heads):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert model.ctx_encoder.initial_state.grad.abs().sum() > 0


def test_without_the_vae_there_is_no_kl_and_no_input_encoder(samples):
    model = make_model(use_vae=False)
    assert model.inp_encoder is None and model.posterior_net is None and model.z_proj is None
    batch = collate_bars(samples)
    out = model(batch)
    assert out.mu is None
    loss, metrics = compute_loss(out, batch, TINY.loss, step=1)
    assert not any(k.startswith("kl") for k in metrics) and "active_units" not in metrics
    assert torch.equal(loss.detach(), metrics["recon"])
    loss.backward()
    assert model.dec_initial_state.grad.abs().sum() > 0


@pytest.mark.parametrize("changes", [
    {"use_context": False},
    {"use_context": False, "use_vae": False},
    {"use_beats": False, "use_active_pitches": False, "use_active_instruments": False},
    {"learned_prior": True},
    {"logits_batch_norm": True, "pitch_same_step_reduction": True},
    {"enc_layers": 2, "dec_layers": 2},
])
def test_feature_switches_train(samples, changes):
    model = make_model(**changes)
    batch = collate_bars(samples)
    out = model(batch)
    assert (out.prior_mu is not None) == bool(changes.get("learned_prior"))
    loss, _ = compute_loss(out, batch, TINY.loss, step=1)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_learned_prior_enters_the_kl(samples):
    model = make_model(learned_prior=True)
    batch = collate_bars(samples)
    loss, _ = compute_loss(model(batch), batch, TINY.loss, step=1)
    loss.backward()
    assert model.prior_net.gaussian.mu.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("changes", [{}, {"use_vae": False}, {"learned_prior": True}])
def test_step_api_reproduces_teacher_forcing(samples, changes):
    """The generator's path (encode, init_decoder, step, heads) fed the true rows gives the
    teacher-forced logits: training and generation share one model."""
    model = make_model(**changes).eval()
    batch = collate_bars(samples[:5])
    with torch.no_grad():
        ref = model(batch, use_mean=True)
        ctx = model.encode_context(batch["ctx_rows"], batch["ctx_len"])
        z = None
        if model.cfg.use_vae:
            z, _ = model.posterior(model.encode_input(batch["inp_rows"], batch["inp_len"]), ctx)
        state = model.init_decoder(z, ctx, batch=5)
        rows, active = batch["inp_rows"], batch["inp_active"]
        prev = torch.full_like(rows[:, 0], V.NONE)
        prev_active = torch.zeros_like(active[:, 0])
        for t in range(rows.shape[1]):
            h, state = model.step(prev, prev_active, state)
            o, b, d, p = (rows[:, t, k] for k in (V.OFFSET, V.BEAT, V.DURATION, V.PITCH))
            torch.testing.assert_close(model.heads.offset_logits(h), ref.offset[:, t])
            torch.testing.assert_close(model.heads.duration_logits(h, o, b), ref.duration[:, t])
            torch.testing.assert_close(model.heads.pitch_logits(h, o, b, d, prev[:, V.PITCH]),
                                       ref.pitch[:, t])
            torch.testing.assert_close(model.heads.instrument_logits(h, o, b, d, p),
                                       ref.instrument[:, t])
            prev, prev_active = rows[:, t], active[:, t]


def test_duration_cannot_be_a_pause_after_offset_0():
    model = make_model()
    model.heads.linear["duration"].bias.data[0] = 100.0       # the head would love class 0
    h = torch.randn(50, TINY.model.dec_size)
    offset = torch.zeros(50, dtype=torch.long)
    beat = torch.full((50,), -1)
    logits = model.heads.duration_logits(h, offset, beat)
    assert (logits.argmax(-1) != 0).all() and (logits.softmax(-1)[:, 0] == 0).all()
    assert (model.heads.duration_logits(h, offset + 3, beat).argmax(-1) == 0).all()
    off = make_model(duration_next_step_reduction=False)
    off.heads.linear["duration"].bias.data[0] = 100.0
    assert (off.heads.duration_logits(h, offset, beat).argmax(-1) == 0).all()


def test_same_step_reduction_masks_lower_pitches_in_a_chord():
    model = make_model(pitch_same_step_reduction=True)
    h = torch.randn(3, TINY.model.dec_size)
    offset, none = torch.tensor([0, 0, 5]), torch.full((3,), -1)
    duration, prev = torch.tensor([4, 4, 4]), torch.tensor([40, -1, 40])
    probs = model.heads.pitch_logits(h, offset, none, duration, prev).softmax(-1)
    assert probs[0, :40].sum() == 0 and probs[0, 40:].sum() > 0.99   # chord continues upwards
    assert (probs[1] > 0).all() and (probs[2] > 0).all()             # no previous pitch / new onset


def _train(seed: int, samples, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = MahlerNet(dataclasses.replace(TINY.model, enc_dropout=0.2, dec_dropout=0.2))
    optimizer = build_optimizer(model, TINY.train)
    batch = collate_bars(samples)
    for step in range(1, steps + 1):
        loss, _ = compute_loss(model(batch), batch, TINY.loss, step)
        optimizer.zero_grad()
        loss.backward()
        clip_gradients(model, TINY.train)
        optimizer.step()
    return model.state_dict()


def test_seeded_training_is_bit_identical_on_cpu(samples):
    first, second = _train(7, samples), _train(7, samples)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _train(8, samples)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_lstms_have_one_trainable_bias_per_gate_with_forget_bias_1():
    """TF's LSTMBlockCell: 4H (I + H) + 4H trainable parameters per layer, forget bias +1."""
    from mahler_dist.model.layers import tf_lstm
    lstm = tf_lstm(10, 6, layers=2, dropout=0.0)
    trainable = sum(p.numel() for p in lstm.parameters() if p.requires_grad)
    assert trainable == (24 * (10 + 6) + 24) + (24 * (6 + 6) + 24)
    assert (lstm.bias_ih_l0[6:12] == 1).all() and (lstm.bias_ih_l0[:6] == 0).all()
    assert (lstm.bias_hh_l1 == 0).all() and not lstm.bias_hh_l1.requires_grad

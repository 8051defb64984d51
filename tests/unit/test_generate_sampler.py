"""The batched core loop on scripted models (no training): END and silent bars, metre masks, the
row cap, active sets, and the counter-based random numbers."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
import torch

from mahler_dist.generate.sampler import (_mix32_int, beat_of, carry_from_rows, decode_bars, end_classes,
                                          metre_tables, mix32, pack_active, sample_classes, sample_key,
                                          sample_offsets, silent_row, uniform)
from mahler_dist.music import vocab as V
from mahler_dist.music.timing import CLASS_TICKS, Metre, allowed_mask, beat_position

FOUR = Metre(4, 4)


class ScriptedHeads:
    """Logits from a per-step script: offsets[step] (class or None = uniform), fixed pitch etc."""

    def __init__(self, offsets, duration=12, pitch=40, instrument=3):
        self.offsets, self.duration, self.pitch, self.instrument = offsets, duration, pitch, instrument
        self.step = 0

    def _peak(self, n, cls, B):
        out = torch.zeros(B, n)
        if cls is not None:
            out[:, cls] = 50.0
        return out

    def offset_logits(self, h):
        cls = self.offsets[min(self.step, len(self.offsets) - 1)]
        return self._peak(60, cls, h.shape[0])

    def duration_logits(self, h, offset, beat):
        return self._peak(60, self.duration, h.shape[0])

    def pitch_logits(self, h, offset, beat, duration, prev_pitch):
        return self._peak(96, self.pitch, h.shape[0])

    def instrument_logits(self, h, offset, beat, duration, pitch):
        return self._peak(23, self.instrument, h.shape[0])


class ScriptedModel:
    def __init__(self, heads):
        self.heads = heads
        self.inputs = []

    def step(self, prev, prev_active, state):
        self.inputs.append((prev.clone(), prev_active.clone()))
        self.heads.step = len(self.inputs) - 1
        return torch.zeros(prev.shape[0], 4), state


def run(model, metres, temps=0.0, max_rows=256, seed=0):
    B = len(metres)
    keys = torch.tensor([sample_key(seed, i) for i in range(B)])
    t = torch.full((B, 4), float(temps))
    return decode_bars(model, None, metres, t, keys, 0, max_rows=max_rows)


def test_bar_ends_when_the_offset_reaches_the_bar_end():
    # quarter, quarter, quarter, then a half note offset from beat 3 -> past the 4/4 bar end
    out = run(ScriptedModel(ScriptedHeads([0, 12, 12, 12, 24])), [FOUR])
    rows = out.rows[0]
    assert rows[:, V.OFFSET].tolist() == [0, 12, 12, 12]
    assert rows[:, V.BEAT].tolist() == [0, 2, 4, 6]
    assert not out.capped[0]


def test_silent_bar_is_the_empty_bar_row():
    for metre in (FOUR, Metre(3, 4), Metre(6, 8)):
        bar_class = int(np.flatnonzero(CLASS_TICKS == metre.bar_ticks)[0])
        out = run(ScriptedModel(ScriptedHeads([bar_class])), [metre])
        assert np.array_equal(out.rows[0], silent_row(metre))
        assert out.rows[0][0].tolist() == [bar_class, 0, 0, -1, -1]


def test_row_cap_bounds_a_bar_that_never_ends():
    out = run(ScriptedModel(ScriptedHeads([0])), [FOUR], max_rows=17)
    assert len(out.rows[0]) == 17 and out.capped[0]


def test_metre_invalid_offsets_are_masked_before_sampling():
    # uniform offset logits, sampled: in 6/8 only triplet-compatible classes may appear
    metre = Metre(6, 8)
    model = ScriptedModel(ScriptedHeads([None]))
    out = run(model, [metre] * 64, temps=1.0, seed=3)
    ok = allowed_mask(metre)
    seen = np.concatenate([r[:, V.OFFSET] for r in out.rows])
    assert ok[seen].all()
    assert len(set(seen.tolist())) > 3


def test_argmax_end_uses_the_summed_end_mass():
    # 10 classes reaching the end share 0.6 of the mass; the best continuing class has 0.1
    logits = torch.full((1, 60), -30.0)
    ends = torch.zeros(1, 60, dtype=torch.bool)
    ends[0, 40:50] = True
    logits[0, 40:50] = np.log(0.06)
    logits[0, 6] = np.log(0.1)
    logits[0, 7:11] = np.log(0.075)
    t0 = torch.zeros(1)
    assert int(sample_offsets(logits, t0, torch.zeros(1), ends)) in range(40, 50)
    assert int(sample_classes(logits, t0, torch.zeros(1))) == 6   # plain argmax would continue


def test_pause_rows_have_no_pitch_and_active_sets_follow_note_ends():
    # script: offsets 0, 6, 6, 6 ... with durations alternating; compare with a heap reference
    heads = ScriptedHeads([0, 6, 0, 12, 6, 30], duration=None)
    script = [12, 6, 0, 24, 6, 6]

    def duration_logits(h, offset, beat):
        out = torch.zeros(h.shape[0], 60)
        out[:, script[min(heads.step, len(script) - 1)]] = 50.0
        return out

    heads.duration_logits = duration_logits
    model = ScriptedModel(heads)
    rows = run(model, [FOUR]).rows[0]
    assert rows[2, V.DURATION] == 0 and rows[2, V.PITCH] == -1 and rows[2, V.INSTRUMENT] == -1
    # reference active sets (reference 1.1): notes sounding at the onset, ending after it
    sounding, t, expected = [], 0, []
    for offset, _, duration, pitch, instr in rows.tolist():
        t += int(CLASS_TICKS[offset])
        while sounding and sounding[0][0] <= t:
            heapq.heappop(sounding)
        p = np.zeros(V.NUM_PITCHES, bool)
        i = np.zeros(V.NUM_INSTRUMENTS, bool)
        for _, pp, ii in sounding:
            p[pp] = i[ii] = True
        expected.append(V.pack_active(p[None], i[None])[0])
        if duration > 0:
            heapq.heappush(sounding, (t + int(CLASS_TICKS[duration]), pitch, instr))
    fed = [a[0].numpy() for _, a in model.inputs[1:len(rows) + 1]]
    assert np.array_equal(np.stack(fed), np.stack(expected))
    fed_rows = [r[0].numpy() for r, _ in model.inputs[1:len(rows) + 1]]
    assert np.array_equal(np.stack(fed_rows), rows.astype(np.int64))


def test_first_step_input_is_the_all_none_row():
    model = ScriptedModel(ScriptedHeads([0, 48]))
    run(model, [FOUR])
    prev, active = model.inputs[0]
    assert (prev == -1).all() and (active == 0).all()


def test_carry_from_context_rows():
    # a whole note starting at beat 3 of the previous bar sounds 3 beats into the next
    ctx = np.array([[36, 6, 48, 40, 2]], dtype=np.int8)
    p, i = carry_from_rows(ctx, FOUR)
    assert p[40] == 1440 and i[2] == 1440 and p.sum() == 1440


def test_beat_and_pack_helpers_match_the_representation():
    times = torch.arange(0, 2400, 20)
    assert beat_of(times).tolist() == [beat_position(int(t)) for t in times]
    rng = np.random.default_rng(0)
    p, i = rng.random((5, 96)) < 0.2, rng.random((5, 23)) < 0.3
    assert np.array_equal(pack_active(torch.from_numpy(p), torch.from_numpy(i)).numpy(), V.pack_active(p, i))


def test_end_classes_reach_the_bar_end():
    tables = metre_tables([FOUR, Metre(3, 4), Metre(6, 8)], "cpu")
    last = torch.tensor([1440, 480, 0])
    got = end_classes(last, tables.bar_ticks, tables.offset_ok)
    assert [int(CLASS_TICKS[c]) for c in got] == [480, 960, 960]


def test_counter_rng_is_deterministic_and_uniform():
    keys = torch.tensor([sample_key(7, k) for k in range(4096)])
    u = uniform(keys, 0, 3, 1)
    assert torch.equal(u, uniform(keys, 0, 3, 1))
    assert not torch.equal(u, uniform(keys, 0, 4, 1))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    hist = torch.histc(u, bins=8, min=0, max=1)
    assert float(hist.min()) > 4096 / 8 * 0.8
    assert sample_key(7, 0) != sample_key(8, 0) and sample_key(7, 0) != sample_key(7, 1)
    assert sample_key(2**40 + 7, 0) != sample_key(7, 0)
    x = torch.tensor([0, 1, 12345, 2**31, 2**32 - 1])
    assert ((mix32(x) >= 0) & (mix32(x) < 2**32)).all()
    assert mix32(x).tolist() == [_mix32_int(int(v)) for v in x]   # no int64 overflow on the way


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_never_picks_masked_classes(temperature):
    logits = torch.zeros(256, 10)
    logits[:, ::2] = -1e9
    u = uniform(torch.tensor([sample_key(1, k) for k in range(256)]), 0)
    got = sample_classes(logits, torch.full((256,), temperature), u)
    assert (got % 2 == 1).all()

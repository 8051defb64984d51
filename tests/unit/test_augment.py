"""Transposition augmentation (issue 11): bar and context move together, within the vocabulary,
active sets follow, and the draw is a function of the generator (so a resumed epoch repeats it)."""

from __future__ import annotations

import numpy as np

from mahler_dist.data.augment import transpose_sample
from mahler_dist.model.synthetic import random_piece
from mahler_dist.music import vocab as V


def test_bar_context_and_active_sets_move_by_one_interval_inside_the_vocabulary():
    samples = random_piece(seed=4, bars=40, min_rows=3, max_rows=20)
    moved_any = False
    for i, s in enumerate(samples):
        t = transpose_sample(s, 5, np.random.default_rng(i))
        notes = s["inputs"][:, V.PITCH] >= 0
        delta = set((t["inputs"][notes, V.PITCH].astype(int) - s["inputs"][notes, V.PITCH].astype(int)).tolist())
        assert len(delta) <= 1
        d = delta.pop() if delta else 0
        moved_any |= d != 0
        assert -5 <= d <= 5
        assert (t["inputs"][notes, V.PITCH] >= 0).all() and (t["inputs"][:, V.PITCH] < V.NUM_PITCHES).all()
        cnotes = s["context"][:, V.PITCH] >= 0
        assert np.array_equal(t["context"][cnotes, V.PITCH].astype(int), s["context"][cnotes, V.PITCH].astype(int) + d)
        before, after = V.unpack_active(s["active"])[0], V.unpack_active(t["active"])[0]
        assert before.sum() == after.sum() and np.array_equal(np.roll(before, d, axis=-1), after)
        for col in (V.OFFSET, V.BEAT, V.DURATION, V.INSTRUMENT):
            assert np.array_equal(t["inputs"][:, col], s["inputs"][:, col])
    assert moved_any


def test_the_interval_never_pushes_a_pitch_out_of_range():
    s = random_piece(seed=1, bars=1, min_rows=4, max_rows=4)[0]
    s["inputs"][:, V.PITCH] = np.where(s["inputs"][:, V.PITCH] >= 0, V.NUM_PITCHES - 1, -1)
    s["active"] = np.zeros_like(s["active"])
    for i in range(50):
        t = transpose_sample(s, 5, np.random.default_rng(i))
        assert t["inputs"][:, V.PITCH].max() <= V.NUM_PITCHES - 1     # can only move down


def test_same_generator_same_draw_and_range_zero_is_identity():
    s = random_piece(seed=2, bars=3, min_rows=5, max_rows=9)[2]
    a = transpose_sample(s, 5, np.random.default_rng(7))
    b = transpose_sample(s, 5, np.random.default_rng(7))
    assert np.array_equal(a["inputs"], b["inputs"]) and np.array_equal(a["context"], b["context"])
    assert transpose_sample(s, 0, np.random.default_rng(7)) is s

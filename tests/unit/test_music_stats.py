"""Generation statistics (issue 11): per-bar features of hand-built bars, and Yang & Lerch's
intra-/inter-set comparison (self-overlap ~1, lower for shuffled pitches, KL >= 0, edge cases, speed)."""

from __future__ import annotations

import glob
import json
import time

import numpy as np
import pytest

from mahler_dist.evaluate import distributions as D
from mahler_dist.evaluate import music_stats as M
from mahler_dist.model.synthetic import random_piece
from mahler_dist.music import vocab as V
from mahler_dist.music.encode import encode_file
from mahler_dist.music.rows import decode_bar
from mahler_dist.music.timing import Metre, class_of_ticks

Q, E, H, W = (class_of_ticks(t) for t in (480, 240, 960, 1920))   # quarter, eighth, half, whole (4/4 beats)


def note(offset, duration, midi, instrument, beat=-1):
    return (offset, beat, duration, midi - V.PITCH_LOW, instrument)


def bar(*rows):
    return np.asarray(rows, dtype=V.ROW_DTYPE).reshape(-1, V.ROW_WIDTH)


# 4/4: C4+E4 quarters at 0 (instrument 0), G4 eighth at beat 1 (instrument 1), C5 half at 1.5
BAR_A = bar(note(0, Q, 60, 0, 0), note(0, Q, 64, 0, 0), note(Q, E, 67, 1, 2), note(E, H, 72, 0, 3))
# the same C4+E4, then a D4 at beat 2
BAR_B = bar(note(0, Q, 60, 0, 0), note(0, Q, 64, 0, 0), note(H, Q, 62, 0, 4))
EMPTY = bar((W, 0, 0, V.NONE, V.NONE))    # the encoder's empty bar: one pause row of a bar's length


def bin_of(beats, edges=M.HALF_OCTAVE_EDGES):
    return int(np.searchsorted(edges[1:-1], beats, side="right"))


def test_hand_built_bar_features():
    f = M.bar_stats(BAR_A, "4/4")
    pc = np.zeros(12)
    pc[[0, 4, 7]] = [0.5, 0.25, 0.25]
    np.testing.assert_allclose(f["pitch_class"], pc)
    assert f["pitch_range"] == 12
    assert f["notes"] == 4 and f["onsets"] == 3
    assert f["polyphony"] == pytest.approx(4 / 3)
    ioi = np.zeros(len(M.IOI_EDGES) - 1)
    ioi[bin_of(1.0)] += 0.5          # 0 -> beat 1
    ioi[bin_of(0.5)] += 0.5          # beat 1 -> 1.5
    np.testing.assert_allclose(f["ioi"], ioi)
    dur = np.zeros(len(M.DURATION_EDGES) - 1)
    for beats in (1, 1, 0.5, 2):
        dur[bin_of(beats)] += 0.25
    np.testing.assert_allclose(f["duration"], dur)
    inst = np.zeros(V.NUM_INSTRUMENTS)
    inst[[0, 1]] = [0.75, 0.25]
    np.testing.assert_allclose(f["instrument"], inst)
    assert f["empty"] == 0
    assert np.isnan(f["repetition"])   # no previous bar


def test_empty_bar_is_all_zeros_and_flagged():
    for rows in (EMPTY, bar(), bar((H, 4, 0, V.NONE, V.NONE), (H, 0, 0, V.NONE, V.NONE))):
        f = M.bar_stats(rows, Metre(4, 4))
        for name in ("pitch_class", "ioi", "duration", "instrument"):
            assert not f[name].any()
        assert f["pitch_range"] == f["polyphony"] == f["notes"] == f["onsets"] == 0
        assert f["empty"] == 1


def test_start_rows_and_onsets_past_the_bar_end_are_ignored_as_decode_bar_does():
    past = bar(V.START_ROW, note(0, Q, 60, 0), note(H, Q, 62, 0), note(H, Q, 64, 0))   # 64 at beat 4: out
    f = M.bar_stats(past, 1920)
    assert f["notes"] == 2 and f["pitch_range"] == 2
    # 3/4 is 1440 ticks: notes at 0 and 960 stay; 6/8 (two dotted beats) is 960 ticks: only the first
    assert M.bar_stats(bar(note(0, Q, 60, 0), note(H, Q, 62, 0), note(H, Q, 64, 0)), "3/4")["notes"] == 2
    assert M.bar_ticks_of("6/8") == 960 and M.bar_ticks_of("12/8") == 1920 and M.bar_ticks_of("2/2") == 960
    assert M.bar_stats(bar(note(0, Q, 60, 0), note(H, Q, 62, 0)), "6/8")["notes"] == 1


def test_repetition_is_note_set_f1_against_the_previous_bar_of_the_same_piece():
    f = M.bar_features([[(BAR_A, "4/4"), (BAR_B, "4/4"), (BAR_B, "4/4"), (EMPTY, "4/4"), (EMPTY, "4/4")],
                        [(BAR_B, "4/4"), (BAR_A, "4/4")]])
    rep = f["repetition"]
    assert np.isnan(rep[0]) and np.isnan(rep[5])        # each piece's first bar
    assert rep[1] == pytest.approx(2 * 2 / (4 + 3))       # C4, E4 at 0 shared
    assert rep[2] == 1.0 and rep[3] == 0.0 and rep[4] == 1.0   # same bar; notes -> empty; empty -> empty
    assert rep[6] == pytest.approx(2 * 2 / (3 + 4))


def test_vectorised_decoding_matches_decode_bar():
    pieces = [M.bars_of(random_piece(seed, 30)) for seed in range(5)]
    notes = M.decode_notes(pieces)
    expected = [(b, *n) for b, (rows, _) in enumerate(r for p in pieces for r in p) for n in decode_bar(rows, 1920)]
    got = list(zip(*(notes[k].tolist() for k in ("bar", "onset", "duration", "pitch", "instrument"))))
    assert got == expected and len(got) > 100


def test_half_octave_bins_separate_the_note_values():
    values = [1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1, 4 / 3, 2, 8 / 3, 4]
    assert len({bin_of(v) for v in values}) == len(values)
    assert bin_of(1 / 100) == 0 and bin_of(100) == len(M.HALF_OCTAVE_EDGES) - 2    # open outer bins


def _corpus():
    return [M.bars_of(encode_file(path).samples) for path in sorted(glob.glob("examples/midi/*.mid"))]


def _shuffle_pitches(pieces, seed=0):
    """The same bars with their note pitches permuted across all bars (rhythm, instruments kept)."""
    rows = np.concatenate([r for p in pieces for r, _ in p]).copy()
    notes = rows[:, V.DURATION] > 0
    pitches = rows[notes, V.PITCH].copy()
    np.random.default_rng(seed).shuffle(pitches)
    rows[notes, V.PITCH] = pitches
    out, i = [], 0
    for p in pieces:
        out.append([])
        for r, metre in p:
            out[-1].append((rows[i:i + len(r)], metre))
            i += len(r)
    return out


@pytest.fixture(scope="module")
def corpus_features():
    pieces = _corpus()
    return pieces, M.bar_features(pieces)


def test_a_set_against_itself_overlaps_almost_fully(corpus_features):
    _, f = corpus_features
    n = len(f["notes"])
    assert n >= 300
    report = D.compare_sets(f, f)
    for name, entry in report.items():
        used = entry["n_real_used"]
        # inter-set distances of a set with itself add the n pairs i == j (distance 0) that the
        # intra-set distances leave out: a 1/n share of the inter-set mass; the rest is identical
        assert entry["oa"] >= 1 - 1 / used - 1e-3, name
        assert 0 <= entry["kl"] < 1e-2, name
        assert entry["real_mean"] == entry["generated_mean"]
        if name in M.HISTOGRAM_WEIGHTS:
            assert entry["set_histogram_oa"] == pytest.approx(1.0)
            assert entry["set_histogram_kl"] == pytest.approx(0.0, abs=1e-9)
    json.dumps(report, allow_nan=False)       # plain JSON: no NaN anywhere


def test_shuffled_pitches_lower_the_pitch_class_overlap(corpus_features):
    pieces, f = corpus_features
    g = M.bar_features(_shuffle_pitches(pieces))
    report = D.compare_sets(f, g)
    assert report["pitch_class"]["oa"] < 0.9
    assert report["pitch_class"]["kl"] > 0.05
    assert report["pitch_range"]["oa"] < 0.9
    # rhythm and instruments are untouched: those overlap as with the set itself
    for name in ("notes", "onsets", "polyphony", "ioi", "duration", "instrument", "empty"):
        assert report[name]["oa"] > 0.99, name
    # the pooled pitch-class histogram is a permutation's: unchanged
    assert report["pitch_class"]["set_histogram_oa"] == pytest.approx(1.0)
    assert all(e["kl"] >= 0 for e in report.values())


def test_histogram_oa_and_kl():
    assert D.histogram_oa([1, 1, 0], [2, 2, 0]) == pytest.approx(1.0)
    assert D.histogram_oa([1, 0], [0, 3]) == 0.0
    assert D.histogram_oa([3, 1], [1, 1]) == pytest.approx(0.75)
    assert D.histogram_kl([1, 2, 3], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    assert D.histogram_kl(p, q) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-6)
    assert np.isfinite(D.histogram_kl([1, 0], [0, 1])) and D.histogram_kl([1, 0], [0, 1]) > 10
    assert np.isnan(D.histogram_oa([0, 0], [1, 1])) and np.isnan(D.histogram_kl([1, 1], [0, 0]))


def test_kde_overlap_of_known_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 20000), rng.normal(0, 1, 20000)
    far = rng.normal(10, 1, 20000)
    assert D.overlap_and_kl(a, b)["oa"] > 0.98
    assert D.overlap_and_kl(a, far)["oa"] < 0.01
    shifted = D.overlap_and_kl(a, rng.normal(1, 1, 20000))
    # two unit normals one apart: OA = 2 Phi(-1/2) = 0.617, KL = 1/2
    assert shifted["oa"] == pytest.approx(0.617, abs=0.02)
    assert shifted["kl"] == pytest.approx(0.5, abs=0.05)


def test_edge_cases_give_none_with_a_note_and_never_nan():
    one = M.bar_features([[(BAR_A, "4/4")]])
    many = M.bar_features([[(BAR_A, "4/4"), (BAR_B, "4/4"), (EMPTY, "4/4")]])
    none = M.bar_features([])
    assert len(none["notes"]) == 0
    for real, gen in ((one, many), (many, none), (none, none)):
        report = D.compare_sets(real, gen)
        assert report["notes"]["oa"] is None and "note" in report["notes"]
        json.dumps(report, allow_nan=False)
    # identical bars: every distance is 0 (zero variance); the floor bandwidth keeps the KDE defined
    same = M.bar_features([[(BAR_A, "4/4")] * 5])
    report = D.compare_sets(same, same)
    assert report["pitch_class"]["oa"] == pytest.approx(1.0) and report["pitch_class"]["kl"] == pytest.approx(0.0)
    assert report["pitch_class"]["bandwidth"] > 0
    # repetition's NaN (first bars) are dropped: 2 usable of 3
    assert D.compare_sets(many, many)["repetition"]["n_real"] == 2
    assert D.bandwidth(np.zeros(10)) > 0 and D.bandwidth(np.zeros(0)) > 0


def test_subsampling_is_bounded_and_seeded():
    f = M.bar_features([M.bars_of(random_piece(seed, 100)) for seed in range(6)])
    g = M.bar_features([M.bars_of(random_piece(100 + seed, 100)) for seed in range(6)])
    a = D.compare_sets(f, g, max_bars=200, seed=3)
    b = D.compare_sets(f, g, max_bars=200, seed=3)
    assert a == b
    assert a["notes"]["n_real"] == 600 and a["notes"]["n_real_used"] == 200
    assert a["repetition"]["n_real"] == 594


def test_ten_thousand_bars_in_seconds():
    # 1,000 random bars (generating them is the slow part), repeated to 10^4 bars per set
    real_base = [M.bars_of(random_piece(seed, 100)) for seed in range(10)]
    gen_base = [M.bars_of(random_piece(500 + seed, 100)) for seed in range(10)]
    real, generated = real_base * 10, gen_base * 10
    start = time.perf_counter()
    f, g = M.bar_features(real), M.bar_features(generated)
    features_s = time.perf_counter() - start
    report = D.compare_sets(f, g)
    total_s = time.perf_counter() - start
    assert len(f["notes"]) == len(g["notes"]) == 10_000
    assert all(e["oa"] is not None and 0 <= e["oa"] <= 1 and e["kl"] >= 0 for e in report.values())
    print(f"features of 2 x 10^4 bars {features_s:.2f} s, with the comparison {total_s:.2f} s")
    assert total_s < 10

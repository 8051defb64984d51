"""One test per quantiser heuristic (issue 14), on small hand-built scores.

Each test switches on the one heuristic it is about over the first quantiser (every other one
off), so what it shows is that heuristic's doing, and checks the first quantiser does otherwise.
Ticks are score ticks at 480 per quarter; in 4/4 a model tick is a score tick.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mahler_dist.errors import MidiReadError
from mahler_dist.music import note_repairs as R
from mahler_dist.music.durations import tied_parts
from mahler_dist.music.midi_io import read_midi
from mahler_dist.music.onset_grid import repair_gaps_forward, repair_gaps_minimal
from mahler_dist.music.piece import PieceCol
from mahler_dist.music.quantize import MetreRange, Unquantisable, check_quantisable, metre_ranges, quantize
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, SWITCHES, QuantizeOptions
from mahler_dist.music.score import MetreChange, NoteCol, Score, TempoChange, sort_notes
from mahler_dist.music.timing import CLASS_TICKS, Metre, normalise_metre

FIRST = dataclasses.replace(QuantizeOptions.first(), additive_metres=True)
PIANO, VIOLIN = 0, 40


def only(name: str, **extra) -> QuantizeOptions:
    """The first quantiser with one heuristic switched on (at its default thresholds)."""
    return dataclasses.replace(FIRST if FIRST.is_on(name) else FIRST.toggled(name), **extra)


def make_score(notes, metres=((0, 4, 4),), tempo=500_000) -> Score:
    """notes: (start, end, pitch[, program[, track]]) in score ticks."""
    rows = [(s, e, p, rest[0] if rest else PIANO, 0, rest[1] if len(rest) > 1 else 0) for s, e, p, *rest in notes]
    arr = sort_notes(np.array(rows, dtype=np.int64).reshape(-1, 6))
    return Score(notes=arr, tempos=[TempoChange(0, tempo)], metres=[MetreChange(*m) for m in metres],
                 end_tick=int(arr[:, NoteCol.END].max()), source_notes=len(arr))


def placed(piece, pitch=None):
    """(bar, pos, class) of the piece's notes, in order (of one pitch if given)."""
    n = piece.notes if pitch is None else piece.notes[piece.notes[:, PieceCol.PITCH] == pitch - 17]
    return [tuple(int(v) for v in r) for r in n[:, [PieceCol.BAR, PieceCol.POS, PieceCol.DUR]]]


def test_every_switch_toggles_its_heuristic_and_first_turns_all_off():
    first = QuantizeOptions.first()
    assert not any(first.is_on(name) for name in SWITCHES)
    for name in SWITCHES:
        toggled = DEFAULT_OPTIONS.toggled(name)
        assert toggled.is_on(name) != DEFAULT_OPTIONS.is_on(name)
        assert toggled.toggled(name) == DEFAULT_OPTIONS
    # off by default, by measurement (their docstrings say why)
    assert [n for n in SWITCHES if not DEFAULT_OPTIONS.is_on(n)] == ["tempo_exclusions", "unify_chords"]
    with pytest.raises(KeyError, match="no quantiser heuristic"):
        DEFAULT_OPTIONS.toggled("swing")


# --- onsets ----------------------------------------------------------------------------------

def test_a_late_played_chord_is_clustered():
    # a chord whose notes come 10 and 25 ticks after the first: one onset with clustering, split
    # between the beat and the 32nd after it without
    score = make_score([(25, 470, 60), (35, 470, 64), (50, 470, 67)])
    on = quantize(score, "chord", only("cluster_onsets"))
    off = quantize(score, "chord", FIRST)
    assert len({pos for _, pos, _ in placed(on)}) == 1
    assert {pos for _, pos, _ in placed(off)} == {0, 60}
    # with the defaults (the coarse grid too) the chord is on the beat
    assert {pos for _, pos, _ in placed(quantize(score, "chord", DEFAULT_OPTIONS))} == {0}
    assert on.stats["moved: " + R.CLUSTERED] == 3   # the first note too: to the mean


def test_clustering_follows_the_first_onset_and_stays_in_its_track():
    onsets = np.array([0.0, 25, 25, 50, 10])
    tracks = np.array([0, 0, 0, 0, 1])
    out, moved = R.cluster_onsets(onsets, tracks, 30)
    # 25 (twice: a chord) joins the cluster that began at 0, which starts at its notes' mean;
    # 50 is 50 after 0, so it starts a new one (no chaining through 25); the note in track 1 is
    # another part and keeps its time
    assert out.tolist() == pytest.approx([50 / 3, 50 / 3, 50 / 3, 50, 10]) and moved == 3


def test_no_window_reaches_across_a_step_of_the_grid():
    # in 3/16 a 1/8 beat (a 128th note) is 15 score ticks: notes written that close are not
    # clustered, however wide cluster_window is in score ticks
    score = make_score([(0, 15, 60), (15, 30, 62), (30, 45, 64)], metres=((0, 3, 16),))
    piece = quantize(score, "fine", only("cluster_onsets"))
    assert [pos for _, pos, _ in placed(piece)] == [0, 60, 120]


def test_a_late_entry_lands_on_the_beat_not_on_the_32nd_point_beside_it():
    # a part entering 38 ticks late: the nearest 1/8-beat point is the 32nd after the beat
    score = make_score([(0, 470, 60), (480 + 38, 950, 64, PIANO, 1), (480, 950, 67)])
    on = quantize(score, "late", only("coarse_grid"))
    off = quantize(score, "late", FIRST)
    assert placed(on, 64)[0][1] == 480 and placed(off, 64)[0][1] == 540


def test_notated_32nds_and_fast_runs_keep_the_fine_grid():
    # a notated 32nd (exactly on its point) and a performed 32nd run (onsets 60 +- 6 apart)
    run = [(960 + 60 * k + (6 if k % 2 else -5), 960 + 60 * k + 50, 72 + k) for k in range(1, 6)]
    score = make_score([(0, 50, 60), (60, 470, 62)] + run)
    piece = quantize(score, "32nds", only("coarse_grid"))
    assert placed(piece, 62)[0][1] == 60
    assert [placed(piece, 72 + k)[0][1] for k in range(1, 6)] == [960 + 60 * k for k in range(1, 6)]


def test_an_on_beat_note_never_moves_and_gap_repair_does_not_cascade():
    # 320 (1/6 grid) and 360 (1/8 grid) are 40 apart: no class expresses that gap. The first
    # quantiser moved 360 to 380, and then the beat at 480 to 460 (23/24 of a beat) because 100
    # ticks is not expressible either. The minimal repair moves one onset of the pair.
    metre = Metre(4, 4)
    positions = np.array([0, 320, 360, 480])
    assert repair_gaps_forward(positions, metre).tolist()[-1] == 460
    fixed = repair_gaps_minimal(positions, positions.astype(float), metre)
    assert fixed[0] == 0 and fixed[-1] == 480
    assert sum(a != b for a, b in zip(fixed, positions)) == 1
    # end to end: the same notes, exactly on the grid in the source
    score = make_score([(0, 300, 60), (320, 350, 62), (360, 470, 64), (480, 900, 65)])
    on = quantize(score, "gap", only("gap_repair"))
    off = quantize(score, "gap", FIRST)
    assert placed(on, 65)[0][1] == 480 and placed(off, 65)[0][1] == 460
    assert on.stats["moved: onset moved to a gap a time class expresses"] == 1


def test_grace_notes_before_a_metre_change_land_on_the_new_downbeat():
    # a bar of 4/4, then 3/4 from tick 1920; a grace note 20 ticks before the change
    score = make_score([(0, 1900, 60), (1900, 1915, 71), (1920, 2400, 72), (2400, 3360, 67)],
                       metres=((0, 4, 4), (1920, 3, 4)))
    on = quantize(score, "grace", only("grace_to_downbeat"))
    off = quantize(score, "grace", FIRST)
    assert placed(on, 71)[0][:2] == (1, 0)              # on the first 3/4 downbeat
    assert [str(b.metre) for b in on.bars] == ["4/4", "3/4"]
    # the first quantiser gave the grace note a 4/4 bar of its own: every later bar one late
    assert len(off.bars) == len(on.bars) + 1
    assert placed(off, 72)[0][0] == placed(on, 72)[0][0] + 1


# --- ends and durations ----------------------------------------------------------------------

def test_a_staccato_note_is_not_stretched():
    # a 16th played staccato, then silence to the next beat: the original held it to the beat
    score = make_score([(0, 120, 60), (480, 960, 62)])
    piece = quantize(score, "staccato", DEFAULT_OPTIONS)
    assert placed(piece, 60)[0][2] == 3                  # d16, as played


def test_a_legato_line_is_held_not_shortened():
    # triplet eighths played a little short (130 of 160 ticks): held to the next onset they are
    # t8; the first quantiser made them 16ths (d16), a different rhythm
    notes = [(160 * k, 160 * k + 130, 60 + k) for k in range(6)]
    on = quantize(make_score(notes), "legato", only("legato_repair"))
    off = quantize(make_score(notes), "legato", FIRST)
    assert {cls for *_, cls in placed(on)[:-1]} == {4}   # t8
    assert {cls for *_, cls in placed(off)[:-1]} == {3}  # d16
    assert on.stats["moved: " + R.LEGATO] == 5


def test_an_overlapping_note_ends_at_the_next_onset():
    # 16ths played legatissimo, each overlapping the next by 70 ticks
    notes = [(120 * k, 120 * k + 190, 60 + k) for k in range(4)]
    on = quantize(make_score(notes), "overlap", only("overlap_repair"))
    off = quantize(make_score(notes), "overlap", FIRST)
    assert {cls for *_, cls in placed(on)[:-1]} == {3}   # d16
    assert {cls for *_, cls in placed(off)[:-1]} == {5}  # d32+d16: every note still sounding at the next


def test_a_triplet_passage_stays_triplet():
    # triplet eighths played short (140 ticks): nearest in length is the 16th (120); in their
    # triplet context they keep the triplet value, the downbeat note included (its predecessor
    # ends where it starts)
    notes = [(160 * k, 160 * k + 140, 60 + k) for k in range(7)]
    on = quantize(make_score(notes), "triplets", only("rhythm_context"))
    off = quantize(make_score(notes), "triplets", FIRST)
    assert [cls for *_, cls in placed(on)][1:] == [4] * 6
    assert [cls for *_, cls in placed(off)][1:] == [3] * 6


def test_strings_take_no_32nd_durations_unless_written():
    # a violin note of 75 ticks (a 32nd is 60, a 16th 120); an exact 60 is as written and stays
    score = make_score([(0, 75, 60, VIOLIN), (480, 540, 62, VIOLIN)])
    on = quantize(score, "violin", only("instrument_exclusions"))
    off = quantize(score, "violin", FIRST)
    assert placed(on, 60)[0][2] != 1 and placed(off, 60)[0][2] == 1
    assert placed(on, 62)[0][2] == 1


def test_a_chord_agrees_on_its_majority_duration():
    # two notes held a quarter, one released early (390 ticks: d16+d8 on its own)
    score = make_score([(0, 470, 60), (0, 470, 64), (0, 390, 67)])
    on = quantize(score, "chord", only("unify_chords"))
    off = quantize(score, "chord", FIRST)
    assert {cls for *_, cls in placed(on)} == {12}
    assert placed(off, 67)[0][2] == 9
    assert on.stats["moved: duration unified with its chord"] == 1


def test_a_tied_long_note_splits_at_bar_lines():
    metre = Metre(4, 4)
    parts = tied_parts(240, 3 * 1920 + 480 - 240, metre, 10 * 1920)   # from beat 1.5 to bar 3 beat 2
    starts = [p for p, _ in parts]
    assert starts[0] == 240 and all(s % 1920 == 0 for s in starts[1:])
    assert sum(int(CLASS_TICKS[c]) for _, c in parts) == 3 * 1920 + 480 - 240
    # an additive bar longer than the longest class (5/4: 2400 > 2240 ticks) splits on a beat
    five = normalise_metre(5, 4)
    parts = tied_parts(0, 2 * 2400, five, 10 * 2400)
    assert sum(int(CLASS_TICKS[c]) for _, c in parts) == 2 * 2400
    assert all(p % 480 == 0 for p, _ in parts)


# --- metres, channels, rejection -------------------------------------------------------------

def test_additive_metres_keep_their_notes():
    score = make_score([(0, 2400, 60), (2400, 2880, 62), (4800, 5280, 64)], metres=((0, 5, 4),))
    on = quantize(score, "five", only("additive_metres"))
    assert [str(b.metre) for b in on.bars] == ["5/4"] * 3 and len(on.notes) >= 3
    assert [pos for _, pos, _ in placed(on, 62)] == [0] and placed(on, 62)[0][0] == 1
    with pytest.raises(MidiReadError, match="unsupported metre 5/4 3"):
        quantize(score, "five", QuantizeOptions.first())


def test_at_most_15_instruments_sound_at_once():
    # 16 different instrument classes enter on the same beat: one has no channel left
    programs = [0, 16, 24, 32, 40, 41, 42, 43, 48, 47, 52, 56, 57, 58, 60, 61]
    score = make_score([(0, 480, 60 + i, p, i) for i, p in enumerate(programs)] + [(960, 1440, 50, 0, 0)])
    on = quantize(score, "tutti", only("max_instruments"))
    assert len(on.notes) == 16 and on.stats["dropped: no free MIDI channel (too many instruments at once)"] == 1
    assert len(quantize(score, "tutti", FIRST).notes) == 17


def test_a_range_with_too_many_unplaceable_notes_is_rejected_with_the_reason():
    # grid onsets always find a repair (merging, at worst); the check guards what is left: here 2
    # of 4 onsets sit 20 ticks (1/24 beat) after their predecessor
    rng = MetreRange(0, 1920, Metre(4, 4), "4/4")
    onsets = np.array([0, 20, 480, 500])
    check_quantisable(onsets, rng, dataclasses.replace(DEFAULT_OPTIONS, max_unquantisable_fraction=0.5))
    with pytest.raises(Unquantisable, match=r"2 of 4 notes of the 4/4 range .*50.0% > data.quantize.max_unquantisable_fraction 5%"):
        check_quantisable(onsets, rng, DEFAULT_OPTIONS)


@pytest.mark.parametrize("path", ["piano_midi_de/Chopin/chpn_op66.mid", "orchestral_symphonic/holst/The_Planets/hneptune.mid"])
def test_a_quantised_piece_quantises_to_itself(midi_dir, path):
    """Every heuristic leaves what is already on the grid as it is (written notes are not repaired).
    The first round trip may still change notes: a MIDI file cannot hold two overlapping notes of
    one key on one channel, so the writer ends the first at the second; from then on it is fixed."""
    from mahler_dist.music.encode import decode_to_midi, encode_score

    first = encode_score(read_midi(midi_dir / path), "example", DEFAULT_OPTIONS)
    second = encode_score(read_midi(decode_to_midi(first.rows, first.piece)), "second", DEFAULT_OPTIONS)
    third = encode_score(read_midi(decode_to_midi(second.rows, second.piece)), "third", DEFAULT_OPTIONS)
    np.testing.assert_array_equal(second.piece.notes, third.piece.notes)
    assert not any(v for k, v in third.stats.items() if k.startswith("moved: "))


@pytest.mark.parametrize("corpus", ["piano_midi_de", "orchestral_symphonic", "classical_multitrack"])
def test_supported_metres_cover_the_corpora(midi_dir, corpus):
    """Issue 14: supported metres (additive ones included) cover >= 99.5% of pitched notes."""
    covered = pitched = 0
    for path in sorted(p for p in (midi_dir / corpus).rglob("*") if p.suffix.lower() in (".mid", ".midi")):
        try:
            score = read_midi(path)
        except MidiReadError:
            continue
        starts = score.notes[:, NoteCol.START]
        pitched += len(starts)
        for rng in metre_ranges(score):
            if rng.metre is not None:
                covered += int(((starts >= rng.start) & (starts < rng.end)).sum())
    assert covered >= 0.995 * pitched, f"{corpus}: {covered / pitched:.4%} of pitched notes in supported metres"


def test_scoring_the_nearest_classes_chooses_what_scoring_all_60_does(monkeypatch):
    """choose_durations scores a window of classes near each length and falls back to all 60
    where the window cannot be sure; the choice is the same as scoring all 60 everywhere."""
    import mahler_dist.music.durations as D

    rng = np.random.default_rng(0)
    for signature in [(4, 4), (3, 4), (6, 8), (5, 4), (1, 4), (12, 8)]:
        metre = normalise_metre(*signature)
        pos = rng.integers(0, metre.bar_ticks // 20, 5000) * 20
        lengths = rng.uniform(1, D.longest_duration(metre), 5000)
        lengths[::3] = np.round(lengths[::3] / 20) * 20          # some exact lengths
        excluded = rng.integers(0, 8, 5000)                        # every combination of EXCLUDE_* bits
        windowed = [D.choose_durations(pos, lengths, metre, e) for e in (None, excluded)]
        monkeypatch.setattr(D, "_WINDOW", len(CLASS_TICKS))
        everything = [D.choose_durations(pos, lengths, metre, e) for e in (None, excluded)]
        monkeypatch.undo()
        for a, b in zip(windowed, everything):
            np.testing.assert_array_equal(a, b)


def test_the_switches_are_config_keys_that_describe_shows_and_that_are_checked():
    from mahler_dist.config import config_from_dict
    from mahler_dist.errors import ConfigError
    from mahler_dist.model.summary import describe_text

    config = config_from_dict({"data": {"quantize": {"unify_chords": True, "coarse_grid": False}}})
    assert config.data.quantize.unify_chords and not config.data.quantize.coarse_grid
    on, off = describe_text(config).splitlines()[-2:]
    assert "unify_chords" in on and "coarse_grid" in off
    with pytest.raises(ConfigError, match="unknown key 'data.quantize.swing'"):
        config_from_dict({"data": {"quantize": {"swing": True}}})
    with pytest.raises(ConfigError, match="data.quantize.legato_fraction: must be in"):
        config_from_dict({"data": {"quantize": {"legato_fraction": 1.5}}})


def test_what_the_original_deleted_is_kept_timpani_rolls_and_compound_sixths():
    # a timpani roll of performed 16ths (the original excluded d16 for timpani and dropped it)
    roll = make_score([(120 * k, 120 * k + 100, 45, 47) for k in range(32)])
    piece = quantize(roll, "roll", DEFAULT_OPTIONS)
    assert len(piece.notes) == 32 and sorted(pos + 1920 * bar for bar, pos, _ in placed(piece)) == [120 * k for k in range(32)]
    # 1/6-beat values in 6/8 (a 1/6 beat is a 16th there): the original excluded t16 in every metre
    sixths = make_score([(120 * k, 120 * k + 120, 60 + k % 12) for k in range(12)], metres=((0, 6, 8),))
    piece = quantize(sixths, "sixths", DEFAULT_OPTIONS)
    assert [cls for *_, cls in placed(piece)] == [2] * 12     # t16: 1/6 of a dotted-quarter beat


def test_an_empty_additive_bar_becomes_pause_rows_and_decodes_back():
    # 5/4 and 7/8 bars are longer than any class: a silent bar takes several pause rows
    from mahler_dist.music.encode import decode_to_midi, encode_score

    for metre, bar in (((0, 5, 4), 2400), ((0, 7, 8), 1680)):
        score = make_score([(0, 480, 60), (2 * bar, 2 * bar + 240, 64)], metres=(metre,))
        first = encode_score(score, "gap", DEFAULT_OPTIONS)
        assert first.piece.num_bars == 3 and np.diff(first.rows.bar_starts)[1] >= 2
        again = encode_score(read_midi(decode_to_midi(first.rows, first.piece)), "again", DEFAULT_OPTIONS)
        np.testing.assert_array_equal(first.piece.notes, again.piece.notes)

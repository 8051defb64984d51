"""Piece <-> rows <-> MIDI: round trips on the grid (hypothesis) and the bar-window rules."""

from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mahler_dist.music.midi_io import read_midi
from mahler_dist.music.piece import Bar, Piece, PieceCol, sort_piece_notes
from mahler_dist.music.quantize import quantize
from mahler_dist.music.rows import bar_windows, decode_bar, piece_to_rows, piece_to_score, rows_to_piece
from mahler_dist.music.timing import CLASS_TICKS, TIME_CLASSES, allowed_classes, duration_mask, normalise_metre
from mahler_dist.music.vocab import BEAT, DURATION, INSTRUMENT, OFFSET, PITCH, START_ROW, unpack_active
from mahler_dist.music.midi_io import write_midi

METRES = [(4, 4), (3, 4), (2, 4), (6, 8), (9, 8), (12, 8), (2, 2), (3, 8), (6, 16), (3, 16)]


def _on_grid(pos, metre):
    """The quantiser's grid: 1/8 or 1/6 beat (1/6 only in compound metres)."""
    return pos % 80 == 0 if metre.compound else pos % 60 == 0 or pos % 80 == 0


@st.composite
def grid_pieces(draw):
    """Pieces already on the grid: onsets reachable by single-class gaps, durations that the
    quantiser may choose at their start, no overlapping notes of one pitch and instrument."""
    signatures = draw(st.lists(st.sampled_from(METRES), min_size=1, max_size=2))
    bars, tick = [], 0
    for sig in signatures:
        metre = normalise_metre(*sig)
        for _ in range(draw(st.integers(1, 3))):
            bars.append(Bar(tick, metre, chunk_start=not bars))
            tick += metre.bar_score_ticks
    notes = []
    for b, bar in enumerate(bars):
        metre = bar.metre
        gaps = [c for c in allowed_classes(metre) if 0 < c and CLASS_TICKS[c] <= metre.bar_ticks]
        pos = 0 if b == 0 else draw(st.sampled_from([0] + [int(CLASS_TICKS[c]) for c in gaps]))
        while pos < metre.bar_ticks and len(notes) < 40:
            usable = [c for c in np.flatnonzero(duration_mask(metre))
                      if TIME_CLASSES[c].start_ok(Fraction(pos, 480))]
            for _ in range(draw(st.integers(1, 3))):
                notes.append((b, pos, int(draw(st.sampled_from(usable))), draw(st.integers(1, 95)),
                              draw(st.sampled_from([0, 4, 6, 20]))))
            if draw(st.booleans()):
                break
            on_grid = [g for g in gaps if _on_grid(pos + int(CLASS_TICKS[g]), metre)]
            if not on_grid:
                break
            pos += int(CLASS_TICKS[draw(st.sampled_from(on_grid))])
    piece = Piece("grid", bars, sort_piece_notes(np.array(notes, dtype=np.int64)))
    # drop notes that overlap an earlier note of the same pitch and instrument (MIDI cannot hold both)
    starts, ends = piece.absolute_times()
    keep, last_end = [], {}
    for i, (s, e) in enumerate(zip(starts, ends)):
        key = (piece.notes[i, PieceCol.PITCH], piece.notes[i, PieceCol.INSTR])
        if s >= last_end.get(key, -1):
            keep.append(i)
            last_end[key] = e
    piece = Piece("grid", bars, piece.notes[keep])
    # the piece ends at the first bar line at or after its last note ends (as the quantiser cuts it)
    _, ends = piece.absolute_times()
    last_bar = piece.notes[:, PieceCol.BAR].max()
    while len(bars) > 1 and bars[-1].start >= ends.max() and last_bar < len(bars) - 1:
        bars.pop()
    while bars[-1].start + bars[-1].metre.bar_score_ticks < ends.max():
        last = bars[-1]
        bars.append(Bar(last.start + last.metre.bar_score_ticks, last.metre, False))
    return Piece("grid", bars, piece.notes)


def assert_same_rows(a, b):
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.active, b.active)
    np.testing.assert_array_equal(a.bar_starts, b.bar_starts)
    assert a.metres == b.metres
    np.testing.assert_array_equal(a.chunk_start, b.chunk_start)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_pieces())
def test_grid_piece_survives_rows_midi_rows(piece):
    rows = piece_to_rows(piece)
    assert not rows.dropped
    decoded = rows_to_piece(rows, piece)
    np.testing.assert_array_equal(decoded.notes, piece.notes)
    midi = write_midi(piece_to_score(decoded))
    again = piece_to_rows(quantize(read_midi(midi, name="roundtrip"), "roundtrip"))
    assert_same_rows(rows, again)


@settings(max_examples=60, deadline=None)
@given(grid_pieces())
def test_bar_windows_concatenate_to_the_piece(piece):
    rows = piece_to_rows(piece)
    samples = bar_windows(rows)
    assert len(samples) == piece.num_bars
    np.testing.assert_array_equal(np.concatenate([s.inputs for s in samples]), rows.rows)
    np.testing.assert_array_equal(np.concatenate([s.active for s in samples]), rows.active)
    for b, s in enumerate(samples):
        assert len(s.inputs) >= 1
        expected = START_ROW[None] if b == 0 else samples[b - 1].inputs
        np.testing.assert_array_equal(s.context, expected)
        # every window starts at its bar line: its positions decode inside the bar
        assert all(pos < piece.bars[b].metre.bar_ticks for pos, *_ in decode_bar(s.inputs, piece.bars[b].metre.bar_ticks))


def _piece(notes, sig=(4, 4), n_bars=2):
    metre = normalise_metre(*sig)
    bars = [Bar(i * metre.bar_score_ticks, metre, i == 0) for i in range(n_bars)]
    return Piece("t", bars, sort_piece_notes(np.array(notes, dtype=np.int64)))


def test_empty_bar_is_one_pause_row_with_beat_zero():
    rows = piece_to_rows(_piece([(0, 0, 12, 40, 0)], n_bars=2))
    bar1, _ = rows.bar(1)
    assert bar1.tolist() == [[48, 0, 0, -1, -1]]


def test_chord_rows_ascend_and_share_the_onset():
    rows = piece_to_rows(_piece([(0, 480, 12, 50, 0), (0, 480, 12, 40, 0), (0, 480, 6, 45, 4)], n_bars=1))
    assert rows.rows[:, PITCH].tolist() == [40, 45, 50]
    assert rows.rows[:, OFFSET].tolist() == [12, 0, 0]     # one beat from the bar line, then 0
    assert rows.rows[:, BEAT].tolist() == [2, 2, 2]


def test_unrepresentable_gap_becomes_pause_rows():
    # 140 ticks (1/8 + 1/6 beat) is no single class: a pause row then the note's offset
    rows = piece_to_rows(_piece([(0, 140, 12, 40, 0)], n_bars=1))
    assert rows.rows[:, DURATION].tolist() == [0, 12]
    assert sum(CLASS_TICKS[o] for o in rows.rows[:, OFFSET]) == 140
    assert rows.rows[0, PITCH] == -1 and rows.rows[0, INSTRUMENT] == -1


def test_active_sets_hold_sounding_notes_before_the_row():
    # a whole note at 0 (pitch 40) and, one beat later, two notes: the second sees the first
    rows = piece_to_rows(_piece([(0, 0, 48, 40, 0), (0, 480, 12, 44, 0), (0, 480, 12, 47, 4)], n_bars=1))
    pitches, instruments = unpack_active(rows.active)
    assert pitches[0].sum() == 0
    assert np.flatnonzero(pitches[1]).tolist() == [40]
    assert np.flatnonzero(pitches[2]).tolist() == [40, 44]
    assert np.flatnonzero(instruments[2]).tolist() == [0]


def test_notes_ending_at_an_onset_are_not_active():
    rows = piece_to_rows(_piece([(0, 0, 12, 40, 0), (0, 480, 12, 41, 0)], n_bars=1))
    pitches, _ = unpack_active(rows.active)
    assert pitches[1].sum() == 0


@st.composite
def _row_snaps(draw):
    """Notes (any pitches and instruments, overlaps and repeats included) and the rows' (time,
    first note not yet added) pairs, both non-decreasing along the rows as piece_to_rows makes them."""
    n = draw(st.integers(1, 12))
    starts = sorted(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
    ends = [s + draw(st.integers(1, 30)) for s in starts]
    pitches = draw(st.lists(st.sampled_from([0, 1, 7, 8, 40, 94, 95]), min_size=n, max_size=n))
    instruments = draw(st.lists(st.sampled_from([0, 7, 8, 21, 22]), min_size=n, max_size=n))
    times = sorted(draw(st.lists(st.integers(0, 80), min_size=1, max_size=20)))
    firsts = sorted(draw(st.lists(st.integers(0, n), min_size=len(times), max_size=len(times))))
    notes = np.zeros((n, 5), np.int64)
    notes[:, PieceCol.PITCH], notes[:, PieceCol.INSTR] = pitches, instruments
    return list(zip(times, firsts)), notes, np.array(starts), np.array(ends)


@settings(max_examples=150, deadline=None)
@given(_row_snaps())
def test_active_sets_equal_the_definition_row_by_row(case):
    """Row (t, k) holds the pitches and instruments of the notes j < k that end after t."""
    from mahler_dist.music.rows import _active_sets
    from mahler_dist.music.vocab import pack_active

    snap_at, notes, starts, ends = case
    want_p = np.zeros((len(snap_at), 96), bool)
    want_i = np.zeros((len(snap_at), 23), bool)
    for r, (t, k) in enumerate(snap_at):
        for j in range(k):
            if ends[j] > t:
                want_p[r, notes[j, PieceCol.PITCH]] = want_i[r, notes[j, PieceCol.INSTR]] = True
    np.testing.assert_array_equal(_active_sets(snap_at, notes, starts, ends), pack_active(want_p, want_i))


def test_active_sets_count_past_the_int16_range():
    """33,000 notes of one pitch and instrument sounding at once (adversarial MIDI): still active."""
    from mahler_dist.music.rows import _active_sets

    n = 33_000
    notes = np.zeros((n, 5), np.int64)
    notes[:, PieceCol.PITCH], notes[:, PieceCol.INSTR] = 40, 3
    active = _active_sets([(50, n)], notes, np.zeros(n, np.int64), np.full(n, 100, np.int64))
    pitches, instruments = unpack_active(active)
    assert np.flatnonzero(pitches[0]).tolist() == [40] and np.flatnonzero(instruments[0]).tolist() == [3]

"""Output with more than 15 instrument classes: channels are allocated over time (at most 15
programs sounding at once, channel 9 reserved), so no two classes sound on one channel and every
note is written and read back with its class's program; notes that cannot be placed are counted."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mahler_dist.music.instruments import write_back_programs
from mahler_dist.music.midi_io import assign_channels, read_midi, write_midi
from mahler_dist.music.piece import Bar, Piece, PieceCol, sort_piece_notes
from mahler_dist.music.rows import piece_to_score
from mahler_dist.music.score import NoteCol, Score, sort_notes
from mahler_dist.music.timing import CLASS_TICKS, normalise_metre

QUARTER_CLASS = int(list(CLASS_TICKS).index(480))


def twenty_class_piece() -> Piece:
    """Four bars of 4/4. Bar 0: classes 0..9 and 15..19 (15 at once: k and k + 15 sound together);
    bar 1: classes 10..14 and 0..4; bars 2-3: all 20 in turn, one quarter note each."""
    metre = normalise_metre(4, 4)
    bars = [Bar(i * metre.bar_score_ticks, metre, i == 0) for i in range(4)]
    notes = [(0, 0, QUARTER_CLASS, 30 + k, k) for k in [*range(10), *range(15, 20)]]
    notes += [(1, 480, QUARTER_CLASS, 30 + k, k) for k in [*range(10, 15), *range(5)]]
    notes += [(2 + k // 10, (k % 10) * 192, QUARTER_CLASS, 30 + k, k) for k in range(20)]
    return Piece("twenty", bars, sort_piece_notes(np.array(notes, dtype=np.int64)))


def test_a_20_class_piece_round_trips_with_every_note_on_its_classs_program():
    piece = twenty_class_piece()
    programs = write_back_programs()
    score = piece_to_score(piece)
    assert not score.dropped and len(score.notes) == len(piece.notes)
    back = read_midi(write_midi(score))
    expected = Counter()
    starts, _ = piece.absolute_times()
    pitches, classes = piece.notes[:, PieceCol.PITCH].tolist(), piece.notes[:, PieceCol.INSTR].tolist()
    for start, pitch, cls in zip(starts.tolist(), pitches, classes):
        expected[(start, pitch + 17, programs[cls])] += 1
    got = Counter(map(tuple, back.notes[:, [NoteCol.START, NoteCol.PITCH, NoteCol.PROGRAM]].tolist()))
    assert got == expected
    assert 9 not in back.notes[:, NoteCol.CHANNEL].tolist()
    assert len(set(back.notes[:, NoteCol.PROGRAM].tolist())) == 20


def test_channels_never_hold_two_programs_at_once():
    score = piece_to_score(twenty_class_piece())
    notes = score.notes
    for channel in set(notes[:, NoteCol.CHANNEL].tolist()):
        mine = notes[notes[:, NoteCol.CHANNEL] == channel]
        mine = mine[np.lexsort((mine[:, NoteCol.END], mine[:, NoteCol.START]))]
        programs = mine[:, NoteCol.PROGRAM]
        for program in set(programs.tolist()):  # another program starts only after this one ends
            ours, others = mine[programs == program], mine[programs != program]
            overlap = ((others[:, NoteCol.START, None] < ours[None, :, NoteCol.END])
                       & (ours[None, :, NoteCol.START] < others[:, NoteCol.END, None]))
            assert not overlap.any(), f"channel {channel}: program {program} overlaps another"


def test_more_than_15_programs_at_once_are_counted_not_mixed():
    notes = np.array([(0, 480, 60, p, 0, 0) for p in range(17)] + [(480, 960, 62, 16, 0, 0)])
    placed = assign_channels(notes)
    assert placed.unplaced == 2  # programs 15 and 16 at tick 0 find no silent channel
    # 16 plays once a channel is free
    assert sorted(placed.notes[:, NoteCol.PROGRAM].tolist()) == [*range(15), 16]
    assert len(set(placed.notes[:placed.notes.shape[0] - 1, NoteCol.CHANNEL].tolist())) == 15
    back = read_midi(write_midi(Score(notes=sort_notes(placed.notes))))
    start_program = [NoteCol.START, NoteCol.PROGRAM]
    assert sorted(back.notes[:, start_program].tolist()) == sorted(placed.notes[:, start_program].tolist())


def test_piece_to_score_counts_notes_without_a_channel():
    metre = normalise_metre(4, 4)
    notes = [(0, 0, QUARTER_CLASS, 30 + k, k) for k in range(17)]  # 17 classes in one chord
    piece = Piece("seventeen", [Bar(0, metre, True)], sort_piece_notes(np.array(notes, dtype=np.int64)))
    score = piece_to_score(piece)
    assert score.dropped == Counter({"no free channel": 2})
    assert len(score.notes) + sum(score.dropped.values()) == score.source_notes == 17


def test_a_program_that_returns_after_losing_its_channel_gets_a_program_change_again():
    # program 0 on a channel, then 15 others fill every channel, then program 0 again
    notes = [(0, 100, 60, 0, 0, 0)] + [(100 + k, 1000, 62, 1 + k, 0, 0) for k in range(15)]
    notes += [(1000, 1480, 64, 0, 0, 0)]
    placed = assign_channels(np.array(notes))
    assert placed.unplaced == 0
    back = read_midi(write_midi(Score(notes=sort_notes(placed.notes))))
    got = back.notes[:, [NoteCol.START, NoteCol.PITCH, NoteCol.PROGRAM]].tolist()
    assert sorted(map(tuple, got)) == sorted((s, p, g) for s, _, p, g, _, _ in notes)

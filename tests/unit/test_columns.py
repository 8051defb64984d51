"""One column name per array layout: Score.notes columns are NoteCol, Piece.notes columns are
PieceCol, and the only bare PITCH is vocab's (the column of an encoded event row)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from mahler_dist.music import piece, score, vocab
from mahler_dist.music.piece import Bar, Piece, PieceCol
from mahler_dist.music.score import NOTE_COLUMNS, NoteCol, Score
from mahler_dist.music.timing import Metre


def test_note_columns_follow_note_columns_order():
    assert issubclass(NoteCol, IntEnum)
    assert [c.name.lower() for c in NoteCol] == list(NOTE_COLUMNS)
    assert [int(c) for c in NoteCol] == list(range(len(NOTE_COLUMNS)))
    assert Score().notes.shape == (0, len(NoteCol))


def test_piece_columns_follow_the_piece_docs():
    # Piece.notes: int64 [N, 5] - BAR, POS, DUR class, PITCH index 0..95, INSTR class
    assert issubclass(PieceCol, IntEnum)
    assert [(c.name, int(c)) for c in PieceCol] == [("BAR", 0), ("POS", 1), ("DUR", 2), ("PITCH", 3), ("INSTR", 4)]
    assert Piece("x", [], np.zeros((0, 5), np.int64)).notes.shape == (0, len(PieceCol))


def test_columns_index_numpy_arrays_as_ints():
    notes = np.arange(12).reshape(2, 6)
    assert notes[:, NoteCol.PITCH].tolist() == [2, 8]
    assert notes[1, [NoteCol.START, NoteCol.TRACK]].tolist() == [6, 11]
    metre = Metre(4, 4)
    p = Piece("x", [Bar(0, metre, True)], [[0, 0, 0, 40, 3]])
    assert p.notes[0, PieceCol.PITCH] == 40 and p.notes[0, PieceCol.INSTR] == 3


def test_only_vocab_has_a_bare_pitch():
    for module in (score, piece):
        for name in ("PITCH", "START", "END", "PROGRAM", "CHANNEL", "TRACK", "BAR", "POS", "DUR", "INSTR"):
            assert not hasattr(module, name), f"{module.__name__}.{name} is back: use its column enum"
    assert vocab.PITCH == 3 and not isinstance(vocab.PITCH, IntEnum)

"""`Piece`: a quantised score, bar by bar - what the event rows are made from and decoded to.

A piece is a sequence of bars (each with its metre and start time) and quantised notes. A note
is placed by its bar and its position inside the bar in *model ticks* (480 per beat of that
bar's metre, see timing.Metre) and has a duration *class*; so a piece is on the MahlerNet grid by
construction. Chunks (reference 2.3) are runs of bars cut off from the previous music by an
unsupported metre: the first bar of a chunk gets the START context.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from mahler_dist.music.timing import CLASS_TICKS, Metre


class PieceCol(IntEnum):
    """Columns of `Piece.notes` (int64 [N, 5]): a quantised note's bar index, position in the bar
    (model ticks), duration class, pitch index 0..95 (MIDI pitch - vocab.PITCH_LOW) and
    instrument class.

    Not the columns of `Score.notes` (score.NoteCol) nor of an event row (vocab.PITCH etc.).
    An IntEnum is an int, so `notes[:, PieceCol.PITCH]` indexes numpy arrays as before; in a hot
    Python loop bind the column to a local first (attribute access is slower than a module int).
    """

    BAR = 0
    POS = 1
    DUR = 2
    PITCH = 3
    INSTR = 4


@dataclass(frozen=True)
class Bar:
    start: int          # score ticks (480 per quarter) from the piece start
    metre: Metre
    chunk_start: bool   # first bar of a chunk: its context is the START token


@dataclass
class Piece:
    """Bars and quantised notes (int64 [N, 5], columns PieceCol: BAR, POS, DUR class, PITCH index
    0..95, INSTR class), sorted by bar, position, pitch, instrument. `stats` counts source notes
    kept and dropped (by reason) on the way from the MIDI file."""

    name: str
    bars: list[Bar]
    notes: np.ndarray
    stats: Counter = field(default_factory=Counter)
    #: per quantised source note: |onset shift| and |duration change| in beats (float [M, 2])
    quantisation_error: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def __post_init__(self) -> None:
        self.notes = np.asarray(self.notes, dtype=np.int64).reshape(-1, len(PieceCol))

    @property
    def num_bars(self) -> int:
        return len(self.bars)

    def absolute_times(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of every note in score ticks: where it sounds on the piece's timeline."""
        bar_start = np.array([b.start for b in self.bars], dtype=np.int64)
        num = np.array([b.metre.tick_scale.numerator for b in self.bars], dtype=np.int64)
        den = np.array([b.metre.tick_scale.denominator for b in self.bars], dtype=np.int64)
        bar = self.notes[:, PieceCol.BAR]
        starts = bar_start[bar] + self.notes[:, PieceCol.POS] * num[bar] // den[bar]
        ends = starts + CLASS_TICKS[self.notes[:, PieceCol.DUR]] * num[bar] // den[bar]
        return starts, ends

    def metres(self) -> list[str]:
        return sorted({str(b.metre) for b in self.bars})


def sort_piece_notes(notes: np.ndarray) -> np.ndarray:
    if len(notes) == 0:
        return notes.reshape(0, len(PieceCol))
    order = np.lexsort((notes[:, PieceCol.INSTR], notes[:, PieceCol.PITCH], notes[:, PieceCol.POS],
                       notes[:, PieceCol.BAR]))
    return notes[order]


def bars_for(metres_and_counts: list[tuple[Metre, int]]) -> list[Bar]:
    """Consecutive bars for [(metre, number of bars), ...], one chunk."""
    bars, tick = [], 0
    for metre, count in metres_and_counts:
        for _ in range(count):
            bars.append(Bar(tick, metre, chunk_start=not bars))
            tick += metre.bar_score_ticks
    return bars

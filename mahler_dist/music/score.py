"""`Score`: the parsed content of a MIDI file, before quantisation.

Times are in ticks at `TICKS_PER_QUARTER` (every file is resampled to it at parse time, unlike the
original, which needed ticks-per-beat divisible by 24 or 48: reference section 9, item 11).
Notes are one int64 array with named columns so the quantiser can work on whole columns at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

TICKS_PER_QUARTER = 480


class NoteCol(IntEnum):
    """Columns of `Score.notes` (int64 [N, 6]; names in NOTE_COLUMNS): a score note in ticks at
    TICKS_PER_QUARTER, its MIDI pitch 0..127, GM program, channel and source track.

    Not the columns of `Piece.notes` (piece.PieceCol) nor of an event row (vocab.PITCH etc.).
    An IntEnum is an int, so `notes[:, NoteCol.PITCH]` indexes numpy arrays as before; in a hot
    Python loop bind the column to a local first (attribute access is slower than a module int).
    """

    START = 0
    END = 1
    PITCH = 2
    PROGRAM = 3
    CHANNEL = 4
    TRACK = 5


NOTE_COLUMNS = ("start", "end", "pitch", "program", "channel", "track")


def empty_notes() -> np.ndarray:
    return np.zeros((0, len(NOTE_COLUMNS)), dtype=np.int64)


def sort_notes(notes: np.ndarray) -> np.ndarray:
    """Order notes by start, then pitch (chord notes ascend by pitch, reference 1.1), then end."""
    if len(notes) == 0:
        return notes
    order = np.lexsort((notes[:, NoteCol.END], notes[:, NoteCol.PITCH], notes[:, NoteCol.START]))
    return notes[order]


@dataclass(frozen=True)
class TempoChange:
    tick: int
    us_per_quarter: int

    @property
    def bpm(self) -> float:
        return 60_000_000 / self.us_per_quarter


@dataclass(frozen=True)
class MetreChange:
    tick: int
    numerator: int
    denominator: int

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


@dataclass
class Score:
    """Notes (int64 [N, 6], columns NoteCol / NOTE_COLUMNS, sorted by `sort_notes`), tempo and metre maps.

    `dropped` counts source notes that are not in `notes`, by reason, so nothing is lost silently.
    `source_notes` is the number of notes found in the file (kept + dropped). `repairs` says what
    the reader repaired to read the file (phrases listed in midi_io's docstring, REPAIRS).
    """

    notes: np.ndarray = field(default_factory=empty_notes)
    tempos: list[TempoChange] = field(default_factory=list)
    metres: list[MetreChange] = field(default_factory=list)
    end_tick: int = 0
    source_notes: int = 0
    dropped: Counter = field(default_factory=Counter)
    repairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.notes = np.asarray(self.notes, dtype=np.int64).reshape(-1, len(NOTE_COLUMNS))

    @property
    def kept_notes(self) -> int:
        return int(len(self.notes))

    def metre_at(self, tick: int) -> MetreChange:
        """The metre in force at `tick` (4/4 before the first time signature, as in MIDI)."""
        current = MetreChange(0, 4, 4)
        for change in self.metres:
            if change.tick > tick:
                break
            current = change
        return current

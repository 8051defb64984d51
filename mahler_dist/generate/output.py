"""Generated rows -> Piece -> MIDI bytes (and files with a piano roll beside them).

Bars are laid end to end, each in its own metre; notes are decoded with music.rows.decode_bar
(time restarts at every bar, pause rows only advance time, onsets at or past the bar end are
dropped) and written with the instrument write-back table (the corpus statistics in
the current build's index.json "write_back_programs" when present, else the defaults): 120 bpm,
velocity 64, one channel per instrument class (music.rows.piece_to_score).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mahler_dist.errors import MahlerError
from mahler_dist.music.instruments import write_back_programs
from mahler_dist.music.midi_io import write_midi
from mahler_dist.music.rows import piece_to_score, rows_to_piece
from mahler_dist.music.timing import Metre, normalise_metre

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class MetreError(MahlerError, ValueError):
    """A metre argument that is not understood or not supported."""


def parse_metre(value: str | int | Metre | None, default: Metre | None = None) -> Metre:
    """A metre from the CLI/API: a Metre, "N/D", or the original's --meter 2 | 3 | 4 (x/4), plus
    6 (6/8). None gives `default` (4/4 if that is None too)."""
    if value is None:
        return default or Metre(4, 4)
    if isinstance(value, Metre):
        return value
    text = str(value).strip()
    shorthands = {"2": (2, 4), "3": (3, 4), "4": (4, 4), "6": (6, 8)}
    if text in shorthands:
        return Metre(*shorthands[text])
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})", text)
    if not m:
        raise MetreError(f"metre {value!r}: use 2, 3, 4 (x/4), 6 (6/8) or N/D such as 3/4")
    try:
        return normalise_metre(int(m.group(1)), int(m.group(2)))
    except MahlerError as e:
        raise MetreError(f"metre {value!r}: {e}") from None


def rows_to_midi_bytes(bars: Sequence[np.ndarray], metres: Sequence[Metre] | Metre,
                       programs: Sequence[int] | None = None) -> bytes:
    """Rows per bar -> MIDI file bytes (type 1, 480 ticks per quarter)."""
    if isinstance(metres, Metre):
        metres = [metres] * len(bars)
    piece = rows_to_piece(bars, metres)
    return write_midi(piece_to_score(piece, tuple(programs) if programs else None))


def corpus_programs(root: str | Path | None) -> tuple[int, ...]:
    """The write-back program per instrument class from the current build's index.json, else the defaults."""
    if root is not None:
        try:
            from mahler_dist.data.shards import read_index

            table = read_index(root).get("write_back_programs")
            if table and len(table) == len(write_back_programs()):
                return tuple(int(p) for p in table)
        except (OSError, ValueError, KeyError):
            pass
    return write_back_programs()


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def safe_label(text: str) -> str:
    """A file-name-safe form of a label (piece ids and unit strings already are)."""
    return _SAFE.sub("_", str(text)).strip("._") or "x"


def unique_path(directory: Path, stem: str, suffix: str) -> Path:
    """DIR/STEM.SUFFIX, or DIR/STEM_2.SUFFIX, ... if taken (timestamps have 1 s resolution)."""
    stem = safe_label(stem)
    path, k = directory / f"{stem}{suffix}", 1
    while path.exists():
        k += 1
        path = directory / f"{stem}_{k}{suffix}"
    return path


def write_output(directory: Path, stem: str, bars: Sequence[np.ndarray], metres: Sequence[Metre],
                 programs: Sequence[int] | None, title: str | None = None, plot: bool = True) -> Path:
    """Write DIR/STEM.mid (and DIR/STEM.png, a piano roll) atomically; returns the MIDI path."""
    directory.mkdir(parents=True, exist_ok=True)
    piece = rows_to_piece(bars, metres, stem)
    data = write_midi(piece_to_score(piece, tuple(programs) if programs else None))
    path = unique_path(directory, stem, ".mid")
    tmp = path.with_suffix(".mid.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    if plot:
        from mahler_dist.plots import piano_roll

        piano_roll(piece, path.with_suffix(".png"), title or stem)
    return path

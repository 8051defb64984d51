"""The representation's short path: MIDI -> Score -> Piece -> rows -> bar samples, and back.

    encoded = encode_file("piece.mid")          # or encode_bytes(data, name)
    encoded.samples                             # one BarSample per bar
    midi = decode_to_midi(encoded.rows, encoded.piece)

Every step that drops information says so in its docstring and counts it in `encoded.stats`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mahler_dist.music.midi_io import read_midi, write_midi
from mahler_dist.music.piece import Piece
from mahler_dist.music.quantize import quantize
from mahler_dist.music.quantize_options import DEFAULT_OPTIONS, QuantizeOptions
from mahler_dist.music.rows import BarSample, PieceRows, bar_windows, piece_to_rows, piece_to_score, rows_to_piece
from mahler_dist.music.score import Score


@dataclass
class EncodedPiece:
    name: str
    score: Score
    piece: Piece
    rows: PieceRows
    samples: list[BarSample]

    @property
    def stats(self) -> Counter:
        """Source notes, kept notes, note parts and dropped notes by reason ("dropped: ...")."""
        stats = Counter(self.piece.stats)
        for reason, count in self.rows.dropped.items():
            stats[f"dropped: {reason}"] += count
            stats["kept notes"] -= count
        return stats


def encode_score(score: Score, name: str, options: QuantizeOptions = DEFAULT_OPTIONS) -> EncodedPiece:
    piece = quantize(score, name, options)
    rows = piece_to_rows(piece)
    return EncodedPiece(name, score, piece, rows, bar_windows(rows))


def encode_bytes(data: bytes, name: str, options: QuantizeOptions = DEFAULT_OPTIONS) -> EncodedPiece:
    """Raises MidiReadError(name, reason) for a file that cannot be read or leaves no notes."""
    return encode_score(read_midi(data, name=name), name, options)


def encode_file(path: str | Path, options: QuantizeOptions = DEFAULT_OPTIONS) -> EncodedPiece:
    path = Path(path)
    return encode_score(read_midi(path, name=str(path)), str(path), options)


def decode_to_midi(rows: PieceRows, template: Piece, programs: tuple[int, ...] | None = None) -> bytes:
    """Rows (on the bars of `template`) -> MIDI bytes."""
    return write_midi(piece_to_score(rows_to_piece(rows, template), programs))

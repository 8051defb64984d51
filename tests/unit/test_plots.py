"""plots.piano_roll: a PNG from a Piece, a Score or a note array; importable without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from mahler_dist.music.rows import rows_to_piece
from mahler_dist.music.piece import Piece, bars_for
from mahler_dist.music.rows import piece_to_score
from mahler_dist.music.timing import Metre
from mahler_dist.plots import piano_roll

PNG = b"\x89PNG\r\n\x1a\n"


def _piece() -> Piece:
    rows = [np.array([[0, 0, 12, 40, 0], [0, 0, 12, 44, 4], [12, 2, 24, 47, 19]], dtype=np.int8),
            np.array([[48, 0, 0, -1, -1]], dtype=np.int8),                       # a silent bar
            np.array([[6, 1, 6, 60, 8]], dtype=np.int8)]
    return rows_to_piece(rows, [Metre(4, 4), Metre(4, 4), Metre(3, 4)])


def test_piece_score_and_array(tmp_path: Path):
    piece = _piece()
    assert len(piece.notes) == 4
    for name, obj in (("piece", piece), ("score", piece_to_score(piece)),
                      ("array", np.array([[0, 480, 60, 0], [480, 960, 64, 5]]))):
        path = piano_roll(obj, tmp_path / f"{name}.png", title=name)
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 2000


def test_empty_piece(tmp_path: Path):
    empty = Piece("empty", bars_for([(Metre(4, 4), 2)]), np.zeros((0, 5), np.int64))
    assert piano_roll(empty, tmp_path / "sub" / "empty.png").read_bytes().startswith(PNG)


def test_importable_without_ray_or_pyplot():
    code = ("import sys, mahler_dist.plots, mahler_dist.generate; "
            "assert 'ray' not in sys.modules and 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

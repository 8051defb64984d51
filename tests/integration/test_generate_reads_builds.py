"""Generation finds its seed pieces in the build ROOT/CURRENT points to (issue 10: versioned builds).

Before the fix `resolve_piece` looked for ROOT/pieces/<id>.npz, which a build-layout ROOT no longer
has, so `mahler generate --type recon --file PIECE` failed on every freshly preprocessed ROOT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mahler_dist.config import DataConfig

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_recon_seed_is_found_in_the_current_build(ray_session, tmp_path):
    from mahler_dist.data import shards as S
    from mahler_dist.data.preprocess import preprocess
    from mahler_dist.generate.modes import load_windows, resolve_piece

    root = tmp_path / "root"
    (root / "input").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "midi" / "scn15_7.mid", root / "input")
    preprocess(root, DataConfig(val_fraction=0.0, test_fraction=0.0), progress=False)
    assert not (root / S.PIECES_DIR).exists()          # the build layout, not the old one
    piece_id, label = resolve_piece(root, "scn15_7.mid")
    assert label == "scn15_7"
    windows = load_windows(root, piece_id, label)
    assert windows.piece_id == piece_id and len(windows.windows) > 10

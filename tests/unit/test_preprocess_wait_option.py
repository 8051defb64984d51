"""`mahler preprocess --wait SECONDS`: how long a second run on one ROOT waits for the lock
(issue 10: the lock's wait was reachable from Python only)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mahler_dist.cli import main
from mahler_dist.data.publish import RootLock
from mahler_dist.storage import Store

REPO = Path(__file__).resolve().parents[2]


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "input").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "midi" / "scn15_6.mid", root / "input")
    return root


def test_a_second_run_waits_the_given_seconds_then_names_the_holder(tmp_path, capsys):
    root = _root(tmp_path)
    with RootLock(Store(root), "held-by-this-test"):
        t0 = time.monotonic()
        code = main(["preprocess", str(root), "--wait", "1.5"])
        waited = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and 1.4 <= waited < 30
    assert "waiting for the run that holds the lock" in err
    assert "another preprocess run holds .lock" in err and "--wait SECONDS" in err


def test_without_wait_a_second_run_is_refused_at_once(tmp_path, capsys):
    root = _root(tmp_path)
    with RootLock(Store(root), "held-by-this-test"):
        t0 = time.monotonic()
        assert main(["preprocess", str(root)]) == 2
        assert time.monotonic() - t0 < 1.0
    assert "another preprocess run holds .lock" in capsys.readouterr().err

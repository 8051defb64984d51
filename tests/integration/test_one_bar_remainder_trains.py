"""Issue 10 item 1 end to end: a corpus whose size left a one-bar batch trains 2 epochs.

One real piece (examples/midi/scn15_6.mid: 33 bars, all in the train split) on 2 workers with the
tiny preset (global batch 16: 8 bars per rank, shuffle window 256). The plan before issue 10 cut
the 33 bars into two windows of 17 and 16 and the first into 8 + 8 + 1 bars; the one-bar batch
crashed ZProjection's BatchNorm on every epoch until max_failures was spent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_observers import KeyRecorder, read_records, steps_of

from mahler_dist.config import DataConfig, load_config, resolve_config_path

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PIECE = "scn15_6.mid"


def test_a_corpus_leaving_a_one_bar_remainder_trains_two_epochs(ray_session, tmp_path):
    from mahler_dist.data.loader import scan_lengths
    from mahler_dist.data.preprocess import preprocess
    from mahler_dist.data.shards import shard_urls
    from mahler_dist.train.launch import train

    root = tmp_path / "root"
    (root / "input").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "midi" / PIECE, root / "input" / PIECE)
    preprocess(root, DataConfig(val_fraction=0.0, test_fraction=0.0, shard_samples=64))
    n = sum(len(l) for l in scan_lengths(shard_urls(root, "train")))
    tiny = load_config(resolve_config_path("tiny")).train
    per_rank = tiny.batch_size // 2
    assert n <= tiny.shuffle_window and -(-n // 2) % per_rank == 1    # the old plan's 1-bar remainder

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    # no retries: a step that crashes fails the test at once instead of after max_failures restarts
    summary = train("small-batches", root, "tiny", workers=2, epochs=2, max_failures=0,
                    observers=[KeyRecorder(keys_dir)])
    assert summary.epochs_done == 2 and not summary.stopped_early
    records = read_records(keys_dir)
    for epoch in (0, 1):
        steps = steps_of(records, epoch)
        seen = [k for r in steps for k in r["keys"]]
        assert len(seen) == len(set(seen)) == n                          # each bar exactly once
        assert len([r for r in steps if r["rank"] == 0]) == len([r for r in steps if r["rank"] == 1])


def test_without_a_validation_split_the_run_says_so_and_records_the_data_it_used(ray_session, tmp_path):
    """No val split: the summary must not call the training loss a validation loss, and the run's
    config.yaml records the build's data settings (val_fraction 0), not the preset's defaults."""
    from mahler_dist.config import load_config
    from mahler_dist.data.preprocess import preprocess
    from mahler_dist.data.shards import current_build
    from mahler_dist.train.launch import train

    root = tmp_path / "root"
    (root / "input").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "midi" / PIECE, root / "input" / PIECE)
    preprocess(root, DataConfig(val_fraction=0.0, test_fraction=0.0, shard_samples=64, max_rows_per_bar=200))
    summary = train("no-val", root, "tiny", workers=1, epochs=1, max_failures=0)
    text = str(summary)
    assert "validation loss" not in text and "(no validation split)" in text and "by training loss" in text
    epoch = json.loads((root / "runs" / "no-val" / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch["kind"] == "epoch" and epoch["score_on"] == "train"
    assert epoch["val_score"] == pytest.approx(epoch["train_loss"])
    saved = load_config(root / "runs" / "no-val" / "config.yaml")
    assert (saved.data.val_fraction, saved.data.test_fraction, saved.data.max_rows_per_bar) == (0.0, 0.0, 200)
    data = json.loads((root / "runs" / "no-val" / "data.json").read_text())
    assert data["build"] == current_build(root) and data["starts"][-1]["root"] == str(root.resolve())

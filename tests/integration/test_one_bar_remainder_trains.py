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
                    record_keys_dir=str(keys_dir))
    assert summary.epochs_done == 2 and not summary.stopped_early
    for epoch in (0, 1):
        ranks = [json.loads((keys_dir / f"epoch{epoch}_rank{r}.json").read_text()) for r in (0, 1)]
        seen = ranks[0]["keys"] + ranks[1]["keys"]
        assert len(seen) == len(set(seen)) == n                          # each bar exactly once
        assert ranks[0]["batches"] == ranks[1]["batches"]

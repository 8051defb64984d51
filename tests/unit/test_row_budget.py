"""Issue 10 item 2, loader side: a row budget is always in force, the presets set one that bounds a
step's memory, and a real piece with one over-long bar never yields a batch past the limits; a
sample past max_rows_per_bar (written by a build from before contexts were bounded) is refused
with its shard and key, never padded into a batch."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from mahler_dist.config import Config, PRESETS_DIR, config_from_dict, load_config
from mahler_dist.data.loader import BarLoader, PlanOptions
from mahler_dist.data.shards import piece_id_of, sample_key, sample_members
from mahler_dist.errors import ConfigError
from mahler_dist.music.encode import encode_bytes
from mahler_dist.music.rows import bar_windows

PIECE = "piano_midi_de/Schubert/schu_143_2.mid"   # 66 bars: one of 86 rows, the others <= 46
MAX_ROWS = 64
BUDGET = 4 * MAX_ROWS          # two bars at the bound, or up to 8 short ones


def test_the_default_budget_is_a_bound_and_zero_is_refused():
    assert Config().train.max_batch_rows > 0
    with pytest.raises(ConfigError, match="train.max_batch_rows: must be >= 2 x data.max_rows_per_bar = 512"):
        config_from_dict({"train": {"max_batch_rows": 0}})
    with pytest.raises(ValueError, match="max_batch_rows 0 cannot hold one bar"):
        PlanOptions(max_batch_rows=0)
    with pytest.raises(ValueError, match=">= 2 x max_rows_per_bar = 128"):
        PlanOptions(max_batch_rows=127, max_rows_per_bar=64)


@pytest.mark.parametrize("preset", ["tiny", "small", "mahlernet"])
def test_presets_set_a_budget_that_binds_below_the_worst_case(preset):
    c = load_config(PRESETS_DIR / f"{preset}.yaml")
    worst = c.train.batch_size * 2 * c.data.max_rows_per_bar      # a full batch of bars at the bound
    assert 2 * c.data.max_rows_per_bar <= c.train.max_batch_rows < worst
    assert c.train.max_batch_rows == 64 * c.train.batch_size       # the arithmetic in the comments


def _samples(midi_dir):
    data = (midi_dir / PIECE).read_bytes()
    rows = encode_bytes(data, PIECE).rows
    assert np.diff(rows.bar_starts).max() > MAX_ROWS >= np.sort(np.diff(rows.bar_starts))[-2]
    return piece_id_of(data), bar_windows(rows)


def _write_shard(path, piece, samples) -> str:
    with tarfile.open(path, "w") as tar:
        for name, payload in sample_members(samples, piece, PIECE):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def test_a_context_past_the_limit_from_an_older_build_is_refused(midi_dir, tmp_path):
    piece, samples = _samples(midi_dir)
    # the rule before issue 10: only the input bar was bounded, its successor kept it as context
    old = [s for s in samples if len(s.inputs) <= MAX_ROWS]
    long_context = next(s for s in old if len(s.context) > MAX_ROWS)
    url = _write_shard(tmp_path / "train-000000.tar", piece, old)
    with pytest.raises(ValueError) as info:
        BarLoader([url], options=PlanOptions(batch_size=8, max_batch_rows=BUDGET, max_rows_per_bar=MAX_ROWS))
    message = str(info.value)
    assert url in message and sample_key(piece, long_context.bar) in message
    assert f"{len(long_context.context)} context rows" in message and "max_rows_per_bar 64" in message


def test_a_piece_with_one_over_long_bar_never_yields_a_batch_past_the_budget(midi_dir, tmp_path):
    piece, samples = _samples(midi_dir)
    kept = [s for s in samples if len(s.inputs) <= MAX_ROWS and len(s.context) <= MAX_ROWS]
    urls = [_write_shard(tmp_path / f"train-{i:06d}.tar", piece, kept[i::2]) for i in range(2)]
    expected = sorted(sample_key(piece, s.bar) for s in kept)
    for world in (1, 2):
        options = PlanOptions(world_size=world, batch_size=8, max_batch_rows=BUDGET, max_rows_per_bar=MAX_ROWS,
                              shuffle_window=32)
        loaders = [BarLoader(urls, rank=r, options=options) for r in range(world)]
        for epoch in range(2):
            seen, sizes = [], []
            for loader in loaders:
                loader.set_epoch(epoch)
                for batch in loader:
                    bars = len(batch["inp_len"])
                    padded = bars * (batch["ctx_rows"].shape[1] + batch["inp_rows"].shape[1])
                    assert padded <= BUDGET
                    assert batch["ctx_len"].max() <= MAX_ROWS and batch["inp_len"].max() <= MAX_ROWS
                    seen += batch["keys"]
                    sizes.append(bars)
            assert sorted(seen) == expected                    # every bar once, none dropped
            assert max(sizes) <= 8 and min(sizes) < 8           # the budget, not batch_size, cut some
            assert len({len(loader) for loader in loaders}) == 1

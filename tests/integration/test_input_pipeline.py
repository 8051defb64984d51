"""The input pipeline (issue 13) on shards the real preprocessor wrote from the bundled corpus:
the fast shard reader reads what webdataset reads, the vectorised collate builds what the per-bar
rules build, ranks plan from the lengths sidecars without opening a shard, and the batches are
the same - and resume exactly mid-epoch - with 0, 1 or 2 loader processes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mahler_dist.data import loader as L
from mahler_dist.data.collate import collate_bars
from mahler_dist.data.shard_reader import ShardFormatError, npy_array
from mahler_dist.data.shards import shard_urls
from mahler_dist.music import vocab
from mahler_dist.music.rows import end_offset_class
from mahler_dist.music.timing import Metre, normalise_metre
from tiny_runs import preprocessed_examples


@pytest.fixture(scope="module")
def root(ray_session, tmp_path_factory):
    return preprocessed_examples(tmp_path_factory.mktemp("pipeline_root"), val_fraction=0.0, test_fraction=0.0,
                                 shard_samples=64)


def test_the_fast_reader_reads_what_webdataset_reads(root):
    from webdataset import tariterators

    for url in shard_urls(root, "train"):
        ours = L.read_raw_samples(url)
        theirs = list(tariterators.tarfile_samples([{"url": url}]))
        assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
        for a, b in zip(ours, theirs):
            assert {k: bytes(v) for k, v in a.items() if k != "__key__"} == \
                   {k: v for k, v in b.items() if k not in ("__key__", "__url__")}


def test_arrays_are_read_without_pickle_and_only_as_plain_numbers():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardFormatError, match="dtype object"):
        npy_array(buf.getvalue(), "x.npy")
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.int8).reshape(2, 3))
    assert npy_array(buf.getvalue()).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ShardFormatError, match="shorter than its shape"):
        npy_array(buf.getvalue()[:-2], "cut.npy")


def _reference_collate(samples):
    """The per-bar implementation the vectorised one replaced."""
    def pad(arrays, fill, dtype):
        out = np.full((len(arrays), max(map(len, arrays)), arrays[0].shape[-1]), fill, dtype=dtype)
        for i, a in enumerate(arrays):
            out[i, :len(a)] = a
        return out

    def metre(text):
        return normalise_metre(*map(int, text.split("/"))) if text else Metre(4, 4)

    return {"ctx_rows": pad([s["context"] for s in samples], vocab.NONE, np.int64),
            "ctx_len": np.array([len(s["context"]) for s in samples]),
            "inp_rows": pad([s["inputs"] for s in samples], vocab.NONE, np.int64),
            "inp_len": np.array([len(s["inputs"]) for s in samples]),
            "inp_active": pad([s["active"] for s in samples], 0, np.uint8),
            "inp_end": np.array([end_offset_class(s["inputs"], metre(s["metre"])) for s in samples])}


def test_the_vectorised_collate_builds_what_the_per_bar_rules_build(root):
    samples = [s for u in shard_urls(root, "train") for s in L.read_samples(u)]
    assert len({s["metre"] for s in samples}) >= 2      # END targets of more than one metre
    for start in range(0, len(samples), 37):
        chunk = samples[start:start + 37]
        got, want = collate_bars(chunk), _reference_collate(chunk)
        for key, value in want.items():
            assert np.array_equal(got[key].numpy(), value), key


def test_ranks_plan_from_the_lengths_sidecars_without_opening_a_shard(root, monkeypatch):
    urls = shard_urls(root, "train")
    scanned = L.scan_lengths(urls)
    from_meta = [np.array([(s["context"].shape[0], s["inputs"].shape[0]) for s in L.read_samples(u)]) for u in urls]
    assert all(np.array_equal(a, b) for a, b in zip(scanned, from_meta))

    def no_shard_reads(url):
        raise AssertionError(f"read {url}")

    monkeypatch.setattr(L, "_read_shard", no_shard_reads)
    loader = L.BarLoader(urls, options=L.PlanOptions(batch_size=8, max_batch_rows=4096, max_rows_per_bar=256))
    assert len(loader) > 0 and loader.num_samples == sum(len(x) for x in scanned)


def _stream(loader, take=None):
    out = []
    for batch in loader:
        out.append(batch)
        if take is not None and len(out) == take:
            break
    return out


def _same(a, b):
    assert [x["keys"] for x in a] == [y["keys"] for y in b]
    for x, y in zip(a, b):
        for k in x:
            if k != "keys":
                assert torch.equal(x[k], y[k]), k


def _loader(root, workers):
    opt = L.PlanOptions(batch_size=8, max_batch_rows=4096, max_rows_per_bar=256, shuffle_window=96, seed=3)
    loader = L.BarLoader(shard_urls(root, "train"), options=opt, workers=workers, prefetch=2, transpose=3)
    loader.set_epoch(2)
    return loader


def test_the_same_batches_with_0_1_or_2_loader_processes(root):
    reference = _stream(_loader(root, 0))
    assert len(reference) > 10
    for workers in (1, 2):
        loader = _loader(root, workers)
        _same(reference, _stream(loader))
        assert (loader.epoch, loader.batches_done) == (3, 0)   # the epoch completed


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_resume_with_loader_processes_continues_exactly(root, workers):
    whole = _stream(_loader(root, 0))
    first = _loader(root, workers)
    head = _stream(first, take=7)
    assert first.batches_done == 7               # counted as consumed, not as prefetched
    resumed = _loader(root, workers)
    assert resumed.load_state_dict(first.state_dict())
    _same(whole, head + _stream(resumed))

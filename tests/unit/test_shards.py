"""The preprocessed data's contract without Ray: keys, split, shard plan, npy/npz/tar bytes, the
per-file encode record, and the publication swap that keeps killed runs invisible."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.preprocess import Store, TarShardWriter, encode_record, publish, reason_kind, recover
from mahler_dist.music.encode import decode_to_midi, encode_bytes
from mahler_dist.music.rows import bar_windows

# --------------------------------------------------------------------------------------------------
# Keys and names


@given(st.binary(min_size=0, max_size=64), st.integers(0, 99_999))
def test_sample_key_roundtrip_and_no_dots(data, bar):
    piece = S.piece_id_of(data)
    key = S.sample_key(piece, bar)
    assert "." not in key and len(piece) == 16
    assert S.parse_key(key) == (piece, bar)
    assert piece == hashlib.sha256(data).hexdigest()[:16]


def test_keys_sort_by_piece_then_bar():
    keys = [S.sample_key(p, b) for p in ("00ff" * 4, "a0" * 8) for b in (0, 7, 10, 123, 99_999)]
    assert sorted(keys) == keys
    with pytest.raises(ValueError):
        S.sample_key("ab" * 8, 100_000)


def test_shard_names_match_pattern():
    assert S.shard_name("train", 0) == "train-000000.tar"
    assert S.SHARD_RE.match(S.shard_name("val", 12)).groups() == ("val", "000012")


# --------------------------------------------------------------------------------------------------
# Split and hashes


def test_split_is_deterministic_and_near_the_ratios():
    config = DataConfig()
    ids = [S.piece_id_of(str(i).encode()) for i in range(20_000)]
    splits = [S.split_of(p, config) for p in ids]
    assert splits == [S.split_of(p, config) for p in ids]
    counts = {s: splits.count(s) / len(ids) for s in S.SPLITS}
    assert abs(counts["val"] - 0.05) < 0.01 and abs(counts["test"] - 0.05) < 0.01
    other = [S.split_of(p, DataConfig(split_seed=1)) for p in ids]
    assert other != splits   # the seed draws another split
    assert {S.split_of(p, DataConfig(val_fraction=0, test_fraction=0)) for p in ids[:500]} == {"train"}


def test_config_hash_covers_every_field():
    base = S.config_hash(DataConfig())
    changed = [DataConfig(shard_samples=10), DataConfig(val_fraction=0.1), DataConfig(test_fraction=0.1),
               DataConfig(max_rows_per_bar=100), DataConfig(split_seed=3)]
    assert len({base, *(S.config_hash(c) for c in changed)}) == 1 + len(changed)
    assert S.config_hash(DataConfig()) == base


def test_input_hash_is_order_free_and_sensitive():
    a = [("a.mid", "11"), ("b/c.mid", "22")]
    assert S.input_hash(a) == S.input_hash(a[::-1])
    assert S.input_hash(a) != S.input_hash([("a.mid", "11"), ("b/c.mid", "23")])
    assert S.input_hash(a) != S.input_hash([("a.mid", "11"), ("b/d.mid", "22")])


# --------------------------------------------------------------------------------------------------
# Shard plan


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text("0123456789abcdef", min_size=16, max_size=16), st.integers(0, 40)),
                unique_by=lambda t: t[0], max_size=30), st.integers(1, 50))
def test_plan_covers_each_sample_once_in_key_order(pieces, shard_samples):
    plan = S.plan_shards(pieces, shard_samples)
    flat = [(item.piece, i) for shard in plan for item in shard for i in range(item.start, item.stop)]
    expected = [(p, i) for p, n in sorted(pieces) for i in range(n)]
    assert flat == expected
    sizes = [sum(it.stop - it.start for it in shard) for shard in plan]
    assert all(s == shard_samples for s in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= shard_samples)
    assert S.plan_shards(list(reversed(pieces)), shard_samples) == plan


# --------------------------------------------------------------------------------------------------
# Bytes: npy, tar, npz


@given(st.sampled_from([np.int8, np.uint8, np.int64, np.bool_]),
       st.lists(st.integers(0, 5), min_size=0, max_size=3))
def test_npy_bytes_equal_np_save(dtype, shape):
    array = np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
    buf = io.BytesIO()
    np.save(buf, array)
    assert S.npy_bytes(array) == buf.getvalue()


def test_npy_bytes_of_a_0d_string_and_a_view():
    for array in (np.array('{"a": 1}'), np.arange(20, dtype=np.int8).reshape(4, 5)[:, 1:3]):
        buf = io.BytesIO()
        np.save(buf, array)
        assert S.npy_bytes(array) == buf.getvalue()


def _samples(n=30):
    return [{"__key__": S.sample_key("0123456789abcdef", i), "inputs.npy": bytes(range(i % 256)) * 3,
             "meta.json": json.dumps({"bar": i}).encode(), "active.npy": b"x" * (i * 37),
             "context.npy": b""} for i in range(n)]


def test_tar_writer_bytes_equal_webdataset_tarwriter():
    webdataset = pytest.importorskip("webdataset")
    ref = io.BytesIO()
    writer = webdataset.TarWriter(ref, encoder=False, mtime=0)
    for s in _samples():
        writer.write(s)
    writer.close()
    ours = io.BytesIO()
    tar = TarShardWriter(ours, buffer_bytes=1000)
    for s in _samples():
        tar.write(s)
    tar.close()
    assert ours.getvalue() == ref.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as t:
        names = t.getnames()
    assert names[:4] == [f"0123456789abcdef_00000.{f}" for f in S.SAMPLE_FIELDS]


@pytest.fixture(scope="module")
def piano_file(midi_dir) -> tuple[str, bytes]:
    path = sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[0]
    return str(path.relative_to(midi_dir)), path.read_bytes()


def test_piece_npz_roundtrip_without_pickle(piano_file, tmp_path):
    name, data = piano_file
    enc = encode_bytes(data, name)
    piece_id = S.piece_id_of(data)
    blob = S.piece_npz_bytes(piece_id, name, enc.piece, enc.rows)
    assert blob == S.piece_npz_bytes(piece_id, name, enc.piece, enc.rows)   # reproducible bytes
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        assert z["metres"].dtype.kind == "U" and z["rows"].dtype == np.int8 and z["active"].dtype == np.uint8
    S.save_piece(tmp_path, piece_id, name, enc.piece, enc.rows)
    stored = S.load_piece(tmp_path, piece_id)
    assert stored.meta["piece"] == piece_id and stored.meta["source"] == name
    for field in ("rows", "active", "bar_starts", "chunk_start"):
        np.testing.assert_array_equal(getattr(stored.rows, field), getattr(enc.rows, field))
    assert stored.rows.metres == enc.rows.metres
    np.testing.assert_array_equal(stored.piece.notes, enc.piece.notes)
    assert stored.piece.bars == enc.piece.bars and stored.piece.stats == enc.piece.stats
    for a, b in zip(bar_windows(stored.rows), enc.samples, strict=True):
        assert a.bar == b.bar and a.metre == b.metre
        np.testing.assert_array_equal(a.context, b.context)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.active, b.active)
    assert decode_to_midi(stored.rows, stored.piece) == decode_to_midi(enc.rows, enc.piece)


def test_encode_sample_fields(piano_file):
    name, data = piano_file
    enc = encode_bytes(data, name)
    fields = S.encode_sample(enc.samples[1], "ab" * 8, name)
    assert fields["__key__"] == "abababababababab_00001"
    meta = json.loads(fields["meta.json"])
    assert meta == {"piece": "ab" * 8, "bar": 1, "metre": enc.samples[1].metre, "rows": len(enc.samples[1].inputs),
                    "context_rows": len(enc.samples[1].context), "source": name}
    inputs = np.load(io.BytesIO(fields["inputs.npy"]), allow_pickle=False)
    assert inputs.dtype == np.int8 and inputs.shape[1] == 5
    np.testing.assert_array_equal(inputs, enc.samples[1].inputs)


@pytest.mark.parametrize("source", ["piano/alb_se1.mid", 'odd "quoted" \\ n\u00e4me\n.mid'])
def test_sample_members_bytes_equal_the_plain_encoders(piano_file, source):
    """The shard writer's formatted meta.json and cached npy headers are the bytes that json.dumps
    (sorted keys, compact) and np.save write, for every bar of a real piece."""
    _, data = piano_file
    enc = encode_bytes(data, source)
    members = list(S.sample_members(enc.samples, "ab" * 8, source))
    assert len(members) == 4 * len(enc.samples)
    for s, group in zip(enc.samples, (members[i:i + 4] for i in range(0, len(members), 4)), strict=True):
        key = S.sample_key("ab" * 8, s.bar)
        assert [n for n, _ in group] == [f"{key}.{f}" for f in S.SAMPLE_FIELDS]
        want = json.dumps(S.sample_meta(s, "ab" * 8, source), sort_keys=True, separators=(",", ":")).encode()
        assert group[3][1] == want
        for (_, got), array in zip(group[:3], (s.active, s.context, s.inputs)):
            buf = io.BytesIO()
            np.save(buf, array)
            assert got == buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The per-file record


def test_encode_record_ok_and_too_long_bars(piano_file):
    name, data = piano_file
    rec, npz = encode_record(data, name, max_rows=256)
    assert rec["status"] == "ok" and rec["reason"] is None and npz is not None
    assert rec["piece"] == S.piece_id_of(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["samples"] == rec["bars"] > 0 and rec["bars_too_long"] == 0
    assert sum(rec["metres"].values()) == rec["bars"] and sum(rec["_rows_hist"]) == rec["bars"]
    assert rec["notes_in"] >= rec["notes_kept"] > 0
    short, _ = encode_record(data, name, max_rows=8)
    assert short["samples"] + short["bars_too_long"] == short["bars"] and short["bars_too_long"] > 0
    stored = S.read_piece_npz(npz)
    assert len(S.piece_samples(stored.rows, 8)) == short["samples"]


def test_encode_record_rejects_bad_input_with_a_reason(midi_dir):
    for path in sorted((midi_dir / "corrupt").rglob("*.mid"))[:15]:
        rec, npz = encode_record(path.read_bytes(), path.name, 256)
        assert rec["status"] == "rejected" and rec["reason"] and npz is None, path
        assert "_internal_error" not in rec, rec["reason"]
    rec, _ = encode_record(b"", "empty.mid", 256)
    assert rec["status"] == "rejected" and rec["reason"]


def test_reason_kind_groups_particulars():
    assert reason_kind("duplicate of a/b.mid") == "duplicate"
    assert reason_kind("undefined status byte 0xf4 in track 2") == "undefined status byte N in track N"
    assert reason_kind("no notes left after quantisation (unsupported metre 5/4 3)") == "no notes left after quantisation"


# --------------------------------------------------------------------------------------------------
# Publication: a staging folder swapped in; interrupted swaps rolled forward


def _write_output(root: Path, tag: str) -> None:
    (root / "shards").mkdir(parents=True)
    (root / "pieces").mkdir()
    (root / "shards" / "train-000000.tar").write_text(tag)
    (root / "pieces" / "p.npz").write_text(tag)
    (root / "manifest.jsonl").write_text(tag)
    (root / "shards" / "index.json").write_text(json.dumps({"tag": tag}))


def _tags(root: Path) -> set[str]:
    files = [root / "shards" / "train-000000.tar", root / "pieces" / "p.npz", root / "manifest.jsonl",
             root / "shards" / "index.json"]
    return {f.read_text().replace('{"tag": "', "").rstrip('"}') if f.exists() else "missing" for f in files}


def _quiet(msg):
    pass


def test_publish_replaces_old_output_and_cleans_up(tmp_path):
    _write_output(tmp_path, "old")
    _write_output(tmp_path / ".staging-x", "new")
    publish(Store(tmp_path), ".staging-x")
    assert _tags(tmp_path) == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl", "pieces", "shards"]


@pytest.mark.parametrize("moved", [0, 1, 2, 3])
def test_recover_finishes_an_interrupted_swap(tmp_path, moved):
    """Killed after `moved` of the staging entries were swapped in: the next run completes it."""
    _write_output(tmp_path / ".staging-x", "new")
    _write_output(tmp_path, "old")
    trash = tmp_path / ".trash-y"
    trash.mkdir()
    (tmp_path / "shards").rename(trash / "shards")   # the marker goes out first
    for name in ("pieces", "manifest.jsonl", "shards")[:moved]:
        if (tmp_path / name).exists():
            (tmp_path / name).rename(trash / f"{name}.old")
        (tmp_path / ".staging-x" / name).rename(tmp_path / name)
    recover(Store(tmp_path), _quiet)
    assert _tags(tmp_path) == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl", "pieces", "shards"]


def test_recover_drops_an_incomplete_staging_folder(tmp_path):
    _write_output(tmp_path, "old")
    staging = tmp_path / ".staging-z"
    (staging / "pieces").mkdir(parents=True)
    (staging / "pieces" / "p.npz").write_text("partial")
    (staging / "shards").mkdir()
    (staging / "shards" / "train-000000.tar").write_text("partial")
    recover(Store(tmp_path), _quiet)
    assert _tags(tmp_path) == {"old"} and not staging.exists()


def test_tar_writer_names_the_member_whose_name_is_too_long():
    tar = TarShardWriter(io.BytesIO())
    with pytest.raises(ValueError, match="é" * 50):
        tar.add_many(["a" * 60, "é" * 50], [b"", b""])   # 60 characters fit; 50 two-byte ones do not

"""The preprocessed data's contract without Ray: keys, split, hashes (the cache key), shard plan,
npy/npz/tar bytes, the per-file encode record, windows whose context is too long, and the builds,
pointer and lock that keep killed and concurrent runs invisible to readers."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data import publish as PB
from mahler_dist.data.build_tasks import TarShardWriter, encode_record
from mahler_dist.data.summary import reason_kind
from mahler_dist.storage import Store
from mahler_dist.errors import MahlerError
from mahler_dist.music.encode import decode_to_midi, encode_bytes
from mahler_dist.music.rows import PieceRows, bar_windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))   # crafted_midi

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
    """Every DataConfig field, the limits included, is part of the cache key."""
    base = S.config_hash(DataConfig())
    changed = []
    for f in dataclasses.fields(DataConfig):
        value = getattr(DataConfig(), f.name)
        if dataclasses.is_dataclass(value):   # data.quantize: one switch of it is enough to tell
            value = dataclasses.replace(value, cluster_onsets=not value.cluster_onsets)
        else:
            value = value / 2 if isinstance(value, float) else value + 1
        changed.append(DataConfig(**{f.name: value}))
    assert len(changed) >= 7
    assert len({base, *(S.config_hash(c) for c in changed)}) == 1 + len(changed)
    assert S.config_hash(DataConfig()) == base


def test_encoder_hash_covers_the_data_modules_that_write_samples(tmp_path):
    """The code hash covers music/*.py and the data/ modules whose code shapes samples (shards.py,
    build_tasks.py: encode_record, write_shard), not the driver-side pipeline; a changed byte in
    any of them changes the key."""
    package = Path(S.__file__).resolve().parents[1]
    files = S.sample_code_files()
    names = [p.relative_to(package).as_posix() for p in files]
    assert {"data/shards.py", "data/build_tasks.py", "music/rows.py", "music/midi_io.py"} <= set(names)
    assert "data/preprocess.py" not in names and "data/publish.py" not in names
    assert S.encoder_hash() == S.code_hash(files)
    for target in ("data/build_tasks.py", "data/shards.py"):
        copy = tmp_path / target.replace("/", "_")
        copy.write_bytes((package / target).read_bytes() + b"\n# one changed byte\n")
        assert S.code_hash([copy if n == target else p for n, p in zip(names, files)]) != S.code_hash(files), target


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
    rec, npz = encode_record(data, name, DataConfig(max_rows_per_bar=256))
    assert rec["status"] == "ok" and rec["reason"] is None and npz is not None
    assert rec["piece"] == S.piece_id_of(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["samples"] == rec["bars"] > 0 and rec["bars_too_long"] == 0
    assert sum(rec["metres"].values()) == rec["bars"] and sum(rec["_rows_hist"]) == rec["bars"]
    assert rec["notes_in"] >= rec["notes_kept"] > 0
    short, _ = encode_record(data, name, DataConfig(max_rows_per_bar=8))
    assert short["samples"] + short["bars_too_long"] + short["contexts_too_long"] == short["bars"]
    assert short["bars_too_long"] > 0 and short["contexts_too_long"] > 0
    stored = S.read_piece_npz(npz)
    assert len(S.piece_samples(stored.rows, 8)) == short["samples"]


def test_the_manifest_counts_moved_notes_by_reason_with_the_configs_switches(piano_file):
    from mahler_dist.music.quantize_options import QuantizeOptions

    name, data = piano_file
    rec, _ = encode_record(data, name, DataConfig())
    assert rec["moved"] and all(isinstance(v, int) and v > 0 for v in rec["moved"].values())
    plain, _ = encode_record(data, name, DataConfig(quantize=QuantizeOptions.first()))
    legato = "end held to the next onset (legato)"
    assert legato in rec["moved"] and legato not in plain["moved"]


def test_encode_record_rejects_bad_input_with_a_reason(midi_dir):
    for path in sorted((midi_dir / "corrupt").rglob("*.mid"))[:15]:
        rec, npz = encode_record(path.read_bytes(), path.name, DataConfig())
        if rec["status"] == "ok":  # read_midi repaired it (e.g. skipped an alien chunk): it says so
            assert rec["repairs"], path
            continue
        assert rec["status"] == "rejected" and rec["reason"] and npz is None, path
        assert "_internal_error" not in rec, rec["reason"]
    rec, _ = encode_record(b"", "empty.mid", DataConfig())
    assert rec["status"] == "rejected" and rec["reason"]


def test_reason_kind_groups_particulars():
    assert reason_kind("duplicate of a/b.mid") == "duplicate"
    assert reason_kind("undefined status byte 0xf4 in track 2") == "undefined status byte N in track N"
    assert reason_kind("no notes left after quantisation (unsupported metre 5/4 3)") == "no notes left after quantisation"


# --------------------------------------------------------------------------------------------------
# Contexts: a bar dropped as too long is not the next bar's context either


def _rows_with_bar_lengths(lengths: list[int], chunk_starts: tuple[int, ...] = (0,)) -> PieceRows:
    total = sum(lengths)
    rows = np.arange(total * 5, dtype=np.int64).reshape(total, 5).astype(np.int8)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunk = np.zeros(len(lengths), dtype=bool)
    chunk[list(chunk_starts)] = True
    return PieceRows(rows=rows, active=np.zeros((total, 15), np.uint8), bar_starts=starts,
                     metres=["4/4"] * len(lengths), chunk_start=chunk, dropped={})


def test_no_sample_has_an_input_or_context_over_the_limit():
    """Bar 2 (320 rows) is dropped as an input and must not come back as bar 3's context; bar 5
    follows a too-long bar 4 but starts a chunk (START context), so it is written."""
    rows = _rows_with_bar_lengths([10, 20, 320, 30, 300, 40, 50], chunk_starts=(0, 5))
    samples = S.piece_samples(rows, 256)
    assert [s.bar for s in samples] == [0, 1, 5, 6]
    assert all(len(s.inputs) <= 256 and len(s.context) <= 256 for s in samples)
    assert S.bar_counts(rows, 256) == {"samples": 4, "bars_too_long": 2, "contexts_too_long": 1}
    np.testing.assert_array_equal(S.written_bars(rows, 256), [0, 1, 5, 6])
    every = bar_windows(rows)
    assert max(len(s.context) for s in every) == 320   # what bar_windows alone would have written


def test_real_piece_samples_respect_the_limit_on_both_sides(piano_file):
    name, data = piano_file
    enc = encode_bytes(data, name)
    limit = int(np.median(np.diff(enc.rows.bar_starts)))
    samples = S.piece_samples(enc.rows, limit)
    assert samples and all(len(s.inputs) <= limit and len(s.context) <= limit for s in samples)
    counts = S.bar_counts(enc.rows, limit)
    assert counts["contexts_too_long"] > 0 and counts["samples"] == len(samples)
    assert sum(counts.values()) == enc.rows.num_bars


# --------------------------------------------------------------------------------------------------
# Builds, the CURRENT pointer and the lock (publish.py)


def _quiet(msg):
    pass


def _write_build(root: Path, build: str, tag: str) -> bytes:
    """A build folder as preprocess writes it (index.json last); returns the index bytes."""
    folder = root / "builds" / build
    (folder / "shards").mkdir(parents=True)
    (folder / "pieces").mkdir()
    (folder / "shards" / "train-000000.tar").write_text(tag)
    (folder / "pieces" / "00ab.npz").write_text(tag)
    (folder / "manifest.jsonl").write_text(json.dumps({"tag": tag}) + "\n")
    index = {"format_version": S.FORMAT_VERSION, "build": build, "tag": tag, "config_hash": "c",
             "input_hash": tag, "encoder_hash": "e",
             "shardlist": [{"url": "train-000000.tar", "nsamples": 1, "split": "train"}]}
    data = json.dumps(index).encode()
    (folder / "shards" / "index.json").write_bytes(data)
    return data


def _publish(root: Path, build: str, tag: str) -> None:
    data = _write_build(root, build, tag)
    with PB.RootLock(Store(root), build) as lock:
        PB.publish(Store(root), build, data, lock)


def test_never_preprocessed_root_is_a_clear_error(tmp_path):
    with pytest.raises(MahlerError, match="no preprocessed data.*mahler preprocess"):
        S.current_build(tmp_path)
    with pytest.raises(MahlerError, match="no preprocessed data"):
        S.read_index(tmp_path)


def test_publish_points_current_at_the_build_and_keeps_the_one_before(tmp_path):
    _publish(tmp_path, "b1", "one")
    assert S.current_build(tmp_path) == "b1"
    _publish(tmp_path, "b2", "two")
    pinned = S.read_index(tmp_path)                        # a reader that resolved b2
    assert pinned["build"] == "b2" and pinned["tag"] == "two"
    _publish(tmp_path, "b3", "three")
    assert S.current_build(tmp_path) == "b3" and S.read_index(tmp_path)["tag"] == "three"
    assert sorted(p.name for p in (tmp_path / "builds").iterdir()) == ["b2", "b3"]   # KEEP_BUILDS
    assert PB.KEEP_BUILDS == 2
    # the pinned reader still reads its own build, whole
    assert [Path(u).read_text() for u in S.shard_urls(tmp_path, "train", pinned)] == ["two"]
    assert S.read_manifest(tmp_path, "b2") == [{"tag": "two"}]
    assert S.piece_path(tmp_path, "00ab", "b2").endswith("builds/b2/pieces/00ab.npz")
    pointer = json.loads((tmp_path / "CURRENT").read_text())
    assert pointer["previous"] == ["b2"] and pointer["index_sha256"] == hashlib.sha256(
        (tmp_path / "builds" / "b3" / "shards" / "index.json").read_bytes()).hexdigest()
    assert not (tmp_path / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "builds"]   # no temp files left


def test_an_index_that_does_not_match_the_pointer_is_refused(tmp_path):
    _publish(tmp_path, "b1", "one")
    (tmp_path / "builds" / "b1" / "shards" / "index.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(MahlerError, match="does not match CURRENT"):
        S.read_index(tmp_path)


def test_recover_removes_partial_builds_only(tmp_path):
    _publish(tmp_path, "b1", "one")
    _publish(tmp_path, "b2", "two")
    _write_build(tmp_path, "killed", "partial")             # a killed run's build, never published
    _write_build(tmp_path, "live", "writing")               # the live lock holder's build
    (tmp_path / ".staging-x" / "shards").mkdir(parents=True)   # the layout before builds
    PB.recover(Store(tmp_path), _quiet, writing="live")
    assert sorted(p.name for p in (tmp_path / "builds").iterdir()) == ["b1", "b2", "live"]
    assert not (tmp_path / ".staging-x").exists()


def test_legacy_layout_is_read_then_retired_after_it_falls_out_of_the_kept_builds(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "pieces").mkdir()
    (tmp_path / "shards" / "index.json").write_text(json.dumps(
        {"format_version": 1, "shardlist": [{"url": "train-000000.tar", "split": "train"}]}))
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    assert S.current_build(tmp_path) == S.LEGACY_BUILD
    assert S.read_index(tmp_path)["build"] == S.LEGACY_BUILD
    assert S.shard_urls(tmp_path, "train") == [f"{tmp_path}/shards/train-000000.tar"]
    assert S.piece_path(tmp_path, "00ab") == f"{tmp_path}/pieces/00ab.npz"
    _publish(tmp_path, "b1", "one")
    assert (tmp_path / "shards").exists() and json.loads((tmp_path / "CURRENT").read_text())["previous"] == ["legacy"]
    _publish(tmp_path, "b2", "two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "builds"]


def test_a_second_run_fails_naming_the_owner_or_waits_for_it(tmp_path):
    store = Store(tmp_path)
    first = PB.RootLock(store, "b1")
    first.acquire()
    try:
        t = time.monotonic()
        with pytest.raises(MahlerError, match=rf"pid {os.getpid()} on .*build b1"):
            PB.RootLock(store, "b2", wait_s=0.6).acquire()
        assert time.monotonic() - t >= 0.5   # it waited before giving up
    finally:
        first.release()
    with PB.RootLock(store, "b2", wait_s=0) as second:   # free again: taken at once
        second.check()
    assert not (tmp_path / ".lock").exists()


def test_a_stale_lock_is_taken_over_and_the_old_owner_cannot_publish(tmp_path):
    store = Store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"owner": "x", "host": os.uname().nodename, "pid": int(dead.stdout), "started": time.time() - 5,
              "heartbeat": time.time(), "build": "old"}
    (tmp_path / ".lock").write_text(json.dumps(holder))
    assert "is gone" in PB.lock_is_stale(holder)
    old_beat = dict(holder, host="elsewhere", heartbeat=time.time() - PB.STALE_S - 1)
    assert "no heartbeat" in PB.lock_is_stale(old_beat)
    assert PB.lock_is_stale(dict(holder, pid=os.getpid(), started=time.time())) is None
    with PB.RootLock(store, "b1") as lock:   # takes the dead run's lock over
        assert PB.read_lock(store)["owner"] == lock.owner["owner"]
        other = PB.RootLock(store, "b2")
        (tmp_path / ".lock").write_text(json.dumps(other.owner))   # as if it were taken from us
        data = _write_build(tmp_path, "b1", "one")
        with pytest.raises(MahlerError, match="lost .lock"):
            PB.publish(store, "b1", data, lock)
    assert not (tmp_path / "CURRENT").exists()


def test_tar_writer_names_the_member_whose_name_is_too_long():
    tar = TarShardWriter(io.BytesIO())
    with pytest.raises(ValueError, match="é" * 50):
        tar.add_many(["a" * 60, "é" * 50], [b"", b""])   # 60 characters fit; 50 two-byte ones do not


# --------------------------------------------------------------------------------------------------
# Limits checked before the work, and repairs counted


def test_encode_record_limits_are_checked_before_the_work(piano_file):
    import crafted_midi as C

    name, data = piano_file
    ok, _ = encode_record(data, name, DataConfig())
    assert ok["status"] == "ok" and ok["repairs"] == []
    cases = {"file too large": DataConfig(max_file_bytes=len(data) - 1),
             "too many notes": DataConfig(max_notes=ok["notes_in"] - 1),
             "too many bars": DataConfig(max_bars=ok["bars"] // 2)}
    for reason, config in cases.items():
        rec, npz = encode_record(data, name, config)
        assert rec["status"] == "rejected" and rec["reason"].startswith(reason) and npz is None, rec["reason"]
    t = time.perf_counter()
    rec, _ = encode_record(C.huge_deltas(), "huge.mid", DataConfig())   # ~3e8 bars: MemoryError before
    # read_midi's max_ticks (ReadLimits) stops it while parsing, before the bar bound would
    assert rec["reason"].startswith(("too many bars", "too long")) and time.perf_counter() - t < 5


def test_plan_counts_repairs_and_contexts(piano_file):
    from mahler_dist.data.corpus_plan import plan_corpus

    name, data = piano_file
    rec, _ = encode_record(data, name, DataConfig(max_rows_per_bar=8))
    repaired = dict(rec, path="b.mid", piece="f" * 16, repairs=["skipped unknown chunk 'XFIH' (12 bytes)"])
    rejected = dict(rec, path="c.mid", piece="e" * 16, status="rejected", reason="truncated file",
                    repairs=["unwrapped RIFF"])
    manifest, _, stats = plan_corpus([rec, repaired, rejected], DataConfig(max_rows_per_bar=8))
    assert [m["repairs"] for m in manifest] == [[], repaired["repairs"], ["unwrapped RIFF"]]
    assert stats["repairs"] == {"files": 2, "files_ok": 1, "kinds": {"skipped unknown chunk 'XFIH'": 1,
                                                                      "unwrapped RIFF": 1}}
    assert stats["contexts_too_long"] == 2 * rec["contexts_too_long"] > 0

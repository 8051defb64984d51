"""The preprocessed data's contract: sample schema, shard naming, the split, index.json, pieces/*.npz.

Pure Python + numpy (no Ray, no webdataset): the preprocessor writes with these helpers and the
loader, the generator and the tests read with them.

    ROOT/manifest.jsonl                 one row per input file (MANIFEST_FIELDS)
    ROOT/shards/{split}-%06d.tar        WebDataset; one sample per bar, key sample_key(piece, bar)
    ROOT/shards/index.json              read_index(): shard list (wids), splits, hashes, corpus stats
    ROOT/pieces/<piece>.npz             load_piece(): the whole piece (rows + notes), no pickle

A sample's tar members are `<key>.active.npy` (uint8 [Ti, 15]), `<key>.context.npy` (int8 [Tc, 5]),
`<key>.inputs.npy` (int8 [Ti, 5]) and `<key>.meta.json` ({"piece", "bar", "metre", "rows",
"context_rows", "source"}). Keys are `<piece>_<bar:05d>` with piece = the first 16 hex digits of
the sha256 of the file's bytes: unique, dot-free, and sorted by (piece, bar) as strings.

ROOT may be a local path or a URI (s3://, gs://, ...); URIs are opened with pyarrow.fs, imported
only then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mahler_dist.music.piece import Bar, Piece
from mahler_dist.music.rows import BarSample, PieceRows, bar_windows
from mahler_dist.music.timing import Metre

FORMAT_VERSION = 1
WIDS_VERSION = 1
SPLITS = ("train", "val", "test")
SHARD_PATTERN = "{split}-{index:06d}.tar"
SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
INPUT_DIR, SHARDS_DIR, PIECES_DIR = "input", "shards", "pieces"
INDEX_NAME, MANIFEST_NAME = "index.json", "manifest.jsonl"
MIDI_EXTENSIONS = (".mid", ".midi")
#: Tar members of one sample (suffixes after the key), in the order TarWriter writes them.
SAMPLE_FIELDS = ("active.npy", "context.npy", "inputs.npy", "meta.json")
PIECE_ID_LEN = 16
_KEY_RE = re.compile(r"^([0-9a-f]{16})_(\d{5})$")


# --------------------------------------------------------------------------------------------------
# Names


def piece_id_of(data: bytes) -> str:
    """A piece's id: the first 16 hex digits of the sha256 of the MIDI file's bytes."""
    return hashlib.sha256(data).hexdigest()[:PIECE_ID_LEN]


def sample_key(piece: str, bar: int) -> str:
    """The WebDataset key of bar `bar` of `piece`: `<piece>_<bar:05d>` (no dots, sorts by bar)."""
    if not 0 <= bar <= 99_999:
        raise ValueError(f"bar index {bar} out of range 0..99999")
    return f"{piece}_{bar:05d}"


def parse_key(key: str) -> tuple[str, int]:
    """sample_key's inverse: (piece, bar)."""
    m = _KEY_RE.match(key)
    if not m:
        raise ValueError(f"not a sample key: {key!r}")
    return m.group(1), int(m.group(2))


def shard_name(split: str, index: int) -> str:
    return SHARD_PATTERN.format(split=split, index=index)


def join(root: str | Path, *parts: str) -> str:
    """Join path parts with '/' (local paths and URIs alike)."""
    return "/".join([str(root).rstrip("/"), *parts])


# --------------------------------------------------------------------------------------------------
# Split and hashes


def split_of(piece_id: str, config: Any) -> str:
    """"train" | "val" | "test" for a piece, from its content hash salted with config.split_seed:
    deterministic, independent of the other pieces, and the same for every bar of the piece."""
    digest = hashlib.sha256(f"{config.split_seed}:{piece_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < config.val_fraction:
        return "val"
    if u < config.val_fraction + config.test_fraction:
        return "test"
    return "train"


def config_hash(config: Any) -> str:
    """Hash of everything in the data config (a dataclass) plus the format version."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    blob = json.dumps({"format_version": FORMAT_VERSION, "data": fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def encoder_hash() -> str:
    """Hash of the representation code (mahler_dist/music/*.py): shards made by other code are stale."""
    music = Path(__file__).resolve().parent.parent / "music"
    h = hashlib.sha256()
    for path in sorted(music.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def input_hash(entries: Iterable[tuple[str, str]]) -> str:
    """Hash of the input corpus: its (relative path, sha256) pairs, in path order."""
    h = hashlib.sha256()
    for rel, sha in sorted(entries):
        h.update(f"{rel}\t{sha}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Samples


def written_bars(rows: PieceRows, max_rows: int) -> np.ndarray:
    """Indices of the bars that become samples: those with at most `max_rows` rows."""
    return np.flatnonzero(np.diff(rows.bar_starts) <= max_rows)


def piece_samples(rows: PieceRows, max_rows: int) -> list[BarSample]:
    """The samples written for a piece, in bar order (bar_windows minus the too-long bars)."""
    keep = set(written_bars(rows, max_rows).tolist())
    return [s for s in bar_windows(rows) if s.bar in keep]


def sample_meta(sample: BarSample, piece: str, source: str) -> dict:
    return {"piece": piece, "bar": int(sample.bar), "metre": sample.metre, "rows": int(len(sample.inputs)),
            "context_rows": int(len(sample.context)), "source": source}


def encode_sample(sample: BarSample, piece: str, source: str) -> dict[str, bytes | str]:
    """A sample as WebDataset fields: {"__key__", "context.npy", "inputs.npy", "active.npy", "meta.json"}."""
    key = sample_key(piece, sample.bar)
    fields = dict(zip(SAMPLE_FIELDS, (data for _, data in sample_members([sample], piece, source))))
    return {"__key__": key, **fields}


def sample_members(samples: Iterable[BarSample], piece: str, source: str) -> Iterator[tuple[str, bytes]]:
    """The tar members of `samples`, in the order a WebDataset TarWriter writes them (SAMPLE_FIELDS
    per sample): (f"{key}.{field}", bytes). meta.json is json.dumps(sample_meta(...), sort_keys=True,
    separators=(",", ":")), formatted directly: the shard writer's hot path (tests check the bytes)."""
    piece_json, source_json = json.dumps(piece), json.dumps(source)
    for s in samples:
        key = sample_key(piece, s.bar)
        meta = (f'{{"bar":{int(s.bar)},"context_rows":{len(s.context)},"metre":{_json_str(s.metre)},'
                f'"piece":{piece_json},"rows":{len(s.inputs)},"source":{source_json}}}')
        yield f"{key}.active.npy", npy_bytes(s.active)
        yield f"{key}.context.npy", npy_bytes(s.context)
        yield f"{key}.inputs.npy", npy_bytes(s.inputs)
        yield f"{key}.meta.json", meta.encode()


@lru_cache(maxsize=256)
def _json_str(text: str) -> str:
    return json.dumps(text)


def npy_bytes(array: np.ndarray) -> bytes:
    """np.save's bytes, with the header cached per (dtype, shape): the shard writer's hot path."""
    if not array.flags.c_contiguous:
        array = array.copy()   # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()


@lru_cache(maxsize=8192)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Shard plan


class ShardItem(NamedTuple):
    """Samples [start, stop) (indices into piece_samples()) of one piece, in one shard."""

    piece: str
    start: int
    stop: int


def plan_shards(pieces: Iterable[tuple[str, int]], shard_samples: int) -> list[list[ShardItem]]:
    """Cut one split's samples, in key order, into shards of `shard_samples` (the last may be
    smaller). `pieces` = (piece id, number of samples); a piece may straddle two shards."""
    shards: list[list[ShardItem]] = []
    current: list[ShardItem] = []
    room = shard_samples
    for piece, n in sorted(pieces):
        start = 0
        while start < n:
            take = min(room, n - start)
            current.append(ShardItem(piece, start, start + take))
            start += take
            room -= take
            if room == 0:
                shards.append(current)
                current, room = [], shard_samples
    if current:
        shards.append(current)
    return shards


# --------------------------------------------------------------------------------------------------
# Index and manifest


def build_index(shards: list[dict], splits: dict[str, dict], *, config_hash: str, input_hash: str,
                encoder_hash: str, stats: dict, write_back_programs: list[int], **extra: Any) -> dict:
    """index.json's content. `shards`: [{"url", "nsamples", "split", "filesize"}] in split, index order."""
    return {"format_version": FORMAT_VERSION, "wids_version": WIDS_VERSION, "name": "mahler-dist bars",
            "shardlist": shards, "splits": splits, "config_hash": config_hash, "input_hash": input_hash,
            "encoder_hash": encoder_hash, "stats": stats, "write_back_programs": list(write_back_programs),
            **extra}


def read_index(root: str | Path) -> dict:
    """ROOT/shards/index.json; raises FileNotFoundError when ROOT has no complete preprocessed data."""
    index = json.loads(_read_bytes(join(root, SHARDS_DIR, INDEX_NAME)))
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root}: shard format version {index.get('format_version')}, expected {FORMAT_VERSION};"
                         " run `mahler preprocess ROOT --force`")
    return index


def shard_urls(root: str | Path, split: str, index: dict | None = None) -> list[str]:
    """Full paths/URIs of a split's shards, in order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    index = index or read_index(root)
    return [join(root, SHARDS_DIR, s["url"]) for s in index["shardlist"] if s["split"] == split]


def read_manifest(root: str | Path) -> list[dict]:
    return [json.loads(line) for line in _read_bytes(join(root, MANIFEST_NAME)).decode().splitlines() if line]


# --------------------------------------------------------------------------------------------------
# pieces/<piece>.npz


class StoredPiece(NamedTuple):
    rows: PieceRows     # the event rows (what the samples are cut from)
    piece: Piece        # bars and quantised notes (what decodes back to MIDI)
    meta: dict          # {"format_version", "piece", "source", "name", "stats", "dropped"}


def piece_path(root: str | Path, piece: str) -> str:
    return join(root, PIECES_DIR, f"{piece}.npz")


def piece_npz_bytes(piece_id: str, source: str, piece: Piece, rows: PieceRows) -> bytes:
    """A piece as npz bytes (numpy arrays and a JSON string only, so np.load needs no pickle)."""
    meta = {"format_version": FORMAT_VERSION, "piece": piece_id, "source": source, "name": piece.name,
            "stats": {k: int(v) for k, v in sorted(piece.stats.items())},
            "dropped": {k: int(v) for k, v in sorted(rows.dropped.items())}}
    bars = piece.bars
    arrays = {
        "rows": rows.rows, "active": rows.active, "bar_starts": rows.bar_starts,
        "chunk_start": rows.chunk_start, "metres": np.array(rows.metres or [""], dtype=str)[: len(rows.metres)],
        "notes": piece.notes,
        "bar_start_ticks": np.array([b.start for b in bars], dtype=np.int64),
        "bar_metres": np.array([(b.metre.numerator, b.metre.denominator) for b in bars], dtype=np.int64).reshape(-1, 2),
        "bar_chunk_start": np.array([b.chunk_start for b in bars], dtype=bool),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    # np.savez_compressed's format (a zip of .npy members, which np.load reads), written with a fixed
    # timestamp (reproducible bytes) and zlib level 1 (6x faster than savez_compressed's level 6, ~10% larger)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, npy_bytes(np.asarray(array)), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return buf.getvalue()


def read_piece_npz(data: bytes) -> StoredPiece:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        rows, meta = _rows_and_meta(z)
        bars = [Bar(t, Metre(n, d), c) for t, (n, d), c in
                zip(z["bar_start_ticks"].tolist(), z["bar_metres"].tolist(), z["bar_chunk_start"].tolist())]
        piece = Piece(meta["name"], bars, z["notes"], Counter(meta["stats"]))
    return StoredPiece(rows, piece, meta)


def read_piece_rows(data: bytes) -> tuple[PieceRows, dict]:
    """Only the rows and meta of a piece's npz (np.load reads members lazily): what the shard
    writer needs, at a third of read_piece_npz's cost (its notes and Bar objects are skipped)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return _rows_and_meta(z)


def _rows_and_meta(z) -> tuple[PieceRows, dict]:
    meta = json.loads(str(z["meta"]))
    rows = PieceRows(rows=z["rows"], active=z["active"], bar_starts=z["bar_starts"],
                     metres=z["metres"].tolist(), chunk_start=z["chunk_start"], dropped=Counter(meta["dropped"]))
    return rows, meta


def save_piece(root: str | Path, piece_id: str, source: str, piece: Piece, rows: PieceRows) -> str:
    """Write ROOT/pieces/<piece>.npz (local paths; the preprocessor writes URIs through pyarrow)."""
    path = Path(piece_path(root, piece_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npz.tmp")
    tmp.write_bytes(piece_npz_bytes(piece_id, source, piece, rows))
    tmp.replace(path)
    return str(path)


def load_piece(root: str | Path, piece_id: str) -> StoredPiece:
    """ROOT/pieces/<piece>.npz -> StoredPiece(rows, piece, meta)."""
    return read_piece_npz(_read_bytes(piece_path(root, piece_id)))


def iter_piece_samples(stored: StoredPiece, max_rows: int) -> Iterator[dict[str, bytes | str]]:
    """The encoded WebDataset samples of a stored piece, as preprocess writes them."""
    for s in piece_samples(stored.rows, max_rows):
        yield encode_sample(s, stored.meta["piece"], stored.meta["source"])


# --------------------------------------------------------------------------------------------------
# I/O for local paths and URIs


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _read_bytes(path: str) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        return f.read()

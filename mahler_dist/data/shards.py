"""The preprocessed data's contract: sample schema, shard naming, the split, index.json, pieces/*.npz,
and the READ API that pins a reader to one build.

Pure Python + numpy (no Ray, no webdataset): the preprocessor writes with these helpers and the
loader, the generator and the tests read with them.

    ROOT/CURRENT                                pointer (JSON): {"build", "created", "index_sha256", ...}
    ROOT/builds/<build>/manifest.jsonl          one row per input file
    ROOT/builds/<build>/shards/{split}-%06d.tar WebDataset; one sample per bar, key sample_key(piece, bar)
    ROOT/builds/<build>/shards/index.json       read_index(): shard list (wids), splits, hashes, stats, "build"
    ROOT/builds/<build>/lengths/{split}-%06d.npy int32 [n, 2] (context rows, input rows) per sample of
                                                that shard: what a rank plans its epoch from
    ROOT/builds/<build>/pieces/<piece>.npz      load_piece(): the whole piece (rows + notes), no pickle

A build is written once and never modified; publishing a build is one small write of CURRENT
(data/publish.py). A reader resolves CURRENT once (`current_build`) and then reads only that build,
so a build published meanwhile never mixes into what it reads:

    build = current_build(root)                 # MahlerError if ROOT was never preprocessed
    index = read_index(root, build)             # index["build"] == build
    urls = shard_urls(root, "train", index)     # (the index knows its build)
    manifest = read_manifest(root, build); stored = load_piece(root, piece_id, build)

`build=None` means "resolve CURRENT now" (fine for one call; pass the build to several). The
layout before builds (ROOT/shards/index.json, ROOT/pieces/, ROOT/manifest.jsonl, no CURRENT) is
still read, as the build LEGACY_BUILD; the next preprocess run publishes a build beside it and
removes it once it is out of the kept builds (publish.KEEP_BUILDS).

A sample's tar members are `<key>.active.npy` (uint8 [Ti, 15]), `<key>.context.npy` (int8 [Tc, 5]),
`<key>.inputs.npy` (int8 [Ti, 5]) and `<key>.meta.json` ({"piece", "bar", "metre", "rows",
"context_rows", "source"}). Keys are `<piece>_<bar:05d>` with piece = the first 16 hex digits of
the sha256 of the file's bytes: unique, dot-free, and sorted by (piece, bar) as strings.

ROOT may be a local path or a URI (s3://, gs://, ...): every read goes through mahler_dist/storage.py.
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

from mahler_dist.errors import MahlerError
from mahler_dist.music.piece import Bar, Piece
from mahler_dist.music.rows import BarSample, PieceRows, bar_windows
from mahler_dist.music.timing import Metre
from mahler_dist.storage import exists as _exists, join, read_bytes as _read_bytes

FORMAT_VERSION = 1
WIDS_VERSION = 1
SPLITS = ("train", "val", "test")
SHARD_PATTERN = "{split}-{index:06d}.tar"
SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
INPUT_DIR, SHARDS_DIR, PIECES_DIR, LENGTHS_DIR = "input", "shards", "pieces", "lengths"
INDEX_NAME, MANIFEST_NAME = "index.json", "manifest.jsonl"
BUILDS_DIR, CURRENT_NAME = "builds", "CURRENT"
#: The build id of the layout before builds (output directly under ROOT, no CURRENT pointer).
LEGACY_BUILD = "legacy"
_BUILD_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")
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


def lengths_path(shard_path: str) -> str | None:
    """A shard's lengths sidecar: builds/<b>/lengths/<split>-NNNNNN.npy for
    builds/<b>/shards/<split>-NNNNNN.tar (outside shards/, so readers of that folder see only
    tars); None for a path that is not a build's shard."""
    folder, sep, name = shard_path.rpartition(f"/{SHARDS_DIR}/")
    if not sep or not name.endswith(".tar"):
        return None
    return f"{folder}/{LENGTHS_DIR}/{name.removesuffix('.tar')}.npy"


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


def sample_code_files() -> list[Path]:
    """Every module whose code shapes a written sample, piece or manifest row: the representation
    (music/*.py), this module (sample schema, npz, windows) and the code that runs in the encode
    and shard tasks (data/build_tasks.py). The driver-side pipeline (planning, publication, the
    lock) is left out on purpose: changing it does not change a byte of a sample."""
    package = Path(__file__).resolve().parent.parent
    return sorted(package.glob("music/*.py")) + [package / "data" / "shards.py", package / "data" / "build_tasks.py"]


@lru_cache(maxsize=1)
def encoder_hash() -> str:
    """Hash of the code that encodes and writes samples (sample_code_files): output made by other
    code is stale."""
    return code_hash(sample_code_files())


def code_hash(paths: Iterable[Path]) -> str:
    package = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in paths:
        name = path.relative_to(package).as_posix() if path.is_relative_to(package) else path.name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
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
    """Indices of the bars that become samples: those with at most `max_rows` rows whose context
    (the previous bar, or the one START row at a chunk's first bar) has at most `max_rows` rows
    too - a bar dropped as an input must not come back as the next bar's context."""
    per_bar = np.diff(rows.bar_starts)
    return np.flatnonzero((per_bar <= max_rows) & context_fits(rows, max_rows))


def context_fits(rows: PieceRows, max_rows: int) -> np.ndarray:
    """bool [num_bars]: whether each bar's context has at most `max_rows` rows (bar_windows' rule:
    a chunk's first bar has the START row, every other bar the previous bar)."""
    per_bar = np.diff(rows.bar_starts)
    fits = np.ones(len(per_bar), dtype=bool)
    fits[1:] = per_bar[:-1] <= max_rows
    return fits | np.asarray(rows.chunk_start, dtype=bool)[: len(per_bar)]


def bar_counts(rows: PieceRows, max_rows: int) -> dict[str, int]:
    """{"samples", "bars_too_long", "contexts_too_long"} of a piece: every bar is exactly one of
    written, too long itself, or fine but with a too-long context."""
    per_bar = np.diff(rows.bar_starts)
    too_long = per_bar > max_rows
    context_too_long = ~too_long & ~context_fits(rows, max_rows)
    return {"samples": int(len(per_bar) - too_long.sum() - context_too_long.sum()),
            "bars_too_long": int(too_long.sum()), "contexts_too_long": int(context_too_long.sum())}


def piece_samples(rows: PieceRows, max_rows: int) -> list[BarSample]:
    """The samples written for a piece, in bar order (bar_windows minus the bars that are too long
    or whose context is)."""
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


def current_build(root: str | Path) -> str:
    """The id of the build ROOT/CURRENT points to now (LEGACY_BUILD for the layout before builds).
    Raises MahlerError naming ROOT when it holds no published build."""
    pointer = read_pointer(root)
    if pointer is not None:
        return pointer["build"]
    if any(_exists(join(root, name)) for name in (f"{SHARDS_DIR}/{INDEX_NAME}", PIECES_DIR, MANIFEST_NAME)):
        return LEGACY_BUILD   # the layout before builds (or a ROOT made by hand, as tests do)
    raise MahlerError(f"{root}: no preprocessed data (no {CURRENT_NAME} and no {SHARDS_DIR}/{INDEX_NAME}); "
                      f"run `mahler preprocess {root}` first")


def read_pointer(root: str | Path) -> dict | None:
    """ROOT/CURRENT as a dict, or None when there is none. A pointer that does not parse is an error
    (it is written whole, so a torn one means someone else wrote it)."""
    try:
        data = _read_bytes(join(root, CURRENT_NAME))
    except FileNotFoundError:
        return None
    try:
        pointer = json.loads(data)
        check_build_id(pointer["build"])
    except (ValueError, KeyError, TypeError) as e:
        raise MahlerError(f"{join(root, CURRENT_NAME)}: not a build pointer ({e}); "
                          f"run `mahler preprocess {root} --force`") from None
    return pointer


def check_build_id(build: str) -> str:
    """A build id is a short name of letters, digits, '-' and '_' (never a path)."""
    if not isinstance(build, str) or not _BUILD_RE.match(build):
        raise ValueError(f"not a build id: {build!r}")
    return build


def build_root(root: str | Path, build: str | None = None) -> str:
    """The folder that holds one build's shards/, pieces/ and manifest.jsonl."""
    build = current_build(root) if build is None else check_build_id(build)
    return str(root).rstrip("/") if build == LEGACY_BUILD else join(root, BUILDS_DIR, build)


def read_index(root: str | Path, build: str | None = None) -> dict:
    """A build's shards/index.json (build=None: the current one), with "build" set to its id.
    Raises MahlerError when ROOT was never preprocessed, FileNotFoundError when that build is gone.
    Resolved through CURRENT, the index's bytes are checked against the pointer's hash."""
    pointer = read_pointer(root) if build is None else None
    if build is None:
        build = pointer["build"] if pointer else current_build(root)
    data = _read_bytes(join(build_root(root, build), SHARDS_DIR, INDEX_NAME))
    if pointer and pointer.get("index_sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise MahlerError(f"{root}: the index of build {build} does not match {CURRENT_NAME}'s hash "
                          f"(written by another program?); run `mahler preprocess {root} --force`")
    index = json.loads(data)
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root}: shard format version {index.get('format_version')}, expected {FORMAT_VERSION};"
                         " run `mahler preprocess ROOT --force`")
    index.setdefault("build", build)
    return index


def shard_urls(root: str | Path, split: str, index: dict | None = None, build: str | None = None) -> list[str]:
    """Full paths/URIs of a split's shards, in order, all of one build: the index's (it records its
    build), else `build`, else the current one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    index = index or read_index(root, build)
    base = build_root(root, index.get("build", LEGACY_BUILD))
    return [join(base, SHARDS_DIR, s["url"]) for s in index["shardlist"] if s["split"] == split]


def read_manifest(root: str | Path, build: str | None = None) -> list[dict]:
    """A build's manifest rows (build=None: the current build)."""
    text = _read_bytes(join(build_root(root, build), MANIFEST_NAME)).decode()
    return [json.loads(line) for line in text.splitlines() if line]


# --------------------------------------------------------------------------------------------------
# pieces/<piece>.npz


class StoredPiece(NamedTuple):
    rows: PieceRows     # the event rows (what the samples are cut from)
    piece: Piece        # bars and quantised notes (what decodes back to MIDI)
    meta: dict          # {"format_version", "piece", "source", "name", "stats", "dropped"}


def piece_path(root: str | Path, piece: str, build: str | None = None) -> str:
    """Where a build's (build=None: the current build's) piece npz is. `piece` must be a piece id
    (hex), never a user's path."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", str(piece)):
        raise ValueError(f"not a piece id: {piece!r}")
    return join(build_root(root, build), PIECES_DIR, f"{piece}.npz")


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
    """Write ROOT/pieces/<piece>.npz, the legacy layout (for tests and tools that build a ROOT by
    hand; local paths only - the preprocessor writes builds through pyarrow)."""
    path = Path(piece_path(root, piece_id, LEGACY_BUILD))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npz.tmp")
    tmp.write_bytes(piece_npz_bytes(piece_id, source, piece, rows))
    tmp.replace(path)
    return str(path)


def load_piece(root: str | Path, piece_id: str, build: str | None = None) -> StoredPiece:
    """A build's (build=None: the current build's) pieces/<piece>.npz -> StoredPiece(rows, piece, meta)."""
    return read_piece_npz(_read_bytes(piece_path(root, piece_id, build)))


def iter_piece_samples(stored: StoredPiece, max_rows: int) -> Iterator[dict[str, bytes | str]]:
    """The encoded WebDataset samples of a stored piece, as preprocess writes them."""
    for s in piece_samples(stored.rows, max_rows):
        yield encode_sample(s, stored.meta["piece"], stored.meta["source"])

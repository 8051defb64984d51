"""The code that runs inside the Ray tasks of preprocessing and shapes every byte they write: one
MIDI file -> its manifest record and pieces/<piece>.npz (encode_record), one shard's samples -> a
tar (write_shard, TarShardWriter).

shards.encoder_hash() hashes this module with music/*.py and shards.py: editing it makes earlier
output stale. Keep driver-side logic (planning, publication) out of it.

Every file is bounded before the work it would cost: its size (checked on the driver from the
listing too, so a huge file is never read), the reader's limits while parsing (music.midi_io),
then the number of bars the score can make, computed from its metre map before quantisation
(a huge delta time would otherwise allocate millions of empty bars). Whatever still goes wrong in
one file - a MemoryError included - becomes that file's rejected record, never the corpus' failure.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tarfile
from collections import Counter

import numpy as np

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.errors import MahlerError, MidiReadError

#: Sample keys hold 5 digits of bar index: DataConfig.max_bars may not exceed this.
MAX_BARS = 99_999


# --------------------------------------------------------------------------------------------------
# One file -> manifest record + piece npz


def encode_record(data: bytes, rel: str, config: DataConfig) -> tuple[dict, bytes | None]:
    """One file -> (manifest record, pieces npz bytes or None). Never raises for bad input: a file
    that cannot be encoded gives status "rejected" and its reason. Extra keys starting with "_"
    (per-file histograms for the corpus statistics) are dropped from the manifest by the driver."""
    sha = hashlib.sha256(data).hexdigest()
    rec = empty_record(rel, sha, len(data))
    try:
        return _encode(data, rel, config, rec)
    except MidiReadError as e:
        rec["reason"] = e.reason
    except MahlerError as e:
        rec["reason"] = str(e)
    except MemoryError:
        rec["reason"] = "out of memory while encoding (lower the data limits or give the tasks more memory)"
    except RecursionError:
        rec["reason"] = "too deeply nested to encode"
    except Exception as e:   # a bug in the representation code: record it loudly, keep going
        rec["reason"] = f"internal error: {type(e).__name__}: {e}"
        rec["_internal_error"] = True
    rec.pop("_rows_hist", None)
    return rec, None


def _encode(data: bytes, rel: str, config: DataConfig, rec: dict) -> tuple[dict, bytes | None]:
    from mahler_dist.music.encode import encode_score
    from mahler_dist.music.instruments import PROGRAM_TO_CLASS, UNMAPPED
    from mahler_dist.music.midi_io import read_midi
    from mahler_dist.music.piece import PieceCol
    from mahler_dist.music.score import NoteCol
    from mahler_dist.music.vocab import NUM_INSTRUMENTS

    if len(data) > config.max_file_bytes:
        rec["reason"] = f"file too large ({len(data):,} bytes > data.max_file_bytes {config.max_file_bytes:,})"
        return rec, None
    score = read_midi(data, rel, **reader_limits(config))
    rec["repairs"] = list(getattr(score, "repairs", None) or [])
    if score.source_notes > config.max_notes:
        rec["reason"] = f"too many notes ({score.source_notes:,} > data.max_notes {config.max_notes:,})"
        rec["notes_in"] = int(score.source_notes)
        return rec, None
    bound = bar_bound(score)
    if bound > config.max_bars:
        rec["reason"] = f"too many bars (up to {bound:,} > data.max_bars {config.max_bars:,}; huge delta times?)"
        return rec, None
    enc = encode_score(score, rel, config.quantize)
    stats, rows = enc.stats, enc.rows
    if rows.num_bars > config.max_bars:   # the bound above makes this unreachable; keys need it
        rec["reason"] = f"too many bars ({rows.num_bars} > data.max_bars {config.max_bars})"
        return rec, None
    per_bar = np.diff(rows.bar_starts)
    programs = enc.score.notes[:, NoteCol.PROGRAM]
    programs = programs[np.asarray(PROGRAM_TO_CLASS)[programs] != UNMAPPED]
    rec.update(
        status="ok",
        notes_in=int(stats["source notes"]), notes_kept=int(stats["kept notes"]),
        note_parts=int(stats["note parts"]),
        bars=int(len(per_bar)), **S.bar_counts(rows, config.max_rows_per_bar), rows=int(len(rows.rows)),
        metres=dict(sorted(Counter(rows.metres).items())),
        instruments=_nonzero(np.bincount(enc.piece.notes[:, PieceCol.INSTR], minlength=NUM_INSTRUMENTS)),
        programs=_nonzero(np.bincount(programs, minlength=128)),
        dropped=_prefixed(stats, "dropped: "), merged=_prefixed(stats, "merged: "), moved=_prefixed(stats, "moved: "),
        _rows_hist=np.bincount(per_bar).tolist(),
    )
    return rec, S.piece_npz_bytes(rec["piece"], rel, enc.piece, rows)


def reader_limits(config: DataConfig) -> dict:
    """read_midi's keyword arguments for the parse limits in `config`: a music.midi_io.ReadLimits
    holding every DataConfig field of the same name (its other fields keep the reader's defaults)."""
    import dataclasses

    from mahler_dist.music.midi_io import ReadLimits

    shared = {f.name for f in dataclasses.fields(ReadLimits)} & {f.name for f in dataclasses.fields(DataConfig)}
    return {"limits": ReadLimits(**{name: getattr(config, name) for name in sorted(shared)})}


def bar_bound(score) -> int:
    """An upper bound on the bars quantize() makes of `score`, from its metre map alone (cheap: one
    term per time signature): each supported range gives ceil(span / bar) bars, plus one for an
    onset snapped past its end."""
    from mahler_dist.music.quantize import metre_ranges

    total = 0
    for rng in metre_ranges(score):
        if rng.metre is not None:
            total += math.ceil((rng.end - rng.start) / rng.metre.bar_score_ticks) + 1
    return total


def empty_record(rel: str, sha: str, size: int) -> dict:
    return {"path": rel, "status": "rejected", "reason": None, "piece": sha[:S.PIECE_ID_LEN], "split": None,
            "sha256": sha, "size": size, "notes_in": 0, "notes_kept": 0, "note_parts": 0, "bars": 0,
            "samples": 0, "bars_too_long": 0, "contexts_too_long": 0, "rows": 0, "metres": {},
            "instruments": {}, "programs": {}, "dropped": {}, "merged": {}, "moved": {}, "repairs": []}


def _prefixed(stats: Counter, prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: int(v) for k, v in sorted(stats.items()) if k.startswith(prefix) and v}


def _nonzero(counts: np.ndarray) -> dict[str, int]:
    return {str(i): int(c) for i, c in enumerate(counts) if c}


def encode_batch(batch: dict, *, store, input_dir: str, pieces_dir: str, config: DataConfig) -> dict:
    """map_batches UDF (a function, so it runs as plain tasks): {"bytes", "path"} -> {"record": JSON};
    writes pieces/<piece>.npz into the build's folder."""
    out = []
    for data, path in zip(batch["bytes"], batch["path"]):
        rel = str(path)[len(input_dir):].lstrip("/")
        rec, npz = encode_record(bytes(data), rel, config)
        if npz is not None:
            store.write(f"{pieces_dir}/{rec['piece']}.npz", npz)
        out.append(json.dumps(rec))
    return {"record": np.array(out, dtype=object)}


# --------------------------------------------------------------------------------------------------
# One shard


def write_shard(store, pieces_dir: str, path: str, items: list, max_rows: int) -> dict:
    """Write the tar `path` with the samples `items` ([(piece, start, stop)] of shards.ShardItem).

    The tar stream is gzip-compressed (level 1: level 9 tripled the shard stage; mtime 0, so
    rebuilds stay byte-identical): a bar's four members cost 4 KiB of tar headers and padding,
    which gzip folds to a few bytes per event row.
    Both webdataset and ray.data.read_webdataset open shards with tarfile mode "r|*", which
    detects the compression, as does `tar tf`."""
    lengths: list[tuple[int, int]] = []   # (context rows, input rows) per sample: the sidecar
    with store.fs.open_output_stream(path) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as f:
        tar = TarShardWriter(f)
        for piece, start, stop in items:
            piece_rows, meta = S.read_piece_rows(store.read(f"{pieces_dir}/{piece}.npz"))
            samples = S.piece_samples(piece_rows, max_rows)[start:stop]
            if len(samples) != stop - start:
                raise RuntimeError(f"{piece}: expected samples {start}..{stop}, found {len(samples)}")
            names, payloads = zip(*S.sample_members(samples, piece, meta["source"])) if samples else ((), ())
            tar.add_many(names, payloads)
            lengths += [(len(s.context), len(s.inputs)) for s in samples]
        tar.close()
    lengths_array = np.asarray(lengths, dtype=np.int32).reshape(-1, 2)
    store.write(S.lengths_path(path), S.npy_bytes(lengths_array))
    return {"nsamples": len(lengths_array), "rows": int(lengths_array[:, 1].sum()), "filesize": store.info(path).size}


class TarShardWriter:
    """Writes WebDataset samples as a POSIX ustar stream: the bytes `webdataset.TarWriter(encoder=False,
    mtime=0)` writes for ASCII member names, as every sample key is (tarfile's USTAR format for any
    name; webdataset adds PAX headers for others) - one member per field in sorted field order, mode 0444,
    owner bigdata, mtime 0, so a rebuild gives byte-identical shards - at 10x its speed (tarfile's
    header code was 80% of the shard stage) and without importing webdataset, which imports torch
    (1.4 s per worker process). tests/unit/test_shards.py checks the bytes against tarfile's."""

    _TEMPLATE = bytes(
        bytearray(100)                      # name
        + b"0000444\0" + b"0000000\0" * 2  # mode, uid, gid
        + bytearray(12)                     # size
        + b"00000000000\0" + b" " * 8       # mtime, checksum (spaces while summing)
        + b"0" + bytearray(100)             # typeflag (regular file), linkname
        + b"ustar\x0000"                     # magic, version
        + b"bigdata".ljust(32, b"\0") * 2   # uname, gname
        + bytearray(16 + 155 + 12))         # devmajor, devminor (empty for files), prefix, padding

    _TEMPLATE_ARRAY = np.frombuffer(_TEMPLATE, np.uint8)

    def __init__(self, fileobj, buffer_bytes: int = 1 << 20):
        self.f, self.offset, self.buffer_bytes = fileobj, 0, buffer_bytes
        self.parts: list[bytes] = []
        self.buffered = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        fields = sorted(k for k in sample if not k.startswith("_"))
        self.add_many([f"{key}.{field}" for field in fields], [sample[field] for field in fields])

    def add(self, name: str, data: bytes) -> None:
        self.add_many([name], [data])

    def add_many(self, names, payloads) -> None:
        """Append members: their 512-byte headers are built together in numpy (name, octal size,
        checksum), which costs a tenth of formatting each header in Python."""
        m = len(names)
        if not m:
            return
        encoded = [n.encode() for n in names]
        longest = max(range(m), key=lambda i: len(encoded[i]))
        if len(encoded[longest]) >= 100:
            raise ValueError(f"member name too long for a ustar header: {names[longest]}")
        sizes = np.fromiter(map(len, payloads), np.int64, m)
        head = np.empty((m, 512), np.uint8)
        head[:] = self._TEMPLATE_ARRAY
        head[:, :100] = np.frombuffer(b"".join(n.ljust(100, b"\0") for n in encoded), np.uint8).reshape(m, 100)
        head[:, 124:135] = _octal_digits(sizes, 11)
        head[:, 148:154] = _octal_digits(head.sum(axis=1, dtype=np.int64), 6)   # checksum field: spaces
        head[:, 154] = 0
        heads = memoryview(head.tobytes())
        pads = (-sizes % 512).tolist()
        parts = self.parts
        for i, (data, pad) in enumerate(zip(payloads, pads)):
            parts += (heads[512 * i: 512 * i + 512], data, _ZEROS[:pad])
        total = int(m * 512 + sizes.sum() + sum(pads))
        self.offset += total
        self.buffered += total
        if self.buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        self.f.write(b"".join(self.parts))
        self.parts, self.buffered = [], 0

    def close(self) -> None:
        end = 1024 + (-(self.offset + 1024) % tarfile.RECORDSIZE)   # two zero blocks, then a whole record
        self.parts.append(bytes(end))
        self.offset += end
        self.flush()


_ZEROS = bytes(512)


def _octal_digits(values: np.ndarray, width: int) -> np.ndarray:
    """uint8 [len(values), width]: each value as `width` ASCII octal digits, zero-padded."""
    shifts = 3 * np.arange(width - 1, -1, -1)
    return (((values[:, None] >> shifts) & 7) + ord("0")).astype(np.uint8)

"""Read the project's own shards fast: one gunzip, a ustar walk and `np.frombuffer` per array.

Why not webdataset's reader in the training loader: profiled on piano_midi_de shards
(bench/loader.py), `tarfile` header parsing and `np.load` (whose header parser calls
`ast.literal_eval` for every array) were 90% of the loader's time, ~1,000 bars/s in all. The
shards are written by data/build_tasks.py's TarShardWriter - gzip level 1 over plain ustar
members with short ASCII names - so this reader walks exactly that: the member header's name and
octal size, then the payload. A shard on an object store (s3://, gs://) is fetched whole through
the storage layer (one GET) and walked the same way. Anything else (a PAX or GNU long-name header,
a `pipe:` URL) goes to webdataset's reader instead, so every shard stays readable.

Arrays: the npy header is parsed once per distinct header (a bar's shape repeats), the dtype must
be a plain number type (never an object array: shards are data, never code) and the array is a
read-only view of the shard's bytes, copied by collate.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from functools import lru_cache

import numpy as np

from mahler_dist.storage import read_bytes

_NPY_MAGIC = b"\x93NUMPY"
_PLAIN_FILE = (b"0", b"\0")


class ShardFormatError(ValueError):
    """A shard (or a member of it) that is not what the project writes."""


def local_path(url: str) -> str | None:
    """The local file behind a shard URL, or None for an object-store URI or a pipe."""
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" in url or url.startswith("pipe:"):
        return None
    return url


def read_shard_file(url: str) -> bytes | None:
    """A shard's bytes as stored: a local file, or an object-store URI through the storage layer;
    None for what only webdataset opens (a pipe:, a missing local file: it says what is wrong)."""
    if url.startswith("pipe:"):
        return None
    path = local_path(url)
    if path is None:
        return read_bytes(url)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def shard_bytes(data: bytes) -> bytes:
    """The uncompressed tar stream of a shard file's bytes (gzip detected by its magic, as `tar` does)."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def iter_members(tar: bytes, where: str) -> list[tuple[str, int, int]] | None:
    """(name, start, stop) of every regular member, or None if the stream uses headers this
    reader does not walk (the caller then reads it with webdataset)."""
    out = []
    view, pos, end = memoryview(tar), 0, len(tar)
    while pos + 512 <= end:
        head = view[pos:pos + 512]
        if head[0] == 0:                      # the zero blocks that end the archive
            break
        kind = bytes(head[156:157])
        if kind not in _PLAIN_FILE or bytes(head[257:262]) != b"ustar":
            return None
        name = bytes(head[0:100]).split(b"\0", 1)[0]
        prefix = bytes(head[345:500]).split(b"\0", 1)[0]
        try:
            size = int(bytes(head[124:136]).strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ShardFormatError(f"{where}: bad tar header at byte {pos}") from None
        start = pos + 512
        if start + size > end:
            raise ShardFormatError(f"{where}: truncated tar member {name!r} at byte {pos}")
        full = (prefix + b"/" + name) if prefix else name
        out.append((full.decode(), start, start + size))
        pos = start + size + (-size % 512)
    return out


def group_samples(tar: bytes, where: str) -> list[dict] | None:
    """webdataset's grouping: consecutive members with the same key (name up to its first dot in
    the last path part) form one sample {"__key__", field: memoryview}."""
    members = iter_members(tar, where)
    if members is None:
        return None
    view = memoryview(tar)
    samples: list[dict] = []
    current: dict | None = None
    for name, start, stop in members:
        folder, _, base = name.rpartition("/")
        key, dot, field = base.partition(".")
        if not dot:
            continue
        key = f"{folder}/{key}" if folder else key
        if current is None or current["__key__"] != key:
            current = {"__key__": key}
            samples.append(current)
        current[field] = view[start:stop]
    return samples


def read_raw_samples(url: str) -> list[dict]:
    """A shard's samples in file order, fields as bytes-like objects."""
    data = read_shard_file(url)
    if data is not None:
        grouped = group_samples(shard_bytes(data), url)
        if grouped is not None:
            return grouped
    from webdataset import tariterators   # pipes, headers the fast walk does not know

    return list(tariterators.tarfile_samples([{"url": url}]))


@lru_cache(maxsize=4096)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    try:
        spec = ast.literal_eval(header.decode("latin1"))
        dtype = np.dtype(spec["descr"])
        shape = tuple(int(n) for n in spec["shape"])
        fortran = bool(spec["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise ShardFormatError(f"not an npy header: {header[:60]!r} ({e})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or fortran:
        raise ShardFormatError(f"npy array of dtype {dtype} (fortran order {fortran}): only plain "
                               "C-order numbers are read")
    return dtype, shape, int(np.prod(shape, dtype=np.int64))


def npy_array(data, where: str = "array") -> np.ndarray:
    """An npy payload (version 1 or 2 header) as a read-only array viewing `data`."""
    buf = memoryview(data)
    if bytes(buf[:6]) != _NPY_MAGIC:
        raise ShardFormatError(f"{where}: not an npy array")
    major = buf[6]
    if major == 1:
        hlen, first = int.from_bytes(buf[8:10], "little"), 10
    elif major in (2, 3):
        hlen, first = int.from_bytes(buf[8:12], "little"), 12
    else:
        raise ShardFormatError(f"{where}: npy format version {major} is not read")
    dtype, shape, count = _npy_layout(bytes(buf[first:first + hlen]))
    offset = first + hlen
    if len(buf) - offset < count * dtype.itemsize:
        raise ShardFormatError(f"{where}: npy payload shorter than its shape {shape}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)


# meta.json as shards.sample_members writes it: its metre read without a JSON parse (a quarter of
# the decode time); any other meta.json is parsed
_METRE = re.compile(rb'"metre":"([0-9]{1,2}/[0-9]{1,2})"')


def _metre_of(meta) -> str:
    data = bytes(meta)
    m = _METRE.search(data)
    return m.group(1).decode() if m else json.loads(data).get("metre", "")


def decode_sample(raw: dict) -> dict:
    """A raw shard sample -> {"key", "context", "inputs", "active", "metre"}."""
    key = raw["__key__"]
    try:
        return {"key": key, "context": npy_array(raw["context.npy"], f"{key}.context.npy"),
                "inputs": npy_array(raw["inputs.npy"], f"{key}.inputs.npy"),
                "active": npy_array(raw["active.npy"], f"{key}.active.npy"), "metre": _metre_of(raw["meta.json"])}
    except KeyError as e:
        raise ShardFormatError(f"sample {key}: no member {e.args[0]!r}") from None

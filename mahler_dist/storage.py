"""The one storage layer: every path under ROOT is a local path or an object-store URI
(s3://, gs://, ... - whatever pyarrow.fs opens), read and written through pyarrow filesystems.

Credentials and endpoints come from the environment as each cloud's own tools read them
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for S3 and S3-compatible servers,
GOOGLE_APPLICATION_CREDENTIALS for GCS); Ray Train's storage_path resolves the same way.

Object stores have no rename and no append, so nothing here renames a folder or appends to a
file. Only two writes carry a guarantee beyond "the bytes arrive": `write_atomic` (readers see
the old object or the new one, never a torn one: a temp file and os.replace locally, one PUT on an
object store) and `create_exclusive` (the lock file: a hard link locally; on S3 a conditional PUT, If-None-Match: *,
so one of racing writers wins; on other object stores a check, a write and a read-back, which
narrows but does not close the race).

What must be a local file to be used (a checkpoint torch.load()s, a run's working files the
driver appends to) is copied through `cache_dir(uri)`: a folder per URI under MAHLER_CACHE_DIR
(default ~/.cache/mahler).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from mahler_dist.errors import MahlerError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts with '/' (local paths and URIs alike)."""
    return "/".join([str(root).rstrip("/"), *parts])


def as_root(root: str | os.PathLike) -> Path | str:
    """A ROOT as the commands hold it: an object-store URI kept as a string (never a Path: that
    would make s3://b/x a local folder "s3:"), a local path made absolute (Ray's workers may
    start in another working directory)."""
    return str(root).rstrip("/") if is_uri(root) else Path(root).resolve()


def child(location: Path | str, *parts: str) -> Path | str:
    """A path below `location`, of the same kind: a Path below a Path, a URI string below a URI."""
    return Path(location, *parts) if isinstance(location, Path) else join(location, *parts)


@lru_cache(maxsize=64)
def _filesystem(scheme_and_host: str):
    """One pyarrow filesystem per scheme://bucket (creating an S3 client costs ~20 ms), checked
    once by looking the bucket up, so that a bucket this process cannot reach is one clear error
    before any work rather than an OSError deep inside it."""
    import pyarrow.fs as pafs

    scheme, bucket = scheme_and_host.split("://", 1)
    try:
        if scheme in ("gs", "gcs"):
            # pyarrow's GCS client retries for 15 minutes by default: without credentials every
            # call would wait that long on the metadata server before failing
            retry = timedelta(seconds=float(os.environ.get("MAHLER_GCS_RETRY_S", 60)))
            fs = pafs.GcsFileSystem(retry_time_limit=retry)
        else:   # (S3 looks the bucket's region up here already)
            fs = pafs.FileSystem.from_uri(scheme_and_host)[0]
        fs.get_file_info(bucket)
    except OSError as e:
        hint = ("GOOGLE_APPLICATION_CREDENTIALS or the VM's service account" if scheme in ("gs", "gcs") else
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or an instance profile" if scheme == "s3"
                else "see pyarrow.fs")
        reason = str(e).split("\n")[0][:300]
        raise MahlerError(f"{scheme_and_host}: cannot be reached ({reason}). Credentials and the endpoint "
                          f"come from the environment: {hint}") from e
    return fs


@lru_cache(maxsize=8)
def _s3_client(region: str):
    import boto3   # endpoint and credentials from the environment, as pyarrow reads them

    return boto3.client("s3", region_name=region or None)


def _s3_put_if_absent(fs, path: str, data: bytes) -> bool:
    """One conditional PUT (If-None-Match: *, which S3 has honoured since 2024): the server creates
    the key only if it does not exist, so of racing writers exactly one wins. pyarrow cannot send
    the header, hence boto3 for this one call. False when the key exists (412) or a concurrent
    conditional write conflicted (409: the caller retries, as a lock does)."""
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    try:
        _s3_client(fs.region).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise


def resolve(path: str | os.PathLike):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    text = str(path)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(text)
    if text.startswith("file://"):
        return pafs.LocalFileSystem(), text[len("file://"):]
    scheme, rest = text.split("://", 1)
    bucket = rest.split("/", 1)[0]
    return _filesystem(f"{scheme}://{bucket}"), rest.rstrip("/")


class Store:
    """Path operations under ROOT through pyarrow.fs, so that ROOT may be local or s3://, gs://.
    Paths passed to its methods are in the filesystem's space (`store.path(...)`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self.local = not is_uri(self.root) or self.root.startswith("file://")
        self.fs, base = resolve(self.root)
        self.base = base.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri(self, path: str) -> str:
        """A path of this store as the user would write it (the inverse of path())."""
        return self.root.rstrip("/") + path[len(self.base):]

    def info(self, path: str):
        return self.fs.get_file_info(path)

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(path).type == pafs.FileType.Directory

    def is_file(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(path).type == pafs.FileType.File

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_if_exists(self, path: str) -> bytes | None:
        try:
            return self.read(path)
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace `path` whole: a reader sees the old bytes or the new ones."""
        if not self.local:
            self.write(path, data)   # one PUT: object stores never show a partial object
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` unless it exists; True when this call created it."""
        if self.local:   # written whole aside, then hard-linked: no reader ever sees it half written
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.fs.type_name == "s3":
            if not _s3_put_if_absent(self.fs, path, data):
                return False
        else:   # no conditional create through pyarrow: check, PUT, read back (narrows the race only)
            if self.exists(path):
                return False
            self.write(path, data)
        # a server that ignores If-None-Match lets a later PUT replace ours: then it is theirs
        return self.read_if_exists(path) == data

    def mkdir(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def remove(self, path: str) -> None:
        import pyarrow.fs as pafs

        kind = self.info(path).type
        try:
            if kind == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif kind == pafs.FileType.File:
                self.fs.delete_file(path)
        except OSError:   # a straggler task of a killed run may still be writing; next run retries
            pass

    def children(self, path: str, dirs_only: bool = False) -> list[str]:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel)
                      if not dirs_only or i.type == pafs.FileType.Directory)

    def files_below(self, path: str) -> list[tuple[str, int]]:
        """(path relative to `path`, size) of every file below it, sorted."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        return sorted((i.path[len(path):].lstrip("/"), int(i.size)) for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def list_midi(self, path: str) -> list[tuple[str, int]]:
        """(path relative to `path`, size) of every .mid/.midi below it (case-insensitive), sorted."""
        return [(rel, size) for rel, size in self.files_below(path) if rel.lower().endswith((".mid", ".midi"))]

    def sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def download_tree(self, path: str, local: Path, skip: tuple[str, ...] = ()) -> Path:
        """Copy every file below `path` into the local folder `local` (files already there with
        the same size are kept: checkpoints are written once). `skip`: top-level names left out."""
        for rel, size in self.files_below(path):
            if rel.split("/", 1)[0] in skip:
                continue
            target = local / rel
            if target.is_file() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            with self.fs.open_input_stream(self.path_join(path, rel)) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)
        return local

    def upload_tree(self, local: Path, path: str) -> None:
        """Copy every file below the local folder `local` to `path` (one PUT each)."""
        for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            self.write(self.path_join(path, file.relative_to(local).as_posix()), file.read_bytes())

    @staticmethod
    def path_join(path: str, *parts: str) -> str:
        return "/".join([path.rstrip("/"), *parts])


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; FileNotFoundError when there is none (local paths and URIs alike)."""
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = resolve(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read()
    except OSError as e:   # pyarrow raises OSError("Path does not exist") on some filesystems
        if isinstance(e, FileNotFoundError) or "does not exist" in str(e) or "NoSuchKey" in str(e):
            raise FileNotFoundError(str(path)) from None
        raise


def exists(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    store = Store(path)
    return store.is_dir(store.base)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file (one PUT on an object store; temp file + rename locally)."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    fs, inner = resolve(path)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def cache_dir(uri: str) -> Path:
    """The local folder that caches what was copied from `uri` (MAHLER_CACHE_DIR, default
    ~/.cache/mahler): the URI's readable tail plus a hash of the whole, so two ROOTs never share one."""
    base = Path(os.environ.get("MAHLER_CACHE_DIR") or Path.home() / ".cache" / "mahler")
    tail = "".join(c if c.isalnum() or c in "-_." else "-" for c in uri.split("://", 1)[-1])[-60:]
    return base / f"{tail.strip('-')}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

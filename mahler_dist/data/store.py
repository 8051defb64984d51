"""ROOT on a pyarrow filesystem (a local path or a URI): the few path operations preprocessing needs.

Only two writes carry a guarantee beyond "the bytes arrive": `write_atomic` (readers see the old
object or the new one, never a torn one: a temp file and os.replace locally, one PUT on an object
store) and `create_exclusive` (the lock file: O_EXCL locally; on an object store a write then a
read-back, which narrows but does not close the race - conditional PUTs are a later issue's).
Nothing here renames a folder, so the same code runs where there is no rename.
"""

from __future__ import annotations

import hashlib
import os
import uuid

from mahler_dist.data import shards as S


class Store:
    """Path operations under ROOT through pyarrow.fs, so that ROOT may be local or s3://, gs://."""

    def __init__(self, root: str | os.PathLike):
        import pyarrow.fs as pafs

        self.root = str(root)
        self.local = not S.is_uri(self.root)
        if self.local:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(self.root)
        else:
            self.fs, base = pafs.FileSystem.from_uri(self.root)
        self.base = base.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def info(self, path: str):
        return self.fs.get_file_info(path)

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(path).type != pafs.FileType.NotFound

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_if_exists(self, path: str) -> bytes | None:
        try:
            return self.read(path)
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace `path` whole: a reader sees the old bytes or the new ones."""
        if not self.local:
            self.write(path, data)   # one PUT: object stores never show a partial object
            return
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
        if self.exists(path):
            return False
        self.write(path, data)
        return self.read_if_exists(path) == data   # another writer's PUT landed after ours: theirs

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

    def children(self, path: str) -> list[str]:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def list_midi(self, path: str) -> list[tuple[str, int]]:
        """(path relative to `path`, size) of every .mid/.midi below it (case-insensitive), sorted."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        out = []
        for i in self.fs.get_file_info(sel):
            if i.type == pafs.FileType.File and i.path.lower().endswith(S.MIDI_EXTENSIONS):
                out.append((i.path[len(path):].lstrip("/"), int(i.size)))
        return sorted(out)

    def sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

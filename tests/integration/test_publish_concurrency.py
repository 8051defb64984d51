"""Publishing under concurrency, through the real `preprocess()` on a real local Ray: two runs on one
ROOT (two processes on the session's Ray) do not clobber each other, and a reader pinned to a build
keeps reading it, byte for byte, while a newer build is published."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mahler_dist.config import DataConfig
from mahler_dist.data import publish as PB
from mahler_dist.data import shards as S
from mahler_dist.data.preprocess import preprocess
from mahler_dist.errors import MahlerError

pytestmark = pytest.mark.integration

CONFIG = DataConfig(shard_samples=300)

_RUN = """
import json, sys
from mahler_dist.config import DataConfig
from mahler_dist.data.preprocess import preprocess
summary = preprocess(sys.argv[1], DataConfig(shard_samples=300), force=sys.argv[2] == "force", wait_s=300)
print(json.dumps({"build": summary.build, "up_to_date": summary.up_to_date, "samples": summary.samples}))
"""


def _corpus(midi_dir: Path, root: Path, n: int = 12) -> Path:
    for f in sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[:n] + sorted((midi_dir / "corrupt").rglob("*.mid"))[:2]:
        dest = root / "input" / f.relative_to(midi_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    return root


def _files(root: Path, build: str) -> dict[str, str]:
    """sha256 of every shard and piece of `build`, read through the pinned read API."""
    index = S.read_index(root, build)
    out = {Path(u).name: hashlib.sha256(Path(u).read_bytes()).hexdigest()
           for split in S.SPLITS for u in S.shard_urls(root, split, index)}
    for m in S.read_manifest(root, build):
        if m["status"] == "ok":
            out[m["piece"]] = hashlib.sha256(S.load_piece(root, m["piece"], build).rows.rows.tobytes()).hexdigest()
    return out


def _check_complete(root: Path, build: str) -> None:
    """The build is whole and agrees with itself: every shard listed exists at its size, every ok
    row's piece is there, the sample counts add up."""
    index = S.read_index(root, build)
    folder = Path(S.build_root(root, build))
    assert index["build"] == build
    for entry in index["shardlist"]:
        assert (folder / "shards" / entry["url"]).stat().st_size == entry["filesize"]
    manifest = S.read_manifest(root, build)
    ok = [m for m in manifest if m["status"] == "ok"]
    assert ok and all((folder / "pieces" / f"{m['piece']}.npz").is_file() for m in ok)
    assert sum(e["nsamples"] for e in index["shardlist"]) == sum(m["samples"] for m in ok)


def test_two_runs_on_one_root_do_not_clobber_each_other(ray_session, midi_dir, tmp_path):
    """Run A builds; run B (forced) starts while A holds the lock and waits for it; a third caller
    that will not wait is refused with the owner named. Both end cleanly; B's build is current,
    A's is kept as the previous one, both complete."""
    root = _corpus(midi_dir, tmp_path / "root")
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, RAY_AUTH_MODE="disabled")

    def start(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _RUN, str(root), mode], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    a = start("plain")
    try:
        deadline = time.monotonic() + 120
        while not (root / PB.LOCK_NAME).exists() and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        holder = PB.read_lock(PB.Store(root))
        assert holder and holder["pid"] == a.pid, "run A never took the lock"
        b = start("force")
        with pytest.raises(MahlerError, match=rf"another preprocess run holds \.lock \(pid \d+ on "):
            preprocess(root, CONFIG, progress=False, wait_s=0)
        out_a, err_a = a.communicate(timeout=300)
        out_b, err_b = b.communicate(timeout=300)
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                p.kill()
    assert a.returncode == 0, err_a[-3000:]
    assert b.returncode == 0, err_b[-3000:]
    ra, rb = (json.loads(out.strip().splitlines()[-1]) for out in (out_a, out_b))
    assert "waiting for the run that holds the lock" in err_b
    assert not ra["up_to_date"] and not rb["up_to_date"] and ra["build"] != rb["build"]
    assert ra["samples"] == rb["samples"]
    pointer = json.loads((root / "CURRENT").read_text())
    assert pointer["build"] == rb["build"] and pointer["previous"] == [ra["build"]]
    assert sorted(p.name for p in (root / "builds").iterdir()) == sorted([ra["build"], rb["build"]])
    assert not (root / PB.LOCK_NAME).exists()
    for build in (ra["build"], rb["build"]):
        _check_complete(root, build)
    assert _files(root, ra["build"]) == _files(root, rb["build"])   # same input: byte-identical builds


def test_a_pinned_reader_keeps_its_build_while_a_new_one_is_published(ray_session, midi_dir, tmp_path):
    """A reader resolves the build, reads half its shards, a new build (other input) is published,
    and the reader still reads every shard and piece of its build unchanged; a new reader sees the
    new build. Ray Data reads the pinned URLs too."""
    root = _corpus(midi_dir, tmp_path / "root", n=10)
    preprocess(root, CONFIG, progress=False)
    build = S.current_build(root)
    index = S.read_index(root, build)
    urls = [u for split in S.SPLITS for u in S.shard_urls(root, split, index)]
    before = _files(root, build)
    first_half = {u: Path(u).read_bytes() for u in urls[: len(urls) // 2]}

    extra = sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[10:14]
    for f in extra:
        shutil.copy(f, root / "input" / "piano_midi_de" / f.name)
    summary = preprocess(root, CONFIG, progress=False)
    assert summary.build != build and S.current_build(root) == summary.build
    new_index = S.read_index(root)
    assert new_index["build"] == summary.build and new_index["stats"]["files"]["total"] == index["stats"]["files"]["total"] + 4

    assert {u: Path(u).read_bytes() for u in urls[: len(urls) // 2]} == first_half
    assert _files(root, build) == before                                   # the rest, read after the publish
    assert [u for split in S.SPLITS for u in S.shard_urls(root, split, index)] == urls
    ray = ray_session
    keys = ray.data.read_webdataset(urls, decoder=None).select_columns(["__key__"]).take_all()
    assert len(keys) == sum(e["nsamples"] for e in index["shardlist"])
    _check_complete(root, summary.build)

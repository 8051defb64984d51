"""`preprocess` on a real local Ray: piano_midi_de + corrupt/ + edge_cases/ (plus one duplicate file)
-> manifest, shards and pieces that agree with each other, with webdataset and with Ray Data; reruns,
--force, a run killed part-way, and a simulated two-node cluster."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.preprocess import preprocess
from mahler_dist.music.encode import encode_bytes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CORPORA = ("piano_midi_de", "corrupt", "edge_cases")
CONFIG = DataConfig(shard_samples=2000)
DUPLICATE = "zz_duplicates/copy_of_first_piano.mid"   # sorts after the original


def _input_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "input")) for p in (root / "input").rglob("*")
                  if p.is_file() and p.suffix.lower() in (".mid", ".midi"))


def _build(root: Path) -> Path:
    """The folder of ROOT's current build."""
    return Path(S.build_root(root))


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file of the current build (paths relative to its folder)."""
    build = _build(root)
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(build.rglob("*"))}


def _top(root: Path) -> list[str]:
    """What ROOT holds beside the input: the pointer, the builds (by name) and any leftovers."""
    return sorted([p.name for p in root.iterdir() if p.name not in ("input", "builds")]
                  + [f"builds/{p.name}" for p in (root / "builds").iterdir()])


@pytest.fixture(scope="module")
def full(ray_session, midi_dir, tmp_path_factory):
    """The issue's corpus, preprocessed once for the module."""
    root = tmp_path_factory.mktemp("full")
    for corpus in CORPORA:
        shutil.copytree(midi_dir / corpus, root / "input" / corpus)
    first_piano = sorted((root / "input" / "piano_midi_de").rglob("*.mid"))[0]
    (root / "input" / DUPLICATE).parent.mkdir()
    shutil.copy(first_piano, root / "input" / DUPLICATE)
    summary = preprocess(root, CONFIG, progress=False)
    return root, summary, first_piano.relative_to(root / "input")


@pytest.fixture(scope="module")
def read_back(full):
    """Every shard read once with the webdataset package: keys per shard, and all samples of a
    few pieces (every 60th ok piece) with their raw fields."""
    import webdataset as wds

    root, _, _ = full
    index = S.read_index(root)
    picked = {m["piece"] for m in [m for m in S.read_manifest(root) if m["status"] == "ok"][::60]}
    keys, samples = {}, {}
    for entry in index["shardlist"]:
        url = S.join(S.build_root(root, index["build"]), S.SHARDS_DIR, entry["url"])
        keys[entry["url"]] = []
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            keys[entry["url"]].append(sample["__key__"])
            if sample["__key__"][:16] in picked:
                samples[sample["__key__"]] = sample
    return keys, picked, samples


def test_manifest_has_one_row_per_file_and_every_corrupt_file_rejected_or_repaired(full):
    root, summary, first_piano = full
    manifest = S.read_manifest(root)
    files = _input_files(root)
    assert [m["path"] for m in manifest] == files
    rows = {m["path"]: m for m in manifest}
    corrupt = [f for f in files if f.startswith("corrupt/")]
    assert len(corrupt) > 90
    # the reader recovers wrapped SMFs, unknown chunks and malformed meta events (issue 10): a
    # corrupt file is either rejected with its reason or read with the repairs that made it readable
    for f in corrupt:
        assert (rows[f]["status"] == "rejected" and rows[f]["reason"]) or rows[f].get("repairs"), f
    assert sum(rows[f]["status"] == "ok" for f in corrupt) > 0
    assert rows[DUPLICATE]["status"] == "rejected"
    assert rows[DUPLICATE]["reason"] == f"duplicate of {first_piano}"
    assert not [m for m in manifest if (m["reason"] or "").startswith("internal error")]
    ok = [m for m in manifest if m["status"] == "ok"]
    assert len(ok) > 350 and summary.ok == len(ok) and summary.rejected == len(files) - len(ok)
    assert all(m["split"] in S.SPLITS for m in ok)
    assert all(m["split"] is None for m in manifest if m["status"] == "rejected")
    assert all(m["samples"] + m["bars_too_long"] + m["contexts_too_long"] == m["bars"] for m in ok)
    build = _build(root)
    assert all((build / "pieces" / f"{m['piece']}.npz").is_file() for m in ok)
    assert len(list((build / "pieces").iterdir())) == len(ok)
    assert sorted(p.name for p in build.iterdir()) == ["lengths", "manifest.jsonl", "pieces", "shards"]
    assert _top(root) == ["CURRENT", f"builds/{build.name}"] and summary.build == build.name
    text = str(summary)
    assert "rejected" in text and "files/s" in text and "train" in text


def test_index_counts_equal_what_webdataset_and_ray_data_read(full, read_back, ray_session):
    root, summary, _ = full
    shard_keys, _, _ = read_back
    index = S.read_index(root)
    manifest = S.read_manifest(root)
    assert index["format_version"] == 1 and index["wids_version"] == 1
    assert index["config_hash"] == S.config_hash(CONFIG)
    assert index["input_hash"] == S.input_hash((m["path"], m["sha256"]) for m in manifest)
    assert len(index["write_back_programs"]) == 23
    assert index["build"] == S.current_build(root)
    assert sorted(p.name for p in (_build(root) / "shards").iterdir()) == sorted(
        [s["url"] for s in index["shardlist"]] + ["index.json"])
    total = sum(s["nsamples"] for s in index["shardlist"])
    assert total == sum(m["samples"] for m in manifest) == index["stats"]["samples"] == sum(summary.samples.values())

    split_of_piece = {m["piece"]: m["split"] for m in manifest if m["status"] == "ok"}
    keys, seen_splits = [], {}
    for split in S.SPLITS:
        entries = [s for s in index["shardlist"] if s["split"] == split]
        assert [Path(u).name for u in S.shard_urls(root, split, index)] == [e["url"] for e in entries]
        assert len(entries) == index["splits"][split]["shards"] >= (1 if index["splits"][split]["samples"] else 0)
        for i, entry in enumerate(entries):
            assert entry["url"] == S.shard_name(split, i)
            assert (_build(root) / "shards" / entry["url"]).stat().st_size == entry["filesize"]
            got = shard_keys[entry["url"]]
            assert len(got) == entry["nsamples"] and got == sorted(got)
            assert i == len(entries) - 1 or entry["nsamples"] == CONFIG.shard_samples
            keys += got
            for k in got:
                seen_splits.setdefault(S.parse_key(k)[0], set()).add(split)
    assert len(keys) == total and len(set(keys)) == total and not any("." in k for k in keys)
    assert all(len(s) == 1 for s in seen_splits.values())                 # no piece in two splits
    assert all(split_of_piece[p] == s.pop() for p, s in seen_splits.items())

    import ray

    urls = [u for split in S.SPLITS for u in S.shard_urls(root, split, index)]
    ray_keys = [r["__key__"] for r in ray.data.read_webdataset(urls, decoder=None).select_columns(["__key__"]).take_all()]
    assert len(ray_keys) == total and sorted(ray_keys) == sorted(keys)


def test_samples_hold_the_encoders_arrays(full, read_back):
    root, _, _ = full
    _, picked, found = read_back
    rows = {m["piece"]: m for m in S.read_manifest(root)}
    for piece in sorted(picked):
        m = rows[piece]
        enc = encode_bytes((root / "input" / m["path"]).read_bytes(), m["path"])
        expected = [s for s in enc.samples if max(len(s.inputs), len(s.context)) <= CONFIG.max_rows_per_bar]
        assert len(expected) == m["samples"] == sum(k.startswith(piece) for k in found)
        for s in expected:
            got = found[S.sample_key(piece, s.bar)]
            meta = json.loads(got["meta.json"])
            assert meta == {"piece": piece, "bar": s.bar, "metre": s.metre, "rows": len(s.inputs),
                            "context_rows": len(s.context), "source": m["path"]}
            for field in ("context", "inputs", "active"):
                array = np.load(io.BytesIO(got[f"{field}.npy"]), allow_pickle=False)
                assert array.dtype == getattr(s, field).dtype
                np.testing.assert_array_equal(array, getattr(s, field))
        stored = S.load_piece(root, piece)
        np.testing.assert_array_equal(stored.rows.rows, enc.rows.rows)


def test_rerun_is_up_to_date_and_changes_nothing(full, capsys):
    from mahler_dist.cli import main

    root, _, _ = full
    before, top = _snapshot(root), _top(root)
    mtime = (_build(root) / "shards" / "index.json").stat().st_mtime_ns
    again = preprocess(root, CONFIG, progress=False)
    assert again.up_to_date and "up to date" in str(again)
    assert main(["preprocess", str(root), "--shard-samples", str(CONFIG.shard_samples)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "rejected" in out and "train" in out
    assert _snapshot(root) == before and (_build(root) / "shards" / "index.json").stat().st_mtime_ns == mtime
    assert _top(root) == top
    assert main(["preprocess", str(root), "--val", "0.7", "--test", "0.5"]) == 2   # refused, nothing touched
    assert "val and test fractions" in capsys.readouterr().err and _snapshot(root) == before and _top(root) == top


def test_run_killed_part_way_leaves_the_previous_output(full, ray_session):
    """SIGKILL a forced run (jobs/preprocess.py, on the session's Ray) while it encodes."""
    root, _, _ = full
    before, top = _snapshot(root), _top(root)
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "preprocess.py"), str(root), "--force",
                             "--shard-samples", str(CONFIG.shard_samples)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(len(list(p.glob("pieces/*.npz"))) >= 5 for p in root.glob("builds/*") if p != _build(root)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    time.sleep(1.0)   # let the cluster reap the dead driver's tasks
    assert _snapshot(root) == before and len(_top(root)) == len(top) + 2   # + its partial build and lock
    again = preprocess(root, CONFIG, progress=False)   # takes the dead run's lock over, cleans up
    assert again.up_to_date
    assert _snapshot(root) == before and _top(root) == top


_CLUSTER_SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from mahler_dist.config import DataConfig
from mahler_dist.data.preprocess import preprocess

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20})
cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
try:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    summary = preprocess(sys.argv[1], DataConfig(shard_samples=int(sys.argv[2])), progress=False)
    print(json.dumps({"nodes": len(nodes), "samples": summary.samples}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_force_and_a_two_node_cluster_give_the_same_samples(ray_session, midi_dir, tmp_path):
    """A subset on the session Ray, again with force=True capped at one worker (other encode tasks,
    and a read that Ray Data does not fuse with the encode), and on a simulated two-node cluster (in
    a subprocess: one process joins one Ray) gives byte-identical shards, manifest and pieces."""
    files = sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[:16] + sorted((midi_dir / "corrupt").rglob("*.mid"))[:4]
    roots = []
    for name in ("local", "cluster"):
        for f in files:
            dest = tmp_path / name / "input" / f.relative_to(midi_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
        roots.append(tmp_path / name)
    config = DataConfig(shard_samples=300)
    local = preprocess(roots[0], config, progress=False)
    first = _snapshot(roots[0])
    forced = preprocess(roots[0], config, force=True, workers=1, progress=False)
    assert forced.workers == 1 and local.workers > 1
    assert not forced.up_to_date and forced.samples == local.samples
    again = _snapshot(roots[0])
    assert again.pop("shards/index.json") != first.pop("shards/index.json")   # a new build time ...
    assert again == first               # ... and every shard, piece and manifest byte the same
    assert sum(k.endswith(".tar") for k in first) >= 3

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    run = subprocess.run([sys.executable, "-c", _CLUSTER_SCRIPT, str(roots[1]), str(config.shard_samples)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and result["samples"] == local.samples
    cluster = _snapshot(roots[1])
    cluster.pop("shards/index.json")
    assert cluster == first

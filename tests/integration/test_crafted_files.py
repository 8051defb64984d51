"""Hostile files through the real `preprocess()` on a real local Ray: huge delta times, 10^6 notes in
one bar, a 50 MB file and running status carried across 300,000 meta events, beside real files.
The run ends within a bounded time and with bounded worker memory (both asserted), every hostile
file gets its manifest row (the rejected ones with their reason), and every good file is written."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from mahler_dist.config import DataConfig
from mahler_dist.data import shards as S
from mahler_dist.data.preprocess import preprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crafted_midi as C  # noqa: E402

pytestmark = pytest.mark.integration

#: Bounds asserted: wall time of the whole run on a busy 2-core box, and the peak RSS of any one
#: Ray worker process while it runs (an idle worker holds ~150-250 MB).
WALL_LIMIT_S = 120
WORKER_RSS_LIMIT = 1 << 30


class WorkerMemory:
    """Samples the RSS of this process's Ray workers (its descendants named ray::...) every 50 ms."""

    def __init__(self):
        import psutil

        self.me, self.peak, self.samples = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.wait(0.05):
            for p in self.me.children(recursive=True):
                try:
                    if p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()):
                        self.peak = max(self.peak, p.memory_info().rss)
                        self.samples += 1
                except psutil.Error:
                    pass


def test_crafted_files_are_bounded_and_never_fail_the_corpus(ray_session, midi_dir, tmp_path):
    root = tmp_path / "root"
    good = sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[:8]
    for f in good:
        dest = root / "input" / "good" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    crafted = {"huge_deltas.mid": C.huge_deltas(), "million_notes_in_a_bar.mid": C.notes_in_one_bar(),
               "fifty_megabytes.mid": C.large_file(), "nested_running_status.mid": C.nested_running_status()}
    for name, data in crafted.items():
        (root / "input" / "crafted" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "input" / "crafted" / name).write_bytes(data)
    assert (root / "input" / "crafted" / "fifty_megabytes.mid").stat().st_size >= 50 << 20

    t = time.perf_counter()
    with WorkerMemory() as memory:
        summary = preprocess(root, DataConfig(shard_samples=500), progress=False)
    wall = time.perf_counter() - t
    print(f"crafted corpus: {wall:.1f} s, worker peak RSS {memory.peak / 2**20:.0f} MiB ({memory.samples} samples)")
    assert memory.samples > 0, "no Ray worker process was sampled"
    assert wall < WALL_LIMIT_S and memory.peak < WORKER_RSS_LIMIT

    rows = {m["path"]: m for m in S.read_manifest(root)}
    assert len(rows) == len(good) + len(crafted)
    reasons = {name: rows[f"crafted/{name}"]["reason"] or "" for name in crafted}
    assert rows["crafted/huge_deltas.mid"]["status"] == "rejected"
    assert "too many bars" in reasons["huge_deltas.mid"] or "ticks" in reasons["huge_deltas.mid"], reasons
    assert rows["crafted/million_notes_in_a_bar.mid"]["status"] == "rejected"
    assert "notes" in reasons["million_notes_in_a_bar.mid"], reasons
    assert rows["crafted/fifty_megabytes.mid"]["status"] == "rejected"
    assert "too large" in reasons["fifty_megabytes.mid"] or "bytes" in reasons["fifty_megabytes.mid"], reasons
    nested = rows["crafted/nested_running_status.mid"]   # readers differ on this one: either is fine, bounded
    assert (nested["status"] == "ok" and nested["bars"] > 0) or (nested["status"] == "rejected" and nested["reason"])
    assert not [m for m in rows.values() if (m["reason"] or "").startswith("internal error")]

    build = Path(S.build_root(root))
    for f in good:
        m = rows[f"good/{f.name}"]
        assert m["status"] == "ok" and m["samples"] > 0, m
        assert (build / "pieces" / f"{m['piece']}.npz").is_file()
    index = S.read_index(root)
    written = sum(e["nsamples"] for e in index["shardlist"])
    assert written == sum(m["samples"] for m in rows.values() if m["status"] == "ok") == sum(summary.samples.values())
    assert summary.rejected == 3 + (nested["status"] == "rejected") and os.path.isdir(build / "shards")

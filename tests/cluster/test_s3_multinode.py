"""The whole path on a real S3 API and a 3-node Ray cluster: preprocess -> train 1 epoch on 2
workers (spread over nodes) -> resume to epoch 2 from the bucket alone -> generate -> serve one
request. Runs s3_multinode_path.py in its own process (ray.cluster_utils.Cluster starts its own
Ray, and the S3 endpoint must be in the environment before any raylet starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_whole_path_on_s3_across_three_nodes(tmp_path):
    pytest.importorskip("moto")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("s3_multinode_path.py"))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["nodes"] == 3
    assert out["uploaded"] == 8 and out["shards"] >= 2
    # the first run left its checkpoint, Ray Train's snapshot and the driver's files in the bucket
    for name in ("checkpoint_epoch0001", "checkpoint_manager_snapshot.json", "config.yaml", "data.json",
                 "metrics.jsonl"):
        assert name in out["after_first"]
    # resumed (two starts recorded), not restarted: one epoch row per epoch
    assert out["starts"] == 2 and out["epoch_rows"] == [1, 2]
    assert out["piano_rolls"] == ["epoch0001.png", "epoch0002.png"]
    assert len(out["generated"]) == 1 and out["generated_mthd"] == "MThd"
    assert out["served"] == {"status": 200, "model": "s3run/best", "samples": 1}
    assert out["local_project_dirs"] == []      # nothing mistook the URI for a local folder ("s3:/...")

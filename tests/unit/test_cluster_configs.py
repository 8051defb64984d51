"""The cluster launcher configs pass Ray's own validation, offline (Ray notes 4.1)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["ray_cluster.yaml", "cluster/local.yaml", "cluster/aws-gpu.yaml"])
def test_launcher_config_validates(path):
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((REPO / path).read_text())
    util.validate_config(util.prepare_config(config))
    assert any("requirements.txt" in c for c in config["setup_commands"])
    assert config["file_mounts"]   # `ray submit` uploads only the script: the project is synced


def test_rayjob_runs_the_train_job():
    job = yaml.safe_load((REPO / "cluster/kuberay/rayjob-train.yaml").read_text())
    assert job["kind"] == "RayJob" and "jobs/train.py" in job["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"

"""configs/serve.yaml and the KubeRay RayService validate against Ray Serve's own schema, agree with
each other, and name an application builder that exists and checks its args (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from mahler_dist.errors import MahlerError

REPO = Path(__file__).resolve().parents[2]
SERVE_YAML = REPO / "configs" / "serve.yaml"
RAYSERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"


def test_serve_config_validates_against_serves_schema():
    config = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_YAML.read_text()))
    app = config.applications[0]
    assert app.import_path == "mahler_dist.serve.app:build_app"
    deployment = app.deployments[0]
    assert deployment.name == "GenerationService"
    # batches can only fill when a replica takes more requests than one batch holds
    assert deployment.max_ongoing_requests >= 2 * deployment.user_config["max_batch_size"]
    assert config.http_options.request_timeout_s > 0


def test_rayservice_serves_exactly_configs_serve_yaml():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded == yaml.safe_load(SERVE_YAML.read_text())
    root = embedded["applications"][0]["args"]["root"]
    cluster = manifest["spec"]["rayClusterConfig"]
    mounts = [m["mountPath"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
    assert mounts.count(root) == 1 + len(cluster["workerGroupSpecs"])   # every pod sees ROOT


def test_the_config_deployment_names_the_apps_deployment():
    from mahler_dist.serve.app import GenerationService

    config = yaml.safe_load(SERVE_YAML.read_text())
    assert config["applications"][0]["deployments"][0]["name"] == GenerationService.name


@pytest.mark.parametrize("args, reason", [({}, "root is required"), ({"root": "/x", "port": 1}, "unknown port")])
def test_the_app_builder_refuses_bad_args(args, reason, monkeypatch):
    from mahler_dist.serve.app import build_app

    monkeypatch.delenv("MAHLER_ROOT", raising=False)
    with pytest.raises(MahlerError, match=reason):
        build_app(args)

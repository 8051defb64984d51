"""`mahler train` with an object-store ROOT: a clear refusal, not a local folder named "s3:"."""

from __future__ import annotations

import os

import pytest

from mahler_dist.errors import MahlerError


@pytest.mark.parametrize("root", ["s3://bucket/mahler", "gs://bucket/mahler"])
def test_an_object_store_root_is_refused_by_name(root, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from mahler_dist.train.launch import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MahlerError, match=r"(s3|gs)://bucket/mahler: training needs a local"):
        train("run", root, "tiny")
    assert os.listdir(tmp_path) == []   # nothing was made under the working directory


@pytest.mark.parametrize("args", [["s3://bucket/mahler"], ["/tmp/x", "gs://bucket/held-out"]])
def test_evaluate_refuses_an_object_store_root_by_name(args, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from mahler_dist.evaluate.run import evaluate

    monkeypatch.chdir(tmp_path)
    root, pieces = args[0], (args[1] if len(args) > 1 else None)
    if pieces:
        ckpt = tmp_path / "r" / "runs" / "run" / "checkpoint_epoch0001"
        ckpt.mkdir(parents=True)
        (ckpt / "state.pt").touch()          # the run exists: only --pieces is wrong
        root = tmp_path / "r"
    with pytest.raises(MahlerError, match=r"(s3|gs)://bucket/\S+: evaluation"):
        evaluate("run", root, pieces=pieces, progress=False)
    assert os.listdir(tmp_path) in ([], ["r"])    # nothing named "s3:" or "gs:" was made


@pytest.mark.parametrize("cpus", [0, -1.5])
def test_cpus_per_worker_is_checked_before_anything_is_made(cpus, tmp_path):
    pytest.importorskip("ray")
    from mahler_dist.train.launch import train

    with pytest.raises(MahlerError, match=r"--cpus-per-worker must be > 0"):
        train("run", tmp_path / "root", "tiny", cpus_per_worker=cpus)
    assert not (tmp_path / "root").exists()


def test_loader_workers_apply_to_a_resumed_run_and_are_checked(tmp_path):
    pytest.importorskip("ray")
    from mahler_dist.config import load_config, resolve_config_path, save_config
    from mahler_dist.errors import ConfigError
    from mahler_dist.train.launch import resolve_run_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(resolve_config_path("tiny")), run / "config.yaml")
    assert resolve_run_config(run, None, None).train.loader_workers == 0
    assert resolve_run_config(run, None, None, loader_workers=3).train.loader_workers == 3
    with pytest.raises(ConfigError, match="--loader-workers must be >= 0"):
        resolve_run_config(run, None, None, loader_workers=-1)

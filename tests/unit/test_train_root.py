"""`mahler train` / evaluate / serve with an object-store ROOT (on a real S3 API on loopback), and
the checks train makes before anything is made."""

from __future__ import annotations

import json
import os

import pytest

from mahler_dist.errors import MahlerError


@pytest.fixture(scope="module")
def s3():
    """A real S3 API on 127.0.0.1 (moto), endpoint and credentials in the environment."""
    pytest.importorskip("moto")
    from s3_server import s3_server

    with s3_server("bucket") as env:
        yield env


def test_an_object_store_root_is_read_as_one_not_made_a_local_folder(s3, tmp_path, monkeypatch):
    """Before the storage layer, Path("s3://bucket/mahler") became a folder "s3:" under the working
    directory; now the URI is read through pyarrow, and an empty ROOT gets the usual clear error."""
    pytest.importorskip("ray")
    from mahler_dist.train.launch import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAHLER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MahlerError, match=r"s3://bucket/mahler: no preprocessed data .*mahler preprocess s3://bucket/mahler"):
        train("run", "s3://bucket/mahler", "tiny")
    assert sorted(os.listdir(tmp_path)) in ([], ["cache"])   # nothing named "s3:"


def test_evaluate_generate_and_serve_name_a_missing_run_on_an_object_store(s3, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from mahler_dist.evaluate.run import evaluate
    from mahler_dist.generate.runs import run_dir
    from mahler_dist.serve.catalog import ModelCatalog, UnknownModel

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MahlerError, match=r"no run 'run' under s3://bucket/mahler/runs"):
        evaluate("run", "s3://bucket/mahler", progress=False)
    with pytest.raises(MahlerError, match=r"no run 'other' under s3://bucket/mahler/runs"):
        run_dir("s3://bucket/mahler", "other")
    with pytest.raises(UnknownModel, match=r"runs: none"):
        ModelCatalog("s3://bucket/mahler").lookup("run")
    assert os.listdir(tmp_path) == []


def test_a_run_on_an_object_store_lists_and_fetches_its_checkpoints(s3, tmp_path, monkeypatch):
    """The run layout Ray Train writes to storage_path, listed and fetched through the storage layer:
    only complete checkpoints (with state.pt) count, and a fetched one is cached locally."""
    from mahler_dist import storage
    from mahler_dist.generate.runs import list_checkpoints, local_checkpoint, resolve_checkpoint, run_dir

    monkeypatch.setenv("MAHLER_CACHE_DIR", str(tmp_path / "cache"))
    run = "s3://bucket/ckpts/runs/r"
    for name, score in (("checkpoint_epoch0001", 2.0), ("checkpoint_epoch0002", 1.5)):
        storage.write_bytes(f"{run}/{name}/state.pt", b"weights " + name.encode())
        storage.write_bytes(f"{run}/{name}/metrics.json", json.dumps({"val_score": score, "step": int(name[-1]) * 10}).encode())
    storage.write_bytes(f"{run}/checkpoint_epoch0003/metrics.json", b"{}")   # an upload cut short: no state.pt
    assert run_dir("s3://bucket/ckpts", "r") == run
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint_epoch0001", "checkpoint_epoch0002"]
    best = resolve_checkpoint(run, "best")
    assert best.name == "checkpoint_epoch0002" and best.path == f"{run}/checkpoint_epoch0002"
    local = local_checkpoint(best)
    assert (local / "state.pt").read_bytes() == b"weights checkpoint_epoch0002"
    assert local.is_relative_to(tmp_path / "cache")
    assert local_checkpoint(best) == local      # the second fetch is the cached copy


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

"""Ray Train end to end on a real local Ray with CPU workers (issue: distributed training).

One small corpus (the bundled examples, preprocessed by the real Ray Data pipeline) is shared by
the tests; each test trains the tiny preset in its own run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mahler_dist.config import DataConfig
from mahler_dist.train.tracking import read_metrics

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(ray_session, tmp_path_factory):
    from mahler_dist.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("train_root")
    shutil.copytree(REPO / "examples" / "midi", root / "input")
    preprocess(root, DataConfig(val_fraction=0.25, test_fraction=0.0, shard_samples=64))
    return root


def _train_keys(root: Path) -> set[str]:
    from mahler_dist.data.loader import _read_shard
    from mahler_dist.data.shards import shard_urls

    return {s["__key__"] for url in shard_urls(root, "train") for s in _read_shard(url)}


def _epochs(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_two_workers_two_epochs_each_bar_once(data_root, tmp_path):
    from mahler_dist.train.launch import train

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    summary = train("two", data_root, "tiny", workers=2, epochs=2, record_keys_dir=str(keys_dir))
    run_dir = data_root / "runs" / "two"
    assert summary.epochs_done == 2 and not summary.stopped_early
    assert (run_dir / "checkpoint_epoch0002" / "state.pt").exists()
    assert (run_dir / "config.yaml").exists()

    epochs = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all("val_loss" in e and "val_acc_p" in e for e in epochs)
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and steps[-1]["loss"] < steps[0]["loss"]          # training loss falls
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert {"samples_per_s", "events_per_s", "grad_norm", "lr", "kl_bits", "acc_o", "dist_p"} <= set(steps[0])

    expected = _train_keys(data_root)
    for epoch in (0, 1):
        ranks = [json.loads((keys_dir / f"epoch{epoch}_rank{r}.json").read_text()) for r in (0, 1)]
        seen = ranks[0]["keys"] + ranks[1]["keys"]
        assert len(seen) == len(set(seen)) and set(seen) == expected      # each bar exactly once
        assert ranks[0]["batches"] == ranks[1]["batches"]                 # same number of steps
    assert len(_wandb_runs(run_dir)) == 1
    # each epoch, rank 0 samples a few bars and logs them as a piano roll (W&B image + file)
    assert [Path(e["piano_roll"]).name for e in epochs] == ["epoch0001.png", "epoch0002.png"]
    assert all(Path(e["piano_roll"]).stat().st_size > 1000 for e in epochs)


def test_worker_failure_restarts_from_checkpoint_and_rerun_resumes(data_root, tmp_path):
    from mahler_dist.train.launch import train

    marker = tmp_path / "failed-once"
    summary = train("faulty", data_root, "tiny", workers=2, epochs=2,
                    inject_failure={"epoch": 1, "batch": 2, "marker": str(marker)})
    run_dir = data_root / "runs" / "faulty"
    assert marker.exists() and summary.epochs_done == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "error" and "injected failure" in r["error"] for r in rows)
    # epoch 1 was checkpointed before the failure, so it was trained once; epoch 2 completed
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert len(_wandb_runs(run_dir)) == 1          # one W&B run across the worker restart

    # the job itself ends and is run again with more epochs: it resumes at epoch 3
    again = train("faulty", data_root, None, workers=2, epochs=3)
    assert again.epochs_done == 3
    assert [e["epoch"] for e in _epochs(run_dir)] == [1, 2, 3]


def _start_cli_train(data_root: Path, name: str, epochs: int) -> subprocess.Popen:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mahler_dist.cli", "train", name, "--root", str(data_root),
         "--config", "tiny", "--workers", "1", "--epochs", str(epochs)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and '"kind": "step"' in metrics.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early:\n{proc.stdout.read()}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail("training did not start in time")


def test_first_ctrl_c_finishes_the_epoch_and_checkpoints(data_root):
    run_dir = data_root / "runs" / "interrupted"
    proc = _start_cli_train(data_root, "interrupted", epochs=50)
    _wait_for_steps(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "finishing this epoch" in out and "stopped after epoch" in out
    epochs = _epochs(run_dir)
    assert epochs and epochs[-1]["stopped"] and epochs[-1]["epoch"] < 50
    assert (run_dir / f"checkpoint_epoch{epochs[-1]['epoch']:04d}" / "state.pt").exists()


def test_second_ctrl_c_stops_at_once(data_root):
    run_dir = data_root / "runs" / "aborted"
    proc = _start_cli_train(data_root, "aborted", epochs=50)
    _wait_for_steps(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert not any(e.get("stopped") for e in _epochs(run_dir))


def test_training_on_a_simulated_two_node_cluster(data_root, tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("two_node_train.py")),
                           str(data_root), str(keys_dir)], env={**env, "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"epochs_done": 1, "nodes": 2}
    ranks = [json.loads((keys_dir / f"epoch0_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node"] != ranks[1]["node"]                 # one worker per node
    seen = ranks[0]["keys"] + ranks[1]["keys"]
    assert len(seen) == len(set(seen)) and set(seen) == _train_keys(data_root)

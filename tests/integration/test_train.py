"""Ray Train end to end on a real local Ray with CPU workers (issue: distributed training).

One small corpus (the bundled examples, preprocessed by the real Ray Data pipeline) is shared by
the tests; each test trains the tiny preset in its own run folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_runs import preprocessed_examples
from train_observers import KeyRecorder, KillAtStep, read_records, steps_of

from mahler_dist.config import load_config, resolve_config_path, save_config
from mahler_dist.errors import ConfigError
from mahler_dist.train.tracking import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_root(ray_session, tmp_path_factory):
    return preprocessed_examples(tmp_path_factory.mktemp("train_root"), val_fraction=0.25, test_fraction=0.0,
                                 shard_samples=64)


def _train_keys(root: Path) -> set[str]:
    from mahler_dist.data.loader import _read_shard
    from mahler_dist.data.shards import shard_urls

    return {s["__key__"] for url in shard_urls(root, "train") for s in _read_shard(url)}


def _epochs(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_loader_processes_inside_a_ray_train_worker_feed_each_bar_once(data_root, tmp_path):
    """train.loader_workers forks DataLoader processes inside the Ray Train worker (issue 13)."""
    from mahler_dist.train.launch import train

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    summary = train("procs", data_root, "tiny", workers=1, epochs=1, loader_workers=1,
                    observers=[KeyRecorder(keys_dir)])
    assert summary.epochs_done == 1
    run_dir = data_root / "runs" / "procs"
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(0 <= r["data_wait_frac"] <= 1 and r["skipped_steps"] == 0 for r in steps)
    seen = [k for r in steps_of(read_records(keys_dir), 0) for k in r["keys"]]
    assert len(seen) == len(set(seen)) and set(seen) == _train_keys(data_root)


def test_two_workers_two_epochs_each_bar_once(data_root, tmp_path):
    from mahler_dist.train.launch import train

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    summary = train("two", data_root, "tiny", workers=2, epochs=2, observers=[KeyRecorder(keys_dir)])
    run_dir = data_root / "runs" / "two"
    assert summary.epochs_done == 2 and not summary.stopped_early
    assert (run_dir / "checkpoint_epoch0002" / "state.pt").exists()
    assert (run_dir / "config.yaml").exists()

    epochs = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all("val_loss" in e and "val_acc_p" in e and e["score_on"] == "val" for e in epochs)
    # every free_eval_every_epochs (2) epochs, a free-running reconstruction of validation bars
    assert "val_free_note_f1" not in epochs[0] and 0 <= epochs[1]["val_free_note_f1"] <= 1
    assert 0 <= epochs[1]["val_free_acc_p"] <= 1 and epochs[1]["val_active_units"] >= 0
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and steps[-1]["loss"] < steps[0]["loss"]          # training loss falls
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert {"samples_per_s", "events_per_s", "grad_norm", "lr", "kl_bits", "acc_o", "dist_p"} <= set(steps[0])

    expected = _train_keys(data_root)
    records = read_records(keys_dir)
    for epoch in (0, 1):
        seen = [k for r in steps_of(records, epoch) for k in r["keys"]]
        assert len(seen) == len(set(seen)) and set(seen) == expected      # each bar exactly once
        per_rank = [len([r for r in steps_of(records, epoch) if r["rank"] == rank]) for rank in (0, 1)]
        assert per_rank[0] == per_rank[1]                                 # same number of steps
    assert len(_wandb_runs(run_dir)) == 1
    # each epoch, rank 0 samples a few bars and logs them as a piano roll (W&B image + file)
    assert [Path(e["piano_roll"]).name for e in epochs] == ["epoch0001.png", "epoch0002.png"]
    assert all(Path(e["piano_roll"]).stat().st_size > 1000 for e in epochs)


CHECKPOINT_EVERY = 5


def _config_file(tmp_path: Path, **train) -> Path:
    config = load_config(resolve_config_path("tiny"))
    for k, v in train.items():
        setattr(config.train, k, v)
    path = tmp_path / "run.yaml"
    save_config(config, path)
    return path


def test_a_killed_worker_resumes_mid_epoch_at_the_next_batch(data_root, tmp_path):
    """Checkpoints every 5 steps; rank 0's process is SIGKILLed 2 steps after the checkpoint at
    step 10. The restarted workers continue at step 11 with the same batches: steps 1-10 of the
    first attempt and 11-end of the second train every bar of the epoch exactly once, and step 11
    is the same step (same bars, same loss) in both attempts."""
    from mahler_dist.data.loader import BarLoader, PlanOptions
    from mahler_dist.data.shards import shard_urls
    from mahler_dist.train.launch import train

    cfg = _config_file(tmp_path, checkpoint_every_steps=CHECKPOINT_EVERY, lr_schedule="cosine")
    tiny = load_config(cfg).train
    ckpt_step, kill_step = 2 * CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY + 2
    plan = PlanOptions(world_size=2, batch_size=tiny.batch_size // 2, max_batch_rows=tiny.max_batch_rows,
                       shuffle_window=tiny.shuffle_window, seed=tiny.seed)
    assert len(BarLoader(shard_urls(data_root, "train"), options=plan)) > kill_step   # a mid-epoch kill

    keys_dir, marker = tmp_path / "keys", tmp_path / "killed-once"
    keys_dir.mkdir()
    summary = train("faulty", data_root, str(cfg), workers=2, epochs=2,
                    observers=[KeyRecorder(keys_dir), KillAtStep(kill_step, marker)])
    run_dir = data_root / "runs" / "faulty"
    assert marker.exists() and summary.epochs_done == 2
    records = read_records(keys_dir)
    first = [r for r in steps_of(records, 0) if r["attempt"] == 0]
    again = [r for r in steps_of(records, 0) if r["attempt"] == 1]
    assert max(r["step"] for r in first) == kill_step                   # died mid-epoch ...
    assert min(r["step"] for r in again) == ckpt_step + 1                # ... resumed after the checkpoint
    trained = [k for r in first if r["step"] <= ckpt_step for k in r["keys"]] + \
              [k for r in again for k in r["keys"]]
    assert len(trained) == len(set(trained)) and set(trained) == _train_keys(data_root)
    for rank in (0, 1):
        a = next(r for r in first if r["rank"] == rank and r["step"] == ckpt_step + 1)
        b = next(r for r in again if r["rank"] == rank and r["step"] == ckpt_step + 1)
        assert a["keys"] == b["keys"] and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "checkpoint" and r["step"] == ckpt_step for r in rows)
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]   # each epoch reported once
    assert len(_wandb_runs(run_dir)) == 1          # one W&B run across the worker restart
    assert summary.best_checkpoint and "checkpoint_epoch" in summary.best_checkpoint

    # the job itself ends and is run again with more epochs: it resumes at epoch 3, and the
    # cosine schedule keeps its length (no jump back up to a higher learning rate)
    again = train("faulty", data_root, None, workers=2, epochs=3)
    assert again.epochs_done == 3
    assert [e["epoch"] for e in _epochs(run_dir)] == [1, 2, 3]
    lrs = [r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs

    # an edited architecture key in the run's config.yaml: one clear error, before any worker
    saved = load_config(run_dir / "config.yaml")
    saved.model.enc_size = 48
    save_config(saved, run_dir / "config.yaml")
    with pytest.raises(ConfigError, match=r"model\.enc_size: 32 in the checkpoint, 48 in config\.yaml"):
        train("faulty", data_root, None, workers=2, epochs=4)


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


def test_a_diverging_run_ends_once_with_a_clear_error_and_is_not_retried(data_root, tmp_path):
    """lr 1e30: the first step is finite, every later one is not. After max_nonfinite_steps in a
    row both ranks end the run at the same log interval; FailureConfig does not restart it (a
    restart would diverge the same way) and the error names the run and what to change."""
    from mahler_dist.errors import MahlerError
    from mahler_dist.train.launch import train

    cfg = _config_file(tmp_path, lr=1e30, max_nonfinite_steps=3, log_every_steps=4)
    with pytest.raises(MahlerError, match=r"run diverging: training stopped at step 4: the last 3 steps had a "
                                          r"non-finite loss .*Lower train.lr"):
        train("diverging", data_root, str(cfg), workers=2, epochs=1, max_failures=2)
    rows = read_metrics(data_root / "runs" / "diverging" / "metrics.jsonl")
    assert [r["kind"] for r in rows] == ["diverged"]       # no "error" rows: no worker failed, none retried
    assert rows[0]["step"] == 4 and "non-finite" in rows[0]["error"]


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
    steps = steps_of(read_records(keys_dir), 0)
    nodes = {rank: {r["node"] for r in steps if r["rank"] == rank} for rank in (0, 1)}
    assert len(nodes[0]) == len(nodes[1]) == 1 and nodes[0] != nodes[1]   # one worker per node
    seen = [k for r in steps for k in r["keys"]]
    assert len(seen) == len(set(seen)) and set(seen) == _train_keys(data_root)

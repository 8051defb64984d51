"""What a resumed run trusts (issue 10): the loader's saved position only for the same plan,
the architecture only from the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from mahler_dist.config import load_config, resolve_config_path
from mahler_dist.data.loader import BarLoader, PlanOptions
from mahler_dist.errors import ConfigError
from mahler_dist.model.checkpoint import save_checkpoint
from mahler_dist.train.launch import check_architecture, latest_checkpoint
from mahler_dist.train.loop import lr_factor


def _loader(lengths, **options) -> BarLoader:
    urls = [f"file:///nowhere/shard-{i:06d}.tar" for i in range(len(lengths))]
    return BarLoader(urls, options=PlanOptions(**{"batch_size": 4, "max_batch_rows": 1024, **options}),
                     shard_lengths=lengths)


def _lengths(seed: int, sizes=(30, 21)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 40, size=(n, 2)) for n in sizes]


def test_a_saved_position_resumes_the_same_plan_mid_epoch():
    loader = _loader(_lengths(0))
    loader.set_epoch(3)
    loader.batches_done = 5
    again = _loader(_lengths(0))
    assert again.load_state_dict(loader.state_dict()) is True
    assert (again.epoch, again.batches_done) == (3, 5)


@pytest.mark.parametrize("change", [{"lengths": 1}, {"batch_size": 5}, {"seed": 9}, {"world_size": 2}])
def test_a_position_in_another_plan_restarts_the_saved_epoch(change):
    loader = _loader(_lengths(0))
    loader.set_epoch(2)
    loader.batches_done = 4
    options = {k: v for k, v in change.items() if k != "lengths"}
    other = _loader(_lengths(change.get("lengths", 0)), **options)
    assert other.load_state_dict(loader.state_dict()) is False
    assert (other.epoch, other.batches_done) == (2, 0)       # the epoch, from its first batch


def _checkpoint(run_dir, name, step, kind, config):
    d = run_dir / name
    d.mkdir(parents=True)
    save_checkpoint(d, metrics={"step": step, "kind": kind}, config=config.to_dict(), model={})
    return d


def test_an_edited_architecture_key_is_one_error_naming_every_key(tmp_path):
    config = load_config(resolve_config_path("tiny"))
    _checkpoint(tmp_path, "checkpoint_epoch0001", 12, "epoch", config)
    latest = _checkpoint(tmp_path, "checkpoint_step00000015", 15, "checkpoint", config)
    assert latest_checkpoint(tmp_path) == latest
    check_architecture(config, tmp_path)              # unchanged: fine
    config.train.lr = 0.01                            # training keys may change on resume
    check_architecture(config, tmp_path)
    config.model.enc_size, config.model.z_dim = 48, 8
    with pytest.raises(ConfigError) as e:
        check_architecture(config, tmp_path)
    assert "model.enc_size: 32 in the checkpoint, 48 in config.yaml" in str(e.value)
    assert "model.z_dim: 16 in the checkpoint, 8 in config.yaml" in str(e.value)
    assert "checkpoint_step00000015" in str(e.value) and "--restart" in str(e.value)


def test_the_cosine_schedule_holds_its_floor_past_its_length():
    cfg = load_config(resolve_config_path("tiny")).train
    cfg.lr_schedule, cfg.warmup_steps = "cosine", 0
    factors = [lr_factor(s, 100, cfg) for s in range(0, 300)]
    assert factors[0] == pytest.approx(1.0) and factors[100] == pytest.approx(0.1)
    assert all(b <= a for a, b in zip(factors, factors[1:])) and factors[-1] == pytest.approx(0.1)


def test_generation_sees_mid_epoch_checkpoints_as_latest_never_as_best(tmp_path):
    import math

    from mahler_dist.generate.runs import resolve_checkpoint

    config = load_config(resolve_config_path("tiny"))
    for name, step, kind, score in [("checkpoint_epoch0001", 10, "epoch", 2.0),
                                    ("checkpoint_epoch0002", 20, "epoch", 1.5),
                                    ("checkpoint_step00000025", 25, "checkpoint", math.nan)]:
        d = tmp_path / name
        d.mkdir()
        save_checkpoint(d, metrics={"step": step, "kind": kind, "epoch": 2, "val_score": score},
                        config=config.to_dict(), model={})
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint_step00000025"
    assert resolve_checkpoint(tmp_path, "best").name == "checkpoint_epoch0002"
    assert resolve_checkpoint(tmp_path, "checkpoint_step00000025").step == 25

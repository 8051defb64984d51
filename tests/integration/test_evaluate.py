"""`mahler evaluate` end to end on a real local Ray (issue 11): a tiny model memorises the whole
training split of one ROOT (one piece, trained in-process with the standard loss), then is
evaluated on that split (it must score near 1.0 teacher-forced) and on another ROOT's test split
(`--pieces`), with the baselines fitted on the run's own training split only."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from mahler_dist.cli import main
from mahler_dist.config import DataConfig, load_config, resolve_config_path, save_config
from mahler_dist.data.loader import read_samples
from mahler_dist.data.shards import shard_urls
from mahler_dist.data.collate import collate_bars
from mahler_dist.model.checkpoint import save_checkpoint
from mahler_dist.model.cvae import MahlerNet
from mahler_dist.model.optim import build_optimizer
from tiny_runs import fit_step, preprocessed_examples

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PIECE = "scn15_6.mid"     # 33 bars


@pytest.fixture(scope="module")
def roots(ray_session, tmp_path_factory):
    from mahler_dist.data.preprocess import preprocess

    own = tmp_path_factory.mktemp("eval_own")
    (own / "input").mkdir()
    shutil.copy(REPO / "examples" / "midi" / PIECE, own / "input" / PIECE)
    preprocess(own, DataConfig(val_fraction=0.0, test_fraction=0.0, shard_samples=16), progress=False)
    other = preprocessed_examples(tmp_path_factory.mktemp("eval_other"), val_fraction=0.0, test_fraction=0.3,
                                  shard_samples=64)

    samples = [s for u in shard_urls(own, "train") for s in read_samples(u)]
    cfg = load_config(resolve_config_path("tiny"))
    cfg.loss.free_bits = 16.0
    cfg.train.lr = 0.01
    torch.manual_seed(0)
    model = MahlerNet(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    batch = collate_bars(samples)
    for step in range(1, 1501):
        loss, metrics = fit_step(model, batch, optimizer, cfg, step)
        if step % 50 == 0 and min(float(metrics[f"acc_{p}"]) for p in "odpi") > 0.99:
            break
    run = own / "runs" / "memo"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    d = run / "checkpoint_epoch0001"
    d.mkdir()
    save_checkpoint(d, metrics={"val_score": float(loss), "epoch": 1, "step": step, "kind": "epoch"},
                    model=model.state_dict(), config=cfg.to_dict(), epoch=1, step=step)
    return {"own": own, "other": other, "train_bars": len(samples)}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_an_overfit_model_scores_near_one_on_its_training_bars(roots, capsys):
    assert main(["evaluate", "memo", "--root", str(roots["own"]), "--split", "train",
                 "--generated", "4", "--bars", "4", "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "teacher-forced pitch" in out and "generated vs real OA" in out
    report = json.loads(next((roots["own"] / "runs" / "memo" / "eval").glob("train-*.json")).read_text())
    tf = report["model"]["teacher_forced"]
    assert report["bars"] == roots["train_bars"]
    assert all(tf["accuracy"][p] > 0.97 for p in ("offset", "duration", "pitch", "instrument")), tf
    assert tf["nll_per_event"]["pitch"] < 0.2
    # it beats every baseline on the same bars
    base = report["baselines"]
    assert tf["accuracy"]["pitch"] > base["bigram"]["accuracy"]["pitch"] > 0
    assert tf["nll_per_event"]["pitch"] < base["bigram"]["nll_per_event"]["pitch"] < base["unigram"]["nll_per_event"]["pitch"]
    assert (roots["own"] / "runs" / "memo" / "eval" / "train-checkpoint_epoch0001.png").stat().st_size > 10_000


def test_evaluating_another_root_reports_every_field_with_baselines_from_the_run_only(roots):
    assert main(["evaluate", "memo", "--root", str(roots["own"]), "--split", "test",
                 "--pieces", str(roots["other"]), "--generated", "4", "--bars", "4"]) == 0
    # logged to the run's W&B run (offline here): its numbers and the summary picture
    wandb_dir = roots["own"] / "runs" / "memo" / "wandb"
    logged = list(wandb_dir.glob("offline-run-*/files/media/images/**/*.png"))
    assert logged and any("summary" in p.name for p in logged)
    path = next((roots["own"] / "runs" / "memo" / "eval").glob("test-*.json"))
    report = json.loads(path.read_text())
    assert report["data_root"] == str(roots["other"].resolve()) and report["bars"] > 0
    assert report["baselines_fitted_on_bars"] == roots["train_bars"]     # the run's training split only
    m = report["model"]
    for k in ("offset", "duration", "pitch", "instrument"):
        assert _finite(m["teacher_forced"]["nll_per_event"][k]) and 0 <= m["teacher_forced"]["accuracy"][k] <= 1
        assert 0 <= m["free_running"]["accuracy_step_aligned"][k] <= 1
        for base in ("unigram", "bigram"):
            assert _finite(report["baselines"][base]["nll_per_event"][k])
    for k in ("nll_per_event_all", "end_accuracy"):
        assert _finite(m["teacher_forced"][k])
    for k in ("kl_nats_per_bar", "kl_bits_per_bar", "elbo_per_bar"):
        assert _finite(m[k])
    assert 0 <= m["active_units"] <= m["latent_dims"] == 16
    for k in ("note_f1_micro", "onset_f1_micro", "bars_hit_row_cap"):
        assert _finite(m["free_running"][k]) and _finite(report["baselines"]["copy_previous_bar"][k])
    gen = report["generation"]
    for part in ("from_start", "continuations", "ceiling_train_vs_split"):
        assert set(gen[part]["oa"]) == set(gen["from_start"]["oa"]) and len(gen[part]["oa"]) >= 8
        assert all(0 <= v <= 1.0 + 1e-9 for v in gen[part]["oa"].values())
        assert all(v >= 0 for v in gen[part]["kl"].values())

"""`mahler plot`: training curves from metrics.jsonl (the original's display_stats.py modes)."""

import json

import pytest

from mahler_dist.cli import main
from mahler_dist.plots import training_curves
from mahler_dist.train.tracking import read_metrics


def _run(tmp_path, name, losses):
    run = tmp_path / name
    run.mkdir()
    rows = [{"kind": "step", "step": 10 * (e + 1), "loss": loss + 1} for e, loss in enumerate(losses)]
    rows += [{"kind": "epoch", "step": 10 * (e + 1), "epoch": e + 1, "train_loss": loss, "val_loss": loss + 0.5,
              "train_acc_o": 0.5, "val_acc_o": 0.4, "train_acc_d": 0.5, "train_acc_p": 0.3, "train_acc_i": 0.9,
              "train_dist_o": 2.0, "val_dist_o": 2.5, "train_dist_d": 1.0, "train_dist_p": 3.0}
             for e, loss in enumerate(losses)]
    # a restarted run logs step 10 twice: the last row wins
    rows.append({"kind": "step", "step": 10, "loss": 99.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return run


def test_read_metrics_keeps_the_last_row_of_a_repeated_step(tmp_path):
    rows = read_metrics(_run(tmp_path, "a", [3.0, 2.0]) / "metrics.jsonl")
    assert [r["loss"] for r in rows if r["kind"] == "step"] == [99.0, 3.0]


@pytest.mark.parametrize("mode", ["l", "p", "d", "ls"])
def test_every_mode_writes_a_png_for_several_runs(tmp_path, mode, capsys):
    a, b = _run(tmp_path, "a", [3.0, 2.0, 1.5]), _run(tmp_path, "b", [4.0, 2.5])
    out = tmp_path / f"{mode}.png"
    assert main(["plot", mode, "small", str(a), "tiny", str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert f"wrote {out}" in capsys.readouterr().out


def test_plot_errors_name_the_problem(tmp_path, capsys):
    assert main(["plot", "l", "only-a-name"]) == 2
    assert "pairs of NAME RUNDIR" in capsys.readouterr().err
    assert main(["plot", "l", "x", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown plot mode"):
        training_curves("q", [], tmp_path / "x.png")
